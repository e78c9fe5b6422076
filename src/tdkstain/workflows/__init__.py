"""Jobs made of several domains: the paper's Table 1 (``table1``), the demo (``demo``, ``demo_report``).

Only the command line imports these.
"""

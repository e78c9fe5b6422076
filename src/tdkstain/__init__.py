"""tdkstain: H&E-to-HER2-IHC virtual staining with task-specific domain knowledge.

The flow, one module per arrow:
paired tiles (``pairs``, ``images``) -> knowledge maps (``stain``, ``nuclei``,
``knowledge``, ``extraction``) -> networks (``networks``) + objective
(``objective``) -> trainer (``training``) -> weights with a model card
(``checkpoints``). ``synth`` makes paired tissue whose truth is known.
"""

__version__ = "0.1.0"

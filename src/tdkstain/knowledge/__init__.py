"""The task-specific domain knowledge, from real IHC tiles (docs/method.md "Knowledge extraction").

- ``stain``: colour deconvolution (haematoxylin, eosin, DAB), the DAB-only image.
- ``nuclei``: nuclei detection (classical and Cellpose) and centroid matching.
- ``maps``: the membrane mask, the nuclei density map, one tile's knowledge.
- ``extraction``: the whole dataset (parallel, resumable), its records, quality report and evaluation against synth truth.
- ``overlays``: membranes and nuclei drawn over an image.

Import the submodule you need; none of them imports training code.
"""

"""tdkstain: H&E-to-HER2-IHC virtual staining with task-specific domain knowledge.

The flow, one package per arrow (docs/ARCHITECTURE.md):
paired tiles (``data``) -> knowledge maps (``knowledge``) -> a method's
networks and phases (``models``, ``methods``) -> the trainer (``training``)
-> weights with a model card (``weights``) -> staining images and slides
(``inference``, ``slides``) -> evaluation (``metrics``, ``evaluation``).
``synth`` makes paired tissue whose truth is known; ``plumbing`` holds what
all of them use; ``workflows`` and ``cli`` put them together.
"""

__version__ = "0.2.0"

"""Paired tiles on disk: image files (``images``), dataset layouts and checks (``pairs``),
and the aligned training tiles with their knowledge maps (``tiles``).

Import the submodule you need: ``tiles`` loads torch, ``images`` and ``pairs`` do not.
"""

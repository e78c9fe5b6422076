"""Numbers that JSON cannot hold (NaN, infinities, numpy scalars), written so that every JSON reader takes them.

``json.dumps(math.inf)`` writes ``Infinity``, which is not JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["json_number", "json_safe"]


def json_number(value: float) -> float | str | None:
    """``value`` for JSON: a finite float as it is, NaN as None, infinities as the strings "inf" / "-inf"."""
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every float made JSON-safe (:func:`json_number`), numpy integers as ints and dict keys as
    strings, inside dicts, lists and tuples too."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return json_number(value)
    if isinstance(value, np.integer):
        return int(value)
    return value

"""Strict JSON for results files: NaN and ±∞ become ``null`` (RFC 8259 has no NaN).

Python's ``json`` writes ``NaN``/``Infinity`` tokens by default, which strict parsers (``jq``,
JavaScript, Go, ``json.loads(..., parse_constant=...)`` checks) reject. Every JSON file ntkal
writes for people goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["to_jsonable", "dumps"]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to plain Python; NaN and ±∞ → ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def dumps(obj: Any, *, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (no ``NaN``/``Infinity`` tokens; missing numbers are ``null``)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


"""Config fields added after runs were recorded, and how records and fingerprints stay valid.

A run directory records its full configuration (:mod:`ntkal.experiment.record`) and shares its
round 0 by a hash of the loop settings (:func:`ntkal.loop.round0_fingerprint`). Adding a field to
a config dataclass would change both for every run made before the field existed, although
those runs were made with the field's *no-op* default (the behaviour before it existed), so
no committed study could be resumed. A field declared with :func:`added_field` is left out of
records and fingerprints while it holds that default; any other value is recorded as usual.

Imports nothing heavy (configs are built before JAX loads).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["added_field", "unrecorded_field", "omitted", "stable_repr"]

_KEY = "ntkal_added_in"
_UNRECORDED = "ntkal_unrecorded"


def added_field(default: Any, *, added_in: str) -> Any:
    """A ``dataclasses.field`` whose ``default`` reproduces the behaviour before it existed.

    Args:
      default: an immutable default equal to "the old behaviour".
      added_in: the ntkal version or change that added it (documentation only).
    """
    return dataclasses.field(default=default, metadata={_KEY: added_in})


def unrecorded_field(default: Any) -> Any:
    """A ``dataclasses.field`` for a setting that decides how inputs are checked, never what a
    run computes (e.g. whether a test frame found in the pool is an error or a warning): always
    left out of records and fingerprints, so changing it never blocks resuming a run."""
    return dataclasses.field(default=default, metadata={_UNRECORDED: True})


def omitted(field: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` of ``field`` is left out of records and fingerprints."""
    return field.metadata.get(_UNRECORDED, False) or (_KEY in field.metadata and value == field.default)


def stable_repr(value: Any) -> str:
    """``repr(value)``, except that dataclass fields at their :func:`added_field` default are
    left out; equal to ``repr`` for values without such fields (dataclasses with the generated
    ``__repr__``, tuples, lists, dicts and scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [f"{f.name}={stable_repr(getattr(value, f.name))}" for f in dataclasses.fields(value)
                 if f.repr and not omitted(f, getattr(value, f.name))]
        return f"{type(value).__qualname__}({', '.join(parts)})"
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        inner = ", ".join(stable_repr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return f"[{', '.join(stable_repr(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)

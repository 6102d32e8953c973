"""Program caches: compiled and traced programs kept for reuse, on disk and in memory.

- :mod:`ntkal.cache.compilation`: JAX's persistent compilation cache in the user's cache folder
  (:func:`enable_compile_cache`): a program compiled once is loaded from disk afterwards, in any
  process, instead of being compiled again by XLA.
- :mod:`ntkal.cache.programs`: :class:`ProgramCache`, traced programs (``jax.export``) and
  costly arrays on disk, so that a warm run also skips Python tracing.
- :mod:`ntkal.cache.owned`: :func:`build_once`, in-memory jitted programs kept in a dict owned
  by the object that uses them (never at module level), so they are released with their owner.

Importing this package loads neither JAX nor NumPy (``ntkal --help`` imports it);
:class:`ProgramCache` and :func:`code_fingerprint` are imported on first use.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes
from ntkal.cache.compilation import (add_compile_cache_argument, default_cache_dir, enable_compile_cache,
                                     enable_compile_cache_or_warn)
from ntkal.cache.owned import build_once

_EAGER = ["default_cache_dir", "enable_compile_cache", "enable_compile_cache_or_warn",
          "add_compile_cache_argument", "build_once"]
_WHERE = {"ProgramCache": "ntkal.cache.programs", "code_fingerprint": "ntkal.cache.programs"}

__all__ = _EAGER + list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

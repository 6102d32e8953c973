"""Deprecated alias of :mod:`ntkal.cache` (JAX's persistent compilation cache); removed in the
next release. Import ``default_cache_dir``, ``enable_compile_cache``,
``enable_compile_cache_or_warn`` and ``add_compile_cache_argument`` from :mod:`ntkal.cache`."""

import warnings

from ntkal.cache.compilation import (add_compile_cache_argument, default_cache_dir, enable_compile_cache,
                                     enable_compile_cache_or_warn)

__all__ = ["default_cache_dir", "enable_compile_cache", "enable_compile_cache_or_warn",
           "add_compile_cache_argument"]

warnings.warn("ntkal.compile_cache is deprecated and will be removed in the next release; "
              "import its names from ntkal.cache", DeprecationWarning, stacklevel=2)

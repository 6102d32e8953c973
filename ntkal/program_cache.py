"""Deprecated alias of :mod:`ntkal.cache` (traced programs on disk); removed in the next
release. Import ``ProgramCache`` and ``code_fingerprint`` from :mod:`ntkal.cache`."""

import warnings

from ntkal.cache.programs import ProgramCache, code_fingerprint

__all__ = ["ProgramCache", "code_fingerprint"]

warnings.warn("ntkal.program_cache is deprecated and will be removed in the next release; "
              "import its names from ntkal.cache", DeprecationWarning, stacklevel=2)

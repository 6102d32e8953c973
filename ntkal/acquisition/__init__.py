"""Deprecated: ``ntkal.acquisition`` is now :mod:`ntkal.posterior` (renamed in 0.1 for what it is:
the feature-space posterior, PV scores, shortlist and selectors, beside the pipeline
:mod:`ntkal.acquire`). Its names keep working for one release, with a ``DeprecationWarning``;
import them from ``ntkal.posterior``. Submodules (``ntkal.acquisition.selectors``, ...) are gone:
use ``ntkal.posterior.selectors`` and so on.
"""

from __future__ import annotations

import importlib
import warnings


def __getattr__(name: str):
    posterior = importlib.import_module("ntkal.posterior")
    if name not in posterior.__all__:
        raise AttributeError(f"module 'ntkal.acquisition' has no attribute {name!r} (it is ntkal.posterior now)")
    warnings.warn(f"ntkal.acquisition.{name} is deprecated: import it from ntkal.posterior "
                  f"(ntkal.acquisition goes in the next release)", DeprecationWarning, stacklevel=2)
    return getattr(posterior, name)


def __dir__():
    return sorted(importlib.import_module("ntkal.posterior").__all__)

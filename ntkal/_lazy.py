"""Lazy package attributes (PEP 562): import a submodule only when one of its names is used."""

from __future__ import annotations

import importlib
from typing import Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names live in ``where``
    (name → defining module, or ``"module:attribute"`` when the package renames it); a name is
    imported on first access and then cached."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        try:
            module = where[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, _, attribute = module.partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__

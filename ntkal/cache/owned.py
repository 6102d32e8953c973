"""Compiled programs owned by the objects that use them, never by a module.

A jitted function holds its compiled programs (XLA executables: on CPU hundreds of mapped memory
regions each) for as long as the function object lives. A module-level cache of jitted functions
(``functools.lru_cache`` over a builder) keeps them for the life of the process: a sweep whose
points build new ones piles them up until the process meets ``vm.max_map_count`` and dies
(:mod:`ntkal.process_stats`). ntkal therefore keeps jitted functions in a plain dict owned by
whoever uses them (the loop's per-pool cache, an :class:`~ntkal.acquire.Acquirer`, a selector
from :func:`~ntkal.posterior.make_selector`, an on-the-fly MD run): they are found again for as
long as the owner lives and released with it. :func:`build_once` is the way into such a dict.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, TypeVar

__all__ = ["build_once"]

T = TypeVar("T")


def build_once(store: dict | None, key: Hashable, build: Callable[[], T], *, holds: Any = None) -> T:
    """``build()``, kept in the owner's ``store`` under ``key``: built at most once per store.

    Args:
      store: the owner's dict (its entries are ``key -> (holds, value)``); ``None``: nothing is
        kept, the value is built for this call only.
      key: names the builder (e.g. its module) and every static value the built programs close
        over, so that two builders sharing one store never collide.
      build: ``build() -> value``, typically jitted functions.
      holds: an object kept alive beside the value, e.g. the model whose ``id`` is part of
        ``key`` (while the entry exists, no other object can take that id).

    Returns:
      The stored value (or a new one when ``store`` is ``None``).

    Example:
      >>> programs = {}
      >>> step = build_once(programs, ("fit", id(model)), lambda: jax.jit(f), holds=model)  # doctest: +SKIP
    """
    if store is None:
        return build()
    if key not in store:
        store[key] = (holds, build())
    return store[key][1]

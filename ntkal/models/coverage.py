"""Element coverage: does a model know, and has it been trained on, the elements of some structures?

A checkpoint's model has a fixed element list (``ModelConfig.elements``, its embedding); a
structure with any other element cannot be evaluated at all. A model may also know elements it
never saw in training (the shipped ``oc20_like`` knows Al and Pd but was trained without them):
it evaluates such structures, but its energies, forces and NTK features there rest on untrained
embeddings and on a reference energy ``e0`` fitted without them, so acquisition scores and
predictions for them mean little. The checkpoint metadata's ``train_elements`` (sorted atomic
numbers present in the training data; written by ``ntkal train`` and ``experiments/pretrain.py``)
tells the two apart; without it no "unseen" warning is possible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ase.data
import numpy as np

from ntkal.data.errors import UnknownElementError

__all__ = ["UnseenElementWarning", "element_coverage", "check_element_coverage", "symbols_of"]


class UnseenElementWarning(UserWarning):
    """Structures hold elements the model knows but never saw in training."""


def symbols_of(numbers: Iterable[int]) -> list[str]:
    """Chemical symbols of atomic ``numbers`` (in the given order)."""
    return [ase.data.chemical_symbols[int(z)] for z in numbers]


def _present(numbers) -> set[int]:
    """Atomic numbers occurring in an array (any shape) or an iterable of arrays / numbers."""
    if isinstance(numbers, np.ndarray):
        return set(np.unique(numbers).tolist())
    present: set[int] = set()
    for item in numbers:
        if np.ndim(item) == 0:
            present.add(int(item))
        else:
            present.update(np.unique(np.asarray(item)).tolist())
    return present


def element_coverage(model_elements: Iterable[int], train_elements: Iterable[int] | None,
                     numbers) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which elements of ``numbers`` the model does not know, and which it knows but never trained on.

    Args:
      model_elements: atomic numbers of the model (``model.config.elements``).
      train_elements: atomic numbers present in its training data (metadata ``train_elements``);
        ``None`` when unknown (then nothing counts as unseen).
      numbers: atomic numbers: one array of any shape, or an iterable of arrays (one per structure).

    Returns:
      ``(outside_model, unseen_in_training)``: sorted atomic numbers present in ``numbers`` that are
      not model elements, and that are model elements missing from ``train_elements``.
    """
    model = {int(z) for z in model_elements}
    present = _present(numbers)
    outside = tuple(sorted(present - model))
    if train_elements is None:
        return outside, ()
    return outside, tuple(sorted((present & model) - {int(z) for z in train_elements}))


def check_element_coverage(model_elements: Sequence[int], metadata: Mapping[str, Any] | None,
                           numbers: Iterable, *, what: str = "pool", source: str | None = None,
                           locate: Callable[[int], tuple[str | None, int | None]] | None = None) -> str | None:
    """Reject structures with elements outside the model; describe those with elements unseen in training.

    Args:
      model_elements: atomic numbers of the model (``model.config.elements``).
      metadata: the checkpoint metadata (its ``train_elements``, if any, is used).
      numbers: one atomic-number array per structure (e.g. ``(s.numbers for s in structures)``).
      what: what the structures are, for the messages ("pool", "training data", ...).
      source: the file they were read from; structure ``k`` is then frame ``k`` of it.
      locate: ``k -> (file, frame)`` of structure ``k`` (overrides ``source``; for several files).

    Returns:
      ``None``, or a warning text when some structures hold model elements that are not in the
      metadata's ``train_elements`` (naming them and an example file/frame); the caller shows it
      (``warnings.warn(text, UnseenElementWarning)``).

    Raises:
      UnknownElementError: (a ``ValueError``) some structures hold elements outside
        ``model_elements``; the message names them (symbols), the first structure holding one
        (file and frame) and how many structures do.
    """
    model = {int(z) for z in model_elements}
    train = metadata.get("train_elements") if metadata else None
    trained = None if train is None else {int(z) for z in train}
    locate = locate or (lambda k: (source, k))
    outside: set[int] = set()
    unseen: set[int] = set()
    first_outside = first_unseen = None
    n_outside = n_unseen = n = 0
    for k, item in enumerate(numbers):
        n += 1
        present = _present(np.asarray(item))
        if present - model:
            outside |= present - model
            n_outside += 1
            first_outside = k if first_outside is None else first_outside
        if trained is not None and (present & model) - trained:
            unseen |= (present & model) - trained
            n_unseen += 1
            first_unseen = k if first_unseen is None else first_unseen
    if outside:
        file, frame = locate(first_outside)
        raise UnknownElementError(
            f"the {what} holds elements {symbols_of(sorted(outside))} that the model does not know "
            f"(model elements: {', '.join(symbols_of(model_elements))}); {n_outside} of {n} structures hold "
            "them, this is the first. Remove them or use a model built for these elements",
            index=first_outside, info={"source": file, "frame": frame})
    if unseen:
        file, frame = locate(first_unseen)
        where = ", ".join(x for x in (f"file {file}" if file is not None else None,
                                      f"frame {frame}" if frame is not None else None) if x)
        return (f"the {what} holds {', '.join(symbols_of(sorted(unseen)))}, which the model knows but never saw "
                f"in training (trained on {', '.join(symbols_of(sorted(trained)))}): {n_unseen} of {n} "
                f"structures contain them (first: {where or f'structure {first_unseen}'}); the model's "
                "energies, forces and uncertainties for them are unreliable")
    return None

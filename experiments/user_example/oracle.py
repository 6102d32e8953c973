"""The worked example's oracle: CHGNet 0.3.0 (weights bundled in the ``chgnet`` wheel), referenced.

``[oracle] calculator = "experiments.user_example.oracle:make"`` names :func:`make`; ntkal calls it
once per structure (calculators are never reused), in a spawned worker process. So that a
structure costs one CHGNet evaluation (~0.4 s for 40 atoms on one core) and not a model load
(~5 s), the model is loaded once per process and cached here.

Energies are *referenced*: ``E = E_CHGNet - sum_i reference[Z_i]``. The reference table (eV per
atom of each element) is fitted by ``make_data.py`` so that the labels sit on the energy zero of
the pretrained ``oc20_like`` model (trained on EMT energies, whose zero is ~4 eV/atom above
CHGNet's). Fine-tuning in ``ntkal run`` keeps the model's per-element reference energies ``e0``
frozen, so without this shift the first fine-tunes would spend the network on a constant offset.
Forces are CHGNet's, unchanged.

Needs the optional extra: ``pip install chgnet==0.4.2`` (with a CPU build of torch).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers

__all__ = ["make", "ReferencedCHGNet"]

_MODELS: dict = {}


def _model(name: str, threads: int):
    key = (name, threads)
    if key not in _MODELS:
        import torch
        from chgnet.model import CHGNet

        torch.set_num_threads(threads)  # one core per worker: workers x threads <= cores
        warnings.filterwarnings("ignore", module="chgnet")
        warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner per load
            _MODELS[key] = CHGNet.load(model_name=name, use_device="cpu", verbose=False)
    return _MODELS[key]


class ReferencedCHGNet(Calculator):
    """Energy (eV, minus per-element references) and forces (eV/Å) of CHGNet; no stress."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model, reference: dict[str, float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.reference = np.zeros(119)
        for symbol, value in (reference or {}).items():
            self.reference[atomic_numbers[symbol]] = float(value)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pymatgen.io.ase import AseAtomsAdaptor

        structure = AseAtomsAdaptor.get_structure(self.atoms)
        graph = self.model.graph_converter(structure)
        out = self.model.predict_graph(graph, task="ef")
        energy = float(out["e"]) * len(self.atoms)  # CHGNet predicts eV/atom
        energy -= float(self.reference[self.atoms.numbers].sum())
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": np.asarray(out["f"], dtype=float).reshape(len(self.atoms), 3)}


def make(model: str = "0.3.0", reference: dict[str, float] | None = None,
         threads: int = int(os.environ.get("NTKAL_ORACLE_THREADS", "1"))) -> ReferencedCHGNet:
    """A fresh calculator around this process's cached CHGNet ``model`` (bundled weights)."""
    return ReferencedCHGNet(_model(model, threads), reference)

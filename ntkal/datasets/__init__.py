"""Benchmark data for ntkal: real-format loaders, labelling oracles, generators.

Loaders (streaming iterators of labelled ``ase.Atoms``; energy eV, raw forces
``(n_atoms, 3)`` eV/Å, metadata in ``atoms.info``):
:func:`read_oc20_extxyz`, :func:`read_oc20_s2ef`, :func:`read_oc20_aselmdb`,
:func:`read_t1x`, :func:`read_rgd1` (energy-only), :func:`read_extxyz`,
:func:`read_ase_db`. Malformed input raises :class:`DatasetFormatError`.

Oracles: :class:`Oracle` (``label(atoms_list) -> list[Atoms]``),
:func:`emt_oracle`, :func:`xtb_oracle`, :func:`calculator_oracle`.

Generators: :func:`generate` / :func:`load_split` for ``"oc20_like"`` (EMT),
``"t1x_like"`` (GFN2-xTB; needs ``tblite`` and ``OMP_NUM_THREADS=1``) and
``"pmechdb_like"`` (GFN2-xTB paths of template reactions; also needs ``rdkit``).
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

# Submodules are imported on first use (``ntkal select`` needs one reader, not the generators).
_WHERE = {
    "DatasetFormatError": "ntkal.datasets._errors",
    "LabellingError": "ntkal.datasets._errors",
    "read_ase_db": "ntkal.datasets.generic",
    "read_extxyz": "ntkal.datasets.generic",
    "read_oc20_aselmdb": "ntkal.datasets.oc20",
    "read_oc20_extxyz": "ntkal.datasets.oc20",
    "read_oc20_s2ef": "ntkal.datasets.oc20",
    "OC20LikeConfig": "ntkal.datasets.oc20_like",
    "generate_oc20_like": "ntkal.datasets.oc20_like",
    "oc20_is_source": "ntkal.datasets.oc20_like:is_source",
    "PMechDBLikeConfig": "ntkal.datasets.pmechdb_like",
    "generate_pmechdb_like": "ntkal.datasets.pmechdb_like",
    "LabellingFailure": "ntkal.datasets.oracles",
    "LabelResult": "ntkal.datasets.oracles",
    "Oracle": "ntkal.datasets.oracles",
    "RetryStep": "ntkal.datasets.oracles",
    "XTB_LADDER": "ntkal.datasets.oracles",
    "calculator_oracle": "ntkal.datasets.oracles",
    "emt_oracle": "ntkal.datasets.oracles",
    "xtb_oracle": "ntkal.datasets.oracles",
    "GENERATORS": "ntkal.datasets.registry",
    "SIZES": "ntkal.datasets.registry",
    "dataset_dir": "ntkal.datasets.registry",
    "generate": "ntkal.datasets.registry",
    "load_split": "ntkal.datasets.registry",
    "splits_of": "ntkal.datasets.registry",
    "read_rgd1": "ntkal.datasets.rgd1",
    "T1X_ATOMIC_ENERGIES": "ntkal.datasets.t1x",
    "T1X_LEVEL_OF_THEORY": "ntkal.datasets.t1x",
    "read_t1x": "ntkal.datasets.t1x",
    "write_t1x": "ntkal.datasets.t1x",
    "T1xLikeConfig": "ntkal.datasets.t1x_like",
    "generate_t1x_like": "ntkal.datasets.t1x_like",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

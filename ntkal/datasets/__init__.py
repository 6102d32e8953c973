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

from ntkal.datasets._errors import DatasetFormatError, LabellingError
from ntkal.datasets.generic import read_ase_db, read_extxyz
from ntkal.datasets.oc20 import read_oc20_aselmdb, read_oc20_extxyz, read_oc20_s2ef
from ntkal.datasets.oc20_like import OC20LikeConfig, generate_oc20_like
from ntkal.datasets.oc20_like import is_source as oc20_is_source
from ntkal.datasets.pmechdb_like import PMechDBLikeConfig, generate_pmechdb_like
from ntkal.datasets.oracles import (LabellingFailure, LabelResult, Oracle, RetryStep,
                                    XTB_LADDER, calculator_oracle, emt_oracle, xtb_oracle)
from ntkal.datasets.registry import GENERATORS, SIZES, dataset_dir, generate, load_split, splits_of
from ntkal.datasets.rgd1 import read_rgd1
from ntkal.datasets.t1x import T1X_ATOMIC_ENERGIES, T1X_LEVEL_OF_THEORY, read_t1x, write_t1x
from ntkal.datasets.t1x_like import T1xLikeConfig, generate_t1x_like

__all__ = [
    "DatasetFormatError", "LabellingError",
    "read_extxyz", "read_ase_db", "read_oc20_extxyz", "read_oc20_s2ef", "read_oc20_aselmdb",
    "read_t1x", "write_t1x", "read_rgd1", "T1X_ATOMIC_ENERGIES", "T1X_LEVEL_OF_THEORY",
    "Oracle", "RetryStep", "LabellingFailure", "LabelResult", "XTB_LADDER",
    "calculator_oracle", "emt_oracle", "xtb_oracle",
    "OC20LikeConfig", "generate_oc20_like", "oc20_is_source",
    "T1xLikeConfig", "generate_t1x_like", "PMechDBLikeConfig", "generate_pmechdb_like",
    "generate", "load_split", "dataset_dir", "splits_of", "GENERATORS", "SIZES",
]

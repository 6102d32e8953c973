"""OC20-like stand-in generated with ASE's EMT, written in the real S2EF formats.

Systems are (metal, facet, adsorbate, site) slabs: fcc111/100/211 surfaces of
3x3 (211: 3x3 step cell) with 4 layers (36 metal atoms + adsorbate), 7 Å
vacuum on each side, periodic in all directions as in OC20. The bottom half of
the layers is fixed (tag 0, :class:`~ase.constraints.FixAtoms`), the top half
is tagged 1 and adsorbate atoms 2.

Per system the generator records (``info["kind"]``):

* ``relax`` - every BFGS step of the relaxation (fmax 0.05 eV/Å);
* ``rattle`` - Gaussian-rattled copies of the relaxed structure (free atoms);
* ``md`` - frames of a short Langevin run at 700 K (1 fs steps).

EMT molecules are poor (CO, NO, CN often dissociate): every frame carries
``dissociated``/``desorbed`` flags, and ``system_mapping.json`` the flags of the
relaxed structure. Reference energies follow OC20: relaxed clean slab +
per-element gas references from relaxed H2, H2O, CO, N2 (E_H = E(H2)/2,
E_O = E(H2O) − E(H2), E_C = E(CO) − E_O, E_N = E(N2)/2).

Splits (per system, never per frame): ``train`` and ``val_id`` (ID metals Cu
Ag Au Ni Pt x ID adsorbates H O C N CO N2 O2 and clean slabs), ``val_ood_ads``
(ID metals x NO, CN), ``val_ood_cat`` (Pd, Al x ID adsorbates / clean),
``val_ood_both`` (Pd, Al x NO, CN). The pretraining *source* subset is
:func:`is_source` (clean slabs and atomic adsorbates on ID metals), exposed as
the virtual split ``pretrain`` (source frames of ``train``).

Output (per split): ``s2ef/<split>/<k>.extxyz.xz`` + ``<k>.txt.xz`` (≤ 5000
frames each, OC20 header/columns) and ``aselmdb/<split>.aselmdb`` (needs
``ase-db-backends``; otherwise ``aselmdb/<split>.db``, plain ASE SQLite).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import lzma
import os
from collections.abc import Mapping

import ase.db
import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import fcc100, fcc111, fcc211, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.md.langevin import Langevin
try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _thermalize
from ase.optimize import BFGS

__all__ = ["OC20LikeConfig", "OC20_LIKE_SIZES", "generate_oc20_like", "is_source",
           "ID_METALS", "OOD_METALS", "ID_ADSORBATES", "OOD_ADSORBATES", "FACETS",
           "OC20_SPLITS", "gas_references"]

VERSION = 2
ID_METALS = ("Cu", "Ag", "Au", "Ni", "Pt")
OOD_METALS = ("Pd", "Al")
ID_ADSORBATES = ("H", "O", "C", "N", "CO", "N2", "O2")
OOD_ADSORBATES = ("NO", "CN")
ATOMIC_ADSORBATES = ("H", "O", "C", "N")
FACETS = ("fcc111", "fcc100", "fcc211")
OC20_SPLITS = ("train", "val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")
_SITES = {"fcc111": ("ontop", "fcc"), "fcc100": ("ontop", "hollow"), "fcc211": ("step", "terrace")}
_BUILD = {"fcc111": fcc111, "fcc100": fcc100, "fcc211": fcc211}


@dataclasses.dataclass(frozen=True)
class OC20LikeConfig:
    """Sizes of an OC20-like dataset.

    Attributes:
      n_systems: systems per split (split name -> count).
      relax_steps: max BFGS steps per relaxation (all recorded).
      n_rattle: rattled copies of each relaxed system.
      rattle_std: Gaussian rattle amplitude, Å.
      md_steps: Langevin steps (1 fs) per system; every ``md_every``-th is kept.
      md_every: MD recording interval, steps.
      md_temperature: K.
      frames_per_chunk: frames per ``<k>.extxyz.xz`` (5000 in OC20).
    """
    n_systems: Mapping[str, int]
    relax_steps: int = 30
    n_rattle: int = 4
    rattle_std: float = 0.08
    md_steps: int = 40
    md_every: int = 4
    md_temperature: float = 700.0
    frames_per_chunk: int = 5000


def _sizes(train, other, **kw) -> OC20LikeConfig:
    n = {"train": train, **{s: other for s in OC20_SPLITS[1:]}}
    return OC20LikeConfig(n_systems=n, **kw)


OC20_LIKE_SIZES: Mapping[str, OC20LikeConfig] = {
    "tiny": _sizes(6, 2, relax_steps=6, n_rattle=2, md_steps=8, md_every=4),
    "small": _sizes(40, 8),
    "default": _sizes(160, 24),
    "large": _sizes(900, 100, relax_steps=40, n_rattle=15, md_steps=125, md_every=5),
}


def is_source(atoms: Atoms) -> bool:
    """Pretraining source subset: clean slabs and atomic adsorbates on ID metals."""
    return (atoms.info.get("metal") in ID_METALS
            and atoms.info.get("adsorbate") in ("clean",) + ATOMIC_ADSORBATES)


def _adsorbate(name: str) -> Atoms:
    """Adsorbate with its binding atom (index 0) at the origin, axis along +z."""
    if name == "clean":
        return Atoms()
    if len(name) == 1:
        return Atoms(name, positions=[(0, 0, 0)])
    bond = {"CO": 1.15, "N2": 1.12, "O2": 1.24, "NO": 1.17, "CN": 1.18}[name]
    return Atoms(name, positions=[(0, 0, 0), (0, 0, bond)])


def _slab(metal: str, facet: str) -> Atoms:
    slab = _BUILD[facet](metal, size=(3, 3, 4), vacuum=7.0)
    slab.pbc = True
    z = slab.positions[:, 2]
    bottom = z < z.min() + 0.5 * (z.max() - z.min()) - 1e-6
    slab.set_tags(np.where(bottom, 0, 1))
    slab.set_constraint(FixAtoms(mask=bottom))
    slab.info.pop("adsorbate_info", None)
    return slab


def _place(slab: Atoms, facet: str, ads: str, site: str, rng: np.random.Generator) -> Atoms:
    atoms = slab.copy()
    mol = _adsorbate(ads)
    if len(mol) == 0:
        return atoms
    mol.set_tags(np.full(len(mol), 2))
    height = {"ontop": 1.9, "step": 1.9}.get(site, 1.4)
    z = atoms.positions[:, 2]
    if facet == "fcc211":
        # step: above the highest atom; terrace: above a random lower top-tag atom.
        top = np.argsort(-z)
        i = top[0] if site == "step" else rng.choice(top[1:4])
        xy = atoms.positions[i, :2]
        base = atoms.positions[i, 2]
    else:
        cell = atoms.cell
        frac = _BUILD[facet]("Cu", (1, 1, 1)).info["adsorbate_info"]["sites"][site]
        top_atom = int(np.argmax(z))
        xy = atoms.positions[top_atom, :2] + np.dot(frac, cell[:2, :2] / 3.0)
        base = z.max()
    xy = xy + rng.normal(0.0, 0.15, size=2)
    mol.positions += np.array([xy[0], xy[1], base + height])
    atoms += mol
    return atoms


def _flags(atoms: Atoms, n_slab: int, ads: str) -> tuple[bool, bool]:
    """(dissociated, desorbed) from minimum-image distances."""
    n = len(atoms)
    if n == n_slab:
        return False, False
    ads_idx = np.arange(n_slab, n)
    d_surf = atoms.get_distances(ads_idx[0], np.arange(n_slab), mic=True).min()
    dissociated = False
    if len(ads_idx) > 1:
        bond = np.linalg.norm(_adsorbate(ads).positions[1])
        dissociated = bool(atoms.get_distance(ads_idx[0], ads_idx[1], mic=True) > 1.5 * bond)
    desorbed = bool(d_surf > 3.0)
    return dissociated, desorbed


def gas_references() -> dict[str, float]:
    """Per-element EMT gas references (eV) from relaxed H2, H2O, CO, N2."""
    e = {}
    for name in ("H2", "H2O", "CO", "N2"):
        m = molecule(name)
        m.center(vacuum=6.0)
        m.calc = EMT()
        BFGS(m, logfile=None).run(fmax=0.01, steps=200)
        e[name] = float(m.get_potential_energy())
    ref = {"H": e["H2"] / 2, "O": e["H2O"] - e["H2"], "N": e["N2"] / 2}
    ref["C"] = e["CO"] - ref["O"]
    return ref


def _labelled(atoms: Atoms, calc=None) -> Atoms:
    """Copy of ``atoms`` with EMT energy (eV) and raw forces (eV/Å) attached."""
    out = atoms.copy()
    if calc is None:
        work = atoms.copy()
        work.calc = EMT()
        calc_atoms = work
    else:
        calc_atoms = atoms
    e = float(calc_atoms.get_potential_energy())
    f = np.array(calc_atoms.get_forces(apply_constraint=False))
    out.calc = SinglePointCalculator(out, energy=e, free_energy=e, forces=f)
    return out


class _SplitWriter:
    """Streams frames of one split to S2EF chunks and an ASE (lmdb) database."""

    def __init__(self, root: str, split: str, chunk: int, db_ext: str):
        self.root, self.split, self.chunk = root, split, chunk
        self.dir = os.path.join(root, "s2ef", split)
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(os.path.join(root, "aselmdb"), exist_ok=True)
        self.db_rel = os.path.join("aselmdb", f"{split}{db_ext}")
        self.db = ase.db.connect(os.path.join(root, self.db_rel), use_lock_file=False)
        self.n = 0
        self.chunks: list[list[str]] = []
        self._xyz = self._txt = None

    def _rotate(self):
        self.close_chunk()
        k = len(self.chunks)
        rel = [os.path.join("s2ef", self.split, f"{k}.extxyz.xz"),
               os.path.join("s2ef", self.split, f"{k}.txt.xz")]
        self._xyz = lzma.open(os.path.join(self.root, rel[0]), "wt")
        self._txt = lzma.open(os.path.join(self.root, rel[1]), "wt")
        self.chunks.append(rel)

    def write(self, atoms: Atoms, sid: int, fid: int, ref: float):
        if self.n % self.chunk == 0:
            self._rotate()
        ase.io.write(self._xyz, atoms, format="extxyz")
        self._txt.write(f"random{sid},frame{fid},{ref!r}\n")
        kvp = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))}
        self.db.write(atoms, key_value_pairs={**kvp, "sid": sid, "fid": fid, "ref_energy": ref})
        self.n += 1

    def close_chunk(self):
        for fh in (self._xyz, self._txt):
            if fh is not None:
                fh.close()
        self._xyz = self._txt = None

    def close(self):
        self.close_chunk()
        if hasattr(self.db, "close"):
            self.db.close()


def _systems(cfg: OC20LikeConfig, rng: np.random.Generator) -> list[dict]:
    """Draw systems per split; adsorbates/metals cycle through shuffled lists."""
    pools = {
        "train": (ID_METALS, ("clean",) + ID_ADSORBATES),
        "val_id": (ID_METALS, ("clean",) + ID_ADSORBATES),
        "val_ood_ads": (ID_METALS, OOD_ADSORBATES),
        "val_ood_cat": (OOD_METALS, ("clean",) + ID_ADSORBATES),
        "val_ood_both": (OOD_METALS, OOD_ADSORBATES),
    }
    out, sid = [], 0
    for split in OC20_SPLITS:
        metals, adsorbates = pools[split]
        m_seq = np.concatenate([rng.permutation(metals) for _ in range(cfg.n_systems[split] // len(metals) + 1)])
        a_seq = np.concatenate([rng.permutation(adsorbates) for _ in range(cfg.n_systems[split] // len(adsorbates) + 1)])
        for i in range(cfg.n_systems[split]):
            facet = str(rng.choice(FACETS))
            site = str(rng.choice(_SITES[facet]))
            out.append(dict(sid=sid, split=split, metal=str(m_seq[i]), facet=facet,
                            adsorbate=str(a_seq[i]), site=site))
            sid += 1
    return out


def _system_frames(sysd: dict, cfg: OC20LikeConfig, clean: Atoms, seed: int) -> tuple[list[Atoms], dict]:
    rng = np.random.default_rng([seed, sysd["sid"]])
    atoms = _place(clean, sysd["facet"], sysd["adsorbate"], sysd["site"], rng)
    n_slab = len(clean)
    frames: list[Atoms] = []

    def record(kind: str, a: Atoms, calc=None):
        fr = _labelled(a, calc)
        dis, des = _flags(fr, n_slab, sysd["adsorbate"])
        fr.info = {"metal": sysd["metal"], "facet": sysd["facet"], "adsorbate": sysd["adsorbate"],
                   "site": sysd["site"], "kind": kind, "dissociated": dis, "desorbed": des}
        frames.append(fr)

    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: record("relax", atoms, atoms.calc), interval=1)
    opt.run(fmax=0.05, steps=cfg.relax_steps)
    relaxed = atoms.copy()
    dis, des = _flags(relaxed, n_slab, sysd["adsorbate"])
    free = ~np.isin(np.arange(len(relaxed)), relaxed.constraints[0].index)
    for _ in range(cfg.n_rattle):
        r = relaxed.copy()
        r.positions[free] += rng.normal(0.0, cfg.rattle_std, size=(int(free.sum()), 3))
        record("rattle", r)
    md = relaxed.copy()
    md.calc = EMT()
    _thermalize(md, temperature_K=cfg.md_temperature, rng=rng)
    dyn = Langevin(md, timestep=1.0 * units.fs, temperature_K=cfg.md_temperature,
                   friction=0.02, fixcm=False, rng=rng, logfile=None)
    dyn.attach(lambda: record("md", md, md.calc), interval=cfg.md_every)
    dyn.run(cfg.md_steps)
    return frames, {**sysd, "dissociated": dis, "desorbed": des, "n_frames": len(frames)}


_CLEAN: dict[tuple[str, str], tuple[Atoms, float]] = {}


def _clean_slab(metal: str, facet: str) -> tuple[Atoms, float]:
    """Relaxed clean slab and its energy (eV); memoised per process (deterministic)."""
    key = (metal, facet)
    if key not in _CLEAN:
        c = _slab(metal, facet)
        c.calc = EMT()
        BFGS(c, logfile=None).run(fmax=0.02, steps=200)
        e = float(c.get_potential_energy())
        c.calc = None
        _CLEAN[key] = (c, e)
    return _CLEAN[key]


def _system_job(args) -> tuple[list[Atoms], dict, float]:
    sysd, cfg, seed = args
    clean, e_clean = _clean_slab(sysd["metal"], sysd["facet"])
    frames, meta = _system_frames(sysd, cfg, clean, seed)
    return frames, meta, e_clean


def generate_oc20_like(out_dir: str, cfg: OC20LikeConfig, seed: int, *, progress: bool = True,
                       workers: int = 1) -> dict:
    """Generate an OC20-like dataset into ``out_dir``; returns the manifest.

    Args:
      out_dir: output directory (created).
      cfg: sizes.
      seed: seeds the system draw; system ``sid`` uses ``default_rng([seed, sid])``.
      progress: tqdm bar.
      workers: processes (output is identical for any value).

    The manifest maps ``splits[split] = {"s2ef": [[extxyz, txt], ...],
    "aselmdb": path, "n_frames": int, "n_systems": int}`` (paths relative to
    ``out_dir``) plus ``gas_references`` and ``clean_slab_energies`` (eV).
    """
    from tqdm.auto import tqdm

    from ntkal.data.parallel import ordered_map

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    systems = _systems(cfg, rng)
    gas = gas_references()
    db_ext = ".aselmdb" if importlib.util.find_spec("ase_db_backends") else ".db"
    clean_energies: dict[str, float] = {}
    writers = {s: _SplitWriter(out_dir, s, cfg.frames_per_chunk, db_ext) for s in OC20_SPLITS}
    mapping = {}
    jobs = ordered_map(_system_job, ((s, cfg, seed) for s in systems), workers)
    try:
        for sysd, (frames, meta, e_clean) in tqdm(zip(systems, jobs), total=len(systems),
                                                  desc="oc20_like", disable=not progress):
            clean_energies[f"{sysd['metal']}-{sysd['facet']}"] = e_clean
            syms = _adsorbate(sysd["adsorbate"]).get_chemical_symbols()
            ref = e_clean + sum(gas[s] for s in syms)
            for fid, fr in enumerate(frames):
                writers[sysd["split"]].write(fr, sysd["sid"], fid, ref)
            mapping[f"random{sysd['sid']}"] = {**meta, "reference_energy": ref}
    finally:
        jobs.close()
        for w in writers.values():
            w.close()
    with open(os.path.join(out_dir, "system_mapping.json"), "w") as fh:
        json.dump(mapping, fh, indent=1)
    splits = {s: {"s2ef": w.chunks, "aselmdb": w.db_rel, "n_frames": w.n,
                  "n_systems": cfg.n_systems[s]} for s, w in writers.items()}
    return {"generator": "oc20_like", "version": VERSION, "seed": seed,
            "config": {**dataclasses.asdict(cfg), "n_systems": dict(cfg.n_systems)},
            "splits": splits, "system_mapping": "system_mapping.json",
            "gas_references": gas, "clean_slab_energies": dict(sorted(clean_energies.items())),
            "db_backend": "aselmdb" if db_ext == ".aselmdb" else "sqlite"}

"""Transition1x-like stand-in generated with GFN2-xTB, in the exact T1x HDF5 layout.

Reactions are elementary intramolecular H-transfers (1,2- and 1,3-shifts) of
small closed-shell C/H/N/O molecules from ASE's g2 set: an H bonded to donor
D is moved next to acceptor A, the product is relaxed with GFN2-xTB and kept
only if its bond graph (ASE natural cutoffs x 1.2) is exactly the intended
one; symmetry duplicates (same reactant, same product energy to 1 meV) are
skipped. Each reaction is an NEB of 8 moving images + 2 endpoints (IDPP
interpolation, improved tangent, ASE ``NEBOptimizer`` ODE, fmax 0.05 eV/Å);
every iteration is recorded and sub-sampled with the T1x rule: an iteration
is kept once the cumulative NEB residual (fmax, eV/Å) since the last kept one
reaches 0.1 (the first and last iterations are always kept; endpoints are
stored once). The ``transition_state`` is the highest-energy image of the
final path (no climbing image); reactions whose highest image is an endpoint
(no barrier, e.g. an unstable product) are rejected. Frames with a pair
closer than 0.6 Å, |F| > 30 eV/Å or E − E_reactant > 15 eV are dropped
(counted per reaction in the manifest).

Stored labels are fresh single points through :func:`~ntkal.datasets.xtb_oracle`
(its retry ladder applies), not the values of the calculators reused along
the NEB/MD (whose SCF restarts shift forces by ~1e-5 eV/Å).

Near-equilibrium frames (the pretraining *source*) are short Langevin runs
(300 K, 0.5 fs) from each relaxed reactant and product, written to a second
file ``near_equilibrium.h5`` in the same layout (groups ``/data/<formula>/
eq<NNNN>`` without reactant/TS/product subgroups) with the same split links.

Splits are by formula (``train``/``val``/``test`` SoftLinks to
``/data/<formula>``), assigned after generation among the formulas that
produced reactions, so every split is non-empty. Every rejected candidate is
listed with its reason in ``manifest["failures"]``. Level-of-theory prefix:
``"GFN2-xTB"``; energies eV, forces eV/Å. Requires ``tblite``; BLAS/OpenMP
pools are limited to one thread while generating (see :mod:`.oracles`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from ase.md.langevin import Langevin
try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _thermalize
from ase.mep.neb import NEB, NEBOptimizer
from ase.neighborlist import natural_cutoffs, neighbor_list
from ase.optimize import BFGS

from ntkal.datasets.t1x import write_t1x

__all__ = ["T1xLikeConfig", "T1X_LIKE_SIZES", "generate_t1x_like", "REACTANTS",
           "LEVEL_OF_THEORY", "T1X_SPLITS", "bond_graph", "h_transfer_candidates"]

VERSION = 2
LEVEL_OF_THEORY = "GFN2-xTB"
T1X_SPLITS = ("train", "val", "test")
# Closed-shell C/H/N/O molecules (ASE g2 names), smallest first.
REACTANTS = ("CH3OH", "H2CO", "H2O2", "H3CNH2", "N2H4", "HCOOH", "C2H4", "CH3CN", "H2CCO",
             "CH3CHO", "CH2OCH2", "C2H6", "OCHCHO", "CH3OCH3", "CH3CH2OH", "CH3NO2",
             "CH3ONO", "CH3CONH2", "HCOOCH3", "CH3COOH", "HCN", "CH3CH2NH2", "C2H6NH",
             "CH3COCH3", "H2CCHCN", "CH2NHCH2", "C3H6_Cs", "C3H4_C3v", "C3H4_D2d", "C4H4O",
             "C4H4NH", "butadiene", "cyclobutene")


@dataclasses.dataclass(frozen=True)
class T1xLikeConfig:
    """Sizes of a T1x-like dataset.

    Attributes:
      n_reactions: maximum number of reactions (fewer if candidates run out).
      n_reactants: how many of :data:`REACTANTS` (in order) to draw from.
      neb_steps: maximum NEB optimiser iterations.
      neb_fmax: NEB convergence, eV/Å.
      md_steps: Langevin steps (0.5 fs) per relaxed endpoint; every ``md_every``
        is kept as a near-equilibrium frame.
      md_every: recording interval, steps.
      md_temperature: K.
      n_val_formulas, n_test_formulas: formulas held out per split.
    all_hydrogens: try every H on a donor (not one per donor/acceptor pair);
      symmetry duplicates are then removed by product energy.
    """
    n_reactions: int
    n_reactants: int = len(REACTANTS)
    neb_steps: int = 150
    neb_fmax: float = 0.05
    md_steps: int = 40
    md_every: int = 4
    md_temperature: float = 300.0
    n_val_formulas: int = 2
    n_test_formulas: int = 2
    all_hydrogens: bool = False


T1X_LIKE_SIZES: Mapping[str, T1xLikeConfig] = {
    "tiny": T1xLikeConfig(n_reactions=3, n_reactants=5, neb_steps=25, md_steps=12,
                          n_val_formulas=1, n_test_formulas=1),
    "small": T1xLikeConfig(n_reactions=10, n_reactants=20, neb_steps=100, md_steps=100,
                           md_every=5),
    "default": T1xLikeConfig(n_reactions=24, n_reactants=len(REACTANTS), neb_steps=150,
                             md_steps=200, md_every=5, n_val_formulas=3, n_test_formulas=3,
                             all_hydrogens=True),
    "large": T1xLikeConfig(n_reactions=1000, n_reactants=len(REACTANTS), neb_steps=300,
                           md_steps=1000, md_every=5, n_val_formulas=4, n_test_formulas=4,
                           all_hydrogens=True),
}


def bond_graph(atoms: Atoms, mult: float = 1.2) -> frozenset[tuple[int, int]]:
    """Bonds ``(i, j)``, i < j, within ``mult`` x the sum of natural radii."""
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    return frozenset((int(a), int(b)) for a, b in zip(i, j) if a < b)


def h_transfer_candidates(atoms: Atoms, all_hydrogens: bool = False) -> list[tuple[int, int, int]]:
    """``(h, donor, acceptor)`` 1,2- and 1,3-H shifts between heavy atoms.

    One H per (donor, acceptor) pair unless ``all_hydrogens``.
    """
    bonds = bond_graph(atoms)
    nbr = {k: set() for k in range(len(atoms))}
    for a, b in bonds:
        nbr[a].add(b)
        nbr[b].add(a)
    z = atoms.numbers
    out = []
    for d in range(len(atoms)):
        if z[d] == 1:
            continue
        hs = sorted(h for h in nbr[d] if z[h] == 1)
        if not hs:
            continue
        heavy1 = {a for a in nbr[d] if z[a] != 1}
        heavy2 = {b for a in heavy1 for b in nbr[a] if z[b] != 1 and b != d}
        for acc in sorted(heavy1 | heavy2):
            for h in (hs if all_hydrogens else hs[:1]):
                out.append((h, d, acc))
    return out


def _product_guess(atoms: Atoms, h: int, acc: int) -> Atoms:
    p = atoms.copy()
    others = [k for k in range(len(p)) if k != h and np.linalg.norm(p.positions[k] - p.positions[acc]) < 1.8 and k != acc]
    v = p.positions[acc] - (p.positions[others].mean(0) if others else p.positions[h])
    if np.linalg.norm(v) < 1e-3:
        v = np.array([0.0, 0.0, 1.0])
    p.positions[h] = p.positions[acc] + 1.05 * v / np.linalg.norm(v)
    return p


def _relax(atoms: Atoms, make_calc, fmax: float = 0.03, steps: int = 300) -> Atoms:
    a = atoms.copy()
    a.calc = make_calc()
    BFGS(a, logfile=None).run(fmax=fmax, steps=steps)
    return a


def _ef(atoms: Atoms) -> tuple[float, np.ndarray]:
    return float(atoms.get_potential_energy()), np.array(atoms.get_forces())


def _ok(pos: np.ndarray, e: float, f: np.ndarray, e_ref: float) -> bool:
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    d[np.diag_indices(len(pos))] = np.inf
    return d.min() >= 0.6 and np.abs(f).max() <= 30.0 and e - e_ref <= 15.0


def _neb(react: Atoms, prod: Atoms, make_calc, cfg: T1xLikeConfig) -> dict:
    images = [react.copy()] + [react.copy() for _ in range(8)] + [prod.copy()]
    for im in images:
        im.calc = make_calc()
    neb = NEB(images, climb=False, method="improvedtangent")
    neb.interpolate("idpp")
    opt = NEBOptimizer(neb, method="ode", logfile=None)
    e_r, f_r = _ef(images[0])
    e_p, f_p = _ef(images[-1])
    kept: list[tuple[np.ndarray, float, np.ndarray]] = [(images[0].positions.copy(), e_r, f_r),
                                                         (images[-1].positions.copy(), e_p, f_p)]
    state = {"cum": 0.0, "it": 0, "pending": None, "n_seen": 0, "dropped": 0}

    def snapshot():
        return [(im.positions.copy(), *_ef(im)) for im in images[1:-1]]

    def keep(snap):
        for pos, e, f in snap:
            if _ok(pos, e, f, e_r):
                kept.append((pos, e, f))
            else:
                state["dropped"] += 1

    def observe():
        snap = snapshot()
        state["n_seen"] += 1
        state["cum"] += float(neb.get_residual())
        if state["it"] == 0 or state["cum"] >= 0.1:
            keep(snap)
            state["cum"] = 0.0
            state["pending"] = None
        else:
            state["pending"] = snap
        state["it"] += 1

    observe()  # iteration 0: the interpolated path
    opt.attach(observe)
    converged = bool(opt.run(fmax=cfg.neb_fmax, steps=cfg.neb_steps))
    if state["pending"] is not None:
        keep(state["pending"])
    energies = [_ef(im)[0] for im in images]
    i_ts = int(np.argmax(energies[1:-1])) + 1
    return {"frames": kept, "ts": (images[i_ts].positions.copy(), *_ef(images[i_ts])),
            "reactant": (images[0].positions.copy(), e_r, f_r),
            "product": (images[-1].positions.copy(), e_p, f_p),
            "converged": converged,
          "has_barrier": bool(energies[i_ts] > max(energies[0], energies[-1])), "iterations": state["n_seen"], "dropped": state["dropped"],
            "barrier": float(energies[i_ts] - e_r)}


def _md(atoms: Atoms, make_calc, cfg: T1xLikeConfig, rng) -> list[tuple[np.ndarray, float, np.ndarray]]:
    a = atoms.copy()
    a.calc = make_calc()
    _thermalize(a, temperature_K=cfg.md_temperature, rng=rng)
    dyn = Langevin(a, timestep=0.5 * units.fs, temperature_K=cfg.md_temperature, friction=0.02,
                   fixcm=False, rng=rng, logfile=None)
    out = []
    dyn.attach(lambda: out.append((a.positions.copy(), *_ef(a))), interval=cfg.md_every)
    dyn.run(cfg.md_steps)
    return out


def _fresh_labels(oracle, z: np.ndarray, triples: list, failures: list, where: dict) -> list:
    """Re-label ``(positions, E, F)`` triples with fresh oracle calls.

    Calculators reused along an NEB/MD start each SCF from the previous
    wavefunction, which changes forces at the 1e-5 eV/Å level; stored labels are
    instead fresh single points through the oracle's retry ladder (so they are
    reproducible). Frames no ladder step can label are left out and reported in
    ``failures``.
    """
    res = oracle.label_with_failures([Atoms(numbers=z, positions=pos) for pos, _, _ in triples])
    for fl in res.failures:
        failures.append({**where, "reason": f"labelling failed after {list(fl.attempts)}: {fl.error}"})
    return [(a.positions.copy(), a.get_potential_energy(), a.get_forces()) for a in res.atoms]


def _label_reaction(oracle, z: np.ndarray, path: dict, md_runs: list, where: dict) -> dict:
    """Fresh labels (:func:`_fresh_labels`) of a reaction's NEB frames, its reactant / TS /
    product and its MD runs. Returns ``{"ok": True, "z", "frames", "stationary", "md",
    "label_failures"}``, or ``{"ok": False, "failure", "label_failures"}`` when a stationary
    point or every path frame could not be labelled."""
    failures: list = []
    frames = _fresh_labels(oracle, z, path["frames"], failures, where)
    stationary = _fresh_labels(oracle, z, [path["reactant"], path["ts"], path["product"]],
                               failures, where)
    if len(stationary) < 3 or not frames:
        return {"ok": False, "failure": {**where, "reason": "stationary points could not be labelled"},
                "label_failures": failures}
    return {"ok": True, "z": z, "frames": frames, "stationary": stationary,
            "md": [_fresh_labels(oracle, z, md, failures, where) for md in md_runs],
            "label_failures": failures,
            "path": {k: path[k] for k in ("converged", "iterations", "dropped", "barrier")}}


def _stacked(triples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(positions, energies, forces)`` arrays of ``(positions, E, F)`` triples."""
    return tuple(np.stack(x) for x in zip(*triples))


def _reaction_group(res: dict, formula: str, rxn: str) -> dict:
    """The :func:`~ntkal.datasets.write_t1x` group of a labelled reaction (:func:`_label_reaction`)."""
    pos, e, f = _stacked(res["frames"])
    sub = {k: {"positions": st[0], "energy": st[1], "forces": st[2]}
           for k, st in zip(("reactant", "transition_state", "product"), res["stationary"])}
    return {"formula": formula, "rxn": rxn, "atomic_numbers": res["z"], "positions": pos,
            "energy": e, "forces": f, **sub}


def _md_group(formula: str, rxn: str, z: np.ndarray, md: list) -> dict:
    """The :func:`~ntkal.datasets.write_t1x` group of one labelled MD run."""
    pos, e, f = _stacked(md)
    return {"formula": formula, "rxn": rxn, "atomic_numbers": z, "positions": pos, "energy": e,
            "forces": f}


def _split_formulas(formulas: list[str], cfg: T1xLikeConfig, rng) -> dict[str, list[str]]:
    order = [formulas[i] for i in rng.permutation(len(formulas))]
    nv, nt = cfg.n_val_formulas, cfg.n_test_formulas
    if len(order) < nv + nt + 1:
        raise ValueError(f"need at least {nv + nt + 1} formulas, got {len(order)}")
    return {"val": sorted(order[:nv]), "test": sorted(order[nv:nv + nt]),
            "train": sorted(order[nv + nt:])}


_RELAXED: dict[str, Atoms] = {}


def _reaction_job(args) -> dict:
    """Run one candidate H-transfer end to end (in a worker or in-process).

    Returns ``{"ok": True, ...}`` with freshly labelled frames, or
    ``{"ok": False, "failure": {...}}``. Randomness: ``default_rng([seed, qi])``.
    """
    from ntkal.datasets.oracles import xtb_oracle

    qi, name, (h, d, acc), cfg, seed = args
    where = {"reactant": name, "h": h, "donor": d, "acceptor": acc}
    fail = lambda reason: {"ok": False, "failure": {**where, "reason": reason}}
    oracle = xtb_oracle()
    make_calc = oracle.make_calculator
    rng = np.random.default_rng([seed, qi])
    mol = molecule(name)
    try:
        if name not in _RELAXED:
            _RELAXED[name] = _relax(mol, make_calc)
        react = _RELAXED[name]
        if bond_graph(react) != bond_graph(mol):
            return fail("reactant changed connectivity on relaxation")
        want = set(bond_graph(react)) - {tuple(sorted((h, d)))} | {tuple(sorted((h, acc)))}
        prod = _relax(_product_guess(react, h, acc), make_calc)
        if bond_graph(prod) != frozenset(want):
            return fail("product connectivity differs from the intended H-transfer")
        e_prod = float(prod.get_potential_energy())
        react_c, prod_c = react.copy(), prod.copy()
        react_c.calc = prod_c.calc = None
        path = _neb(react_c, prod_c, make_calc, cfg)
        if not path["has_barrier"]:
            return fail("no barrier: highest image is an endpoint")
        md_r = _md(react_c, make_calc, cfg, rng)
        md_p = _md(prod_c, make_calc, cfg, rng)
    except CalculationFailed as err:
        return fail(f"SCF failure: {err}")
    res = _label_reaction(oracle, react.numbers, path, [md_r, md_p], where)
    return {**res, "e_prod": e_prod} if res["ok"] else res


def _candidate_queue(cfg: T1xLikeConfig, rng) -> list[tuple[str, tuple[int, int, int]]]:
    """Shuffled candidates, round-robin over formulas (so formulas are spread)."""
    mols = {n: molecule(n) for n in REACTANTS[: cfg.n_reactants]}
    formulas = sorted({m.get_chemical_formula(mode="hill") for m in mols.values()})
    by_formula: dict[str, list] = {f: [] for f in formulas}
    for n, m in mols.items():
        for cand in h_transfer_candidates(m, cfg.all_hydrogens):
            by_formula[m.get_chemical_formula(mode="hill")].append((n, cand))
    for f in formulas:
        by_formula[f] = [by_formula[f][i] for i in rng.permutation(len(by_formula[f]))]
    queue = []
    while any(by_formula.values()):
        for f in formulas:
            if by_formula[f]:
                queue.append(by_formula[f].pop())
    return queue


def generate_t1x_like(out_dir: str, cfg: T1xLikeConfig, seed: int, *, progress: bool = True,
                      workers: int = 1) -> dict:
    """Generate a T1x-like dataset into ``out_dir``; returns the manifest.

    Files: ``transition1x_like.h5`` (reaction paths + R/TS/P) and
    ``near_equilibrium.h5`` (MD around minima), both in the T1x layout with
    ``/train``, ``/val``, ``/test`` SoftLinks; ``level_of_theory`` is
    :data:`LEVEL_OF_THEORY`. Rejected candidates (SCF failure, wrong product,
    no barrier, symmetry duplicate) are listed in ``manifest["failures"]``.
    ``workers`` processes give identical output to one.
    """
    from tqdm.auto import tqdm

    from ntkal.data.parallel import ordered_map
    from ntkal.datasets.oracles import xtb_oracle

    xtb_oracle()  # fail early without tblite; warn about threads
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    queue = _candidate_queue(cfg, rng)
    jobs = ordered_map(_reaction_job, ((qi, n, c, cfg, seed) for qi, (n, c) in enumerate(queue)),
                       workers, preload=("tblite.ase",))
    reactions, eq_groups, failures, stats = [], [], [], []
    seen_products: set[tuple[str, float]] = set()
    bar = tqdm(total=cfg.n_reactions, desc="t1x_like", disable=not progress)
    try:
        for (name, (h, d, acc)), res in zip(queue, jobs):
            if len(reactions) >= cfg.n_reactions:
                break
            failures.extend(res.get("label_failures", []))
            if not res["ok"]:
                failures.append(res["failure"])
                continue
            key = (name, round(res["e_prod"], 3))
            if key in seen_products:  # symmetry-equivalent H-transfer
                failures.append({"reactant": name, "h": h, "donor": d, "acceptor": acc,
                                 "reason": "duplicate of an earlier reaction (same product energy)"})
                continue
            seen_products.add(key)
            formula = molecule(name).get_chemical_formula(mode="hill")
            rxn = f"rxn{len(reactions):04d}"
            reactions.append(_reaction_group(res, formula, rxn))
            for md in res["md"]:
                if md:
                    eq_groups.append(_md_group(formula, f"eq{len(eq_groups):04d}", res["z"], md))
            p = res["path"]
            stats.append({"rxn": rxn, "formula": formula, "reactant": name, "h": h, "donor": d,
                          "acceptor": acc, "n_path_frames": len(res["frames"]),
                          "neb_iterations": p["iterations"], "converged": p["converged"],
                          "dropped_frames": p["dropped"], "barrier_eV": p["barrier"]})
            bar.update(1)
    finally:
        jobs.close()
        bar.close()
    # Split by formula among the formulas that produced reactions.
    split_links = _split_formulas(sorted({r["formula"] for r in reactions}), cfg, rng)
    split_of = {f: s for s, fs in split_links.items() for f in fs}
    for st in stats:
        st["split"] = split_of[st["formula"]]
    write_t1x(os.path.join(out_dir, "transition1x_like.h5"), reactions, split_links,
              level_of_theory=LEVEL_OF_THEORY)
    write_t1x(os.path.join(out_dir, "near_equilibrium.h5"), eq_groups, split_links,
              level_of_theory=LEVEL_OF_THEORY)
    return {"generator": "t1x_like", "version": VERSION, "seed": seed,
            "config": dataclasses.asdict(cfg), "level_of_theory": LEVEL_OF_THEORY,
            "files": {"paths": "transition1x_like.h5", "near_equilibrium": "near_equilibrium.h5"},
            "splits": split_links, "reactions": stats, "failures": failures,
            "n_path_frames": int(sum(len(r["energy"]) for r in reactions)),
            "n_eq_frames": int(sum(len(g["energy"]) for g in eq_groups))}

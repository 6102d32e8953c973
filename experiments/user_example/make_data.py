"""Build the worked example's data: OC20-style slabs with molecular adsorbates, labelled by CHGNet.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        .venv/bin/python experiments/user_example/make_data.py

Writes ``experiments/user_example/data/``:

* ``pool.extxyz.xz`` — 300 unlabelled frames: 100 systems x 3 rattles; hosts Cu, Ag, Au, Ni, Pt
  and the random alloys Cu3Pt, AgAu, NiCu; fcc(111)/(100) 3x3x4 slabs (36 metal atoms, 7 Å
  vacuum each side, periodic); adsorbates CO, OH, H2O, NH3, CH3 on a random site;
* ``initial.extxyz.xz`` — 16 labelled frames (16 other systems of the same distribution);
* ``val_id.extxyz.xz`` — 60 labelled frames (20 other systems x 3, same distribution);
* ``val_ood.extxyz.xz`` — 60 labelled frames (20 systems x 3): Pd-containing hosts (Pd, PdAu,
  PdCu; Pd is in neither the pool nor the pretraining data) x adsorbates the pool lacks (NO,
  CH3OH, NH2);
* ``reference.json`` — per-element reference energies (eV) subtracted from CHGNet's energies so
  the labels share the pretrained ``oc20_like`` model's energy zero (see ``oracle.py``), fitted
  by least squares of E_CHGNet - E_pretrained over 30 calibration frames drawn from the ID and
  OOD distributions together (not used anywhere else); the ``[oracle] kwargs.reference`` of
  ``config.toml`` must be this table (checked here).

As in OC20, the bottom two metal layers are fixed (``FixAtoms``, tag 0), the top two are tag 1,
adsorbate atoms tag 2. Each frame rattles the free metal atoms (Gaussian, sigma 0.02-0.10 Å), shifts the adsorbate
rigidly by the same sigma and rattles its atoms by 0.02 Å (no adsorbate atom closer than 1.5 Å
to a metal atom). Labels
come from ``ntkal.labelling.label_structures`` with the oracle of ``config.toml`` minus its
reference table, in 2 spawned worker processes (``--workers``).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import ase.io
import numpy as np
from ase.build import add_adsorbate, fcc100, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states

HERE = Path(__file__).resolve().parent
ORACLE = "experiments.user_example.oracle:make"

#: host name -> {element: fraction}
ID_HOSTS = {"Cu": {"Cu": 1.0}, "Ag": {"Ag": 1.0}, "Au": {"Au": 1.0}, "Ni": {"Ni": 1.0}, "Pt": {"Pt": 1.0},
            "Cu3Pt": {"Cu": 0.75, "Pt": 0.25}, "AgAu": {"Ag": 0.5, "Au": 0.5}, "NiCu": {"Ni": 0.5, "Cu": 0.5}}
OOD_HOSTS = {"Pd": {"Pd": 1.0}, "PdAu": {"Pd": 0.5, "Au": 0.5}, "PdCu": {"Pd": 0.5, "Cu": 0.5}}
#: adsorbate -> binding element
ID_ADS = {"CO": "C", "OH": "O", "H2O": "O", "NH3": "N", "CH3": "C"}
OOD_ADS = {"NO": "N", "CH3OH": "O", "NH2": "N"}
SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
#: height range (Å) of the binding atom above the top layer, by site
HEIGHTS = {"ontop": (1.75, 2.05), "bridge": (1.35, 1.65), "fcc": (1.1, 1.4), "hcp": (1.1, 1.4),
           "hollow": (0.85, 1.15)}


def _adsorbate(name: str, binder: str, rng: np.random.Generator):
    """The molecule, binding atom first-found, oriented binder-down, randomly turned about z."""
    mol = molecule(name)
    b = mol.get_chemical_symbols().index(binder)
    others = [i for i in range(len(mol)) if i != b]
    if others:
        up = mol.positions[others].mean(axis=0) - mol.positions[b]
        if np.linalg.norm(up) > 1e-6:
            mol.rotate(up, "z", center=mol.positions[b])
    mol.rotate(rng.uniform(0, 360), "z", center=mol.positions[b])
    return mol, b


def build_system(host: str, ads: str, rng: np.random.Generator, sid: int, split: str):
    """One relaxed-free OC20-style system: slab (random alloy) + adsorbate on a random site."""
    comp = {**ID_HOSTS, **OOD_HOSTS}[host]
    elements, fractions = list(comp), np.array(list(comp.values()))
    a = float(sum(f * reference_states[atomic_numbers[e]]["a"] for e, f in comp.items()))  # Vegard
    facet = str(rng.choice(["111", "100"]))
    build = fcc111 if facet == "111" else fcc100
    slab = build(elements[0], size=(3, 3, 4), a=a, vacuum=7.0, periodic=True)
    if len(elements) > 1:  # random substitution at the nominal composition
        counts = np.round(fractions * len(slab)).astype(int)
        counts[0] = len(slab) - counts[1:].sum()
        symbols = np.repeat(elements, counts)
        slab.set_chemical_symbols(list(rng.permutation(symbols)))
    layer = slab.get_tags().copy()  # fcc111/fcc100: 1 = top layer ... 4 = bottom
    site = str(rng.choice(SITES[facet]))
    mol, b = _adsorbate(ads, {**ID_ADS, **OOD_ADS}[ads], rng)
    add_adsorbate(slab, mol, float(rng.uniform(*HEIGHTS[site])), position=site,
                  offset=(int(rng.integers(3)), int(rng.integers(3))), mol_index=b)
    tags = np.concatenate([np.where(layer <= 2, 1, 0), np.full(len(mol), 2)])
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(tags == 0)))
    slab.center(vacuum=7.0, axis=2)
    slab.info.clear()  # drops ASE's adsorbate_info (numpy scalars: ntkal's label store rejects them)
    # string values only: extxyz reads integers back as numpy.int64, which ntkal's label store
    # (ase.db) cannot write
    slab.info.update(host=host, facet=f"fcc{facet}", adsorbate=ads, site=site, system=f"{split}-{sid}",
                     split=split)
    return slab


def frames(hosts, adsorbates, n_systems, per_system, rng, split, first_sid=0):
    out = []
    for k in range(n_systems):
        base = build_system(str(rng.choice(list(hosts))), str(rng.choice(list(adsorbates))), rng,
                            first_sid + k, split)
        tags = base.get_tags()
        for _ in range(per_system):
            while True:  # resample rattles that push an adsorbate atom within 1.5 Å of the slab
                atoms = base.copy()
                sigma = rng.uniform(0.02, 0.10)
                atoms.positions[tags == 1] += rng.normal(0.0, sigma, size=(int((tags == 1).sum()), 3))
                # the adsorbate: rigid shift by sigma, bonds rattled by 0.02 Å
                atoms.positions[tags == 2] += (rng.normal(0.0, sigma, size=3)
                                              + rng.normal(0.0, 0.02, size=(int((tags == 2).sum()), 3)))
                distances = atoms.get_all_distances(mic=True)[np.ix_(tags == 2, tags < 2)]
                if distances.min() >= 1.5:
                    break
            atoms.info["rattle"] = round(float(sigma), 4)
            out.append(atoms)
    return out


def label(atoms_list, workers: int):
    """CHGNet labels (unreferenced) through ntkal's labelling, spawned process pool."""
    from ntkal.labelling import LabelStore, OracleConfig, label_structures

    config = OracleConfig(calculator=ORACLE, executor="process", workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = label_structures(atoms_list, config, LabelStore(Path(tmp) / "labels.db"), progress=True)
    if outcome.failures:
        raise RuntimeError(f"labelling failed: {outcome.failures}")
    return outcome.atoms


def pretrained_predictions(atoms_list):
    """Energies (eV) and forces (eV/Å) of the shipped oc20_like model."""
    from ntkal.calculator import NTKALCalculator
    from ntkal.models import load_pretrained

    model, params, _ = load_pretrained("oc20_like")
    calc = NTKALCalculator(model, params)
    energies, forces = [], []
    for atoms in atoms_list:
        work = atoms.copy()
        work.calc = calc
        energies.append(work.get_potential_energy())
        forces.append(work.get_forces(apply_constraint=False))
    return np.array(energies), forces


def counts_matrix(atoms_list, elements):
    return np.array([[np.sum(a.numbers == atomic_numbers[e]) for e in elements] for a in atoms_list], float)


def shifted(atoms, reference: dict):
    """A copy with energy = E - sum reference[Z] and the same forces (raw, unconstrained)."""
    out = atoms.copy()
    energy = atoms.get_potential_energy() - sum(reference[s] for s in atoms.get_chemical_symbols())
    out.calc = SinglePointCalculator(out, energy=energy, forces=atoms.get_forces(apply_constraint=False))
    return out


def write(path: Path, atoms_list):
    with lzma.open(path, "wt") as handle:
        ase.io.write(handle, atoms_list, format="extxyz")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "data"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    t0 = time.perf_counter()
    pool = frames(ID_HOSTS, ID_ADS, 100, 3, rng, "pool")
    initial = frames(ID_HOSTS, ID_ADS, 16, 1, rng, "initial", first_sid=1000)
    val_id = frames(ID_HOSTS, ID_ADS, 20, 3, rng, "val_id", first_sid=2000)
    val_ood = frames(OOD_HOSTS, OOD_ADS, 20, 3, rng, "val_ood", first_sid=3000)
    calib = frames({**ID_HOSTS, **OOD_HOSTS}, {**ID_ADS, **OOD_ADS}, 30, 1, rng, "calib", first_sid=4000)
    print(f"built {len(pool)} pool, {len(initial)} initial, {len(val_id)} val_id, {len(val_ood)} val_ood, "
          f"{len(calib)} calibration frames in {time.perf_counter() - t0:.1f} s", flush=True)

    t = time.perf_counter()
    labelled = label(initial + val_id + val_ood + calib, args.workers)
    n = len(labelled)
    print(f"labelled {n} frames with CHGNet in {time.perf_counter() - t:.1f} s "
          f"({n / (time.perf_counter() - t):.2f} frames/s, {args.workers} workers)", flush=True)
    l_initial, rest = labelled[:16], labelled[16:]
    l_val_id, l_val_ood, l_calib = rest[:60], rest[60:120], rest[120:]

    t = time.perf_counter()
    e_model, _ = pretrained_predictions(l_calib)
    e_chgnet = np.array([a.get_potential_energy() for a in l_calib])
    elements = sorted({s for a in l_calib for s in a.get_chemical_symbols()}, key=lambda s: atomic_numbers[s])
    matrix = counts_matrix(l_calib, elements)
    delta, *_ = np.linalg.lstsq(matrix, e_chgnet - e_model, rcond=None)
    reference = {e: round(float(d), 4) for e, d in zip(elements, delta)}
    resid = (e_chgnet - e_model - matrix @ np.array([reference[e] for e in elements])) / matrix.sum(axis=1)
    print(f"reference energies (eV) fitted on {len(l_calib)} calibration frames in "
          f"{time.perf_counter() - t:.1f} s; rank {np.linalg.matrix_rank(matrix)} of {len(elements)}; "
          f"residual |E_CHGNet - ref - E_pretrained| {np.abs(resid).mean() * 1000:.1f} meV/atom (mean)")
    print("  reference = {" + ", ".join(f"{e} = {v}" for e, v in reference.items()) + "}")
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")

    t = time.perf_counter()
    for name, items in (("initial", l_initial), ("val_id", l_val_id), ("val_ood", l_val_ood)):
        write(out / f"{name}.extxyz.xz", [shifted(a, reference) for a in items])
    write(out / "pool.extxyz.xz", pool)
    print(f"wrote {out} in {time.perf_counter() - t:.1f} s; total {time.perf_counter() - t0:.1f} s")

    config = HERE / "config.toml"
    if config.exists():
        table = tomllib.loads(config.read_text()).get("oracle", {}).get("kwargs", {}).get("reference")
        if table != reference:
            print(f"WARNING: {config} [oracle] kwargs.reference differs from {out / 'reference.json'}; "
                  "paste the table above into it", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # the repository root: the oracle's import path
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent.parent), os.environ.get("PYTHONPATH")]))
    main()

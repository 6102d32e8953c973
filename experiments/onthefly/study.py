"""Issue-12 study: uncertainty-triggered and uncertainty-biased MD vs random labelling.

For each system, each arm runs ``ntkal md`` (the same code path as the CLI) from the same start
structure and the same pretrained model, with the same oracle budget, for every seed:

* ``random``    — unbiased Langevin MD, ``max_labels`` frames labelled at random steps;
* ``variance``  — unbiased MD, a frame is labelled when its σ² crosses the threshold;
* ``biased-τ``  — MD on E − τσ² (two values of τ), same trigger.

Systems (the oracle labels every training frame and every test frame):

* ``co_cu``: CO on top of Cu(111) 3×3×3 (29 atoms, bottom layer fixed), EMT, model ``oc20_like``;
* ``acetamide``: CH3CONH2 in vacuum (9 atoms), GFN2-xTB (tblite), model ``t1x_like``.

Test sets are held out and never seen by any run: frames of independent oracle-driven Langevin
trajectories at a *higher* temperature than the runs (``test_temperature``), seeds 100+ (runs use
seeds 0, 1, 2). Reported per system × arm: test force MAE/RMSE and energy MAE per atom of the run's
final model (``model.msgpack``: fine-tuned on every label), labels used, restarts, wall time, and
the exploration of the run: the 5–95 % spread of a collective variable over the trajectory
(``co_cu``: the C–O distance and the height of C above the top Cu layer; ``acetamide``: the
largest change of any bonded distance, Å, from the start structure — bonds broken or stretched)
and the mean RMSD of the moving atoms from the start structure. Statistics: mean over seeds with
a 95 % bootstrap CI, and paired differences arm − random (same seed) with a CI.

Usage (resumable: finished runs are skipped, a killed run resumes)::

    python experiments/onthefly/study.py                 # both systems, 3 seeds
    python experiments/onthefly/study.py --systems co_cu --seeds 0 1 2
    python experiments/onthefly/study.py --report-only   # tables and plots from finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite: single-threaded is ~1000× faster here

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/summarize.py

from summarize import bootstrap_indices, mean_ci, paired_difference  # noqa: E402

OUT = HERE / "results"

#: Per system: the run settings. The σ² thresholds come from ``--pilot`` runs (seed 99, 400 steps,
#: no labels; σ² 10/50/90 % quantiles per 100 steps): co_cu 0.010 / 0.028 / 0.053–0.070, with 41
#: restarts (the pretrained model puts 21 eV/Å on the EMT minimum and the dynamics blow up within
#: ~10 steps); acetamide median 0.05, 0.11, 0.22, 0.37 as the molecule leaves the start
#: geometry, no restarts. A first attempt at co_cu threshold 0.04 (the pilot's 60–70th percentile)
#: spent 1 of 12 labels in 1000 steps: one labelled frame lowers σ² along the whole trajectory
#: below it (0.015 spent 4). ``--scan`` runs the variance arm at seed 99 for a few thresholds and
#: prints the labels used: co_cu 0.002 / 0.005 / 0.01 → 12 / 12 / 6 labels (0.005: the last at step
#: 299), acetamide 0.01 / 0.03 / 0.1 → 12 / 12 / 7 (0.03: the last at step 355). The thresholds
#: are the largest that spend the budget, so all arms use the same number of oracle calls:
#: co_cu 0.005, acetamide 0.03. τ is set so that τ·threshold = 0.2 eV
#: and 1 eV (a bias of a few kT at 800 K, kT = 0.069 eV, at the threshold).
SYSTEMS = {
    "co_cu": dict(model="oc20_like", oracle='calculator = "emt"\nexecutor = "serial"', temperature=800.0,
                  test_temperature=1200.0, steps=1000, max_labels=12, threshold=0.005, bias_ev=(0.2, 1.0)),
    "acetamide": dict(model="t1x_like", oracle='calculator = "xtb"\nexecutor = "serial"', temperature=800.0,
                      test_temperature=1500.0, steps=1000, max_labels=12, threshold=0.03, bias_ev=(0.2, 1.0)),
}

TEMPLATE = """name = "{name}"
out = "{out}"

[system]
start = "{start}"

[model]
checkpoint = "{model}"

[md]
steps = {steps}
timestep = 1.0
temperature = {temperature}
friction = 0.01
tau = {tau}
skin = 0.5
seed = {seed}
max_restarts = 100000
write_every = 5
checkpoint_every = 100

[uncertainty]
kernel = "energy"
sketch_dim = 256

[labelling]
trigger = "{trigger}"
threshold = {threshold}
max_labels = {max_labels}
min_interval = 20
finetune_every = 4

[train]
max_epochs = 40
learning_rate = 0.001
batch_size = 4

[oracle]
{oracle}
"""


def start_structure(system: str):
    """The start structure, relaxed with the oracle (BFGS, fmax 0.05 eV/Å): MD starts at a
    minimum of the reference, not at a guess with 100 eV/Å forces (EMT's C–O bond is 1.44 Å)."""
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    if system == "co_cu":
        atoms = fcc111("Cu", size=(3, 3, 3), vacuum=8.0)
        add_adsorbate(atoms, molecule("CO"), 1.85, "ontop")
        atoms.set_constraint(FixAtoms(indices=[a.index for a in atoms if a.tag == 3]))
        atoms.info = {}
    else:
        atoms = molecule("CH3CONH2")
        atoms.center(vacuum=6.0)
    atoms.calc = oracle_calculator(system)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=300)
    atoms.calc = None
    return atoms


def oracle_calculator(system: str):
    if system == "co_cu":
        from ase.calculators.emt import EMT
        return EMT()
    from tblite.ase import TBLite
    return TBLite(method="GFN2-xTB", verbosity=0)


def test_set(system: str, folder: Path, n_traj: int = 3, frames_per_traj: int = 60):
    """Held-out frames: oracle Langevin MD at the test temperature (equilibrate 200 fs, then a
    frame every 20 fs), seeds 100, 101, ...; cached in ``folder/test.extxyz``."""
    import ase.io
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    path = folder / "test.extxyz"
    if path.exists():
        return ase.io.read(path, ":")
    cfg = SYSTEMS[system]
    frames = []
    for k in range(n_traj):
        atoms = start_structure(system)
        atoms.calc = oracle_calculator(system)
        rng = np.random.default_rng(100 + k)
        MaxwellBoltzmannDistribution(atoms, temperature_K=cfg["test_temperature"], rng=rng)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=cfg["test_temperature"], friction=0.02,
                       fixcm=False, rng=rng)
        dyn.run(200)
        for _ in range(frames_per_traj):
            dyn.run(20)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                               forces=atoms.get_forces(apply_constraint=False))
            frames.append(frame)
    tmp = path.with_suffix(".tmp.extxyz")
    ase.io.write(tmp, frames)
    os.replace(tmp, path)
    return frames


def arms(system: str) -> dict:
    cfg = SYSTEMS[system]
    out = {"random": ("random", 0.0), "variance": ("variance", 0.0)}
    for bias in cfg["bias_ev"]:
        out[f"biased-{bias:g}eV"] = ("variance", bias / cfg["threshold"])
    return out


def run_one(system: str, arm: str, seed: int, folder: Path, log) -> Path:
    from ntkal.onthefly import load_md_spec, run_md

    cfg = SYSTEMS[system]
    trigger, tau = arms(system)[arm]
    out = folder / f"{arm}-seed{seed}"
    config = folder / "configs" / f"{arm}-seed{seed}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(TEMPLATE.format(name=f"{system}-{arm}-seed{seed}", out=f"../{out.name}",
                                      start="../start.extxyz", model=cfg["model"], steps=cfg["steps"],
                                      temperature=cfg["temperature"], tau=tau, seed=seed, trigger=trigger,
                                      threshold=cfg["threshold"], max_labels=cfg["max_labels"],
                                      oracle=cfg["oracle"]))
    if (out / "model.msgpack").exists():
        return out
    log(f"== {system} {arm} seed {seed}")
    result = run_md(load_md_spec(config), progress=False, log=lambda m: log(f"   {m}"))
    log(f"   {result.steps} steps, {result.labels} labels, {result.restarts} restarts, {result.wall_s:.0f} s")
    return out


def test_errors(model_path: str, frames) -> dict:
    from ntkal.data import atoms_to_structure
    from ntkal.models.pretrained import load_pretrained
    from ntkal.train import evaluate, make_batches, make_error_sums_fn

    model, params, _ = load_pretrained(model_path)
    structures = [atoms_to_structure(a, model.config.cutoff, elements=model.config.elements, require_labels=True)
                  for a in frames]
    return evaluate(make_error_sums_fn(model.energy), params, make_batches(structures, 16))


def exploration(system: str, run: Path, start) -> dict:
    import ase.io
    from ase.neighborlist import natural_cutoffs, neighbor_list

    frames = ase.io.read(run / "trajectory.extxyz", ":")
    pos = np.array([f.positions for f in frames])
    free = np.ones(len(start), bool)
    for c in start.constraints:
        free[c.index] = False
    disp = pos[:, free] - start.positions[free]
    if system != "co_cu":  # molecule: remove the centre-of-mass drift
        disp = disp - disp.mean(axis=1, keepdims=True)
    rmsd = np.sqrt(np.mean(np.sum(disp ** 2, axis=-1), axis=1))
    out = {"rmsd_mean": float(rmsd.mean()), "rmsd_p95": float(np.percentile(rmsd, 95))}
    if system == "co_cu":
        c, o = len(start) - 2, len(start) - 1
        co = np.linalg.norm(pos[:, c] - pos[:, o], axis=1)
        top = max(a.tag for a in start)  # fcc111 tags layers from the top: 1 = top
        top_layer = [a.index for a in start if a.tag == 1 and a.symbol == "Cu"]
        height = pos[:, c, 2] - pos[:, top_layer, 2].mean(axis=1)
        out.update(co_spread=float(np.percentile(co, 95) - np.percentile(co, 5)),
                   height_spread=float(np.percentile(height, 95) - np.percentile(height, 5)))
        del top
    else:
        i, j = neighbor_list("ij", start, natural_cutoffs(start, mult=1.1))
        keep = i < j
        d0 = np.linalg.norm(start.positions[i[keep]] - start.positions[j[keep]], axis=1)
        d = np.linalg.norm(pos[:, i[keep]] - pos[:, j[keep]], axis=-1)
        out.update(bond_change_p95=float(np.percentile(np.abs(d - d0).max(axis=1), 95)))
    return out


def pilot(system: str, log) -> None:
    """400 unbiased steps at seed 99 with no labels: the σ² scale the thresholds are set from."""
    import csv

    import ase.io
    from ntkal.onthefly import load_md_spec, run_md

    cfg = SYSTEMS[system]
    folder = OUT / "pilot" / system
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "start.extxyz", start_structure(system))
    (folder / "pilot.toml").write_text(TEMPLATE.format(
        name=f"{system}-pilot", out="run", start="start.extxyz", model=cfg["model"], steps=400,
        temperature=cfg["temperature"], tau=0.0, seed=99, trigger="variance", threshold=50.0, max_labels=0,
        oracle=cfg["oracle"]))
    result = run_md(load_md_spec(folder / "pilot.toml"), progress=False, resume=False)
    with open(folder / "run" / "log.csv") as f:
        v = np.array([float(r["variance"]) for r in csv.DictReader(f)])
    log(f"{system} pilot: {result.restarts} restarts; σ² 10/50/90 % quantiles per 100 steps: "
        + "; ".join(" / ".join(f"{q:.3f}" for q in np.quantile(v[i:i + 100], [0.1, 0.5, 0.9]))
                    for i in range(0, len(v), 100)))


def threshold_scan(system: str, thresholds, log) -> None:
    """The variance arm at seed 99 (not a study seed) for each threshold: labels used of the budget."""
    from ntkal.onthefly import load_md_spec, run_md

    import ase.io

    cfg = SYSTEMS[system]
    folder = OUT / "pilot" / system
    folder.mkdir(parents=True, exist_ok=True)
    start = OUT / system / "start.extxyz"
    if not start.exists():
        start.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(start, start_structure(system))
    for threshold in thresholds:
        (folder / f"scan-{threshold:g}.toml").write_text(TEMPLATE.format(
            name=f"{system}-scan", out=f"scan-{threshold:g}", start="../../" + system + "/start.extxyz",
            model=cfg["model"], steps=cfg["steps"], temperature=cfg["temperature"], tau=0.0, seed=99,
            trigger="variance", threshold=threshold, max_labels=cfg["max_labels"], oracle=cfg["oracle"]))
        r = run_md(load_md_spec(folder / f"scan-{threshold:g}.toml"), progress=False, resume=True)
        log(f"{system} threshold {threshold:g}: {r.labels} of {cfg['max_labels']} labels, {r.restarts} restarts")


def report(systems, seeds, log):
    import ase.io

    rows = []
    for system in systems:
        folder = OUT / system
        frames = ase.io.read(folder / "test.extxyz", ":")
        start = ase.io.read(folder / "start.extxyz")
        base = test_errors(SYSTEMS[system]["model"], frames)
        rows.append({"system": system, "arm": "pretrained", "seed": None, **{f"test_{k}": v for k, v in base.items()}})
        for arm in arms(system):
            for seed in seeds:
                run = folder / f"{arm}-seed{seed}"
                if not (run / "model.msgpack").exists():
                    continue
                summary = json.loads((run / "summary.json").read_text())
                errors = test_errors(str(run / "model.msgpack"), frames)
                rows.append({"system": system, "arm": arm, "seed": seed, "labels": summary["labels"],
                             "restarts": summary["restarts"], "finetunes": summary["finetunes"],
                             "wall_s": json.loads((run / "timing.json").read_text())["wall_s"]
                             if (run / "timing.json").exists() else None,
                             **{f"test_{k}": v for k, v in errors.items()}, **exploration(system, run, start)})
    (OUT / "rows.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# On-the-fly MD study (seeds {', '.join(map(str, seeds))})", ""]
    metrics = ["test_force_mae", "test_force_rmse", "test_energy_mae_per_atom"]
    for system in systems:
        sub = [r for r in rows if r["system"] == system]
        base = next(r for r in sub if r["arm"] == "pretrained")
        lines += [f"## {system}", "", f"pretrained model, no labels: force MAE {base['test_force_mae']:.4f} eV/Å, "
                  f"RMSE {base['test_force_rmse']:.4f}, energy MAE {1e3 * base['test_energy_mae_per_atom']:.1f} meV/atom", ""]
        cv = ["rmsd_mean", "rmsd_p95"] + (["co_spread", "height_spread"] if system == "co_cu" else ["bond_change_p95"])
        lines.append("| arm | seeds | labels | restarts | wall s | force MAE eV/Å [95 % CI] | Δ vs random [CI] | "
                     "force RMSE | E MAE meV/atom | " + " | ".join(cv) + " |")
        lines.append("|" + "---|" * (9 + len(cv)))
        ref = {r["seed"]: r for r in sub if r["arm"] == "random"}
        for arm in arms(system):
            runs = sorted((r for r in sub if r["arm"] == arm), key=lambda r: r["seed"])
            if not runs:
                continue
            idx = bootstrap_indices(len(runs), 2000, 0)
            mae = np.array([r["test_force_mae"] for r in runs])
            m, lo, hi = mean_ci(mae, idx)
            paired = [r for r in runs if r["seed"] in ref]
            if arm != "random" and len(paired) >= 2:
                d = paired_difference(np.array([r["test_force_mae"] for r in paired]),
                                      np.array([ref[r["seed"]]["test_force_mae"] for r in paired]),
                                      bootstrap_indices(len(paired), 2000, 0))
                delta = f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{' *' if d['significant'] else ''}"
            else:
                delta = "—"
            walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
            lines.append(f"| {arm} | {len(runs)} | {np.mean([r['labels'] for r in runs]):.1f} | "
                         f"{np.mean([r['restarts'] for r in runs]):.1f} | "
                         f"{np.mean(walls):.0f} | " if walls else f"| {arm} | {len(runs)} | "
                         f"{np.mean([r['labels'] for r in runs]):.1f} | {np.mean([r['restarts'] for r in runs]):.1f} | — | ")
            lines[-1] += (f"{m:.4f} [{lo:.4f}, {hi:.4f}] | {delta} | "
                          f"{np.mean([r['test_force_rmse'] for r in runs]):.4f} | "
                          f"{1e3 * np.mean([r['test_energy_mae_per_atom'] for r in runs]):.1f} | "
                          + " | ".join(f"{np.mean([r[k] for r in runs]):.3f}" for k in cv) + " |")
        lines.append("")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    plot(systems, seeds)


def plot(systems, seeds):
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(systems), 1, figsize=(8, 3.2 * len(systems)), squeeze=False)
    for ax, system in zip(axes[:, 0], systems):
        for k, arm in enumerate(arms(system)):
            run = OUT / system / f"{arm}-seed{seeds[0]}"
            if not (run / "log.csv").exists():
                continue
            with open(run / "log.csv") as f:
                rows = list(csv.DictReader(f))
            step = np.array([int(r["step"]) for r in rows])
            var = np.array([float(r["variance"]) for r in rows])
            lab = np.array([r["labelled"] == "1" for r in rows])
            ax.plot(step, var, lw=0.7, color=f"C{k}", label=arm)
            ax.scatter(step[lab], var[lab], color=f"C{k}", s=12)
        ax.axhline(SYSTEMS[system]["threshold"], color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{system}: σ² along the run (seed {seeds[0]}; dots = oracle calls)", fontsize=9)
        ax.set_xlabel("MD step (1 fs)")
        ax.set_ylabel("σ²")
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(OUT / "variance_traces.png", dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=None)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--pilot", action="store_true", help="only the threshold pilots (seed 99)")
    parser.add_argument("--scan", nargs="*", type=float, default=None,
                        help="only: the variance arm at seed 99 for these thresholds (labels used)")
    args = parser.parse_args(argv)
    from ntkal.cache import enable_compile_cache_or_warn

    enable_compile_cache_or_warn()
    OUT.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    if args.pilot:
        for system in args.systems:
            pilot(system, log)
        return
    if args.scan:
        for system in args.systems:
            threshold_scan(system, args.scan, log)
        return
    if not args.report_only:
        import ase.io

        for system in args.systems:
            folder = OUT / system
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "start.extxyz").exists():
                ase.io.write(folder / "start.extxyz", start_structure(system))
            test_set(system, folder)
            for seed in args.seeds:
                for arm in arms(system):
                    if args.arms and arm not in args.arms:
                        continue
                    t = time.perf_counter()
                    done = (folder / f"{arm}-seed{seed}" / "model.msgpack").exists()
                    run = run_one(system, arm, seed, folder, log)
                    if not done:
                        (run / "timing.json").write_text(json.dumps({"wall_s": time.perf_counter() - t,
                                                                     "load_avg": os.getloadavg()}))
    report(args.systems, args.seeds, log)


if __name__ == "__main__":
    main()

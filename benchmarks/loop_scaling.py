"""An active-learning loop on 1 vs P processes (``ntkal run --distributed``, issue 30).

Runs ``benchmarks/configs/loop_scaling.toml`` (or ``--config``) once per process count P, as
``python -m ntkal.launch -n P --cores-per-process C -- ntkal run CONFIG --distributed`` (P = 1
also through the launcher, pinned to C cores, so both sides get the same cores per process),
each into a fresh folder with the persistent compilation cache off (every run compiles the same
programs). From the run's ``results.json`` it prints, per P: the wall time of the whole command,
the loop's own time split into acquisition (``select s``: featurise, score, shortlist, select;
the part the processes share), labelling, fine-tuning and evaluation (summed over rounds ≥ 1;
round 0 is a random pick), the acquisition of rounds ≥ 2 alone (round 1 also compiles the
feature maps, which every process does for itself), the speed-up of the wall time and of the acquisition against P = 1,
and whether the picks equal P = 1's.

Usage::

    python benchmarks/loop_scaling.py --processes 1 2 --cores-per-process 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(config: Path, processes: int, cores: int, out: Path) -> float:
    command = [sys.executable, "-m", "ntkal.launch", "-n", str(processes), "--cores-per-process", str(cores), "--",
               sys.executable, "-m", "ntkal.cli", "run", str(config), "--out", str(out), "--quiet",
               "--no-compile-cache"]
    if processes > 1:
        command.append("--distributed")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"P = {processes} failed:\n{done.stderr[-3000:]}")
    return wall


def summary(out: Path) -> dict:
    data = json.loads((out / "results.json").read_text())
    rows = {row["round"]: row for row in data["rows"]}  # one split: one row per round
    later = [row for r, row in rows.items() if r >= 1]
    sums = {key: sum(row[key] for row in later) for key in ("select_s", "label_s", "finetune_s", "evaluate_s")}
    compiled = [row["select_s"] for r, row in rows.items() if r >= 2]  # round 1 compiles the feature maps
    picks = [(p["round"], p["id"]) for p in data["picks"]]
    return {**sums, "select_compiled_s": sum(compiled), "picks": picks, "force_mae": rows[max(rows)]["force_mae"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "configs" / "loop_scaling.toml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores-per-process", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = parser.parse_args()

    print(f"# {args.config.name}, cores per process {args.cores_per_process}, os.cpu_count() {os.cpu_count()}; "
          f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ntkal-loop-scaling-") as tmp:
        for p in args.processes:
            out = Path(tmp) / f"p{p}"
            wall = run_once(args.config, p, args.cores_per_process, out)
            results[p] = {"wall_s": wall, **summary(out)}
            print(f"# P = {p}: {wall:.1f} s", flush=True)
    base = results[args.processes[0]]
    print("\n| processes | wall s | select s | of which rounds ≥ 2 | label s | fine-tune s | evaluate s "
          "| speed-up (wall) | speed-up (select) | speed-up (select, rounds ≥ 2) | same picks | final force MAE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p, r in results.items():
        print(f"| {p} | {r['wall_s']:.1f} | {r['select_s']:.1f} | {r['select_compiled_s']:.1f} | {r['label_s']:.1f} "
              f"| {r['finetune_s']:.1f} | {r['evaluate_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}x "
              f"| {base['select_s'] / r['select_s']:.2f}x | {base['select_compiled_s'] / r['select_compiled_s']:.2f}x "
              f"| {'yes' if r['picks'] == base['picks'] else 'NO'} | {r['force_mae']:.4f} |")
    print(f"\n# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({str(p): {k: v for k, v in r.items() if k != "picks"}
                                         for p, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()

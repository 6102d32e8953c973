"""What an AL round's fine-tune and evaluation on SevenNet-0 cost on OC20-like slabs against
PMechDB-like molecules.

Runs ``benchmarks/configs/sevennet_round_pmechdb.toml`` and its twin
``sevennet_round_oc20.toml`` (the same model, loop and fine-tune settings: the PMechDB-like
study's fine-tune; round 0 only: a fine-tune on 16 labels and the evaluation of a 150-frame
test split; only the data differ) one after the other, each as ``ntkal run CONFIG --out DIR
--quiet --no-compile-cache`` into a fresh folder, and prints from their ``results.json`` per
data set: the mean number of atoms whose forces are scored per test structure (a slab's fixed
bottom layers are not) and the seconds of selection (a random pick here),
fine-tuning and evaluating, then the ratio OC20-like / PMechDB-like of each column and of the
whole command. Both runs compile their own programs, so the seconds include the compilations.
Issue 28 sizes its OC20-like study from this.

Usage::

    python benchmarks/sevennet_round_cost.py [--json FILE]
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
CONFIGS = {"pmechdb_like": ROOT / "benchmarks/configs/sevennet_round_pmechdb.toml",
           "oc20_like": ROOT / "benchmarks/configs/sevennet_round_oc20.toml"}
COLUMNS = ("select_s", "finetune_s", "evaluate_s")


def run_once(config: Path, out: Path) -> float:
    """Wall seconds of ``ntkal run config`` into ``out`` (fails loudly on a nonzero exit)."""
    command = [sys.executable, "-m", "ntkal.cli", "run", str(config), "--out", str(out), "--quiet",
               "--no-compile-cache"]
    t = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - t


def round_costs(results: Path) -> dict:
    """Per round: labels, seconds of each of :data:`COLUMNS`, and atoms per test structure."""
    rows = json.loads(results.read_text())["rows"]
    rounds = {}
    for row in rows:
        rounds[row["round"]] = {"n_labels": row["n_labels"], **{c: row[c] for c in COLUMNS},
                                "atoms": row["n_force_components"] / 3 / row["n_structures"],
                                "test_structures": row["n_structures"]}
    return dict(sorted(rounds.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args(argv)
    load = [os.getloadavg()]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="sevennet_round_cost-") as tmp:
        for name, config in CONFIGS.items():
            out = Path(tmp) / name
            wall = run_once(config, out)
            measured[name] = {"wall_s": wall, "rounds": round_costs(out / "results.json")}
            load.append(os.getloadavg())
    print(f"load average (1, 5, 15 min) before and after each run: {load}")
    print("| data | force-scored atoms per test structure | round | labels | select s | fine-tune s | evaluate s "
          "(150 frames) | whole command s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in measured.items():
        for r, c in m["rounds"].items():
            print(f"| {name} | {c['atoms']:.1f} | {r} | {c['n_labels']} | {c['select_s']:.1f} | "
                  f"{c['finetune_s']:.1f} | {c['evaluate_s']:.1f} | {m['wall_s']:.0f} |")
    a, b = measured["oc20_like"], measured["pmechdb_like"]
    for r in a["rounds"]:
        ratios = ", ".join(f"{c} {a['rounds'][r][c] / max(b['rounds'][r][c], 1e-9):.1f}x" for c in COLUMNS)
        print(f"OC20-like / PMechDB-like, round {r}: {ratios}")
    print(f"OC20-like / PMechDB-like, whole command: {a['wall_s'] / b['wall_s']:.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"load": load, "runs": measured}, indent=1))


if __name__ == "__main__":
    main()

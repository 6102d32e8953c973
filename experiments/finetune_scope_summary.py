"""SevenNet-0 fine-tuning scope (issue 28, item 2): one results file from the four scope runs.

Every scope ran as its own config (``experiments/configs/sevennet_finetune_<scope>.toml``: the
same 48 random labels per seed, round 0 only), so each run's rows are labelled ``random``. This
relabels them by scope and writes one ``results.json`` that ``ntkal summarize`` reads:

    python experiments/finetune_scope_summary.py
    ntkal summarize experiments/results/sevennet_finetune_scope/results.json \\
        --pair last_block:all --pair readout:all --pair e0_only:all --pair readout:last_block
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results" / "sevennet_finetune_scope"
SCOPES = ("all", "last_block", "readout", "e0_only")


def main() -> int:
    rows = []
    for scope in SCOPES:
        path = ROOT / scope / "results.json"
        if not path.is_file():
            print(f"{path}: missing (run ntkal run experiments/configs/sevennet_finetune_{scope}.toml)",
                  file=sys.stderr)
            return 2
        for row in json.loads(path.read_text())["rows"]:
            rows.append({**row, "label": scope, "method": scope})
    out = ROOT / "results.json"
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"{len(rows)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

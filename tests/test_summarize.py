"""ntkal.summarize (``ntkal summarize``, ``experiments/summarize.py``): labels-to-reach, paired
bootstrap, monotonicity, JSON output."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ntkal.summarize as summarize
from ntkal.cli.run import print_seed_statistics
from ntkal.cli import main as ntkal_main

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "summarize.py"

X = np.arange(10.0, 101.0, 10.0)     # labels after rounds 0..9


def f(n):
    """A smooth decreasing learning curve (eV/Å)."""
    return 0.05 + 2.0 / np.sqrt(n)


def make_rows(methods, n_seeds=8, splits=("test",), seed=0):
    """Rows from {label: fn(seed_index, rng) -> (n_rounds,) force MAE}; timings included."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, fn in methods.items():
        for s in range(n_seeds):
            for split in splits:
                y = fn(s, rng)
                for r, (n, v) in enumerate(zip(X, y)):
                    rows.append({"label": label, "method": label.split("-")[0], "seed": s, "round": r,
                                 "n_labels": int(n), "split": split, "force_mae": float(v),
                                 "force_rmse": 2.0 * float(v), "select_s": 1.0, "finetune_s": 2.0,
                                 "evaluate_s": 0.5})
    return rows


def by(items, **keys):
    found = [it for it in items if all(it[k] == v for k, v in keys.items())]
    assert len(found) == 1, (keys, found)
    return found[0]


def test_labels_to_reach_interpolates_and_censors():
    x, y = [10, 20, 40], [1.0, 0.6, 0.2]
    assert summarize.labels_to_reach(x, y, 0.4) == pytest.approx(30.0)    # halfway 20 → 40
    assert summarize.labels_to_reach(x, y, 0.9) == pytest.approx(12.5)    # quarter of 10 → 20
    assert summarize.labels_to_reach(x, y, 0.6) == 20.0                   # exactly on a point
    assert summarize.labels_to_reach(x, y, 2.0) == 10.0                   # reached at the start
    assert summarize.labels_to_reach(x, y, 0.1) == math.inf               # never: censored
    # First crossing wins on a non-monotone curve; batched targets/curves broadcast.
    assert summarize.labels_to_reach([1, 2, 3, 4], [1.0, 0.0, 1.0, 0.0], 0.5) == pytest.approx(1.5)
    got = summarize.labels_to_reach(x, np.array([y, [1.0, 1.0, 1.0]]), np.array([0.4, 0.4]))
    np.testing.assert_allclose(got, [30.0, np.inf])
    assert summarize.savings_of(np.inf, 100.0) == -math.inf
    with pytest.raises(ValueError, match="increasing"):
        summarize.labels_to_reach([10, 10, 20], y, 0.5)


def test_censored_percentile_matches_numpy_and_handles_minus_inf():
    v = np.random.default_rng(0).normal(size=101)
    for q in (2.5, 50, 97.5):
        assert summarize.censored_percentile(v, q) == pytest.approx(np.percentile(v, q))
    w = np.concatenate([np.full(10, -np.inf), np.linspace(0, 1, 90)])
    assert summarize.censored_percentile(w, 2.5) == -math.inf
    h = 0.975 * 99                                                      # numpy's linear rule
    expected = w[int(h)] + (h - int(h)) * (w[int(h) + 1] - w[int(h)])
    assert summarize.censored_percentile(w, 97.5) == pytest.approx(expected)


def test_half_the_labels_gives_fifty_percent_savings():
    rows = make_rows({
        "random": lambda s, rng: f(X) * (1 + 0.01 * rng.normal(size=X.size)),
        "fast": lambda s, rng: f(2 * X) * (1 + 0.01 * rng.normal(size=X.size)),   # random at 2n
    })
    out = summarize.summarize(rows, n_boot=500, seed=1)
    fast = by(out["labels_to_reach"], label="fast", split="test")
    assert fast["savings"] == pytest.approx(0.5, abs=0.05)
    assert fast["lo"] <= 0.5 <= fast["hi"] and fast["hi"] - fast["lo"] < 0.2
    assert fast["frac_censored"] == 0.0 and fast["labels_reference"] == 100.0
    assert by(out["paired"], a="fast", b="random", metric="force_mae")["significant"]
    assert out["monotonicity"] == {"test": []}


def test_identical_methods_give_zero_savings_and_zero_differences():
    curve = {s: f(X) + 0.05 * s for s in range(6)}       # strictly decreasing per seed
    rows = make_rows({"random": lambda s, rng: curve[s], "energy-copy": lambda s, rng: curve[s],
                      "joint-copy": lambda s, rng: curve[s]}, n_seeds=6)
    out = summarize.summarize(rows, n_boot=300)
    for label in ("random", "energy-copy", "joint-copy"):
        r = by(out["labels_to_reach"], label=label, split="test")
        assert r["savings"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0 and r["labels"] == 100.0
    pairs = {(p["a"], p["b"]) for p in out["paired"]}
    assert pairs == {("energy-copy", "random"), ("joint-copy", "random"), ("joint-copy", "energy-copy")}
    for p in out["paired"]:
        assert (p["mean"], p["lo"], p["hi"], p["n_a_less"], p["significant"]) == (0.0, 0.0, 0.0, 0, False)
        assert p["metric"] in ("force_mae", "force_rmse") and p["round"] == 9
    assert summarize.default_pairs(["random", "joint-a", "energy-b", "committee-n5", "x"]) == [
        ("joint-a", "energy-b"), ("joint-a", "committee-n5")]


def test_bootstrap_is_reproducible_for_a_fixed_seed():
    rows = make_rows({"random": lambda s, rng: f(X) + 0.05 * rng.normal(),
                      "b": lambda s, rng: f(1.5 * X) + 0.05 * rng.normal()}, n_seeds=5)
    a = summarize.summarize(rows, n_boot=200, seed=7)
    assert summarize.dumps(a) == summarize.dumps(summarize.summarize(rows, n_boot=200, seed=7))
    assert summarize.dumps(a) != summarize.dumps(summarize.summarize(rows, n_boot=200, seed=8))
    np.testing.assert_array_equal(summarize.bootstrap_indices(5, 10, 3), summarize.bootstrap_indices(5, 10, 3))


def test_pairing_is_preserved_under_large_between_seed_noise():
    offsets = np.random.default_rng(3).normal(0.0, 1.0, size=10)       # large seed-to-seed noise
    rows = make_rows({"random": lambda s, rng: f(X) + offsets[s],
                      "worse": lambda s, rng: f(X) + offsets[s] + 0.01 + 1e-4 * rng.normal(size=X.size)},
                     n_seeds=10)
    out = summarize.summarize(rows, n_boot=1000, seed=0)
    p = by(out["paired"], a="worse", b="random", metric="force_mae")
    assert p["lo"] < 0.01 < p["hi"] and p["hi"] - p["lo"] < 1e-3 and p["significant"]
    assert p["n_a_less"] == 0
    final = by(out["final"], label="random", split="test", metric="force_mae")
    assert final["hi"] - final["lo"] > 0.5                              # unpaired CI is wide


def test_monotonicity_flags_a_rise_beyond_noise():
    bump = np.where(np.arange(X.size) == 5, 0.5, 0.0)
    rows = make_rows({"random": lambda s, rng: f(X) + bump + 0.001 * rng.normal(size=X.size)},
                     splits=("a",), n_seeds=4)
    bad = summarize.summarize(rows, n_boot=200)["monotonicity"]["a"]
    assert [(b["from_round"], b["to_round"]) for b in bad] == [(4, 5)]


def test_cli_markdown_and_strict_json(tmp_path, capsys):
    rows = make_rows({
        "random": lambda s, rng: f(X) + 0.02 * rng.normal(),
        "committee-n5": lambda s, rng: f(X) + 0.3,                        # never reaches: censored
        "joint-x": lambda s, rng: f(2 * X) + 0.02 * rng.normal(),
    }, n_seeds=4, splits=("id", "ood"))
    for row in rows:                                                      # a NaN metric, too
        row["force_mae_max"] = float("nan") if row["label"] == "committee-n5" else 0.5
    results, out_json = tmp_path / "results.json", tmp_path / "summary.json"
    results.write_text(json.dumps({"rows": rows}))
    ntkal_main(["summarize", str(results), "--n-boot", "100", "--seed", "2", "--all-rounds",
                    "--pair", "joint-x:committee-n5", "--json", str(out_json)])
    text = capsys.readouterr().out
    for heading in ("### Final force_mae", "### Labels to reach", "### Paired differences",
                    "### Monotonicity", "### Mean wall time"):
        assert heading in text
    assert "censored (> 100 labels)" in text and "[censored]" in text

    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(out_json.read_text(), parse_constant=no_constants)
    cens = by(data["labels_to_reach"], label="committee-n5", split="ood")
    assert cens["labels"] is None and cens["savings"] is None and cens["frac_censored"] == 1.0
    assert len([p for p in data["paired"] if p["metric"] == "force_mae"]) == 3 * 2 * X.size
    nan_pair = by(data["paired"], a="joint-x", b="committee-n5", metric="force_mae_max", split="id", round=9)
    assert nan_pair["mean"] is None
    assert data["wall_times"]["random"] == {"select_s": 1.0, "finetune_s": 2.0, "evaluate_s": 0.5}
    with pytest.raises(SystemExit):
        ntkal_main(["summarize", str(results), "--pair", "nocolon"])


def test_methods_keeps_the_arms_run_on_extra_seeds(tmp_path, capsys):
    """Two results files, the second with extra seeds for two of three methods: without
    ``--methods`` the extra seeds are dropped (not run by every method); with it they count."""
    first = make_rows({"random": lambda s, rng: f(X), "joint-x": lambda s, rng: f(2 * X),
                       "energy-y": lambda s, rng: f(X) + 0.01}, n_seeds=3)
    extra = [dict(r, seed=r["seed"] + 3) for r in make_rows({"random": lambda s, rng: f(X),
                                                              "joint-x": lambda s, rng: f(2 * X)}, n_seeds=3)]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, rows in zip(paths, (first, extra)):
        path.write_text(json.dumps({"rows": rows}))
    ntkal_main(["summarize"] + [str(p) for p in paths] + ["--n-boot", "50"])
    assert capsys.readouterr().out.startswith("Seeds: 3 (0, 1, 2)")
    out_json = tmp_path / "s.json"
    ntkal_main(["summarize"] + [str(p) for p in paths] + ["--n-boot", "50", "--methods", "random", "joint-x",
                                              "--json", str(out_json)])
    assert capsys.readouterr().out.startswith("Seeds: 6 (0, 1, 2, 3, 4, 5)")
    assert {row["label"] for row in json.loads(out_json.read_text())["final"]} == {"random", "joint-x"}
    assert ntkal_main(["summarize", str(paths[0]), "--methods", "random", "committee"]) == 2
    assert "no rows for ['committee']" in capsys.readouterr().err


def test_the_command_the_script_and_the_end_of_a_sweep_print_the_same_tables(tmp_path, capsys):
    """``ntkal summarize``, ``experiments/summarize.py`` and the table ``ntkal run`` prints after a
    sweep of several seeds are one function's output; a single seed gets no statistics."""
    rows = make_rows({"random": lambda s, rng: f(X) + 0.01 * rng.normal(),
                      "joint-x": lambda s, rng: f(2 * X) + 0.01 * rng.normal()}, n_seeds=4)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": rows}))
    expected = summarize.to_markdown(summarize.summarize(rows))
    assert ntkal_main(["summarize", str(results)]) == 0
    assert capsys.readouterr().out == expected
    script = subprocess.run([sys.executable, str(SCRIPT), str(results)], capture_output=True, text=True,
                            timeout=120)
    assert script.returncode == 0, script.stderr
    assert script.stdout == expected
    print_seed_statistics(results)
    assert capsys.readouterr().out.endswith(expected)
    results.write_text(json.dumps({"rows": [r for r in rows if r["seed"] == 0]}))
    print_seed_statistics(results)
    assert capsys.readouterr().out == ""


def test_unreadable_results_are_one_line_errors_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not json\n")
    assert ntkal_main(["summarize", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not JSON (line 1" in err
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    assert ntkal_main(["summarize", str(other)]) == 2
    assert "no 'rows' list" in capsys.readouterr().err


def test_savings_against_random_at_two_thirds_of_the_budget():
    """Random stops improving at 60 labels; a method as good as random with 2·n labels reaches
    random's error at the round nearest 2/3 of 100 labels (70) with 30 labels: 1 − 30/70 saved, and
    the table names that round. Against random's final error the saving is 1 − 30/100."""
    flat = lambda n: f(np.minimum(n, 60.0))  # noqa: E731  (random stops improving at 60 labels)
    rows = make_rows({
        "random": lambda s, rng: flat(X) * (1 + 0.002 * rng.normal(size=X.size)),
        "fast": lambda s, rng: flat(2 * X) * (1 + 0.002 * rng.normal(size=X.size)),
    })
    out = summarize.summarize(rows, n_boot=300, seed=1, reach_at=(2 / 3,))
    at = by(out["labels_to_reach_at"][2 / 3], label="fast", split="test")
    assert at["labels_reference"] == 70.0 and at["target"] == pytest.approx(f(60.0), rel=0.01)
    assert at["savings"] == pytest.approx(1 - 30 / 70, abs=0.03)
    final = by(out["labels_to_reach"], label="fast", split="test")
    assert final["savings"] == pytest.approx(1 - 30 / 100, abs=0.03)
    text = summarize.to_markdown(out)
    assert "Labels to reach random's 0.667-of-the-budget seed-mean force_mae (70 labels)" in text

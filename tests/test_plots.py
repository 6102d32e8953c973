"""Learning-curve and calibration plots from a results JSON (synthetic data, no model)."""

import argparse
import json
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from ntkal.cli.plot import add_plot_arguments
from ntkal.plots import (aggregate_curves, calibration_stats, main_plot,
                         plot_calibration, plot_learning_curves, plot_results)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(seed=0):
    rng = np.random.default_rng(seed)
    rows, picks = [], []
    for method in ("random", "energy", "joint"):
        for s in range(3):
            for r, n in enumerate((10, 20, 30)):
                for split in ("id", "ood_a", "ood_b"):
                    rows.append({"method": method, "seed": s, "round": r, "n_labels": n, "split": split,
                                 "force_mae": float(0.3 / np.sqrt(n) + 0.02 * rng.random()),
                                 "force_rmse": float(0.4 / np.sqrt(n) + 0.02 * rng.random()),
                                 "energy_mae_per_atom": float(0.05 / n + 0.001 * rng.random())})
                for k in range(5):
                    score = float("nan") if (method == "random" or r == 0) else float(rng.lognormal())
                    err = float(0.1 * (score if np.isfinite(score) else 1.0) + 0.05 * rng.random())
                    picks.append({"method": method, "seed": s, "round": r, "id": int(rng.integers(1000)),
                                  "score": score, "force_mae_before": err})
    return {"rows": rows, "picks": picks}


@pytest.fixture(scope="module")
def results():
    return _results()


def _is_png(path):
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 5000


def test_aggregate_curves_mean_min_max(results):
    curves = aggregate_curves(results["rows"], "force_mae")
    assert sorted(curves) == ["id", "ood_a", "ood_b"]
    assert sorted(curves["id"]) == ["energy", "joint", "random"]
    c = curves["ood_a"]["joint"]
    np.testing.assert_array_equal(c.n_labels, [10, 20, 30])
    for k, n in enumerate(c.n_labels):
        vals = [r["force_mae"] for r in results["rows"]
                if r["method"] == "joint" and r["split"] == "ood_a" and r["n_labels"] == n]
        assert len(vals) == 3 == c.n_seeds[k]
        assert c.mean[k] == pytest.approx(np.mean(vals))
        assert c.lo[k] == min(vals) and c.hi[k] == max(vals)


def test_aggregate_groups_by_label():
    rows = [{"method": "joint", "label": lab, "seed": s, "n_labels": 5, "split": "id", "force_mae": v}
            for lab, vals in (("d=64", (1.0, 3.0)), ("d=256", (2.0, 6.0))) for s, v in enumerate(vals)]
    curves = aggregate_curves(rows)["id"]
    assert sorted(curves) == ["joint [d=256]", "joint [d=64]"]
    assert curves["joint [d=64]"].mean[0] == 2.0 and curves["joint [d=256]"].mean[0] == 4.0
    rows = [{**row, "label": "joint-lcmd-" + row["label"]} for row in rows]
    assert sorted(aggregate_curves(rows)["id"]) == ["joint-lcmd-d=256", "joint-lcmd-d=64"]
    with pytest.raises(KeyError, match="no_such_metric"):
        aggregate_curves(rows, "no_such_metric")


def test_learning_curve_png(results, tmp_path):
    path = plot_learning_curves(results["rows"], tmp_path / "lc.png", metric="force_rmse")
    assert _is_png(path)


def test_calibration_rho_matches_scipy(results, tmp_path):
    cal = plot_calibration(results["picks"], tmp_path / "cal.png")
    assert _is_png(cal.path)
    assert sorted(cal.rho) == ["energy", "joint"]  # random has no finite scores
    for method in ("energy", "joint"):
        picks = [p for p in results["picks"] if p["method"] == method and np.isfinite(p["score"])]
        expected = spearmanr([p["score"] for p in picks], [p["force_mae_before"] for p in picks]).statistic
        label = next(lab for lab in cal.labels if lab.startswith(method + ":"))
        printed = float(re.search(r"ρ = (-?[0-9.]+)", label).group(1))
        assert printed == pytest.approx(expected, abs=5e-4)
        assert f"n = {len(picks)}" in label
        assert cal.rho[method] == pytest.approx(expected, abs=1e-12)


def test_calibration_stats_handles_ties_and_small_groups():
    picks = [{"method": "a", "score": 1.0, "force_mae_before": 0.1},
             {"method": "a", "score": 2.0, "force_mae_before": 0.2}]
    assert np.isnan(calibration_stats(picks)["a"][2])


def test_plot_results_and_cli(results, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    written = plot_results(path, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == ["calibration.png", "learning_curves_energy_mae_per_atom.png",
                     "learning_curves_force_mae.png"]
    assert all(_is_png(p) for p in written)

    parser = add_plot_arguments(argparse.ArgumentParser())
    assert main_plot(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "cli")])) == 0
    out = capsys.readouterr().out
    assert "calibration joint: ρ =" in out and (tmp_path / "cli" / "calibration.png").exists()


def test_plot_results_prefers_pv(results, tmp_path, capsys):
    picks = [{**p, "pv": -p["force_mae_before"]} for p in results["picks"] if np.isfinite(p["score"])]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": results["rows"], "picks": picks}))
    plot_results(path, log=print)
    out = capsys.readouterr().out
    assert "joint: ρ = -1.000" in out and "energy: ρ = -1.000" in out


def test_plot_results_nothing_to_plot(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rows": [], "picks": []}))
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_results(path)

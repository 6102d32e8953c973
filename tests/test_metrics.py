"""Error metrics: batch-independent MAE/RMSE and per-structure force tails vs a numpy reference."""

import math

import jax
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import structures_from_atoms
from ntkal.data.padding import batch_structures, budget_for
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import build_model
from ntkal.models.mlip import energy_and_forces_fn
from ntkal.train import METRIC_NAMES, evaluate, make_error_sums_fn
from ntkal.train.metrics import per_structure_force_mae


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    frames = list(cu_pt_slab_frames(7, seed=1))
    structures = [s for _, s in structures_from_atoms(frames, config.cutoff, elements=config.elements)]
    # One structure without force labels (must not enter the force metrics), one without energy.
    structures[2] = structures[2]._replace(has_forces=False, forces=np.zeros_like(structures[2].forces))
    structures[4] = structures[4]._replace(energy=float("nan"))
    model = build_model(config)
    params = model.init(jax.random.key(0), single(structures, structures[0]))
    return model, params, structures, jax.jit(make_error_sums_fn(model.energy))


def single(structures, s):
    """``s`` alone, padded to a budget shared by all of ``structures`` (one jit compile)."""
    n_node, n_edge = budget_for([max(structures, key=lambda x: x.n_edges)])
    n_node = max(n_node, max(x.n_atoms for x in structures) + 1)
    return batch_structures([s], n_node=n_node, n_edge=n_edge)


def split(structures, sizes, n_graph=5, budget=None):
    """Consecutive batches of the given sizes, all padded to one shape (one jit compile)."""
    assert sum(sizes) == len(structures)
    n_node, n_edge = budget or budget_for(structures)
    starts = np.cumsum([0, *sizes])
    return [batch_structures(structures[a:b], n_graph=n_graph, n_node=n_node, n_edge=n_edge)
            for a, b in zip(starts[:-1], starts[1:])]


def reference(model, params, structures):
    """Metrics from one-structure-at-a-time predictions, computed in numpy."""
    ef = jax.jit(energy_and_forces_fn(model.energy))
    de, de_atom, df_all, f_mae = [], [], [], []
    for s in structures:
        e, f = jax.device_get(ef(params, single(structures, s)))
        if not np.isnan(s.energy):
            de.append(float(e[0]) - s.energy)
            de_atom.append(de[-1] / s.n_atoms)
        if s.has_forces:
            diff = (np.asarray(f[:s.n_atoms], float) - s.forces)[s.free]
            df_all.append(diff.ravel())
            f_mae.append(np.abs(diff).mean())
    de, de_atom, df_all = np.array(de), np.array(de_atom), np.concatenate(df_all)
    return {
        "energy_mae_per_atom": np.abs(de_atom).mean(), "energy_rmse_per_atom": np.sqrt((de_atom**2).mean()),
        "energy_mae": np.abs(de).mean(), "energy_rmse": np.sqrt((de**2).mean()),
        "force_mae": np.abs(df_all).mean(), "force_rmse": np.sqrt((df_all**2).mean()),
        "n_structures": len(de), "n_force_components": df_all.size,
        "force_mae_p95": np.percentile(f_mae, 95), "force_mae_max": np.max(f_mae),
    }


def test_metrics_match_per_structure_numpy_and_ignore_batching(setup):
    model, params, structures, sums = setup
    expected = reference(model, params, structures)
    assert set(METRIC_NAMES) == set(expected)
    # Batches of different sizes in one pass, padded to 5 graph slots (so a batch of one
    # structure has three empty slots before the padding slot), and a different split.
    batchings = [split(structures, [3, 1, 3]), split(structures, [2, 2, 2, 1]), split(structures, [4, 3])]
    results = [evaluate(sums, params, batches) for batches in batchings]
    for got in results:
        assert set(got) == set(METRIC_NAMES)
        assert got["n_structures"] == 6
        assert got["n_force_components"] == 3 * sum(int(s.free.sum()) for s in structures if s.has_forces)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(got[name], expected[name], rtol=2e-4, err_msg=name)
    for name in ("force_mae_p95", "force_mae_max"):
        np.testing.assert_allclose([r[name] for r in results], results[0][name], rtol=1e-5)
    assert results[0]["force_mae"] <= results[0]["force_mae_max"]


def test_tails_are_nan_without_force_labels(setup):
    model, params, structures, sums = setup
    unlabelled = [s._replace(has_forces=False) for s in structures[:3]]
    got = evaluate(sums, params, split(unlabelled, [2, 1], budget=budget_for(structures)))
    assert got["n_force_components"] == 0
    assert all(math.isnan(got[k]) for k in ("force_mae", "force_rmse", "force_mae_p95", "force_mae_max"))
    assert not math.isnan(got["energy_mae"])


def test_per_structure_force_mae_drops_empty_graphs():
    np.testing.assert_allclose(per_structure_force_mae([3.0, 0.0, 1.5, 0.0], [6, 0, 3, 0]), [0.5, 0.5])
    with pytest.raises(ValueError, match="shapes"):
        per_structure_force_mae([1.0, 2.0], [3])

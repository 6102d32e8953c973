"""NTK feature maps: exactness vs explicit gradients and finite differences, formulation
agreement, probe unbiasedness, symmetry, padding invariance, parameter filters, joint rows."""

import dataclasses

import ase.build
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.constraints import FixAtoms
from scipy.spatial.transform import Rotation

from ntkal.data import batch_atoms, iterate_chunks
from ntkal.kernels import (ForceFormulation, KernelConfig, default_joint_weights, featurize,
                           graph_sizes, make_feature_map, select_params)
from ntkal.models import ModelConfig, build_model

ELEMENTS = (1, 6, 8)
CUTOFF = 4.0
CONFIG = ModelConfig(elements=ELEMENTS, hidden_irreps="8x0e + 4x1o", num_layers=1, lmax=1,
                     num_radial=4, radial_hidden=8, readout_hidden=8, cutoff=CUTOFF,
                     avg_num_neighbors=4.0)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def water(fixed=True):
    atoms = ase.build.molecule("H2O")
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    if fixed:
        atoms.set_constraint(FixAtoms(indices=[1]))
    return atoms


def structures():
    ch4 = ase.build.molecule("CH4")
    ch4.positions += np.random.default_rng(1).normal(0, 0.05, ch4.positions.shape)
    return [water(), ch4]


@pytest.fixture(scope="module")
def setup(x64):
    model = build_model(CONFIG)
    atoms = structures()
    graph = batch_atoms(atoms, CUTOFF, elements=ELEMENTS)
    params = model.init(jax.random.key(0), graph)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    params["e0"] = jnp.asarray([-0.5, -1.0, -2.0])
    return model, params, atoms, graph


@pytest.fixture(scope="module")
def energy_fm(setup):
    model, params, _, _ = setup
    return make_feature_map(model, KernelConfig(kind="energy", sketch_dim=None), params)


@pytest.fixture(scope="module")
def exact(setup):
    """Unsketched exact force rows of the 3-structure chunk, per formulation."""
    model, params, _, graph = setup
    out = {}
    for form in ForceFormulation:
        fm = make_feature_map(model, KernelConfig(kind="force_exact", sketch_dim=None,
                                                  formulation=form, direction_batch_size=5),
                              params)
        out[form] = fm.apply(params, graph)
    return out


def explicit_grads(model, params, graph, n):
    """∇_θE_g for g < n by plain ``jax.grad`` on the whole chunk, flattened in leaf order."""
    @jax.jit
    def grad(g):
        return jax.grad(lambda net: model.energy({**params, "net": net}, graph)[g])(params["net"])
    return np.stack([np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grad(g))])
                     for g in range(n)])


def test_energy_gram_equals_explicit_gradients(setup, energy_fm):
    model, params, atoms, graph = setup
    rows, mask = energy_fm.apply(params, graph)
    assert rows.shape == (3, 1, energy_fm.num_params)
    np.testing.assert_array_equal(np.asarray(mask[:, 0]), [True, True, False])
    feats = np.asarray(rows[:2, 0])
    ref = explicit_grads(model, params, graph, 2)
    assert rel(feats @ feats.T, ref @ ref.T) < 1e-10
    assert rel(feats, ref) < 1e-10
    assert np.all(np.asarray(rows[2]) == 0.0)


def test_exact_force_rows_match_finite_differences(setup, energy_fm, exact):
    _, params, atoms, graph = setup
    rows, mask = exact[ForceFormulation.JACFWD]
    m = graph_sizes(graph).max_atoms
    assert rows.shape == (3, 3 * m, energy_fm.num_params)
    h = 1e-5
    offsets = np.concatenate([[0], np.cumsum(graph.n_node)[:-1]])
    pos0 = np.asarray(graph.nodes["positions"])
    checked = 0
    for g, a in enumerate(atoms):
        for i in range(len(a)):
            for alpha in range(3):
                row = 3 * i + alpha
                expect_free = bool(graph.nodes["free"][offsets[g] + i])
                assert bool(mask[g, row]) == expect_free
                if not expect_free:
                    assert np.all(np.asarray(rows[g, row]) == 0.0)
                    continue
                plus, minus = pos0.copy(), pos0.copy()
                plus[offsets[g] + i, alpha] += h
                minus[offsets[g] + i, alpha] -= h
                fp = energy_fm.apply(params, graph._replace(nodes={**graph.nodes, "positions": plus}))
                fmi = energy_fm.apply(params, graph._replace(nodes={**graph.nodes, "positions": minus}))
                fd = -(np.asarray(fp.rows[g, 0]) - np.asarray(fmi.rows[g, 0])) / (2 * h)
                assert rel(rows[g, row], fd) < 1e-6, (g, i, alpha)
                checked += 1
    assert checked == 3 * (sum(len(a) for a in atoms) - 1)
    # rows beyond each structure's atoms are padding: masked and zero
    assert not bool(mask[0, 3 * len(atoms[0]):].any())
    assert np.all(np.asarray(rows[2]) == 0.0)


@pytest.mark.parametrize("form", [ForceFormulation.JVP, ForceFormulation.VJP])
def test_exact_formulations_agree_with_reference(exact, form):
    ref_rows, ref_mask = exact[ForceFormulation.JACFWD]
    rows, mask = exact[form]
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    assert rel(rows, ref_rows) < 1e-12


def test_probe_estimator_is_unbiased(setup, exact):
    model, params, _, graph = setup
    k = 256
    fm = make_feature_map(model, KernelConfig(kind="force_probe", sketch_dim=None, num_probes=k,
                                              direction_batch_size=128, seed=3), params)
    rows, mask = fm.apply(params, graph)
    assert rows.shape[1] == k and bool(mask[:2].all()) and not bool(mask[2].any())
    phi = np.asarray(exact[ForceFormulation.JACFWD].rows)
    rng = np.random.default_rng(0)
    p = phi.shape[-1]
    b = rng.normal(size=(p, p)) / np.sqrt(p)
    a_inv = np.linalg.inv(b @ b.T + 0.1 * np.eye(p))
    for g in range(2):
        trace = np.trace(phi[g] @ a_inv @ phi[g].T)
        samples = k * np.einsum("jd,de,je->j", np.asarray(rows[g]), a_inv, np.asarray(rows[g]))
        se = samples.std(ddof=1) / np.sqrt(k)
        assert abs(samples.mean() - trace) < 4 * se, (g, samples.mean(), trace, se)
        assert se < 0.5 * trace  # the check has power: the estimate is informative
        # and the k-probe estimate itself (Σ_j row_j A⁻¹ row_jᵀ) is that same mean
        est = np.einsum("jd,de,je->", np.asarray(rows[g]), a_inv, np.asarray(rows[g]))
        assert np.isclose(est, samples.mean(), rtol=1e-10)


def test_probe_formulations_agree_and_rows_lie_in_force_row_space(setup, exact):
    """Probe rows t_jᵀΦ_F/√k: every formulation gives the same rows (same tangents), and each
    row is a combination of the exact rows of free coordinates only."""
    model, params, atoms, graph = setup
    k = 4
    phi = np.asarray(exact[ForceFormulation.JACFWD].rows)
    mask = np.asarray(exact[ForceFormulation.JACFWD].row_mask)
    out = {}
    for form in ForceFormulation:
        fm = make_feature_map(model, KernelConfig(kind="force_probe", sketch_dim=None, num_probes=k,
                                                  formulation=form, seed=5), params)
        out[form] = np.asarray(fm.apply(params, graph).rows)
    for form in (ForceFormulation.JVP, ForceFormulation.VJP):
        assert rel(out[form], out[ForceFormulation.JACFWD]) < 1e-12
    rows = out[ForceFormulation.JVP]
    for g in range(2):
        free = phi[g][mask[g]]
        coef, *_ = np.linalg.lstsq(free.T, rows[g].T, rcond=None)
        assert rel(free.T @ coef, rows[g].T) < 1e-8
        assert np.linalg.norm(rows[g]) > 0


def test_rotation_invariance_and_covariance(setup, exact):
    model, params, _, _ = setup
    a = water(fixed=False)
    r = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    b = a.copy()
    b.positions = a.positions @ r.T
    graph = batch_atoms([a, b], CUTOFF, elements=ELEMENTS)
    e_fm = make_feature_map(model, KernelConfig(kind="energy", sketch_dim=64), params)
    f_fm = make_feature_map(model, KernelConfig(kind="force_exact", sketch_dim=64), params)
    e_rows = np.asarray(e_fm.apply(params, graph).rows)
    assert rel(e_rows[1], e_rows[0]) < 1e-10
    f_rows = np.asarray(f_fm.apply(params, graph).rows)
    n = len(a)
    fa = f_rows[0, :3 * n].reshape(n, 3, -1)
    fb = f_rows[1, :3 * n].reshape(n, 3, -1)
    assert rel(fb, np.einsum("ab,ibd->iad", r, fa)) < 1e-10
    assert rel(fb, fa) > 1e-2  # the rows really rotate
    spd = np.random.default_rng(1).normal(size=(64, 64))
    a_inv = np.linalg.inv(spd @ spd.T + np.eye(64))
    pv = [np.trace(f @ a_inv @ f.T) for f in (f_rows[0], f_rows[1])]
    assert np.isclose(pv[0], pv[1], rtol=1e-10)


@pytest.mark.parametrize("kind", ["energy", "force_exact", "force_probe", "embedding",
                                  "last_layer"])
def test_padding_never_changes_features(setup, kind):
    model, params, atoms, _ = setup
    fm = make_feature_map(model, KernelConfig(kind=kind, sketch_dim=32, num_probes=4), params)
    target = atoms[0]
    alone = next(iter(iterate_chunks([target], CUTOFF, max_graphs=1, elements=ELEMENTS)))
    mixed = list(iterate_chunks([atoms[1], atoms[1], target], CUTOFF, max_graphs=5,
                                max_nodes=40, max_edges=200, fixed_budget=True,
                                elements=ELEMENTS))
    assert len(mixed) == 1 and mixed[0].ids.tolist() == [0, 1, 2, -1, -1, -1]
    r1, m1 = fm.apply(params, alone.graph)
    r2, m2 = fm.apply(params, mixed[0].graph)
    n = 3 * len(target) if kind == "force_exact" else r1.shape[1]
    np.testing.assert_allclose(np.asarray(r2[2, :n]), np.asarray(r1[0, :n]), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_array_equal(np.asarray(m2[2, :n]), np.asarray(m1[0, :n]))
    assert not np.asarray(m2[2, n:]).any() and np.all(np.asarray(r2[2, n:]) == 0.0)
    assert not np.asarray(m2[3:]).any() and np.all(np.asarray(r2[3:]) == 0.0)


def test_parameter_filters(setup, energy_fm):
    model, params, atoms, graph = setup
    full = np.asarray(energy_fm.apply(params, graph).rows[:2, 0])
    all_sel = select_params(params, "all")
    offsets = dict(zip(all_sel.indices, np.cumsum((0,) + all_sel.sizes)[:-1]))
    sizes = {}
    for filt in ("readout", "last_interaction", ("radial_mlp",)):
        sel = select_params(params, filt)
        assert 0 < sel.num_params < all_sel.num_params
        fm = make_feature_map(model, KernelConfig(kind="energy", sketch_dim=None, param_filter=filt),
                              params)
        assert fm.num_params == fm.dim == sel.num_params
        rows = np.asarray(fm.apply(params, graph).rows[:2, 0])
        cols = np.concatenate([np.arange(offsets[i], offsets[i] + s)
                               for i, s in zip(sel.indices, sel.sizes)])
        assert rel(rows, full[:, cols]) < 1e-12  # the θ_s block of the full gradient
        sizes[filt if isinstance(filt, str) else "radial"] = (sel, rows)
    readout, rows = sizes["readout"]
    assert readout.paths == ("params/readout/w[0,0] 8x0e,1x0e",)
    assert all("interaction_0" in p for p in sizes["last_interaction"][0].paths)
    assert all("radial_mlp" in p for p in sizes["radial"][0].paths)
    # last-layer kernel = readout-only energy NTK up to one constant
    ll = make_feature_map(model, KernelConfig(kind="last_layer"), params)
    z = np.asarray(ll.apply(params, graph).rows[:2, 0])
    ratio = rows / z
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-10) and ratio.flat[0] > 0
    with pytest.raises(ValueError):
        select_params(params, "no_such_filter")
    with pytest.raises(ValueError):
        select_params(params, ("nothing-matches",))


def test_embedding_pools(setup):
    model, params, atoms, graph = setup
    out = model.apply(params, graph)
    n = np.asarray(graph.n_node)
    fm = make_feature_map(model, KernelConfig(kind="embedding", pool="mean_sum"), params)
    rows = np.asarray(fm.apply(params, graph).rows[:, 0])
    f = out.node_scalars.shape[1]
    assert fm.dim == 2 * f
    start = 0
    for g, a in enumerate(atoms):
        h = np.asarray(out.node_scalars[start:start + n[g]])
        np.testing.assert_allclose(rows[g, :f], h.mean(0), rtol=1e-12)
        np.testing.assert_allclose(rows[g, f:], h.sum(0), rtol=1e-12)
        start += n[g]


def test_joint_rows_and_default_weights(setup, energy_fm, exact):
    model, params, atoms, graph = setup
    base = KernelConfig(kind="joint", sketch_dim=None, joint_force="exact")
    chunks = list(iterate_chunks(atoms, CUTOFF, max_graphs=2, elements=ELEMENTS))
    cfg = default_joint_weights(model, base, params, chunks)
    e = np.asarray(energy_fm.apply(params, graph).rows)
    f = np.asarray(exact[ForceFormulation.JACFWD].rows)
    assert np.isclose(cfg.w_force, np.sqrt((e[:2] ** 2).sum() / (f[:2] ** 2).sum()), rtol=1e-10)
    fm = make_feature_map(model, dataclasses.replace(cfg, w_energy=0.5), params)
    rows, mask = fm.apply(params, graph)
    assert rows.shape[1] == 1 + f.shape[1] == fm.num_rows(graph_sizes(graph))
    assert rel(rows[:, 0], 0.5 * e[:, 0]) < 1e-12
    assert rel(rows[:, 1:], cfg.w_force * f) < 1e-12
    np.testing.assert_array_equal(np.asarray(mask[:, 1:]),
                                  np.asarray(exact[ForceFormulation.JACFWD].row_mask))


def test_featurize_streams_ids_and_salted_probes(setup):
    model, params, atoms, _ = setup
    fm = make_feature_map(model, KernelConfig(kind="force_probe", sketch_dim=16, num_probes=2),
                          params)
    stream = [water(), water()]
    chunks = iterate_chunks(stream, CUTOFF, max_graphs=2, elements=ELEMENTS)
    (ids, common), = list(featurize(fm, params, chunks))
    assert ids.tolist() == [0, 1, -1]
    np.testing.assert_array_equal(np.asarray(common.rows[0]), np.asarray(common.rows[1]))
    chunks = iterate_chunks(stream, CUTOFF, max_graphs=2, elements=ELEMENTS)
    (_, salted), = list(featurize(fm, params, chunks, salt_from_ids=True))
    assert rel(salted.rows[0], salted.rows[1]) > 1e-3


def test_config_validation():
    with pytest.raises(ValueError):
        KernelConfig(kind="nope")
    with pytest.raises(ValueError):
        KernelConfig(sketch_kind="uniform")
    with pytest.raises(ValueError):
        KernelConfig(num_probes=0)
    with pytest.raises(ValueError):
        KernelConfig(formulation="finite_differences")
    assert KernelConfig(formulation="vjp").formulation is ForceFormulation.VJP

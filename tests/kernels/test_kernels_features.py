"""NTK feature maps: exactness vs explicit gradients and finite differences, formulation
agreement, probe unbiasedness, symmetry, padding invariance, parameter filters, joint rows.

Every jit compile of an e3nn model costs seconds here, so the tests share one chunk
(water with a fixed atom, methane, and the same water rigidly rotated) and a cache of
feature maps (one compile per map and chunk shape).
"""


import ase.build
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.constraints import FixAtoms
from scipy.spatial.transform import Rotation

from ntkal.data import batch_atoms, iterate_chunks
from ntkal.kernels import (ForceFormulation, KernelConfig, default_joint_weights, featurize,
                           GraphSizes, graph_sizes, make_feature_map, select_params)
from ntkal.models import ModelConfig, build_model

ELEMENTS = (1, 6, 8)
CUTOFF = 4.0
CONFIG = ModelConfig(elements=ELEMENTS, hidden_irreps="8x0e + 4x1o", num_layers=1, lmax=1,
                     num_radial=4, radial_hidden=8, readout_hidden=8, cutoff=CUTOFF,
                     avg_num_neighbors=4.0)
ROTATION = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
N_REAL = 3


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def water():
    atoms = ase.build.molecule("H2O")
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    atoms.set_constraint(FixAtoms(indices=[1]))
    return atoms


def structures():
    ch4 = ase.build.molecule("CH4")
    ch4.positions += np.random.default_rng(1).normal(0, 0.05, ch4.positions.shape)
    rotated = water()
    rotated.positions = rotated.positions @ ROTATION.T
    return [water(), ch4, rotated]


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
def maps(setup):
    """``maps(**config) -> FeatureMap``, memoised so equal configs share compilations."""
    model, params, _, _ = setup
    cache = {}

    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = make_feature_map(model, KernelConfig(**kw), params)
        return cache[key]

    return get


ENERGY = dict(kind="energy", sketch_dim=None)
# graph_batch_size exercises lax.map over graphs (1: one per step; 2: with a remainder)
EXACT = dict(kind="force_exact", sketch_dim=None, direction_batch_size=5, graph_batch_size=1)
PROBE = dict(kind="force_probe", sketch_dim=None, num_probes=4, seed=5, graph_batch_size=2)


@pytest.fixture(scope="module")
def exact(setup, maps):
    """Unsketched exact force rows of the shared chunk, per formulation."""
    _, params, _, graph = setup
    return {form: maps(**EXACT, formulation=form).apply(params, graph) for form in ForceFormulation}


def explicit_grads(model, params, graph, n):
    """∇_θE_g for g < n by plain ``jax.grad`` on the whole chunk, flattened in leaf order."""
    @jax.jit
    def grad(g):
        return jax.grad(lambda net: model.energy({**params, "net": net}, graph)[g])(params["net"])
    return np.stack([np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grad(g))])
                     for g in range(n)])


def test_energy_gram_equals_explicit_gradients(setup, maps):
    model, params, _, graph = setup
    fm = maps(**ENERGY)
    rows, mask = fm.apply(params, graph)
    assert rows.shape == (N_REAL + 1, 1, fm.num_params) and fm.dim == fm.num_params
    np.testing.assert_array_equal(np.asarray(mask[:, 0]), [True] * N_REAL + [False])
    feats = np.asarray(rows[:N_REAL, 0])
    ref = explicit_grads(model, params, graph, N_REAL)
    assert rel(feats @ feats.T, ref @ ref.T) < 1e-10
    assert rel(feats, ref) < 1e-10
    assert np.all(np.asarray(rows[N_REAL]) == 0.0)


def test_exact_force_rows_match_finite_differences(setup, maps, exact):
    _, params, atoms, graph = setup
    energy_fm = maps(**ENERGY)
    rows, mask = exact[ForceFormulation.JACFWD]
    m = graph_sizes(graph).max_atoms
    assert rows.shape == (N_REAL + 1, 3 * m, energy_fm.num_params)
    h = 1e-5
    offsets = np.concatenate([[0], np.cumsum(graph.n_node)[:-1]])
    pos0 = np.asarray(graph.nodes["positions"])

    def energy_rows(pos):
        return np.asarray(energy_fm.apply(params, graph._replace(
            nodes={**graph.nodes, "positions": pos})).rows[:, 0])

    checked = 0
    for g, a in enumerate(atoms):
        for i in range(len(a)):
            free = bool(graph.nodes["free"][offsets[g] + i])
            for alpha in range(3):
                row = 3 * i + alpha
                assert bool(mask[g, row]) == free
                if not free:
                    assert np.all(np.asarray(rows[g, row]) == 0.0)
                    continue
                plus, minus = pos0.copy(), pos0.copy()
                plus[offsets[g] + i, alpha] += h
                minus[offsets[g] + i, alpha] -= h
                fd = -(energy_rows(plus)[g] - energy_rows(minus)[g]) / (2 * h)
                assert rel(rows[g, row], fd) < 1e-6, (g, i, alpha)
                checked += 1
    assert checked == 3 * (sum(len(a) for a in atoms) - 2)  # two fixed atoms
    assert not bool(mask[0, 3 * len(atoms[0]):].any())  # atom slots past the structure
    assert np.all(np.asarray(rows[0, 3 * len(atoms[0]):]) == 0.0)
    assert np.all(np.asarray(rows[N_REAL]) == 0.0)


@pytest.mark.parametrize("form", [ForceFormulation.JVP, ForceFormulation.VJP])
def test_exact_formulations_agree_with_reference(exact, form):
    ref_rows, ref_mask = exact[ForceFormulation.JACFWD]
    rows, mask = exact[form]
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    assert rel(rows, ref_rows) < 1e-12


def test_probe_estimator_is_unbiased(setup, maps, exact):
    _, params, _, graph = setup
    k = 256
    rows, mask = maps(kind="force_probe", sketch_dim=None, num_probes=k, direction_batch_size=128,
                      seed=3).apply(params, graph)
    assert rows.shape[1] == k and bool(mask[:N_REAL].all()) and not bool(mask[N_REAL].any())
    phi = np.asarray(exact[ForceFormulation.JACFWD].rows)
    rng = np.random.default_rng(0)
    p = phi.shape[-1]
    b = rng.normal(size=(p, p)) / np.sqrt(p)
    a_inv = np.linalg.inv(b @ b.T + 0.1 * np.eye(p))
    for g in range(N_REAL):
        trace = np.trace(phi[g] @ a_inv @ phi[g].T)
        r = np.asarray(rows[g])
        samples = k * np.einsum("jd,de,je->j", r, a_inv, r)  # ‖t_jᵀΦ_F A^{-1/2}‖², one per draw
        se = samples.std(ddof=1) / np.sqrt(k)
        assert abs(samples.mean() - trace) < 4 * se, (g, samples.mean(), trace, se)
        assert se < 0.5 * trace  # the check has power
        assert np.isclose(np.einsum("jd,de,je->", r, a_inv, r), samples.mean(), rtol=1e-10)


def test_probe_formulations_agree_and_rows_lie_in_force_row_space(setup, maps, exact):
    """All formulations give the same probe rows (same tangents), and every row is a
    combination of the exact rows of free coordinates only."""
    _, params, _, graph = setup
    phi = np.asarray(exact[ForceFormulation.JACFWD].rows)
    mask = np.asarray(exact[ForceFormulation.JACFWD].row_mask)
    out = {form: np.asarray(maps(**PROBE, formulation=form).apply(params, graph).rows)
           for form in (ForceFormulation.JVP, ForceFormulation.VJP)}
    assert rel(out[ForceFormulation.VJP], out[ForceFormulation.JVP]) < 1e-12
    rows = out[ForceFormulation.JVP]
    for g in range(N_REAL):
        free = phi[g][mask[g]]
        coef, *_ = np.linalg.lstsq(free.T, rows[g].T, rcond=None)
        assert rel(free.T @ coef, rows[g].T) < 1e-8
        assert np.linalg.norm(rows[g]) > 0


def test_rotation_invariance_and_covariance(setup, maps, exact):
    """Structure 2 is structure 0 rotated by ROTATION."""
    _, params, atoms, graph = setup
    e_rows = np.asarray(maps(**ENERGY).apply(params, graph).rows)
    assert rel(e_rows[2], e_rows[0]) < 1e-10
    f_rows = np.asarray(exact[ForceFormulation.JVP].rows)
    n = len(atoms[0])
    fa = f_rows[0, :3 * n].reshape(n, 3, -1)
    fb = f_rows[2, :3 * n].reshape(n, 3, -1)
    assert rel(fb, np.einsum("ab,ibd->iad", ROTATION, fa)) < 1e-10
    assert rel(fb, fa) > 1e-2  # the rows really rotate
    p = f_rows.shape[-1]
    spd = np.random.default_rng(1).normal(size=(p, p)) / np.sqrt(p)
    a_inv = np.linalg.inv(spd @ spd.T + np.eye(p))
    pv = [np.trace(f @ a_inv @ f.T) for f in (f_rows[0], f_rows[2])]
    assert np.isclose(pv[0], pv[1], rtol=1e-10)


@pytest.mark.parametrize("config", [ENERGY, dict(EXACT, formulation="jvp"),
                                    dict(PROBE, formulation="jvp"), dict(kind="embedding"),
                                    dict(kind="last_layer"), dict(kind="atom_embedding")],
                         ids=lambda c: c["kind"])
def test_padding_never_changes_features(setup, maps, config):
    """Water in the shared chunk vs in a larger, differently padded chunk (other budgets,
    other neighbours, empty graph slots)."""
    _, params, atoms, graph = setup
    fm = maps(**config)
    mixed = list(iterate_chunks([atoms[1], atoms[1], atoms[1], atoms[0]], CUTOFF, max_graphs=6,
                                max_nodes=40, max_edges=200, fixed_budget=True,
                                elements=ELEMENTS))
    assert len(mixed) == 1 and mixed[0].ids.tolist() == [0, 1, 2, 3, -1, -1, -1]
    assert graph_sizes(graph) == GraphSizes(8, 24)
    r1, m1 = fm.apply(params, graph)
    r2, m2 = fm.apply(params, mixed[0].graph, sizes=GraphSizes(12, 48))
    n = 3 * len(atoms[0]) if config["kind"] == "force_exact" else r1.shape[1]
    np.testing.assert_allclose(np.asarray(r2[3, :n]), np.asarray(r1[0, :n]), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_array_equal(np.asarray(m2[3, :n]), np.asarray(m1[0, :n]))
    assert not np.asarray(m2[3, n:]).any() and np.all(np.asarray(r2[3, n:]) == 0.0)
    assert not np.asarray(m2[4:]).any() and np.all(np.asarray(r2[4:]) == 0.0)


def test_parameter_filters(setup, maps):
    _, params, _, graph = setup
    full = np.asarray(maps(**ENERGY).apply(params, graph).rows[:N_REAL, 0])
    all_sel = select_params(params, "all")
    offsets = dict(zip(all_sel.indices, np.cumsum((0,) + all_sel.sizes)[:-1]))
    found = {}
    for filt in ("readout", "last_interaction", ("radial_mlp",)):
        sel = select_params(params, filt)
        assert 0 < sel.num_params < all_sel.num_params
        fm = maps(**ENERGY, param_filter=filt)
        assert fm.num_params == fm.dim == sel.num_params
        rows = np.asarray(fm.apply(params, graph).rows[:N_REAL, 0])
        cols = np.concatenate([np.arange(offsets[i], offsets[i] + s)
                               for i, s in zip(sel.indices, sel.sizes)])
        assert rel(rows, full[:, cols]) < 1e-12  # exactly the θ_s block of the full gradient
        found[filt if isinstance(filt, str) else "radial"] = (sel, rows)
    readout, rows = found["readout"]
    assert readout.paths == ("params/readout/w[0,0] 8x0e,1x0e",)
    assert all("interaction_0" in p for p in found["last_interaction"][0].paths)
    assert all("radial_mlp" in p for p in found["radial"][0].paths)
    # last-layer kernel = readout-only energy NTK up to one constant
    z = np.asarray(maps(kind="last_layer").apply(params, graph).rows[:N_REAL, 0])
    ratio = rows / z
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-10) and ratio.flat[0] > 0
    with pytest.raises(ValueError):
        select_params(params, "no_such_filter")
    with pytest.raises(ValueError):
        select_params(params, ("nothing-matches",))


def test_sketched_energy_rows_are_the_sketch_of_the_gradient(setup, maps):
    _, params, _, graph = setup
    full = np.asarray(maps(**ENERGY).apply(params, graph).rows[:N_REAL, 0])
    fm = maps(kind="energy", sketch_dim=48, sketch_kind="rademacher", seed=7)
    rows = np.asarray(fm.apply(params, graph).rows[:N_REAL, 0])
    sel = select_params(params, "all")
    from ntkal.kernels import make_sketch
    sketch = make_sketch(sel, 48, kind="rademacher", seed=7)
    s = np.concatenate([np.asarray(b) for b in sketch.blocks(jnp.float64)])
    assert s.shape == (fm.num_params, 48) and np.allclose(np.abs(s), 1 / np.sqrt(48))
    assert rel(rows, full @ s) < 1e-12


def test_embedding_pools(setup, maps):
    model, params, atoms, graph = setup
    out = jax.jit(model.apply)(params, graph)
    n = np.asarray(graph.n_node)
    fm = maps(kind="embedding", pool="mean_sum")
    rows = np.asarray(fm.apply(params, graph).rows[:, 0])
    f = out.node_scalars.shape[1]
    assert fm.dim == 2 * f
    start = 0
    for g in range(N_REAL):
        h = np.asarray(out.node_scalars[start:start + n[g]])
        np.testing.assert_allclose(rows[g, :f], h.mean(0), rtol=1e-12)
        np.testing.assert_allclose(rows[g, f:], h.sum(0), rtol=1e-12)
        start += n[g]
    assert np.all(rows[N_REAL] == 0.0)


def test_atom_embedding_rows_are_the_free_atoms_node_features(setup, maps):
    """One row per free real atom, in atom order: h_i of the model's own forward pass; the
    fixed water O and every padding slot are zero and masked; permuting a structure's atoms
    permutes its rows, so the total posterior variance is permutation invariant."""
    model, params, atoms, graph = setup
    out = jax.jit(model.apply)(params, graph)
    n = np.asarray(graph.n_node)
    fm = maps(kind="atom_embedding")
    rows, mask = (np.asarray(x) for x in fm.apply(params, graph))
    f = out.node_scalars.shape[1]
    assert fm.dim == f and rows.shape == (len(n), fm.num_rows(graph_sizes(graph)), f)
    start = 0
    for g in range(N_REAL):
        h = np.asarray(out.node_scalars[start:start + n[g]])
        free = np.ones(n[g], bool)
        for c in atoms[g].constraints:
            free[c.index] = False
        np.testing.assert_array_equal(mask[g], np.r_[free, np.zeros(rows.shape[1] - n[g], bool)])
        np.testing.assert_allclose(rows[g, :n[g]][free], h[free], rtol=1e-12)
        assert np.all(rows[g, :n[g]][~free] == 0.0) and np.all(rows[g, n[g]:] == 0.0)
        start += n[g]
    assert not mask[N_REAL:].any() and np.all(rows[N_REAL:] == 0.0)
    assert not mask[0, 1] and mask[1, :5].all()  # water's O is fixed; CH4 is all free

    perm = [3, 0, 4, 2, 1]
    ch4 = atoms[1][perm]
    r2, m2 = (np.asarray(x) for x in fm.apply(params, batch_atoms([ch4], CUTOFF, elements=ELEMENTS)))
    np.testing.assert_allclose(r2[0, :5], rows[1, perm], rtol=1e-10, atol=1e-12)
    spd = np.random.default_rng(2).normal(size=(f, f)) / np.sqrt(f)
    a_inv = np.linalg.inv(spd @ spd.T + np.eye(f))
    pv = [np.einsum("rd,de,re->", r[:5], a_inv, r[:5]) for r in (rows[1], r2[0])]
    assert np.isclose(pv[0], pv[1], rtol=1e-10) and pv[0] > 0


def test_joint_rows_and_default_weights(setup, maps, exact):
    _, params, atoms, graph = setup
    fm = maps(kind="joint", sketch_dim=None, joint_force="exact", w_energy=0.5, w_force=2.0)
    rows, mask = fm.apply(params, graph)
    e = np.asarray(maps(**ENERGY).apply(params, graph).rows)
    f = np.asarray(exact[ForceFormulation.JACFWD].rows)
    assert rows.shape[1] == 1 + f.shape[1] == fm.num_rows(graph_sizes(graph))
    assert rel(rows[:, 0], 0.5 * e[:, 0]) < 1e-12
    assert rel(rows[:, 1:], 2.0 * f) < 1e-12
    np.testing.assert_array_equal(np.asarray(mask[:, 1:]),
                                  np.asarray(exact[ForceFormulation.JACFWD].row_mask))
    chunks = list(iterate_chunks(atoms, CUTOFF, max_graphs=N_REAL, elements=ELEMENTS))
    cfg = default_joint_weights(fm, params, chunks)
    expect = np.sqrt((e[:N_REAL] ** 2).sum() / (f[:N_REAL] ** 2).sum())
    assert cfg.w_energy == 1.0 and np.isclose(cfg.w_force, expect, rtol=1e-10)
    with pytest.raises(ValueError):
        default_joint_weights(maps(**ENERGY), params, chunks)


@pytest.mark.parametrize("direction_batch_size", [None, 3])
def test_joint_probe_energy_row_is_the_jvp_primal(setup, maps, direction_batch_size):
    """The joint probe map takes its energy row from the primal of its probe JVPs (one pass,
    vmapped or lax.mapped over probes): it must equal the energy map's gradient row, and its
    force rows the probe map's rows, with the weights applied."""
    _, params, _, graph = setup
    probe = dict(PROBE, formulation="jvp", direction_batch_size=direction_batch_size)
    joint = maps(**dict(probe, kind="joint", w_energy=0.5, w_force=2.0))
    rows, mask = joint.apply(params, graph)
    e = np.asarray(maps(**ENERGY).apply(params, graph).rows)
    f = maps(**probe).apply(params, graph)
    assert rel(rows[:, 0], 0.5 * e[:, 0]) < 1e-12
    assert rel(rows[:, 1:], 2.0 * np.asarray(f.rows)) < 1e-12
    np.testing.assert_array_equal(np.asarray(mask[:, 1:]), np.asarray(f.row_mask))
    assert np.all(np.asarray(rows[N_REAL]) == 0.0)


def test_featurize_streams_ids_and_salted_probes(setup, maps):
    _, params, atoms, graph = setup
    fm = maps(**PROBE, formulation="jvp")
    chunks = list(iterate_chunks(atoms, CUTOFF, max_graphs=N_REAL, elements=ELEMENTS))
    (ids, common), = list(featurize(fm, params, chunks))
    assert ids.tolist() == [0, 1, 2, -1]
    np.testing.assert_array_equal(np.asarray(common.rows), np.asarray(fm.apply(params, graph).rows))
    (_, salted), = list(featurize(fm, params, chunks, salt_from_ids=True))
    np.testing.assert_array_equal(np.asarray(salted.rows[0]), np.asarray(common.rows[0]))  # salt 0
    for g in (1, 2):
        assert rel(salted.rows[g], common.rows[g]) > 1e-3


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

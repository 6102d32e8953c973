"""The one acquisition pipeline: size classes, cached graphs, cascade, select == loop."""

import dataclasses
import itertools
import os

import ase.build
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.acquire import Acquirer, AcquisitionConfig, prefetch, structure_set
from ntkal.data import atoms_to_structure, batch_atoms, batch_structures
from ntkal.data.size_classes import class_chunks, padded_slots, plan_size_classes
from ntkal.kernels import GraphSizes, KernelConfig, graph_sizes
from ntkal.models import build_model, save_checkpoint

CONFIG = tiny_config(num_layers=1, lmax=1)  # plumbing equalities: the smallest model compiles fastest
#: feature maps and jitted functions shared by every Acquirer of this module (one compile each)
STORE = {}


def mixed_frames(n: int, seed: int):
    """Rattled Cu/Pt slabs of 8–27 atoms (several size classes), labelled with EMT."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    rng = np.random.default_rng(seed)
    shapes = [(2, 2, 2), (2, 2, 3), (3, 2, 2), (3, 3, 2), (2, 3, 3), (3, 3, 3)]
    out = []
    for k in range(n):
        slab = ase.build.fcc111("Cu", size=shapes[k % len(shapes)], vacuum=5.0, periodic=True)
        swap = rng.random(len(slab)) < 0.3
        slab.numbers[swap] = 78
        slab.positions += rng.normal(0, 0.08, slab.positions.shape)
        slab.calc = EMT()
        energy, forces = slab.get_potential_energy(), slab.get_forces()
        slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
        out.append(slab)
    return out


@pytest.fixture(scope="module")
def setup(x64):
    model = build_model(CONFIG)
    frames = mixed_frames(30, seed=0)
    params = model.init(jax.random.key(0), batch_atoms(frames[:2], CONFIG.cutoff))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    structures = [atoms_to_structure(a, CONFIG.cutoff, elements=CONFIG.elements) for a in frames]
    return model, params, frames, structures


def brute_force_slots(n_atoms, k):
    sizes, counts = np.unique(n_atoms, return_counts=True)
    best = None
    for cuts in itertools.chain.from_iterable(
            itertools.combinations(range(1, len(sizes)), c) for c in range(0, min(k, len(sizes)))):
        bounds = (0,) + cuts + (len(sizes),)
        slots = sum(sizes[b - 1] * counts[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:]))
        best = slots if best is None else min(best, slots)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_size_plan_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(20, 231, size=200)
    n_atoms = np.concatenate([n_atoms, rng.choice(n_atoms, 30)])  # repeated sizes
    n_edges = n_atoms * 12 + rng.integers(0, 50, n_atoms.size)
    for k in (1, 2, 3, 6):
        plan = plan_size_classes(n_atoms, n_edges, k)
        assert plan.num_classes <= k
        tops = np.array([m for m, _ in plan.budgets])
        assert np.all(n_atoms <= tops[plan.class_of]) and np.all(np.diff(tops) > 0)
        assert int(tops[plan.class_of].sum()) == brute_force_slots(n_atoms, k) if k <= 3 else True
        for c, (m, e) in enumerate(plan.budgets):
            members = plan.class_of == c
            assert m == n_atoms[members].max() and e >= n_edges[members].max() and e % 8 == 0
    one = plan_size_classes(n_atoms, n_edges, 1)
    assert one.budgets[0][0] == n_atoms.max()
    six = plan_size_classes(n_atoms, n_edges, 6)
    assert padded_slots(six, 1) / n_atoms.sum() <= 1.25  # the bound on an OC20-like spread


def test_class_chunks_cover_each_id_once_with_fixed_shapes(setup):
    _, _, _, structures = setup
    data = structure_set(structures, 3)
    ids = np.arange(len(structures))[::-1]
    seen, shapes = [], {}
    for c, chunk_ids, graph in class_chunks(data.structures, ids, data.plan, 4):
        shape = (graph.n_node.shape[0], graph.nodes["numbers"].shape[0], graph.senders.shape[0])
        assert shapes.setdefault(c, shape) == shape  # one shape per class
        seen += [int(i) for i in chunk_ids if i >= 0]
        assert all(data.plan.class_of[i] == c for i in chunk_ids if i >= 0)
    assert sorted(seen) == sorted(ids.tolist())


@pytest.mark.parametrize("kernel", [
    KernelConfig(kind="joint", sketch_dim=16, num_probes=2),
    KernelConfig(kind="force_exact", sketch_dim=16, direction_batch_size=8),
    KernelConfig(kind="embedding"),
])
def test_size_class_features_equal_single_structure_features(setup, kernel):
    """Padding to a class budget (with other structures in the chunk) changes no feature."""
    model, params, _, structures = setup
    config = AcquisitionConfig(kernel=kernel, chunk_size=4, size_classes=2, prefetch=2)
    acquirer = Acquirer(model, params, config, store=STORE)
    data = structure_set(structures, 2)
    assert data.plan.num_classes == 2
    fmap = acquirer.feature_map
    ids = np.arange(len(structures))[::-1]
    got = {}
    for chunk in acquirer.stream_features(fmap, params, data, ids):
        for g, i in enumerate(np.asarray(chunk.ids)):
            if i >= 0:
                got[int(i)] = (np.asarray(chunk.rows[g]), np.asarray(chunk.row_mask[g]))
    assert sorted(got) == sorted(ids.tolist())
    r = fmap.num_rows(data.max_sizes)
    # reference: the smallest structure alone, padded to its own bucket (one extra compile)
    for i in [int(np.argmin(data.n_atoms))]:
        assert data.plan.budgets[data.plan.class_of[i]][0] > structures[i].n_atoms
        single = batch_structures([structures[i]])
        rows, mask = fmap.apply(params, single, sizes=graph_sizes(single))
        rows, mask = np.asarray(rows[0]), np.asarray(mask[0])
        k = rows.shape[0] if kernel.kind != "force_exact" else 3 * structures[i].n_atoms
        assert got[i][0].shape[0] == r
        np.testing.assert_allclose(got[i][0][:k], rows[:k], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(got[i][1][:k], mask[:k])
        assert not got[i][1][k:].any() and np.all(got[i][0][k:] == 0.0)


def test_cached_graphs_equal_fresh_ones(setup, tmp_path):
    """`ntkal select` graphs each frame once while reading; those graphs equal fresh ones."""
    from ntkal.select import read_structures
    _, _, frames, _ = setup
    ase.io.write(tmp_path / "f.extxyz", frames[:7])
    held, energies, _ = read_structures(tmp_path / "f.extxyz", CONFIG.cutoff, CONFIG.elements)
    np.testing.assert_allclose(energies, [a.get_potential_energy() for a in frames[:7]], rtol=1e-9)
    for s, atoms in zip(held, ase.io.read(tmp_path / "f.extxyz", index=":")):
        fresh = atoms_to_structure(atoms, CONFIG.cutoff, elements=CONFIG.elements)
        for field in ("numbers", "positions", "senders", "receivers", "shifts", "free"):
            np.testing.assert_array_equal(getattr(s, field), getattr(fresh, field))


def pick(setup, config, budget=4, train=np.arange(6), cache=None):
    model, params, frames, structures = setup
    data = structure_set(structures, config.size_classes)
    acquirer = Acquirer(model, params, config, store=STORE)
    candidates = np.setdiff1d(np.arange(len(structures)), train)
    energies = np.array([frames[i].get_potential_energy() for i in train])
    return acquirer.pick(params, data, train, candidates, budget, jax.random.key(0),
                         train_energies=energies, cache=cache)


BASE = AcquisitionConfig(kernel=KernelConfig(kind="joint", sketch_dim=16, num_probes=2), shortlist=12,
                         chunk_size=4, size_classes=3)


def test_cascade_with_q_one_equals_no_cascade(setup):
    plain = pick(setup, BASE)
    full = pick(setup, dataclasses.replace(BASE, cascade="energy", cascade_keep=1.0))
    np.testing.assert_array_equal(plain.ids, full.ids)
    np.testing.assert_allclose(plain.scores, full.scores, rtol=1e-10)
    assert plain.stats["n_features"] == full.stats["n_features"] == 30


def test_cascade_scores_only_the_kept_fraction(setup):
    half = pick(setup, dataclasses.replace(BASE, cascade="energy", cascade_keep=0.5))
    assert half.stats["n_kept"] == 12 and half.stats["n_cheap_features"] == 30
    assert half.stats["n_features"] == 6 + 12  # training set + kept candidates
    tiny = pick(setup, dataclasses.replace(BASE, cascade="energy", cascade_keep=0.05), budget=4)
    assert tiny.stats["n_kept"] == 4  # never fewer than the batch
    # the kept set is the energy-kernel PV top half: energy-only picks by maxdiag come from it
    energy_top = pick(setup, dataclasses.replace(BASE, kernel=KernelConfig(kind="energy", sketch_dim=16),
                                                 selector="maxdiag", shortlist=12), budget=12)
    assert set(half.ids.tolist()) <= set(energy_top.ids.tolist())


def test_cascade_pick_equals_a_pick_from_the_cheap_kernels_top_fraction(setup):
    """What ``experiments/cascade_recall.py`` replays. A cheap kernel's maxdiag PVs do not depend
    on the other candidates (two slices give the whole set's values), and the cascade's pick
    equals the full pipeline's pick from the top ``max(ceil(q·n), B)`` candidates by those PVs."""
    model, params, frames, structures = setup
    data = structure_set(structures, BASE.size_classes)
    train, candidates, key = np.arange(6), np.arange(6, 30), jax.random.key(0)
    energies = np.array([frames[i].get_potential_energy() for i in train])
    config = dataclasses.replace(BASE, cascade="atom_embedding", cascade_keep=0.5)
    cheap = dataclasses.replace(BASE, kernel=config.cascade_kernel, selector="maxdiag", shortlist=24)
    assert cheap.kernel == KernelConfig(kind="atom_embedding", sketch_dim=16)  # BASE's sketch and seed
    scorer = Acquirer(model, params, cheap, store=STORE)
    whole = scorer.pick(params, data, train, candidates, 24, key, train_energies=energies)
    pv = dict(zip(whole.ids.tolist(), whole.pv))
    assert sorted(pv) == candidates.tolist() and min(pv.values()) > 0
    for part in (candidates[:10], candidates[10:]):
        got = scorer.pick(params, data, train, part, len(part), key, train_energies=energies)
        np.testing.assert_allclose(got.pv, [pv[i] for i in got.ids.tolist()], rtol=1e-12)
    kept = np.array(sorted(candidates.tolist(), key=lambda i: (-pv[i], i))[:12])
    cascade = pick(setup, config)
    replay = Acquirer(model, params, BASE, store=STORE).pick(params, data, train, kept, 4, key,
                                                              train_energies=energies)
    assert cascade.stats["n_kept"] == 12 and set(cascade.ids.tolist()) <= set(kept.tolist())
    np.testing.assert_array_equal(cascade.ids, replay.ids)
    np.testing.assert_allclose(cascade.scores, replay.scores, rtol=1e-10)


def test_feature_cache_equals_streaming_and_counts_once(setup):
    cache = {}
    first = pick(setup, BASE, cache=cache)
    again = pick(setup, BASE, cache=cache)
    plain = pick(setup, BASE)
    assert first.stats["n_features"] == 30 and again.stats["n_features"] == 0
    for other in (again, plain):
        np.testing.assert_array_equal(first.ids, other.ids)
        np.testing.assert_allclose(first.scores, other.scores, rtol=1e-9)


def test_evidence_pairs_each_training_structure_with_its_own_residual(setup):
    """The evidence σ² and the picks do not depend on the order of the training ids, cached or
    not. Uncached features stream class by class; they were once paired with residuals in
    ``train_ids`` order, so a training set listed out of size order got another σ²."""
    config = dataclasses.replace(BASE, noise_rule="evidence")
    sorted_train = np.array([0, 1, 3, 5])  # 8, 12, 18 and 27 atoms: three size classes
    reference = pick(setup, config, train=sorted_train)
    for train in (np.array([5, 0, 3, 1]), np.array([3, 5, 1, 0])):
        for cache in (None, {}):
            got = pick(setup, config, train=train, cache=cache)
            assert got.noise_var == pytest.approx(reference.noise_var, rel=1e-12)
            np.testing.assert_array_equal(got.ids, reference.ids)
            np.testing.assert_allclose(got.scores, reference.scores, rtol=1e-9)


def test_select_and_loop_pick_the_same(setup, tmp_path):
    """The CLI's file path and the loop's in-memory path give the same picks for one config."""
    from ntkal.loop import LoopConfig, _kernel_picks, init_state, make_context
    from ntkal.select import select_from_files
    model, params, frames, _ = setup
    labelled = np.array([1, 4, 9, 16, 22, 27])
    unlabelled = np.setdiff1d(np.arange(len(frames)), labelled)
    loop_config = LoopConfig(method="joint", selector="varred", shortlist=12, chunk_size=2,
                             kernel=KernelConfig(kind="joint", sketch_dim=16, num_probes=2, w_force=0.0),
                             initial=6, batch=4, rounds=1, size_classes=3)
    ctx = make_context(model, params, frames, {}, lambda a: list(a), loop_config, progress=False)
    state = init_state(ctx)._replace(labelled=labelled)
    energies = [frames[i].get_potential_energy() for i in labelled]
    ids, scores, pv, noise = _kernel_picks(state, ctx, unlabelled, jax.random.key(0), 4, energies)

    save_checkpoint(tmp_path / "model.msgpack", params, CONFIG)
    clean = [a.copy() for a in frames]
    for a, b in zip(clean, frames):
        a.calc = b.calc
    ase.io.write(tmp_path / "pool.extxyz", [clean[i] for i in unlabelled])
    ase.io.write(tmp_path / "train.extxyz", [clean[i] for i in labelled])
    summary = select_from_files(tmp_path / "model.msgpack", tmp_path / "pool.extxyz",
                                tmp_path / "train.extxyz", 4, out_path=tmp_path / "picked.extxyz",
                                config=loop_config.acquisition, progress=False)
    np.testing.assert_array_equal(unlabelled[list(summary.ids)], ids)
    np.testing.assert_allclose(summary.scores, scores, rtol=1e-6)
    np.testing.assert_allclose(summary.pv, pv, rtol=1e-6)
    assert summary.noise_var == pytest.approx(noise, rel=1e-6)


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def broken():
        yield 1
        yield 2
        raise RuntimeError("frame 3 is bad")

    got = []
    with pytest.raises(RuntimeError, match="frame 3 is bad"):
        for x in prefetch(broken(), 2):
            got.append(x)
    assert got == [1, 2]


def test_parallel_graphs_equal_serial_ones(monkeypatch):
    """Graphs built on 2 spawned workers (batches of 5) equal the serial ones, in order."""
    import ntkal.data.parallel as parallel
    frames = mixed_frames(12, seed=4)
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 0)
    got = parallel.structures_parallel(frames, CONFIG.cutoff, elements=CONFIG.elements, workers=2, batch=5)
    assert len(got) == len(frames)
    for s, atoms in zip(got, frames):
        fresh = atoms_to_structure(atoms, CONFIG.cutoff, elements=CONFIG.elements)
        for field in ("numbers", "positions", "senders", "receivers", "shifts", "free", "forces"):
            np.testing.assert_array_equal(getattr(s, field), getattr(fresh, field))


_MULTI_DEVICE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
assert len(jax.local_devices()) == 4, jax.local_devices()
from tiny_models import tiny_config
from test_acquire import mixed_frames
from ntkal.acquire import Acquirer, AcquisitionConfig, structure_set
from ntkal.data import atoms_to_structure, batch_atoms
from ntkal.kernels import KernelConfig
from ntkal.models import build_model

config = tiny_config(num_layers=1, lmax=1)
model = build_model(config)
frames = mixed_frames(30, seed=0)
params = model.init(jax.random.key(0), batch_atoms(frames[:2], config.cutoff))
params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
structures = [atoms_to_structure(a, config.cutoff, elements=config.elements) for a in frames]
data = structure_set(structures, 2)
assert data.plan.num_classes == 2
counts = np.bincount(data.plan.class_of)
assert all(-(-int(n) // 3) % 4 for n in counts), counts  # every class ends in a short group
ids = np.arange(30)[::-1]
for kernel in (KernelConfig(kind="joint", sketch_dim=16, num_probes=2),
               KernelConfig(kind="energy", sketch_dim=16, hoist_sketch=False),
               KernelConfig(kind="atom_embedding")):
    got = {}
    for devices in (1, 0):
        cfg = AcquisitionConfig(kernel=kernel, chunk_size=3, size_classes=2, min_class_chunks=1,
                                feature_devices=devices)
        acq = Acquirer(model, params, cfg)
        assert len(acq.devices) == (4 if devices == 0 else 1)
        seen = []
        rows = {}
        for chunk in acq.stream_features(acq.feature_map, params, data, ids):
            for g, i in enumerate(np.asarray(chunk.ids)):
                if i >= 0:
                    seen.append(int(i))
                    rows[int(i)] = (np.asarray(chunk.rows[g]), np.asarray(chunk.row_mask[g]))
        got[devices] = (seen, rows)
    (seen1, rows1), (seen4, rows4) = got[1], got[0]
    assert seen1 == seen4 and sorted(seen4) == list(range(30)), (seen1, seen4)
    for i in range(30):
        np.testing.assert_array_equal(rows1[i][1], rows4[i][1])
        np.testing.assert_allclose(rows4[i][0], rows1[i][0], rtol=1e-9, atol=1e-12)
    assert max(np.abs(rows4[i][0]).max() for i in range(30)) > 0
    print("ok features", kernel.kind)

"""


def test_features_on_four_devices_equal_one_device():
    """Featurising k chunks side by side on 4 host CPU devices (one SPMD call per group of
    same-class chunks, groups cut short at class boundaries) gives the 1-device features in the
    same order, for a hoisted sketch, a streamed sketch and a per-atom map (the picks on 4
    devices: ``test_select.py::test_same_picks_on_four_host_devices``).

    Without marking the replicated parameters as per-device values inside ``shard_map``, the
    parameter gradients of a group are summed over its devices and this fails.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT, str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.count("ok features") == 3, done.stdout


def test_feature_devices_beyond_this_process_are_refused():
    from ntkal.acquire import feature_devices
    assert len(feature_devices(0)) == len(jax.local_devices()) and len(feature_devices(1)) == 1
    with pytest.raises(ValueError, match="device"):
        feature_devices(len(jax.local_devices()) + 1)
    with pytest.raises(ValueError, match="feature_devices"):
        AcquisitionConfig(feature_devices=-1)


def test_traced_programs_on_disk_give_the_same_picks(setup, tmp_path):
    """With a program cache the acquirer's feature map and energies are exported once and
    loaded by the next run (no tracing); the picks, scores and σ² equal the traced ones."""
    from ntkal.cache import ProgramCache
    model, params, frames, structures = setup
    config = dataclasses.replace(BASE, selector="lcmd", size_classes=1)  # one program per map
    data = structure_set(structures, config.size_classes)
    train, candidates = np.arange(6), np.arange(6, 30)
    energies = np.array([frames[i].get_potential_energy() for i in train])
    plain = Acquirer(model, params, config, store=STORE).pick(params, data, train, candidates, 4,
                                                               jax.random.key(0), train_energies=energies)
    runs = []
    for _ in range(2):
        programs = ProgramCache(tmp_path / "programs")
        picks = Acquirer(model, params, config, programs=programs).pick(
            params, data, train, candidates, 4, jax.random.key(0), train_energies=energies)
        runs.append((picks, programs.exported, programs.loaded, programs.arrays_saved, programs.arrays_loaded))
    assert runs[0][1:] == (2, 0, 1, 0)  # the feature map and the energy traced, the sketch drawn, all written
    assert runs[1][1:] == (0, 2, 0, 1)  # and all loaded by the next run
    for picks, *_ in runs:
        np.testing.assert_array_equal(picks.ids, plain.ids)
        np.testing.assert_allclose(picks.scores, plain.scores, rtol=1e-9)
        assert picks.noise_var == pytest.approx(plain.noise_var, rel=1e-9)
    # a fresh process with the programs on disk picks the same without importing e3nn-jax (the
    # model is only needed to trace): that import is a second of every warm `ntkal select`
    import json
    import pickle
    import subprocess
    import sys
    save_checkpoint(tmp_path / "model.msgpack", params, CONFIG)
    # exact positions (no text round trip) and the very config of the runs above
    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps((structures, energies, config)))
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["e3nn"] is False and got["programs"] == [0, 2] and got["arrays"] == [0, 1]
    np.testing.assert_array_equal(got["ids"], plain.ids)
    np.testing.assert_allclose(got["scores"], plain.scores, rtol=1e-9)


_FRESH_PROCESS_SCRIPT = r"""
import json, pickle, sys
from pathlib import Path
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from ntkal.acquire import Acquirer, structure_set
from ntkal.models import load_checkpoint
from ntkal.cache import ProgramCache

folder = Path(sys.argv[1])
model, params, _ = load_checkpoint(folder / "model.msgpack")
structures, energies, config = pickle.loads((folder / "inputs.pkl").read_bytes())
train = np.arange(6)
programs = ProgramCache(folder / "programs")
picks = Acquirer(model, params, config, programs=programs).pick(
    params, structure_set(structures, config.size_classes), train, np.arange(6, 30), 4, jax.random.key(0), train_energies=energies)
print(json.dumps({"e3nn": "e3nn_jax" in sys.modules, "programs": [programs.exported, programs.loaded],
                  "arrays": [programs.arrays_saved, programs.arrays_loaded],
                  "ids": np.asarray(picks.ids).tolist(), "scores": np.asarray(picks.scores).tolist()}))
"""


def test_evidence_offsets_remove_exactly_the_per_element_part_of_the_residuals():
    """Residuals = per-element offsets (hundreds of eV, as between two levels of theory) + a part
    the features can explain: the offsets go, the rest stays (up to its own per-element fit);
    the loop turns this on with ``[train] refit_e0``."""
    from ntkal.acquire.pipeline import without_element_offsets
    from ntkal.data import Structure
    from ntkal.loop import LoopConfig
    from ntkal.train import TrainConfig

    rng = np.random.default_rng(0)
    structures = []
    for _ in range(15):
        numbers = rng.choice([1, 6, 8], size=rng.integers(4, 12))
        n = len(numbers)
        structures.append(Structure(numbers, rng.normal(size=(n, 3)), np.zeros((3, 3)), np.zeros(0, np.int32),
                                    np.zeros(0, np.int32), np.zeros((0, 3)), float("nan"), np.zeros((n, 3)),
                                    False, np.ones(n, bool)))
    offset = {1: -310.2, 6: -1030.7, 8: -2040.1}
    counts = np.array([[np.sum(s.numbers == z) for z in (1, 6, 8)] for s in structures])
    signal = rng.normal(scale=0.3, size=len(structures))
    signal -= counts @ np.linalg.lstsq(counts, signal, rcond=None)[0]  # no per-element part of its own
    residuals = counts @ np.array([offset[1], offset[6], offset[8]]) + signal
    got = without_element_offsets(residuals, structures, (1, 6, 7, 8))
    np.testing.assert_allclose(got, signal, atol=1e-5)  # offsets of ~10³ eV: 1e-8 relative (the fit's ridge)
    assert LoopConfig(train=TrainConfig(refit_e0=True)).acquisition.evidence_offsets
    assert not LoopConfig().acquisition.evidence_offsets

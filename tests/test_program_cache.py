"""Traced programs on disk (jax.export): the same results, traced once per key and folder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkal.cache import ProgramCache, code_fingerprint


def make_fn(traces: list):
    def fn(params, x):
        traces.append(1)  # runs only while tracing
        return (jnp.tanh(x @ params["w"]) + params["b"], jnp.sum(x, axis=-1))
    return fn


PARAMS = {"w": np.arange(12.0, dtype=np.float32).reshape(4, 3) / 10, "b": np.ones(3, np.float32)}


def test_second_cache_on_the_folder_loads_instead_of_tracing(tmp_path):
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    want = make_fn([])(PARAMS, x)
    traces = []
    first = ProgramCache(tmp_path, fingerprint="code-a")
    got = first.call(("toy", 1), make_fn(traces), (PARAMS, x))
    again = first.call(("toy", 1), make_fn(traces), (PARAMS, x + 1))  # same key: in memory
    assert len(traces) == 1 and first.exported == 1 and first.loaded == 0
    assert len(list(tmp_path.glob("*.jaxexport"))) == 1
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(make_fn([])(PARAMS, x + 1)[1]))

    second = ProgramCache(tmp_path, fingerprint="code-a")  # a new process, in effect
    got2 = second.call(("toy", 1), make_fn(traces), (PARAMS, x))
    assert len(traces) == 1 and second.loaded == 1 and second.exported == 0
    for a, b in zip(got2, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("change", ["static", "shape", "dtype", "tree", "code"])
def test_anything_that_changes_the_program_changes_the_key(tmp_path, change):
    x = np.zeros((2, 4), np.float32)
    base = ProgramCache(tmp_path, fingerprint="code-a")
    key = base.key(("toy", 1), (PARAMS, x))
    assert key == ProgramCache(tmp_path, fingerprint="code-a").key(("toy", 1), (PARAMS, x.copy()))
    static, args, other = ("toy", 1), (PARAMS, x), base
    if change == "static":
        static = ("toy", 2)
    elif change == "shape":
        args = (PARAMS, np.zeros((3, 4), np.float32))
    elif change == "dtype":
        args = (PARAMS, x.astype(np.int32))
    elif change == "tree":
        args = ({"w": PARAMS["w"], "c": PARAMS["b"]}, x)
    else:
        other = ProgramCache(tmp_path, fingerprint="code-b")
    assert other.key(static, args) != key


def test_unreadable_file_is_traced_again_and_replaced(tmp_path):
    x = np.ones((2, 4), np.float32)
    cache = ProgramCache(tmp_path, fingerprint="code-a")
    path = tmp_path / f"{cache.key(('toy',), (PARAMS, x))}.jaxexport"
    path.write_bytes(b"not a program")
    traces = []
    got = cache.call(("toy",), make_fn(traces), (PARAMS, x))
    assert len(traces) == 1 and cache.exported == 1 and path.read_bytes() != b"not a program"
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(make_fn([])(PARAMS, x)[0]))
    assert ProgramCache(tmp_path, fingerprint="code-a").call(("toy",), make_fn(traces), (PARAMS, x)) is not None
    assert len(traces) == 1


def test_code_fingerprint_covers_the_ntkal_sources(tmp_path, monkeypatch):
    import ntkal.cache.programs as module
    base = code_fingerprint()
    assert base == code_fingerprint() and len(base) == 64
    fake = tmp_path / "ntkal"
    fake.mkdir()
    (fake / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(module, "__file__", str(fake / "cache" / "programs.py"))
    one = code_fingerprint()
    (fake / "a.py").write_text("x = 2\n")
    assert code_fingerprint() != one != base


def test_arrays_are_computed_once_and_read_back_bitwise(tmp_path):
    builds = []

    def build():
        builds.append(1)
        key = jax.random.key(3)
        return [jax.random.normal(key, (5, 4), jnp.float32), jax.random.normal(jax.random.fold_in(key, 1), (2, 4))]

    want = [np.asarray(a) for a in build()]
    builds.clear()
    first = ProgramCache(tmp_path, fingerprint="code-a")
    got = first.arrays(("sketch", 4), build)
    assert len(builds) == 1 and (first.arrays_saved, first.arrays_loaded) == (1, 0)
    second = ProgramCache(tmp_path, fingerprint="code-a")
    again = second.arrays(("sketch", 4), build)
    assert len(builds) == 1 and (second.arrays_saved, second.arrays_loaded) == (0, 1)
    for arrays in (got, again):
        assert [np.asarray(a).dtype for a in arrays] == [w.dtype for w in want]
        for a, w in zip(arrays, want):
            np.testing.assert_array_equal(np.asarray(a), w)
    # another description, another code fingerprint or other PRNG settings: computed again
    ProgramCache(tmp_path, fingerprint="code-a").arrays(("sketch", 5), build)
    ProgramCache(tmp_path, fingerprint="code-b").arrays(("sketch", 4), build)
    assert len(builds) == 3
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        ProgramCache(tmp_path, fingerprint="code-a").arrays(("sketch", 4), build)
    assert len(builds) == 4
    # a truncated file is computed again and replaced
    alone = tmp_path / "alone"
    ProgramCache(alone, fingerprint="code-a").arrays(("sketch", 4), build)
    [stored] = alone.glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:100])
    third = ProgramCache(alone, fingerprint="code-a")
    for a, w in zip(third.arrays(("sketch", 4), build), want):
        np.testing.assert_array_equal(np.asarray(a), w)
    assert (third.arrays_saved, third.arrays_loaded) == (1, 0) and len(builds) == 6
    fourth = ProgramCache(alone, fingerprint="code-a")
    fourth.arrays(("sketch", 4), build)
    assert (fourth.arrays_saved, fourth.arrays_loaded) == (0, 1) and len(builds) == 6


def test_feature_map_reads_its_sketch_from_the_store(tmp_path):
    import ase.build
    from tiny_models import tiny_config
    from ntkal.data import batch_atoms
    from ntkal.kernels import KernelConfig, make_feature_map
    from ntkal.models import build_model
    model = build_model(tiny_config(num_layers=1, lmax=1))
    params = model.init(jax.random.key(0), batch_atoms([ase.build.bulk("Cu", cubic=True)], model.config.cutoff))
    config = KernelConfig(kind="energy", sketch_dim=8, seed=2)
    drawn = make_feature_map(model, config, params).constants
    store = ProgramCache(tmp_path, fingerprint="code-a")
    written = make_feature_map(model, config, params, store=store).constants
    read = make_feature_map(model, config, params, store=ProgramCache(tmp_path, fingerprint="code-a")).constants
    assert store.arrays_saved == 1 and len(drawn) == len(read) > 1
    for a, b, c in zip(drawn, written, read):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    other = make_feature_map(model, KernelConfig(kind="energy", sketch_dim=8, seed=3), params, store=store)
    assert store.arrays_saved == 2 and not np.array_equal(np.asarray(other.constants[0]), np.asarray(drawn[0]))

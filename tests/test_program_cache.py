"""Traced programs on disk (jax.export): the same results, traced once per key and folder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkal.program_cache import ProgramCache, code_fingerprint


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
    import ntkal.program_cache as module
    base = code_fingerprint()
    assert base == code_fingerprint() and len(base) == 64
    fake = tmp_path / "ntkal"
    fake.mkdir()
    (fake / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(module, "__file__", str(fake / "program_cache.py"))
    one = code_fingerprint()
    (fake / "a.py").write_text("x = 2\n")
    assert code_fingerprint() != one != base

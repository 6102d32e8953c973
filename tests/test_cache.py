"""ntkal.cache: one package for the program caches; compiled programs owned, never module-level.

- the deprecated modules ``ntkal.compile_cache`` and ``ntkal.program_cache`` warn once and give
  the very objects of :mod:`ntkal.cache`;
- ``import ntkal.cache`` and ``ntkal --help`` load neither JAX nor NumPy;
- the code fingerprint still hashes every module of the package after the move into ``cache/``;
- no module keeps a module-level ``functools`` cache beyond the two reviewed ones (neither holds
  compiled programs); the fine-tuning, shortlist and selector programs live in their owner's dict:
  two owners never share them, and dropping the owner releases them.
"""

import ast
import gc
import json
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

import ntkal
import ntkal.cache
from ntkal.cache import build_once

PACKAGE = Path(ntkal.__file__).resolve().parent


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


# --- one package, deprecated aliases ---------------------------------------------------------

@pytest.mark.parametrize("old, names", [
    ("ntkal.compile_cache", ["default_cache_dir", "enable_compile_cache", "enable_compile_cache_or_warn",
                             "add_compile_cache_argument"]),
    ("ntkal.program_cache", ["ProgramCache", "code_fingerprint"]),
])
def test_deprecated_modules_warn_once_and_reexport_the_same_objects(monkeypatch, old, names):
    monkeypatch.delitem(sys.modules, old, raising=False)  # restored after the test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(old)  # an import statement's own call, so the warning's frame is this file's
        module = sys.modules[old]
        __import__(old)  # a second import finds the module: no second warning
    assert sys.modules[old] is module
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in caught]
    assert old in str(deprecations[0].message) and "ntkal.cache" in str(deprecations[0].message)
    assert deprecations[0].filename == __file__  # points at the importer, not at importlib
    assert sorted(module.__all__) == sorted(names)
    for name in names:
        assert getattr(module, name) is getattr(ntkal.cache, name), name


def test_cache_package_exports_every_name_it_lists():
    assert set(ntkal.cache.__all__) == {"default_cache_dir", "enable_compile_cache", "enable_compile_cache_or_warn",
                                        "add_compile_cache_argument", "build_once", "ProgramCache",
                                        "code_fingerprint"}
    for name in ntkal.cache.__all__:
        assert callable(getattr(ntkal.cache, name)), name
    from ntkal.cache.programs import ProgramCache
    assert ntkal.cache.ProgramCache is ProgramCache


def test_cache_package_and_help_load_neither_jax_nor_numpy():
    code = """
import contextlib, io, json, sys
import ntkal.cache
after_cache = sorted(m for m in ("jax", "numpy") if m in sys.modules)
from ntkal.cli import main
for argv in (["--help"], ["select", "--help"], ["run", "--help"], ["train", "--help"], ["md", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps([after_cache, sorted(m for m in ("jax", "numpy") if m in sys.modules)]))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[], []]


def test_code_fingerprint_hashes_every_module_of_the_package(tmp_path, monkeypatch):
    import ntkal.cache.programs as programs

    sources = programs.package_sources()
    assert set(sources) == set(PACKAGE.rglob("*.py"))
    for part in ("__init__.py", "loop.py", "cache/programs.py", "posterior/selectors.py", "data/parallel.py"):
        assert PACKAGE / part in sources, part
    # a copy of the package layout: an edit at the top level or in a subpackage changes the key
    fake = tmp_path / "ntkal"
    (fake / "cache").mkdir(parents=True)
    (fake / "sub").mkdir()
    for name in ("a.py", "cache/programs.py", "sub/b.py"):
        (fake / name).write_text("x = 1\n")
    monkeypatch.setattr(programs, "__file__", str(fake / "cache" / "programs.py"))
    seen = {programs.code_fingerprint()}
    for name in ("a.py", "sub/b.py"):
        (fake / name).write_text("x = 2\n")
        seen.add(programs.code_fingerprint())
    assert len(seen) == 3


# --- compiled programs belong to their owners ------------------------------------------------

#: The module-level functools caches left, each reviewed: (module path, function) -> why it stays.
REVIEWED_CACHES = {
    ("models/build.py", "build_model"):
        "one MLIP object per config (8 kept): the owners key their programs on the model, so a "
        "checkpoint loaded again by the next sweep point finds them (issue 27)",
    ("data/overlap.py", "_projection"):
        "a NumPy vector per frame length (bucketing weights), no compiled program",
}


def _is_functools_cache(node, decorator: bool = False) -> bool:
    """``functools.lru_cache``/``functools.cache``, or a bare ``lru_cache`` (bare ``cache`` as a decorator)."""
    if isinstance(node, ast.Attribute):
        return node.attr in ("lru_cache", "cache") and getattr(node.value, "id", "") == "functools"
    return isinstance(node, ast.Name) and (node.id == "lru_cache" or (decorator and node.id == "cache"))


def test_no_module_level_cache_beyond_the_reviewed_ones():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.parse(path.read_text(), filename=str(path)).body:  # module level only:
            # methods and closures die with the object or call that made them
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(_is_functools_cache(n, decorator=True) for d in node.decorator_list for n in ast.walk(d)):
                    found.add((where, node.name))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                if any(_is_functools_cache(n) for n in ast.walk(node.value)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    found.update((where, ast.unparse(t)) for t in targets)
    assert found == set(REVIEWED_CACHES), sorted(found ^ set(REVIEWED_CACHES))


def test_build_once_keeps_one_value_per_key_and_store():
    calls = []

    def build():
        calls.append(1)
        return object()

    holder = object()
    store = {}
    first = build_once(store, ("k", 1), build, holds=holder)
    assert build_once(store, ("k", 1), build) is first and len(calls) == 1
    assert store[("k", 1)] == (holder, first)  # the held object lives as long as the entry
    assert build_once({}, ("k", 1), build) is not first  # another owner: its own value
    assert build_once(None, ("k", 1), build) is not build_once(None, ("k", 1), build)  # no owner: nothing kept
    assert len(calls) == 4


def _released(store: dict, watch) -> bool:
    """Whether ``watch(store)`` (a jitted function) is freed once its owner ``store`` is emptied."""
    ref = weakref.ref(watch(store))
    store.clear()
    gc.collect()
    return ref() is None


def test_fit_programs_belong_to_their_owner():
    import dataclasses

    from tiny_models import tiny_config

    from ntkal.models import build_model
    from ntkal.train import FitPrograms, TrainConfig, fit_programs

    model = build_model(tiny_config(num_layers=1, lmax=1))
    config = TrainConfig(batch_size=4)
    mine, yours = {}, {}
    programs = fit_programs(model, config, mine)
    assert isinstance(programs, FitPrograms) and len(mine) == 1
    # settings only the host loop reads find the same programs; one that shapes the step does not
    assert fit_programs(model, dataclasses.replace(config, learning_rate=1e-4, seed=9, max_epochs=3), mine) is programs
    assert fit_programs(model, dataclasses.replace(config, force_weight=1.0), mine) is not programs
    assert len(mine) == 2
    assert fit_programs(model, config, yours).step is not programs.step  # owners never share
    assert fit_programs(model, config).step is not programs.step  # no owner: the caller's alone
    del programs
    assert _released(mine, lambda store: fit_programs(model, config, store).step)


def test_selector_and_shortlist_programs_belong_to_their_owner():
    from ntkal.posterior import chunk_from_arrays, fit_posterior, make_selector, select_batch, shortlist_pool

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((12, 2, 3)).astype(np.float32)
    chunk = chunk_from_arrays(rows)
    posterior = fit_posterior([chunk_from_arrays(rows[:3])], 3, noise_var=0.1)
    mine, yours = {}, {}
    picked = select_batch("maxdiag", chunk, budget=3, posterior=posterior, compiled=mine)
    again = select_batch("maxdiag", chunk, budget=3, posterior=posterior, compiled=mine)
    np.testing.assert_array_equal(np.asarray(picked.ids), np.asarray(again.ids))
    select_batch("maxdiag", chunk, budget=3, posterior=posterior, compiled=yours)
    assert len(mine) == len(yours) == 1 and mine.keys() == yours.keys()
    assert mine[next(iter(mine))][1] is not yours[next(iter(yours))][1]  # owners never share
    short = shortlist_pool([chunk], posterior, 5, compiled=mine)
    shortlist_pool([chunk], posterior, 5, compiled=mine)
    assert int(short.n_seen) == 12 and len(mine) == 2
    assert sorted(key[0] for key in mine) == ["ntkal.posterior.selectors", "ntkal.posterior.shortlist"]

    def kernel(store):
        return next(value for key, (_, value) in store.items() if key[0] == "ntkal.posterior.shortlist")

    def selector(store):
        return next(value for key, (_, value) in store.items() if key[0] == "ntkal.posterior.selectors")

    assert _released(yours, selector)  # compiled and called, then freed with its owner
    assert _released(dict(mine), kernel) is False  # still held by its owner, ``mine``
    assert _released(mine, kernel)
    # a selector from make_selector owns a dict of its own
    one, two = make_selector("maxdiag"), make_selector("maxdiag")
    assert one.keywords["compiled"] == {} and one.keywords["compiled"] is not two.keywords["compiled"]
    one(chunk, budget=3, posterior=posterior)
    one(chunk, budget=3, posterior=posterior)
    assert len(one.keywords["compiled"]) == 1 and two.keywords["compiled"] == {}


def test_acquirers_sharing_a_store_share_their_selector_programs_without_holding_the_store():
    import dataclasses

    import ase.build
    import jax
    from tiny_models import tiny_config

    from ntkal.acquire import Acquirer, AcquisitionConfig
    from ntkal.data import batch_atoms
    from ntkal.kernels import KernelConfig
    from ntkal.models import build_model

    model = build_model(tiny_config(num_layers=1, lmax=1))
    params = model.init(jax.random.key(0), batch_atoms([ase.build.bulk("Cu", cubic=True)], model.config.cutoff))
    config = AcquisitionConfig(kernel=KernelConfig(kind="energy", sketch_dim=8))
    store = {}
    first = Acquirer(model, params, config, store=store)
    second = Acquirer(model, params, dataclasses.replace(config, shortlist=64), store=store)
    assert first.compiled is second.compiled and any(value is first.compiled for _, value in store.values())
    assert Acquirer(model, params, config).compiled is not first.compiled
    assert not [v for v in vars(first).values() if v is store]  # no cycle store -> acquirer -> store

"""ntkal.labelling: oracle config, label store, executors (serial/thread/process/Dask), resume."""

import pickle
from collections import Counter

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from ntkal.datasets import LabellingError
from ntkal.labelling import (LabelStore, OracleConfig, as_oracle, build_oracle, label_structures,
                             make_executor, resolve_import, structure_hash)

FUNC = "labelling_oracles:counting_emt"  # tests/ is on sys.path (and so in spawned workers)


def structures(n, seed=0):
    """``n`` distinct rattled 4-atom Cu cells; every other one with FixAtoms and tags."""
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.rattle(0.05, seed=seed + i)
        a.info["pool_index"] = i
        if i % 2:
            a.set_constraint(FixAtoms(indices=[0]))
            a.set_tags([1, 0, 0, 2])
        out.append(a)
    return out


def emt_labels(atoms):
    work = atoms.copy()
    work.calc = EMT()
    return work.get_potential_energy(), work.get_forces(apply_constraint=False)


def log_lines(path):
    return path.read_text().split() if path.exists() else []


def calls(path, outcome):
    lines = log_lines(path)
    return Counter(h for o, h in zip(lines[::2], lines[1::2]) if o == outcome)


def assert_same_labels(outcome, ref):
    assert len(outcome.atoms) == len(ref)
    for got, want in zip(outcome.atoms, ref):
        e, f = emt_labels(want)
        assert got.get_potential_energy() == pytest.approx(e, abs=1e-12)
        np.testing.assert_allclose(got.get_forces(apply_constraint=False), f, atol=1e-12)
        assert got.info["pool_index"] == want.info["pool_index"]
        np.testing.assert_array_equal(got.positions, want.positions)


# -- config ----------------------------------------------------------------------------------------
def test_config_round_trip_fingerprint_and_pickle():
    table = {"calculator": "ase.calculators.emt:EMT", "kwargs": {"fixed_cutoff": True, "nested": {"b": [1, 2], "a": "x"}},
             "workers": 3, "retries": 2, "on_failure": "stop", "store": "labels.db", "tag": "v1"}
    cfg = OracleConfig.from_dict(table)
    assert cfg.executor == "process"
    assert cfg.kwargs_dict() == table["kwargs"]
    assert OracleConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(OracleConfig.from_dict(cfg.to_dict()))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    fp = cfg.fingerprint()
    assert len(fp) == 16 and fp == OracleConfig.from_dict(table).fingerprint()
    # what does not change labels does not change the fingerprint ...
    same = OracleConfig.from_dict({**table, "workers": 1, "executor": "thread", "retries": 0,
                                   "on_failure": "skip", "store": "x.db"})
    assert same.fingerprint() == fp
    # ... what does, does
    for change in ({"kwargs": {"fixed_cutoff": False, "nested": {"b": [1, 2], "a": "x"}}},
                   {"tag": "v2"}, {"calculator": "emt", "kwargs": table["kwargs"]}):
        assert OracleConfig.from_dict({**table, **change}).fingerprint() != fp
    assert OracleConfig(calculator="emt", scheduler="tcp://h:8786").executor == "dask"


def test_config_from_toml_table():
    import tomllib

    table = tomllib.loads("""
        [oracle]
        calculator = "ase.calculators.espresso:Espresso"
        kwargs = { pseudopotentials = { Cu = "Cu.pbe.UPF" }, kpts = [4, 4, 1] }
        scheduler = "tcp://head-node:8786"
        workers = 16
        retry_on = ["ase.calculators.calculator:CalculationFailed", "RuntimeError"]
        """)["oracle"]
    cfg = OracleConfig.from_dict(table)
    assert cfg.executor == "dask" and cfg.workers == 16
    assert cfg.kwargs_dict() == {"pseudopotentials": {"Cu": "Cu.pbe.UPF"}, "kpts": [4, 4, 1]}
    assert OracleConfig.from_dict(cfg.to_dict()) == cfg


def test_xtb_shortcut_uses_the_xtb_ladder():
    pytest.importorskip("tblite")
    from ase.build import molecule

    oracle = build_oracle(OracleConfig(calculator="xtb", retries=4, kwargs={"max_iterations": 300}))
    assert [s.name for s in oracle.ladder] == ["default", "fresh", "damped", "hot", "retry4"]
    assert oracle.max_threads == 1
    assert oracle.make_calculator(**oracle.ladder[2].params).parameters["max_iterations"] == 500
    labelled = oracle.label_one(molecule("H2"))
    assert np.isfinite(labelled.get_potential_energy()) and labelled.info["oracle"] == "xtb"


@pytest.mark.parametrize("table, match", [
    ({"calculator": "emt", "colour": 1}, "unknown key 'colour' in \\[oracle\\]"),
    ({}, "exactly one of calculator"),
    ({"calculator": "emt", "function": FUNC}, "exactly one of calculator"),
    ({"calculator": "vasp"}, "calculator must be 'emt', 'xtb' or an import path"),
    ({"function": "mod.f"}, "function must be an import path"),
    ({"calculator": "emt", "executor": "mpi"}, "executor must be one of"),
    ({"calculator": "emt", "executor": "thread", "scheduler": "tcp://h:1"}, "executor must be 'dask'"),
    ({"calculator": "emt", "executor": "dask"}, "needs scheduler"),
    ({"calculator": "emt", "workers": 0}, "workers must be an integer >= 1"),
    ({"calculator": "emt", "workers": True}, "workers must be an integer"),
    ({"calculator": "emt", "executor": "serial", "workers": 2}, "workers must be 1"),
    ({"calculator": "emt", "retries": -1}, "retries must be an integer >= 0"),
    ({"calculator": "emt", "on_failure": "ignore"}, "on_failure must be one of"),
    ({"calculator": "emt", "kwargs": [1]}, "kwargs must be a table"),
    ({"calculator": "emt", "kwargs": {"x": object()}}, "kwargs.x: unsupported value"),
    ({"calculator": "emt", "retry_on": "RuntimeError"}, "retry_on must be a list"),
    ({"function": FUNC, "scratch": "/tmp/x"}, "scratch applies to calculators only"),
])
def test_config_errors_name_the_key(table, match):
    with pytest.raises(ValueError, match=match):
        OracleConfig.from_dict(table)


def test_resolve_import_and_its_errors():
    assert resolve_import("ase.calculators.emt:EMT") is EMT
    assert resolve_import("RuntimeError") is RuntimeError
    assert resolve_import("ase:Atoms.copy") is not None
    with pytest.raises(ImportError, match="oracle calculator 'foo.bar:Baz': module foo.bar not found"):
        resolve_import("foo.bar:Baz")
    with pytest.raises(ImportError, match="module ase.calculators.emt has no attribute Nope"):
        resolve_import("ase.calculators.emt:Nope")
    with pytest.raises(ImportError, match="expected an import path"):
        resolve_import("emt")
    with pytest.raises(ImportError, match="oracle calculator 'foo.bar:Baz': module foo.bar not found"):
        build_oracle(OracleConfig(calculator="foo.bar:Baz"))
    with pytest.raises(ImportError, match="oracle retry_on 'nope:E'"):
        build_oracle(OracleConfig(calculator="emt", retry_on=("nope:E",)))


# -- hashing and the store ---------------------------------------------------------------------------
def test_structure_hash_invariance_and_sensitivity():
    a = structures(1)[0]
    h = structure_hash(a)
    assert structure_hash(a.copy()) == h and len(h) == 64
    b = a.copy()
    b.set_tags([5, 5, 5, 5])
    b.set_constraint(FixAtoms(indices=[1]))
    b.info["other"] = "ignored"
    assert structure_hash(b) == h  # tags, constraints, other info are not hashed
    moved = a.copy()
    moved.positions[2, 1] += 1e-12
    assert structure_hash(moved) != h
    zero = a.copy()
    zero.positions[0] = [-0.0, 0.0, -0.0]
    zero2 = a.copy()
    zero2.positions[0] = [0.0, 0.0, 0.0]
    assert structure_hash(zero) == structure_hash(zero2)
    for change in (lambda x: x.info.update(charge=1), lambda x: x.set_initial_magnetic_moments([1, 0, 0, 0]),
                   lambda x: x.set_pbc([True, True, False]), lambda x: x.set_atomic_numbers([29, 29, 29, 79])):
        c = a.copy()
        change(c)
        assert structure_hash(c) != h
    c0, c1 = a.copy(), a.copy()
    c0.info["charge"], c1.info["charge"] = 0, 0.0
    assert structure_hash(c0) == structure_hash(c1)


def test_store_round_trip_exact(tmp_path):
    path = tmp_path / "sub" / "labels.db"
    store = LabelStore(path)
    atoms = structures(2)[1]  # FixAtoms + tags
    atoms.info.update(source="test", vec=np.arange(3.0))
    fp = OracleConfig(calculator="emt").fingerprint()
    assert store.get(atoms, fp) is None and len(store) == 0
    labelled = build_oracle(OracleConfig(calculator="emt")).label_one(atoms)
    store.put(labelled, fp)

    fresh = LabelStore(path)  # a new connection: it is on disk
    got = fresh.get(atoms.copy(), fp)
    assert got.get_potential_energy() == labelled.get_potential_energy()
    np.testing.assert_array_equal(got.get_forces(apply_constraint=False),
                                  labelled.get_forces(apply_constraint=False))
    assert got.constraints[0].todict() == atoms.constraints[0].todict()
    np.testing.assert_array_equal(got.get_tags(), atoms.get_tags())
    assert got.info["source"] == "test" and got.info["oracle"] == "emt"
    (stored,) = list(fresh.labelled(fp))  # as stored, from the database alone
    assert stored.get_potential_energy() == labelled.get_potential_energy()
    np.testing.assert_array_equal(stored.get_forces(apply_constraint=False),
                                  labelled.get_forces(apply_constraint=False))
    np.testing.assert_array_equal(stored.positions, atoms.positions)
    assert stored.constraints[0].todict() == atoms.constraints[0].todict()
    np.testing.assert_array_equal(stored.get_tags(), atoms.get_tags())
    np.testing.assert_array_equal(stored.info["vec"], np.arange(3.0))

    other = OracleConfig(calculator="emt", kwargs={"fixed_cutoff": False}).fingerprint()
    assert other != fp and fresh.get(atoms, other) is None
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-12
    assert fresh.get(moved, fp) is None

    fresh.put_failure(moved, fp, "SCF did not converge", ("default", "retry1"))
    rec = fresh.failure(moved, fp)
    assert rec.error == "SCF did not converge" and rec.attempts == ("default", "retry1")
    assert fresh.get(moved, fp) is None and fresh.failure(atoms, fp) is None
    assert fresh.counts(fp) == {"labelled": 1, "failed": 1} and len(fresh) == 2
    fresh.put(with_calc(moved), fp)  # a later success overwrites the failure in place
    assert fresh.failure(moved, fp) is None and fresh.get(moved, fp) is not None and len(fresh) == 2
    fresh.put_failure(moved, fp, "x", ("default",))
    assert fresh.forget_failures(fp) == 1 and fresh.counts() == {"labelled": 1, "failed": 0}
    with pytest.raises(ValueError, match="needs atoms with energy and forces"):
        fresh.put(atoms, fp)


def with_calc(atoms):
    return build_oracle(OracleConfig(calculator="emt")).label_one(atoms)


# -- oracles and executors --------------------------------------------------------------------------
def test_function_oracles_serial_and_thread(tmp_path):
    ref = structures(3)
    for function, executor in (("labelling_oracles:emt_atoms", "serial"), (FUNC, "thread")):
        cfg = OracleConfig(function=function, executor=executor, workers=1 if executor == "serial" else 2)
        out = label_structures(ref, cfg, LabelStore(tmp_path / f"{executor}.db"))
        assert_same_labels(out, ref)
        assert (out.computed, out.from_store, out.failed) == (3, 0, 0)
        assert out.atoms[1].constraints and out.atoms[1].info["oracle"] == function
    with pytest.raises(ValueError, match="returned forces of shape"):
        label_structures(ref[:1], OracleConfig(function="labelling_oracles:bad_shape", executor="serial"),
                         LabelStore(tmp_path / "bad.db"))


def test_process_pool_matches_serial_in_input_order(tmp_path):
    ref = structures(6, seed=10)
    ref[0].calc = EMT()
    ref[0].calc.hook = lambda: None  # an attached calculator that does not pickle is not sent
    cfg = OracleConfig(calculator="emt", executor="process", workers=2)
    with make_executor(cfg) as ex:
        assert ex._mp_context.get_start_method() == "spawn"
        out = label_structures(ref, cfg, LabelStore(tmp_path / "p.db"), executor=ex, progress=True)
    serial = label_structures(ref, OracleConfig(calculator="emt", executor="serial"), LabelStore(tmp_path / "s.db"))
    assert_same_labels(out, ref)
    for a, b in zip(out.atoms, serial.atoms):
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(apply_constraint=False), b.get_forces(apply_constraint=False))


def test_local_dask_cluster_matches_serial(tmp_path):
    distributed = pytest.importorskip("distributed")
    ref = structures(4, seed=20)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster:
        cfg = OracleConfig(function=FUNC, scheduler=cluster.scheduler_address, workers=2,
                           kwargs={"log": str(tmp_path / "calls.log")})
        assert cfg.executor == "dask"
        out = label_structures(ref, cfg, LabelStore(tmp_path / "d.db"))
    assert_same_labels(out, ref)
    assert sum(calls(tmp_path / "calls.log", "ok").values()) == 4


def test_store_prevents_relabelling_across_a_crash(tmp_path):
    log, flag = tmp_path / "calls.log", tmp_path / "crash.flag"
    flag.write_text("crash while this file exists")
    ref = structures(7, seed=30)
    ref[4].info["crash"] = True
    batch = ref + [ref[1].copy()]  # a duplicate: computed once
    cfg = OracleConfig(function=FUNC, kwargs={"log": str(log), "crash_flag": str(flag)}, executor="process",
                       workers=2, on_failure="stop")
    store = LabelStore(tmp_path / "labels.db")
    with make_executor(cfg) as ex:
        with pytest.raises(RuntimeError, match="simulated crash") as err:
            label_structures(batch, cfg, store, executor=ex)
        assert "while labelling structure 4" in "".join(err.value.__notes__)
        ok_first = calls(log, "ok")
        assert store.counts(cfg.fingerprint()) == {"labelled": len(ok_first), "failed": 0}  # nothing lost
        assert calls(log, "crash") == Counter({structure_hash(ref[4]): 1})

        flag.unlink()
        out = label_structures(batch, cfg, store, executor=ex)
    assert_same_labels(out, batch)
    assert out.from_store == len(ok_first) + (structure_hash(ref[1]) in ok_first)
    assert out.from_store + out.computed == 8 and out.failed == 0
    ok = calls(log, "ok")
    assert set(ok) == {structure_hash(a) for a in ref} and set(ok.values()) == {1}  # each once, ever

    again = as_oracle(cfg, store)(batch[::-1])  # all from the store: no executor, no call
    assert (again.from_store, again.computed) == (8, 0)
    assert_same_labels(again, batch[::-1])
    assert calls(log, "ok") == ok


def test_failed_structure_skip_is_recorded_and_never_retried(tmp_path):
    log = tmp_path / "calls.log"
    ref = structures(4, seed=40)
    ref[2].info["poison"] = True
    cfg = OracleConfig(function=FUNC, kwargs={"log": str(log)}, executor="serial", retries=2)
    store = LabelStore(tmp_path / "labels.db")
    out = label_structures(ref, cfg, store)
    assert out.atoms[2] is None and (out.computed, out.failed) == (3, 1) and out.indices == [0, 1, 3]
    (fail,) = out.failures
    assert fail.index == 2 and fail.attempts == ("default", "retry1", "retry2")
    assert "poisoned structure" in fail.error
    rec = store.failure(ref[2], cfg.fingerprint())
    assert len(rec.attempts) == 1 + cfg.retries and "poisoned structure" in rec.error
    assert calls(log, "fail")[structure_hash(ref[2])] == 3
    assert_same_labels(type(out)(out.labelled, [], 0, 0, 0), [ref[i] for i in out.indices])

    rerun = label_structures(ref, cfg, store)
    assert (rerun.from_store, rerun.computed, rerun.failed) == (3, 0, 1)
    assert rerun.failures[0].error == fail.error
    assert calls(log, "fail")[structure_hash(ref[2])] == 3  # never offered again


def test_failed_structure_stop_raises_after_storing_successes(tmp_path):
    log = tmp_path / "calls.log"
    ref = structures(4, seed=50)
    ref[1].info["poison"] = True
    cfg = OracleConfig(function=FUNC, kwargs={"log": str(log)}, executor="thread", workers=1,
                       retries=0, on_failure="stop")
    store = LabelStore(tmp_path / "labels.db")
    with pytest.raises(LabellingError, match="poisoned structure") as err:
        label_structures(ref, cfg, store)
    assert err.value.index == 1 and err.value.attempts == ("default",)
    counts = store.counts(cfg.fingerprint())
    assert counts["failed"] == 1 and counts["labelled"] == sum(calls(log, "ok").values()) >= 1
    n_lines = len(log_lines(log))
    with pytest.raises(LabellingError, match="recorded in"):  # a recorded failure stops at once
        label_structures(ref, cfg, store)
    assert len(log_lines(log)) == n_lines


def test_store_keeps_numpy_valued_info(tmp_path):
    """ASE's extxyz reader returns integer fields as numpy.int64 and ase.build slabs carry a
    dict of numpy values (adsorbate_info): both must store (a crash here loses a DFT label)."""
    from ase.build import fcc111

    atoms = fcc111("Cu", size=(2, 2, 2), vacuum=4.0)
    atoms.info.update(sid=np.int64(7), weight=np.float32(0.5), flags=[np.int64(1), "x"])
    atoms.calc = EMT()
    atoms.get_forces()
    store, fp = LabelStore(tmp_path / "labels.db"), "fp"
    store.put(atoms, fp)
    got = store.get(atoms, fp)
    assert got.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    row = next(iter(store.labelled(fp)))
    assert row.info["sid"] == 7 and row.info["weight"] == 0.5
    store.put_failure(atoms, "other", "SCF failed", ["default"])
    assert store.failure(atoms, "other").error == "SCF failed"


_KILLED_WRITER = """
import os, signal, sys
import ase.db.sqlite
from labelling_oracles import counting_emt
from ase.calculators.singlepoint import SinglePointCalculator
from ase.build import bulk
from ntkal.labelling import LabelStore

armed = False
connect = ase.db.sqlite.SQLite3Database._connect

def killing_connect(self):
    con = connect(self)
    con.execute("PRAGMA cache_size=1")  # dirty pages spill into the log before the commit
    def trace(statement):
        if armed and statement.strip().upper() == "COMMIT":
            os.kill(os.getpid(), signal.SIGKILL)  # mid-commit: the write's pages are in the log
    con.set_trace_callback(trace)
    return con

ase.db.sqlite.SQLite3Database._connect = killing_connect
store = LabelStore(sys.argv[1])
for k in range(6):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=k)
    energy, forces = counting_emt(atoms)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info["payload"] = "x" * 20000  # a few pages per record
    armed = k == 4
    store.put(atoms, "fp")
    print(k, flush=True)
"""


def test_a_writer_killed_mid_commit_leaves_a_readable_store(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "labels.db"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True, text=True, env=env)
    assert run.returncode == -signal.SIGKILL and run.stdout.split() == ["0", "1", "2", "3"], run.stderr
    assert os.path.getsize(str(path) + "-wal") > 0  # the killed write's pages were in the log
    store = LabelStore(path)
    store.check()  # readable
    assert store.counts("fp") == {"labelled": 4, "failed": 0}  # the four committed labels, not the fifth
    for k, atoms in enumerate(store.labelled("fp")):
        assert atoms.info["payload"] == "x" * 20000 and np.isfinite(atoms.get_potential_energy())
    extra = bulk("Cu", "fcc", a=3.6, cubic=True)
    store.put(with_calc(extra), "fp")  # and writable
    assert LabelStore(path).counts("fp")["labelled"] == 5


def test_an_unreadable_store_names_the_file_and_the_recovery(tmp_path):
    from ntkal.labelling import LabelStoreError

    path = tmp_path / "labels.db"
    store = LabelStore(path)
    atoms = structures(1)[0]
    store.put(with_calc(atoms), "fp")
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    for use in (lambda s: s.get(atoms, "fp"), lambda s: s.counts(), lambda s: s.check()):
        with pytest.raises(LabelStoreError, match=rf"^{path}: the label store cannot be read \(.*\); rebuild it "
                                                  r".*`ntkal labels rebuild CONFIG.toml`"):
            use(LabelStore(path))
    path.write_text("not a database at all, but long enough to have a header " * 20)
    with pytest.raises(LabelStoreError, match="file is not a database"):
        LabelStore(path).check()

"""The loop on a user's own problem: data from files, an oracle named by import path, a label
store that survives crashes, failure policies and runs that refuse to resume a changed config."""

import json
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase.calculators.emt import EMT

from tiny_models import tiny_config
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.datasets import LabellingError
from ntkal.experiment import run_sweep
from ntkal.experiment.record import ConfigMismatchError
from ntkal.labelling import LabelStore, OracleConfig
from ntkal.labelling.store import structure_hash
from ntkal.models import build_model, save_checkpoint

LOGGER = str(Path(__file__).resolve().parent)  # where labelling_oracles.py lives (spawned workers)


def _unlabelled(frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()  # drops the calculator: the pool carries no labels
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint and user files: 10 unlabelled pool frames, 3 labelled initial frames
    and a 4-frame labelled test split (EMT Cu/Pt slabs)."""
    root = tmp_path_factory.mktemp("user")
    config = tiny_config(num_layers=1, lmax=1)  # compiles fastest: this file is about plumbing
    model = build_model(config)
    params = model.init(jax.random.key(0), batch_atoms(list(cu_pt_slab_frames(1)), config.cutoff))
    save_checkpoint(root / "model.msgpack", params, config)
    ase.io.write(root / "pool.extxyz", _unlabelled(cu_pt_slab_frames(10, seed=1, size=(2, 2, 2))))
    ase.io.write(root / "initial.extxyz", list(cu_pt_slab_frames(3, seed=2, size=(2, 2, 2))))
    ase.io.write(root / "test.extxyz", list(cu_pt_slab_frames(4, seed=3, size=(2, 2, 2))))
    return root


def config_text(root, *, out, oracle, loop="", pool="pool.extxyz", method="energy"):
    out = Path(root) / out
    return f"""
name = "user"
seeds = [0]
out = "{out}"
[model]
checkpoint = "model.msgpack"
[data]
dataset = "files"
pool_files = ["{pool}"]
initial_files = ["initial.extxyz"]
test_files = {{val = "test.extxyz"}}
[oracle]
{oracle}
[loop]
method = "{method}"
selector = "maxdet"
initial = 0
batch = 2
rounds = 2
shortlist = 6
{loop}
[kernel]
sketch_dim = 16
[train]
max_epochs = 1
batch_size = 4
"""


def write_config(root, name, text):
    path = Path(root) / name
    path.write_text(text)
    return path


def strict_json(path):
    def no_constants(token):
        raise AssertionError(f"non-standard JSON token {token} in {path}")
    return json.loads(Path(path).read_text(), parse_constant=no_constants)


def emt_labels(atoms):
    work = atoms.copy()
    work.calc = EMT()
    return work.get_potential_energy(), work.get_forces(apply_constraint=False)


@pytest.fixture(scope="module")
def process_run(files):
    """A 2-round run from user files only, EMT named by import path, a 2-process spawn pool."""
    oracle = 'calculator = "ase.calculators.emt:EMT"\nexecutor = "process"\nworkers = 2'
    path = write_config(files, "process.toml", config_text(files, out="out_process", oracle=oracle))
    results = run_sweep(path, progress=False, log=None)
    return path, results


def test_run_from_user_files_labels_with_a_calculator_named_by_import_path(files, process_run):
    path, results = process_run
    out = files / "out_process"
    data = strict_json(out / "results.json")
    assert [row["n_labels"] for row in data["rows"]] == [3, 5, 7]  # 3 initial files, then 2 + 2 picks
    picks = [p for p in data["picks"] if p["round"] > 0]
    assert len(picks) == 4 and not any(p["failed"] for p in picks)
    # the run's labels are EMT's, computed once each, and all in the label store
    pool = list(ase.io.iread(files / "pool.extxyz"))
    store, fingerprint = LabelStore(out / "labels.db"), results[0].config.oracle.fingerprint()
    assert store.counts(fingerprint)["labelled"] == 4
    for pick in picks:
        stored = store.get(pool[pick["id"]], fingerprint)
        energy, forces = emt_labels(pool[pick["id"]])
        assert stored.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(stored.get_forces(apply_constraint=False), forces, atol=1e-10)
    # the point directory records the whole resolved config and its hash
    record = json.loads((out / "points" / f"{results[0].config.label}-seed0" / "config.json").read_text())
    assert record["config"]["loop"]["train"]["max_epochs"] == 1
    assert set(record["config"]["data_files"]) == {str(files / n) for n in ("pool.extxyz", "initial.extxyz",
                                                                          "test.extxyz")}
    assert data["configs"][f"{results[0].config.label}-seed0"]["hash"] == record["hash"]


def test_a_local_dask_cluster_labels_the_same(files, process_run):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        oracle = f'calculator = "ase.calculators.emt:EMT"\nscheduler = "{cluster.scheduler_address}"'
        path = write_config(files, "dask.toml", config_text(files, out="out_dask", oracle=oracle))
        path = write_config(files, "dask.toml", path.read_text().replace('method = "energy"', 'method = "random"'))
        results = run_sweep(path, progress=False, log=None)
    assert results[0].config.oracle.executor == "dask"
    data = strict_json(files / "out_dask" / "results.json")
    assert [row["n_labels"] for row in data["rows"]] == [3, 5, 7]
    # the cluster's labels are EMT's (random picks: no kernel compile, this test is about Dask)
    pool = list(ase.io.iread(files / "pool.extxyz"))
    store = LabelStore(files / "out_dask" / "labels.db")
    picks = [p for p in data["picks"] if p["round"] > 0]
    assert store.counts(results[0].config.oracle.fingerprint())["labelled"] == len(picks) == 4
    for pick in picks:
        stored = store.get(pool[pick["id"]], results[0].config.oracle.fingerprint())
        assert stored.get_potential_energy() == pytest.approx(emt_labels(pool[pick["id"]])[0], abs=1e-10)


def test_resuming_an_edited_config_names_the_changed_settings(files, process_run):
    path, _ = process_run
    edited = write_config(files, "edited.toml", path.read_text().replace("max_epochs = 1", "max_epochs = 2")
                          .replace('selector = "maxdet"', 'selector = "maxdet"\nnoise_var = 0.5'))
    with pytest.raises(ConfigMismatchError) as info:
        run_sweep(edited, progress=False, log=None)
    message = str(info.value)
    assert "loop.train.max_epochs: 1 → 2" in message and "loop.noise_var: 0.01 → 0.5" in message
    # a different executor is not a different config: the finished run resumes (nothing to do)
    moved = write_config(files, "moved.toml", path.read_text().replace('executor = "process"', 'executor = "thread"'))
    again = run_sweep(moved, progress=False, log=None)
    assert [r["force_mae"] for r in again[0].rows] == [r["force_mae"] for r in process_run[1][0].rows]


def test_the_label_store_prevents_relabelling_after_a_crash(files, tmp_path):
    log = tmp_path / "calls.log"
    Path(str(log) + ".crash").touch()  # the "DFT code" dies after 3 successful calls
    oracle = (f'function = "labelling_oracles:emt_until_flag"\nexecutor = "serial"\n'
              f'kwargs = {{log = "{log}", crash_after = 3}}')
    path = write_config(tmp_path, "crash.toml", config_text(files, out=tmp_path / "out", oracle=oracle,
                                                            method="random")
                        .replace('"model.msgpack"', f'"{files}/model.msgpack"')
                        .replace('"pool.extxyz"', f'"{files}/pool.extxyz"')
                        .replace('"initial.extxyz"', f'"{files}/initial.extxyz"')
                        .replace('"test.extxyz"', f'"{files}/test.extxyz"'))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sweep(path, progress=False, log=None)  # round 1 labels 2, round 2 labels 1, then dies
    Path(str(log) + ".crash").unlink()
    results = run_sweep(path, progress=False, log=None)  # resumes round 2 from the saved round 1
    lines = log.read_text().split()
    ok = [h for outcome, h in zip(lines[::2], lines[1::2]) if outcome == "ok"]
    assert len(ok) == len(set(ok)) == 4  # every structure computed exactly once
    assert [row["n_labels"] for row in results[0].rows] == [3, 5, 7]


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_structure_the_oracle_cannot_label(files, tmp_path, policy):
    frames = _unlabelled(cu_pt_slab_frames(6, seed=1, size=(2, 2, 2)))
    frames[2].info["poison"] = True  # raises CalculationFailed: retried, then failed
    ase.io.write(tmp_path / "pool.extxyz", frames)
    log = tmp_path / "calls.log"
    oracle = (f'function = "labelling_oracles:counting_emt"\nexecutor = "serial"\nretries = 1\n'
              f'on_failure = "{policy}"\nkwargs = {{log = "{log}"}}')
    text = (config_text(files, out=tmp_path / "out", oracle=oracle, method="random",
                        pool=tmp_path / "pool.extxyz")
            .replace("batch = 2\nrounds = 2", "batch = 6\nrounds = 1")
            .replace('"model.msgpack"', f'"{files}/model.msgpack"')
            .replace('"initial.extxyz"', f'"{files}/initial.extxyz"')
            .replace('"test.extxyz"', f'"{files}/test.extxyz"'))
    path = write_config(tmp_path, "fail.toml", text)
    store = LabelStore(tmp_path / "out" / "labels.db")
    fingerprint = OracleConfig.from_dict({"function": "labelling_oracles:counting_emt",
                                          "kwargs": {"log": str(log)}}).fingerprint()
    if policy == "stop":
        with pytest.raises(LabellingError):
            run_sweep(path, progress=False, log=None)
        assert store.counts(fingerprint)["failed"] == 1
        return
    results = run_sweep(path, progress=False, log=None)
    picks = [p for p in results[0].picks if p["round"] == 1]
    failed = [p["id"] for p in picks if p["failed"]]
    assert failed == [2]
    assert [row["n_labels"] for row in results[0].rows] == [3, 3 + 5]
    record = store.failure(list(ase.io.iread(tmp_path / "pool.extxyz"))[2], fingerprint)  # as the run read it
    assert "poisoned structure" in record.error and len(record.attempts) == 2
    assert log.read_text().count("fail ") == 2  # first attempt + one retry


def test_data_file_problems_are_reported_before_any_compute(files, tmp_path):
    text = config_text(files, out=tmp_path / "out", oracle='calculator = "emt"', method="random")
    text = text.replace(f'"{files}/model.msgpack"', "model.msgpack")
    path = write_config(files, "missing.toml", text.replace('"test.extxyz"', '"nope.extxyz"'))
    with pytest.raises(ValueError, match=r"missing.toml, line \d+: \[data\] test_files.val: no such file"):
        run_sweep(path, progress=False, log=None)
    assert not (tmp_path / "out").exists()  # nothing was computed or written
    bad = write_config(files, "generator_key.toml", text.replace('dataset = "files"', 'dataset = "files"\nsize = "small"'))
    with pytest.raises(ValueError, match=r"line 9: \[data\] size applies to generated datasets"):
        run_sweep(bad, progress=False, log=None)
    missing_module = write_config(files, "module.toml", text.replace('calculator = "emt"',
                                                                      'calculator = "my_dft_wrappers:Vasp"'))
    with pytest.raises(ValueError, match=r"module.toml: \[oracle\] .*module my_dft_wrappers not found .*PYTHONPATH"):
        run_sweep(missing_module, progress=False, log=None)
    assert not (tmp_path / "out").exists()
    both = write_config(files, "both.toml", text.replace('dataset = "files"', 'dataset = "files"\noracle = "emt"'))
    with pytest.raises(ValueError, match=r"either \[data\] oracle .* or an \[oracle\] table"):
        run_sweep(both, progress=False, log=None)


def test_target_set_files_are_resolved_read_unlabelled_and_never_a_test_file(files, tmp_path):
    from ntkal.experiment import ConfigError, load_sweep
    from ntkal.experiment.run import load_target_set
    text = config_text(files, out=tmp_path / "out", oracle='calculator = "emt"', method="energy",
                       loop='variance_target = "target_set"').replace('selector = "maxdet"', 'selector = "varred"')
    text = text.replace('test_files = {val = "test.extxyz"}',
                        'test_files = {val = "test.extxyz"}\ntarget_set_files = ["pool.extxyz"]')
    (point,) = load_sweep(write_config(files, "target.toml", text))
    assert point.data.target_set_files == (str(files / "pool.extxyz"),)  # relative to the config file
    target = load_target_set(point.data, progress=False)
    assert len(target) == 10 and target[0].calc is None  # unlabelled frames are fine
    np.testing.assert_allclose(target[3].positions, ase.io.read(files / "pool.extxyz", 3).positions)
    overlap = write_config(files, "target_test.toml", text.replace('target_set_files = ["pool.extxyz"]',
                                                                   'target_set_files = ["test.extxyz"]'))
    with pytest.raises(ConfigError, match=r"line \d+: target_set_files .*test.extxyz.* is also a test file"):
        load_sweep(overlap)
    generated = write_config(files, "target_split.toml", text.replace("target_set_files", "target_set"))
    with pytest.raises(ConfigError, match=r"line 12: \[data\] target_set applies to generated datasets"):
        load_sweep(generated)


def _files_config(files, tmp_path, name, *, oracle='calculator = "emt"', method="random", replace=(), **kw):
    """A config in ``tmp_path`` over the module's files (absolute paths), written to ``name``."""
    text = config_text(files, out=tmp_path / "out", oracle=oracle, method=method, **kw)
    for old in ("model.msgpack", "pool.extxyz", "initial.extxyz", "test.extxyz"):
        text = text.replace(f'"{old}"', f'"{files}/{old}"')
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    return write_config(tmp_path, name, text)


def test_a_test_split_sharing_a_pool_frame_is_refused_before_any_compute(files, tmp_path, capsys):
    from ase.calculators.singlepoint import SinglePointCalculator

    from ntkal.cli import main
    from ntkal.process_stats import CompileCounter

    leaked = list(ase.io.iread(files / "pool.extxyz"))[6]  # round trip through another file below
    energy, forces = emt_labels(leaked)
    leaked.calc = SinglePointCalculator(leaked, energy=energy, forces=forces)
    ase.io.write(tmp_path / "test.extxyz", list(ase.io.iread(files / "test.extxyz")) + [leaked])
    path = _files_config(files, tmp_path, "leak.toml", replace=[(f'"{files}/test.extxyz"', f'"{tmp_path}/test.extxyz"')])
    with CompileCounter() as compiles:
        code = main(["run", str(path), "--no-compile-cache", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"test split 'val' {tmp_path}/test.extxyz frame 4 is also pool {files}/pool.extxyz frame 6" in err
    assert compiles.count == 0 and not (tmp_path / "out" / "points").exists()  # nothing computed or written
    # a study that wants it can downgrade the error (the audit then warns and the run would go on)
    from ntkal.data.overlap import LeakageWarning
    from ntkal.experiment.run import _audited_inputs
    from ntkal.experiment import load_sweep
    warned = _files_config(files, tmp_path, "warn.toml", replace=[
        (f'"{files}/test.extxyz"', f'"{tmp_path}/test.extxyz"'), ("[oracle]", 'test_overlap = "warn"\n[oracle]')])
    with pytest.warns(LeakageWarning, match="frame 4 is also pool"):
        _audited_inputs(load_sweep(warned), progress=False)


def test_pool_frames_that_repeat_the_initial_set_are_never_candidates(files, tmp_path):
    initial = list(ase.io.iread(files / "initial.extxyz"))
    pool = list(ase.io.iread(files / "pool.extxyz"))[:5] + _unlabelled(initial[:2])  # pool ids 5, 6 are labelled
    ase.io.write(tmp_path / "pool.extxyz", pool)
    swap = [(f'"{files}/pool.extxyz"', f'"{tmp_path}/pool.extxyz"')]
    too_many = _files_config(files, tmp_path, "six.toml", replace=swap + [("batch = 2\nrounds = 2", "batch = 6\nrounds = 1")])
    with pytest.raises(ValueError, match=r"needs 6 labels but the pool holds only 5 candidate structures "
                                         r"\(2 more repeat the initial labelled set\)"):
        run_sweep(too_many, progress=False, log=None)
    path = _files_config(files, tmp_path, "five.toml", replace=swap + [("batch = 2\nrounds = 2", "batch = 5\nrounds = 1")])
    notes = []
    (result,) = run_sweep(path, resume=False, progress=False, log=notes.append)  # the refused run left its record
    assert sorted(p["id"] for p in result.picks) == [0, 1, 2, 3, 4]  # every candidate, never 5 or 6
    assert "note: 2 pool frame(s) repeat the initial labelled set; they are never offered as candidates" in notes


def test_a_damaged_label_store_is_one_line_and_the_rebuild_restores_every_label(files, tmp_path, capsys):
    from ntkal.cli import main
    from ntkal.labelling import LabelStoreError

    log = tmp_path / "calls.log"
    path = _files_config(files, tmp_path, "store.toml", method="random",
                         oracle=f'function = "labelling_oracles:counting_emt"\nexecutor = "serial"\n'
                                f'kwargs = {{log = "{log}"}}')
    run_sweep(path, progress=False, log=None)
    store = LabelStore(tmp_path / "out" / "labels.db")
    before = {structure_hash(a): a for a in store.labelled()}
    assert len(before) == 4 and log.read_text().count("ok ") == 4
    db = tmp_path / "out" / "labels.db"
    with open(db, "r+b") as fh:  # what a full disk or a bad copy leaves
        fh.truncate(db.stat().st_size // 2)
    with pytest.raises(LabelStoreError):
        run_sweep(path, progress=False, log=None)
    assert main(["run", str(path), "--no-compile-cache", "--quiet", "--no-resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"ntkal run: error: {db}: the label store cannot be read (") and \
        f"`ntkal labels rebuild {path}`" in err
    assert main(["labels", "check", str(db)]) == 2
    assert main(["labels", "rebuild", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "moved the damaged store aside" in out and "restored 4 label(s)" in out
    assert list(tmp_path.glob("out/labels.db.damaged-*"))  # kept, never deleted
    after = {structure_hash(a): a for a in LabelStore(db).labelled()}
    assert after.keys() == before.keys()  # keyed by the exact pool frames, not the 8-decimal text
    for key, atoms in before.items():
        assert after[key].get_potential_energy() == atoms.get_potential_energy()
        np.testing.assert_allclose(after[key].get_forces(), atoms.get_forces(), atol=1e-8)
    run_sweep(path, resume=False, progress=False, log=None)  # the whole run again, from scratch:
    assert log.read_text().count("ok ") == 4  # every label came from the rebuilt store
    assert main(["labels", "export", str(db), str(tmp_path / "all.extxyz")]) == 0
    assert len(ase.io.read(tmp_path / "all.extxyz", index=":")) == 4


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(files, tmp_path):
    import socket
    import subprocess
    import sys

    from ntkal.folder_lock import FolderInUseError, hold_folder

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ntkal.folder_lock import hold_folder\n"
                               f"with hold_folder({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        path = _files_config(files, tmp_path, "held.toml")
        with pytest.raises(FolderInUseError, match=rf"{out} is in use by another live run \(ntkal run, pid "
                                                   rf"{holder.pid} on {socket.gethostname()}, since "):
            run_sweep(path, progress=False, log=None)
        assert not (out / "points").exists()
    finally:
        holder.kill()
        holder.wait()
    with hold_folder(out):  # a killed holder leaves no stale lock
        pass


def test_a_five_line_config_runs_either_strategy_end_to_end(files, monkeypatch):
    """Files + oracle + strategy in ≤ 10 lines (the README's promise): everything else takes the
    defaults (kernel, selector, fine-tune), and each strategy labels, fine-tunes and evaluates."""
    monkeypatch.chdir(files)
    text = ('name = "minimal"\n'
            'model = {checkpoint = "model.msgpack"}\n'
            'data = {dataset = "files", pool_files = ["pool.extxyz"], initial_files = ["initial.extxyz"], '
            'test_files = {val = "test.extxyz"}}\n'
            'oracle = {calculator = "ase.calculators.emt:EMT"}\n'
            'loop = {strategy = ["extrapolation", "representative"], initial = 0, batch = 2, rounds = 1}\n')
    assert len(text.splitlines()) <= 10
    results = run_sweep(write_config(files, "minimal.toml", text), progress=False, log=None)
    assert len(results) == 2
    by_norm = {r.config.loop.feature_norm: r for r in results}
    assert set(by_norm) == {"median_trace", "per_structure"}  # extrapolation, representative
    for result in results:
        rows = [row for row in result.rows if row["split"] == "val"]
        assert [row["n_labels"] for row in rows] == [3, 5]
        assert all(np.isfinite(row["force_mae"]) for row in rows)
    data = strict_json(files / "runs" / "minimal" / "results.json")
    assert len([p for p in data["picks"] if p["round"] == 1]) == 4

"""Several processes score one pool (ntkal.cluster, ntkal.launch): the picks equal the
single-process picks, and a process that dies fails the whole job without an output file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkal.cluster import ClusterConfig, ClusterConfigError, LocalCollectives, split_of
from ntkal.launch import launch

WORKER = Path(__file__).resolve().parent / "cluster" / "worker.py"
ROOT = Path(__file__).resolve().parents[1]


def _launch(tmp_path, processes: int, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ntkal.launch", "-n", str(processes), "--",
                           sys.executable, str(WORKER), str(tmp_path / "picks.json"), *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


def test_cluster_config_is_checked_and_read_from_the_launchers_environment():
    config = ClusterConfig.from_env({"NTKAL_COORDINATOR": "10.0.0.1:1234", "NTKAL_NUM_PROCESSES": "4",
                                     "NTKAL_PROCESS_ID": "3"})
    assert (config.coordinator, config.num_processes, config.process_id, config.auto) == ("10.0.0.1:1234", 4, 3, False)
    assert ClusterConfig.from_env({}).auto  # no variables: JAX detects the cluster (SLURM, ...)
    with pytest.raises(ClusterConfigError, match="process_id must be in"):
        ClusterConfig(coordinator="h:1", num_processes=2, process_id=2)
    with pytest.raises(ClusterConfigError, match="host:port"):
        ClusterConfig(coordinator="h", num_processes=2, process_id=0)
    with pytest.raises(ClusterConfigError, match="missing process_id"):
        ClusterConfig(coordinator="h:1", num_processes=2)
    with pytest.raises(ClusterConfigError, match="leave coordinator unset"):
        ClusterConfig(auto=True, coordinator="h:1")
    with pytest.raises(ClusterConfigError, match="NTKAL_PROCESS_ID must be an integer"):
        ClusterConfig.from_env({"NTKAL_COORDINATOR": "h:1", "NTKAL_NUM_PROCESSES": "2", "NTKAL_PROCESS_ID": "x"})


def test_the_processes_parts_cover_the_pool_once():
    for n, count in [(10, 1), (10, 3), (2, 4), (0, 2)]:
        parts = [list(split_of(n, p, count)) for p in range(count)]
        assert sorted(sum(parts, [])) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_collectives_are_the_identity():
    col = LocalCollectives()
    x = np.arange(6.0).reshape(3, 2)
    assert col.is_writer and col.count == 1
    np.testing.assert_array_equal(col.concat(x), x)
    np.testing.assert_array_equal(col.sum(x), x)
    np.testing.assert_array_equal(col.broadcast(x), x)


def test_the_launcher_stops_every_process_when_one_fails(capfd):
    sleeper = [sys.executable, "-c", "import os, sys, time\n"
               "if os.environ['NTKAL_PROCESS_ID'] == '1': sys.exit(3)\n"
               "time.sleep(60)"]
    assert launch(sleeper, 2, poll_s=0.05, grace_s=2.0) == 3
    assert "ntkal.launch: process 1 of 2 failed (exit status 3); stopped the other processes" in capfd.readouterr().err
    assert launch([sys.executable, "-c", "import os; assert os.environ['NTKAL_NUM_PROCESSES'] == '3'"], 3) == 0


def test_two_processes_pick_what_one_process_picks(tmp_path):
    """maxdiag, LCMD and varred, each with and without the energy cascade, plus the force guard
    with the soft outlier weight and a target set: the same ids and scores on 2 processes, each
    holding half the pool, as in one process holding all of it."""
    done = _launch(tmp_path, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "picks.json").read_text())
    assert got["processes"] == 2
    assert set(got["picks"]) == set(got["single"]) and len(got["picks"]) == 8
    for case, single in got["single"].items():
        two = got["picks"][case]
        assert two["ids"] == single["ids"], case
        np.testing.assert_allclose(two["scores"], single["scores"], rtol=1e-9, err_msg=case)
        np.testing.assert_allclose(two["pv"], single["pv"], rtol=1e-9, err_msg=case)
        assert two["noise_var"] == pytest.approx(single["noise_var"], rel=1e-12)
        assert (two["n_candidates"], two["n_kept"]) == (single["n_candidates"], single["n_kept"])
    assert got["single"]["lcmd-cascade"]["n_kept"] < got["single"]["lcmd"]["n_kept"]


def test_four_processes_pick_what_one_process_picks(tmp_path):
    """Four processes, each holding a quarter of the 34-frame pool (8 or 9 frames, fewer than
    the shortlist of 10): LCMD from four merged shortlists, and varred with a target set (the
    pool moment summed over four processes)."""
    done = _launch(tmp_path, 4, "--cases", "lcmd", "varred-target")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "picks.json").read_text())
    assert got["processes"] == 4 and set(got["picks"]) == {"lcmd", "varred-target"}
    for case, single in got["single"].items():
        four = got["picks"][case]
        assert four["ids"] == single["ids"], case
        np.testing.assert_allclose(four["scores"], single["scores"], rtol=1e-9, err_msg=case)
        np.testing.assert_allclose(four["pv"], single["pv"], rtol=1e-9, err_msg=case)
        assert (four["n_candidates"], four["n_kept"]) == (single["n_candidates"], single["n_kept"])


def test_a_process_killed_mid_scoring_fails_the_job_without_an_output_file(tmp_path):
    done = _launch(tmp_path, 2, "--die-after", "1")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("ntkal.launch:")]
    assert lines == ["ntkal.launch: process 1 of 2 failed (killed by SIGKILL); stopped the other processes"]
    assert not (tmp_path / "picks.json").exists()
    assert not [p for p in tmp_path.iterdir() if "picks" in p.name]  # no temporary file left either


def test_distributed_flags_need_distributed_and_are_checked():
    import argparse

    from ntkal.cli.cluster_args import ClusterArgumentError as SelectArgumentError, cluster_from_args

    def args(**kw):
        base = dict(distributed=False, coordinator=None, num_processes=None, process_id=None)
        return argparse.Namespace(**{**base, **kw})

    assert cluster_from_args(args()) is None
    with pytest.raises(SelectArgumentError, match="needs --distributed"):
        cluster_from_args(args(num_processes=2))
    got = cluster_from_args(args(distributed=True, coordinator="node0:4321", num_processes=8, process_id=7))
    assert (got.coordinator, got.num_processes, got.process_id) == ("node0:4321", 8, 7)
    with pytest.raises(SelectArgumentError, match="process_id must be in"):
        cluster_from_args(args(distributed=True, coordinator="node0:4321", num_processes=2, process_id=2))


def test_ntkal_select_distributed_writes_the_single_process_picks_once(tmp_path):
    """`ntkal select --distributed` on 2 processes: one output file and summary, written by
    process 0, with the frames, ids and scores of a one-process `select_from_files`."""
    import ase.io
    import jax

    from tiny_models import tiny_config
    from ntkal.acquire import AcquisitionConfig
    from ntkal.data import batch_atoms
    from ntkal.data.toy import cu_pt_slab_frames
    from ntkal.kernels import KernelConfig
    from ntkal.models import build_model, save_checkpoint
    from ntkal.select import select_from_files

    config = tiny_config(num_layers=1, lmax=1)
    model = build_model(config)
    params = model.init(jax.random.key(0), batch_atoms(list(cu_pt_slab_frames(1)), config.cutoff))
    save_checkpoint(tmp_path / "model.msgpack", params, config)
    ase.io.write(tmp_path / "pool.extxyz", [a.copy() for a in cu_pt_slab_frames(21, seed=1, size=(2, 2, 2))])
    ase.io.write(tmp_path / "train.extxyz", list(cu_pt_slab_frames(5, seed=2, size=(2, 2, 2))))
    common = ["--model", "model.msgpack", "--pool", "pool.extxyz", "--train", "train.extxyz", "--budget", "4",
              "--sketch-dim", "16", "--num-probes", "2", "--selector", "lcmd", "--no-progress"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NTKAL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "ntkal.launch", "-n", "2", "--", sys.executable, "-m", "ntkal.cli",
                           "select", "--distributed", *common, "--out", "two/picked.extxyz"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("picked 4 of 21 pool structures") == 1  # process 0 reports, once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["picked.extxyz", "picked.summary.json"]
    summary = json.loads((tmp_path / "two" / "picked.summary.json").read_text())
    single = select_from_files(tmp_path / "model.msgpack", tmp_path / "pool.extxyz", tmp_path / "train.extxyz", 4,
                               out_path=tmp_path / "one.extxyz", progress=False,
                               config=AcquisitionConfig(kernel=KernelConfig(kind="joint", sketch_dim=16, num_probes=2),
                                                        selector="lcmd"))
    assert summary["config"] == single.config.to_dict()
    assert tuple(summary["ids"]) == single.ids and summary["n_pool"] == 21
    np.testing.assert_allclose(summary["scores"], single.scores, rtol=1e-5)
    written = [a.info["pool_id"] for a in ase.io.read(tmp_path / "two" / "picked.extxyz", index=":")]
    assert written == list(single.ids)


def _number(value) -> float:
    return np.nan if value is None else float(value)  # results.json writes NaN as null


def test_ntkal_run_distributed_gives_the_single_process_run(tmp_path):
    """`ntkal run --distributed` on 2 processes (each scoring its half of the pool in every
    round; process 0 labelling, fine-tuning for all and writing) against `ntkal run` in one
    process on the same config: the same picks (ids, scores, posterior variances, σ²) for a
    kernel arm with the evidence σ² and for the committee, the same test errors, and the output
    folder written once."""
    import ase.io
    import jax

    from tiny_models import tiny_config
    from ntkal.data import batch_atoms
    from ntkal.data.toy import cu_pt_slab_frames
    from ntkal.models import build_model, save_checkpoint

    config = tiny_config(num_layers=1, lmax=1)
    model = build_model(config)
    params = model.init(jax.random.key(0), batch_atoms(list(cu_pt_slab_frames(1)), config.cutoff))
    save_checkpoint(tmp_path / "model.msgpack", params, config)
    pool = [a.copy() for a in cu_pt_slab_frames(15, seed=1, size=(2, 2, 2))]  # unlabelled
    ase.io.write(tmp_path / "pool.extxyz", pool)
    ase.io.write(tmp_path / "initial.extxyz", list(cu_pt_slab_frames(3, seed=2, size=(2, 2, 2))))
    ase.io.write(tmp_path / "test.extxyz", list(cu_pt_slab_frames(4, seed=3, size=(2, 2, 2))))
    text = """name = "cluster"
seeds = [0]
[model]
checkpoint = "model.msgpack"
[data]
dataset = "files"
pool_files = ["pool.extxyz"]
initial_files = ["initial.extxyz"]
test_files = {val = "test.extxyz"}
[oracle]
calculator = "emt"
[loop]
method = ["joint", "committee"]
selector = "lcmd"
initial = 2
batch = 3
rounds = 2
shortlist = 8
committee_size = 2
[kernel]
sketch_dim = 16
num_probes = 2
[train]
max_epochs = 2
batch_size = 4
val_fraction = 0
"""
    (tmp_path / "run.toml").write_text(text)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NTKAL_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    ntkal = [sys.executable, "-m", "ntkal.cli", "run", "run.toml", "--quiet"]
    one = subprocess.run(ntkal + ["--out", "one"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "ntkal.launch", "-n", "2", "--", *ntkal, "--out", "two", "--distributed"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results: ") == 1  # process 0 reports, once
    got = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two")}
    assert len(got["one"]["picks"]) == 2 * (2 + 2 * 3)
    for a, b in zip(got["one"]["picks"], got["two"]["picks"], strict=True):
        assert (a["method"], a["round"], a["id"], a["failed"]) == (b["method"], b["round"], b["id"], b["failed"])
        for key in ("score", "pv", "noise_var", "force_mae_before"):
            np.testing.assert_allclose(_number(b[key]), _number(a[key]), rtol=1e-5,
                                       err_msg=f"{a['method']} round {a['round']} {key}")
    assert {p["method"] for p in got["one"]["picks"]} == {"joint", "committee"}
    assert all(np.isfinite(_number(p["score"])) for p in got["one"]["picks"] if p["round"] > 0)
    assert all(np.isfinite(_number(p["pv"])) for p in got["one"]["picks"] if p["round"] > 0 and p["method"] == "joint")
    for a, b in zip(got["one"]["rows"], got["two"]["rows"], strict=True):
        assert (a["method"], a["round"], a["n_labels"]) == (b["method"], b["round"], b["n_labels"])
        np.testing.assert_allclose(b["force_mae"], a["force_mae"], rtol=1e-5)
        np.testing.assert_allclose(b["energy_mae"], a["energy_mae"], rtol=1e-5)
    labelled = {p.parent.name for p in (tmp_path / "two" / "points").glob("*/labelled.extxyz")}
    assert labelled == {p.parent.name for p in (tmp_path / "one" / "points").glob("*/labelled.extxyz")}

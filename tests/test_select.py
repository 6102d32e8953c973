"""``ntkal select`` end to end on tiny extxyz files (tiny model, one feature compile)."""

import argparse
import dataclasses
import json
import os

import ase.io
import jax
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import InvalidStructureError, batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import build_model, save_checkpoint
from ntkal.acquire import AcquisitionConfig
from ntkal.kernels import KernelConfig
from ntkal.select import select_from_files
from ntkal.cli.select import add_select_arguments, main_select

N_POOL, N_TRAIN, BUDGET = 14, 4, 5
SMALL = AcquisitionConfig(kernel=KernelConfig(kind="joint", sketch_dim=32, num_probes=2), shortlist=8,
                          chunk_size=4, selector="lcmd")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    config = tiny_config(num_layers=1, lmax=1)  # CLI plumbing: the smallest model compiles fastest
    model = build_model(config)
    train = list(cu_pt_slab_frames(N_TRAIN, seed=1))
    pool = list(cu_pt_slab_frames(N_POOL, seed=2))
    params = model.init(jax.random.key(0), batch_atoms(train[:2], config.cutoff, elements=config.elements))
    save_checkpoint(root / "model.msgpack", params, config)
    for atoms in train + pool:
        atoms.info.pop("adsorbate_info", None)  # a dict; extxyz cannot store it
    ase.io.write(root / "train.extxyz", train)
    ase.io.write(root / "pool.extxyz", pool)
    return root


@pytest.fixture(scope="module")
def picked(files):
    (files / "out").mkdir()
    (files / "out" / ".picked.extxyz.k1ll3d.tmp").write_text("left by a killed run")
    (files / "out" / ".notes.txt.abc.tmp").write_text("someone else's")
    args = add_select_arguments(argparse.ArgumentParser()).parse_args([
        "--model", str(files / "model.msgpack"), "--pool", str(files / "pool.extxyz"),
        "--train", str(files / "train.extxyz"), "--budget", str(BUDGET), "--kernel", "joint",
        "--out", str(files / "out" / "picked.extxyz"), "--sketch-dim", "32", "--num-probes", "2",
        "--shortlist", "8", "--chunk-size", "4", "--selector", "lcmd", "--no-progress",
        "--no-compile-cache"])
    assert main_select(args) == 0
    return files / "out" / "picked.extxyz"


def test_writes_exactly_budget_pool_structures(files, picked):
    pool = ase.io.read(files / "pool.extxyz", index=":")
    out = ase.io.read(picked, index=":")
    assert len(out) == BUDGET
    ids = [a.info["pool_id"] for a in out]
    assert len(set(ids)) == BUDGET and all(0 <= i < N_POOL for i in ids)
    for atoms in out:
        ref = pool[atoms.info["pool_id"]]
        np.testing.assert_array_equal(atoms.numbers, ref.numbers)
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-8)
        np.testing.assert_allclose(atoms.cell.array, ref.cell.array, atol=1e-8)
        assert np.isfinite(atoms.info["score"]) and atoms.info["pv"] > 0
        assert atoms.info["system_id"] == ref.info["system_id"]  # the pool frame's own info survives


def test_summary_json(picked):
    summary = json.loads(picked.with_name("picked.summary.json").read_text())
    out = ase.io.read(picked, index=":")
    assert summary["budget"] == BUDGET and summary["n_pool"] == N_POOL and summary["n_train"] == N_TRAIN
    assert summary["kernel"] == "joint" and summary["selector"] == "lcmd"
    config = AcquisitionConfig.from_dict(summary["config"])  # the record holds the whole config
    assert config.kernel.sketch_dim == 32 and config.kernel.num_probes == 2 and config.shortlist == 8
    assert summary["ids"] == [a.info["pool_id"] for a in out]
    assert summary["scores"] == pytest.approx([a.info["score"] for a in out])
    assert summary["w_force"] > 0 and summary["timings"]["total_s"] > 0
    # a killed run's temporary files are removed at the next start (only those of our outputs)
    assert [p.name for p in picked.parent.glob(".*tmp")] == [".notes.txt.abc.tmp"]


def test_outputs_are_strict_json_with_normal_file_modes(picked):
    def no_constants(token):
        raise AssertionError(f"non-standard JSON token {token}")
    json.loads(picked.with_name("picked.summary.json").read_text(), parse_constant=no_constants)
    umask = os.umask(0)
    os.umask(umask)
    for path in (picked, picked.with_name("picked.summary.json")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # what open(path, "w") would give


def test_budget_larger_than_pool_is_rejected(files):
    with pytest.raises(ValueError, match=f"budget {N_POOL + 1} exceeds the pool's {N_POOL} structures"):
        select_from_files(files / "model.msgpack", files / "pool.extxyz", files / "train.extxyz",
                          N_POOL + 1, out_path=files / "never.extxyz", config=SMALL, progress=False)
    assert not (files / "never.extxyz").exists()


def test_unknown_kernel_and_empty_pool(files):
    with pytest.raises(ValueError, match="kind must be one of"):
        select_from_files(files / "model.msgpack", files / "pool.extxyz", files / "train.extxyz", 1,
                          config=AcquisitionConfig(kernel=KernelConfig(kind="nope")),
                          out_path=files / "never.extxyz")
    (files / "empty.extxyz").write_text("")
    with pytest.raises(ValueError, match="no structures"):
        select_from_files(files / "model.msgpack", files / "empty.extxyz", files / "train.extxyz", 1,
                          out_path=files / "never.extxyz", config=SMALL, progress=False)


def test_bad_frame_names_file_and_frame(files):
    frames = list(cu_pt_slab_frames(5, seed=3))
    for atoms in frames:
        atoms.info.pop("adsorbate_info", None)
    frames[3].positions[1] = frames[3].positions[0] + 0.05  # two atoms 0.05 Å apart
    bad = files / "bad_pool.extxyz"
    ase.io.write(bad, frames)
    with pytest.raises(InvalidStructureError, match=r"bad_pool\.extxyz, frame 3\).*Å apart") as err:
        select_from_files(files / "model.msgpack", bad, files / "train.extxyz", 2,
                          out_path=files / "never.extxyz", config=SMALL, progress=False)
    assert err.value.frame == 3 and err.value.source.endswith("bad_pool.extxyz")

    frames = frames[:3]
    frames[2].numbers[0] = 79  # gold: unknown to the model
    ase.io.write(bad, frames)
    with pytest.raises(InvalidStructureError, match=r"frame 2\).*Au"):
        select_from_files(files / "model.msgpack", bad, files / "train.extxyz", 2,
                          out_path=files / "never.extxyz", config=SMALL, progress=False)


def test_pool_frames_already_in_the_training_set_are_never_picked(files, tmp_path, capsys):
    """A pool file that repeats the training frames (a round trip through another file, labels
    and all) offers only its other frames: all ``N_POOL`` of them are picked, none of the copies."""
    train = ase.io.read(files / "train.extxyz", index=":")
    pool = ase.io.read(files / "pool.extxyz", index=":")
    ase.io.write(tmp_path / "pool.extxyz", pool[:7] + train[:3] + pool[7:] + train[3:] + [pool[2]])
    copies = {7, 8, 9, N_POOL + 3 + 7}  # frame indices of the training frames in the new pool file
    lcmd = dataclasses.replace(SMALL, selector="lcmd", shortlist=N_POOL + N_TRAIN + 1)
    summary = select_from_files(files / "model.msgpack", tmp_path / "pool.extxyz", files / "train.extxyz",
                                budget=N_POOL + 1, out_path=tmp_path / "all.extxyz", progress=False, config=lcmd)
    assert not copies & set(summary.ids) and len(set(summary.ids)) == N_POOL + 1
    assert summary.n_pool_in_train == N_TRAIN and summary.pool_duplicates == 1
    record = json.loads((tmp_path / "all.summary.json").read_text())
    assert record["n_pool_in_train"] == N_TRAIN and record["pool_duplicates"] == 1
    with pytest.raises(ValueError, match=rf"budget {N_POOL + 2} exceeds the pool's {N_POOL + 1} structures that "
                                         rf"are not in the training set .*{N_TRAIN} of {N_POOL + N_TRAIN + 1} frames"):
        select_from_files(files / "model.msgpack", tmp_path / "pool.extxyz", files / "train.extxyz",
                          budget=N_POOL + 2, out_path=tmp_path / "never.extxyz", progress=False, config=lcmd)
    args = add_select_arguments(argparse.ArgumentParser()).parse_args([
        "--model", str(files / "model.msgpack"), "--pool", str(tmp_path / "pool.extxyz"),
        "--train", str(files / "train.extxyz"), "--budget", "2", "--kernel", "joint",
        "--out", str(tmp_path / "cli.extxyz"), "--sketch-dim", "32", "--num-probes", "2",
        "--shortlist", "8", "--chunk-size", "4", "--selector", "lcmd", "--no-progress", "--no-compile-cache"])
    assert main_select(args) == 0
    out = capsys.readouterr().out
    assert f"note: {N_TRAIN} pool frame(s) are also in {files / 'train.extxyz'}; they were never candidates" in out
    assert "note: 1 pool frame(s) repeat an earlier pool frame" in out


def test_a_test_file_sharing_a_frame_with_the_inputs_is_refused_before_any_compute(files, tmp_path, capsys):
    from ntkal.data.overlap import LeakageWarning
    from ntkal.process_stats import CompileCounter

    pool = ase.io.read(files / "pool.extxyz", index=":")
    train = ase.io.read(files / "train.extxyz", index=":")
    held = list(cu_pt_slab_frames(3, seed=9))
    for atoms in held:
        atoms.info.pop("adsorbate_info", None)
    ase.io.write(tmp_path / "clean.extxyz", held)
    ase.io.write(tmp_path / "leaky.extxyz", held + [pool[5], train[1]])
    argv = ["--model", str(files / "model.msgpack"), "--pool", str(files / "pool.extxyz"),
            "--train", str(files / "train.extxyz"), "--budget", "2", "--kernel", "joint",
            "--out", str(tmp_path / "picked.extxyz"), "--sketch-dim", "32", "--num-probes", "2",
            "--shortlist", "8", "--chunk-size", "4", "--selector", "lcmd", "--no-progress", "--no-compile-cache",
            "--test", str(tmp_path / "clean.extxyz"), "--test", str(tmp_path / "leaky.extxyz")]
    from ntkal.cli import main
    with CompileCounter() as compiles:
        assert main(["select"] + argv) == 2
    err = capsys.readouterr().err
    assert "2 test frame(s) are also frames" in err
    assert f"test split 'leaky.extxyz' {tmp_path / 'leaky.extxyz'} frame 3 is also pool {files / 'pool.extxyz'} frame 5" in err
    assert f"{tmp_path / 'leaky.extxyz'} frame 4 is also training set {files / 'train.extxyz'} frame 1" in err
    assert "--test-overlap warn runs anyway" in err
    assert compiles.count == 0 and not (tmp_path / "picked.extxyz").exists()
    with pytest.warns(LeakageWarning, match="frame 3 is also pool"):
        summary = select_from_files(files / "model.msgpack", files / "pool.extxyz", files / "train.extxyz", 2,
                                    out_path=tmp_path / "anyway.extxyz", config=SMALL, progress=False,
                                    test_paths=[tmp_path / "leaky.extxyz"], test_overlap="warn")
    assert len(summary.ids) == 2


def test_varred_selector_through_select(files, tmp_path):
    """varred needs the pool's second moment: select accumulates it in its one streaming pass."""
    summary = select_from_files(files / "model.msgpack", files / "pool.extxyz", files / "train.extxyz",
                                budget=BUDGET, out_path=tmp_path / "v.extxyz", progress=False,
                                config=dataclasses.replace(SMALL, selector="varred", shortlist=N_POOL))
    ids, scores = list(summary.ids), np.asarray(summary.scores)
    assert len(set(ids)) == BUDGET and all(0 <= i < N_POOL for i in ids)
    assert np.all(scores > 0) and np.all(np.diff(scores) <= 1e-6 * scores[0])  # greedy gains shrink


def test_target_set_through_select(files, tmp_path):
    """``target_path``: the pool itself as the target gives the picks and gains of varred's own
    target (the pool moment streamed with the shortlist); three pool frames as the target give
    other picks, all from the pool; a target needs varred."""
    varred = dataclasses.replace(SMALL, selector="varred", shortlist=N_POOL)
    run = lambda name, **kw: select_from_files(files / "model.msgpack", files / "pool.extxyz",  # noqa: E731
                                               files / "train.extxyz", budget=BUDGET, config=varred,
                                               out_path=tmp_path / name, progress=False, **kw)
    own = run("own.extxyz")
    same = run("same.extxyz", target_path=files / "pool.extxyz")
    assert same.ids == own.ids
    np.testing.assert_allclose(same.scores, own.scores, rtol=2e-4)
    pool = ase.io.read(files / "pool.extxyz", index=":")
    ase.io.write(tmp_path / "target.extxyz", pool[-3:])
    few = run("few.extxyz", target_path=tmp_path / "target.extxyz")
    record = json.loads((tmp_path / "few.summary.json").read_text())
    assert record["n_target"] == 3 and record["target"].endswith("target.extxyz") and record["ids"] == list(few.ids)
    assert few.ids != own.ids and all(0 <= i < N_POOL for i in few.ids)
    assert few.scores[0] < own.scores[0]  # three target frames hold less variance than fourteen
    with pytest.raises(ValueError, match="varred"):
        select_from_files(files / "model.msgpack", files / "pool.extxyz", files / "train.extxyz", BUDGET,
                          config=SMALL, out_path=tmp_path / "l.extxyz", progress=False,
                          target_path=tmp_path / "target.extxyz")


def test_same_picks_on_four_host_devices(files, picked, tmp_path):
    """Featurisation, the shortlist and the selector run on 4 host CPU devices (in a
    subprocess): the picks equal the 1-device run's."""
    import os
    import subprocess
    import sys
    out = tmp_path / "four.extxyz"
    code = (
        "import jax, sys; assert len(jax.devices()) == 4, jax.devices();"
        "from ntkal.cli import main;"
        f"sys.exit(main(['select', '--model', {str(files / 'model.msgpack')!r}, '--pool', "
        f"{str(files / 'pool.extxyz')!r}, '--train', {str(files / 'train.extxyz')!r}, '--budget', "
        f"'{BUDGET}', '--kernel', 'joint', '--out', {str(out)!r}, '--sketch-dim', '32', '--num-probes', "
        "'2', '--shortlist', '8', '--chunk-size', '4', '--selector', 'lcmd', '--no-progress', "
        "'--no-compile-cache']))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads(picked.with_name("picked.summary.json").read_text())
    four = json.loads(out.with_name("four.summary.json").read_text())
    assert four["ids"] == one["ids"]
    assert four["stats"]["feature_devices"] == 4 and one["stats"]["feature_devices"] == 1
    np.testing.assert_allclose(four["scores"], one["scores"], rtol=1e-5)

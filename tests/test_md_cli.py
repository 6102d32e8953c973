"""``ntkal md`` end to end (float32, as users run it): one compiled step, labels, kill and resume."""

import csv
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest

from tiny_models import tiny_config
from ntkal.data import batch_atoms
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import build_model
from ntkal.models.checkpoint import save_checkpoint
from ntkal.onthefly import load_md_spec

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tiny_config(num_layers=1, lmax=1)

MD_TOML = """
name = "tiny"
out = "out"
[system]
start = "start.extxyz"
[model]
checkpoint = "tiny.msgpack"
[md]
steps = 200
timestep = 2.0
temperature = 1500
friction = 0.02
tau = {tau}
skin = 0.3
max_force = {max_force}
max_restarts = 1000
write_every = 10
checkpoint_every = 40
[uncertainty]
kernel = "energy"
sketch_dim = 16
[labelling]
threshold = {threshold}
max_labels = 4
min_interval = 10
finetune_every = 2
[train]
max_epochs = 2
[oracle]
function = "labelling_oracles:slow_emt"
executor = "serial"
kwargs = {{delay = {delay}}}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("md")
    model = build_model(CONFIG)
    frames = list(cu_pt_slab_frames(2, seed=1, rattle=(0.05, 0.1)))
    params = model.init(jax.random.key(0), batch_atoms(frames, CONFIG.cutoff, elements=CONFIG.elements))
    save_checkpoint(folder / "tiny.msgpack", params, CONFIG, {"train_elements": list(CONFIG.elements)})
    ase.io.write(folder / "start.extxyz", frames[0])
    return folder


#: The tiny model's largest atomic force at 1500 K is ~0.1–0.3 eV/Å: this limit is hit now and
#: then, so the reference run also exercises restarts.
MAX_FORCE = 0.23


def _config(folder, name, *, tau=0.05, threshold=1e-3, delay=0.0, max_force=MAX_FORCE):
    path = folder / f"{name}.toml"
    path.write_text(MD_TOML.format(tau=tau, threshold=threshold, delay=delay, max_force=max_force))
    return path


def _rows(out):
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def _command(folder, config, out):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
           "NTKAL_CACHE_DIR": str(folder / "jax-cache")}  # later runs reuse the compiled programs
    return [sys.executable, "-m", "ntkal.cli", "md", str(config), "--out", str(out), "--quiet"], env


@pytest.fixture(scope="module")
def reference(folder):
    out = folder / "reference"
    cmd, env = _command(folder, _config(folder, "reference"), out)
    cmd.remove("--quiet")  # event lines (labels, restarts) on stdout
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_md_compiles_the_step_once_and_labels(reference):
    """200 steps with Verlet rebuilds, labels (rank-r updates), fine-tunes and restarts: one
    step compilation."""
    reference, _ = reference
    s = json.loads((reference / "summary.json").read_text())
    assert s["steps"] == 200 and s["step_compilations_this_call"] == 1
    assert 2 <= s["labels"] <= 4 and s["finetunes"] >= 1 and s["restarts"] >= 1
    rows = _rows(reference)
    assert [int(r["step"]) for r in rows] == list(range(1, 201))
    labelled = [r for r in rows if r["labelled"] == "1"]
    assert len(labelled) == s["labels"]
    for r in labelled:  # the frame that triggered a label was above the threshold
        assert float(r["variance"]) > float(r["threshold"])
    frames = ase.io.read(reference / "labels.extxyz", ":")
    assert len(frames) == s["labels"] and all(np.isfinite(a.get_potential_energy()) for a in frames)
    temps = np.array([float(r["temperature_K"]) for r in rows[50:]])
    assert 500 < temps.mean() < 3000  # thermostat at 1500 K (12 atoms, 4 fixed: large fluctuations)
    assert (reference / "md.png").stat().st_size > 0
    from ntkal.models.pretrained import load_pretrained
    _, _, meta = load_pretrained(str(reference / "model.msgpack"))  # the fine-tuned product
    assert meta["md_labels"] == s["labels"] and meta["md_finetunes"] == s["finetunes"]


def test_md_restarts_fall_back_to_earlier_frames(reference):
    """Every step over the force limit restarts from the last labelled frame, a second one within
    20 steps from the frame before (down to the start structure), and the run still completes."""
    reference, stdout = reference
    s = json.loads((reference / "summary.json").read_text())
    rows = _rows(reference)
    assert s["restarts"] == sum(r["restart"] == "1" for r in rows)
    for r in rows:
        assert (r["restart"] == "1") == (float(r["max_force"]) > MAX_FORCE)
    events = [line for line in stdout.splitlines() if re.match(r"step \d+: restart \d+ from ", line)]
    assert len(events) == s["restarts"]
    steps = [int(re.match(r"step (\d+)", e).group(1)) for e in events]
    labelled = [int(r["step"]) for r in rows if r["labelled"] == "1"]
    checked = 0
    for k in range(1, len(events)):  # a quick second restart never reuses the same labelled frame
        no_label_between = not any(steps[k - 1] < step <= steps[k] for step in labelled)
        if steps[k] - steps[k - 1] < 20 and "labelled frame" in events[k - 1] and no_label_between:
            checked += 1
            n_prev = int(re.search(r"labelled frame (\d+)", events[k - 1]).group(1))
            assert "start structure" in events[k] or int(re.search(r"labelled frame (\d+)", events[k]).group(1)) < n_prev
    assert checked >= 1  # the fallback did happen in this run


def test_md_kill_and_resume_reproduces_trajectory_and_labels(folder, reference):
    """SIGKILL ``ntkal md`` after its first label (next label's oracle call sleeps 1.5 s), rerun:
    the log, trajectory and labels equal the uninterrupted run's, byte for byte."""
    reference, _ = reference
    out = folder / "killed"
    cmd, env = _command(folder, _config(folder, "killed", delay=1.5), out)
    # the oracle's delay is part of the config digest but not of the physics
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (out / "labels.extxyz").exists() or os.path.getsize(out / "labels.extxyz") == 0:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_rows(out)) < 200  # really interrupted
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("log.csv", "trajectory.extxyz", "labels.extxyz"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_md_refuses_to_resume_other_settings(folder, reference):
    reference, _ = reference
    cmd, env = _command(folder, _config(folder, "other", tau=0.07), reference)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "other settings" in done.stderr


def test_md_config_errors_name_file_and_line(folder):
    bad = folder / "bad.toml"
    text = MD_TOML.format(tau=0.0, threshold=1e-3, delay=0.0, max_force=MAX_FORCE)
    bad.write_text(text.replace('start = "start.extxyz"', 'start = "missing.extxyz"').replace("steps = 200", "stepz = 200"))
    with pytest.raises(ValueError) as err:
        load_md_spec(bad)
    lines = str(err.value).splitlines()
    assert len(lines) == 2  # every problem at once
    assert lines[0].startswith(f"{bad}, line 5: [system] start: no such file") and "missing.extxyz" in lines[0]
    assert lines[1].startswith(f"{bad}, line 9: unknown key 'stepz' in [md]")
    bad.write_text(text.replace("tau = 0.0", "tau = -1.0"))
    with pytest.raises(ValueError, match=rf"{bad}, line 13: \[md\] tau must be >= 0"):
        load_md_spec(bad)


def test_calibrated_threshold():
    """error_threshold: label when c·σ² > tol², c the q-quantile of (force MSE / σ²) of past labels."""
    from ntkal.onthefly.config import LabelRule, threshold_of

    rule = LabelRule(threshold=0.5, error_threshold=0.2, calibration_quantile=0.5, calibration_min=3)
    assert threshold_of(rule, [4.0, 8.0]) == 0.5  # too few labels: the fixed threshold
    assert threshold_of(rule, [4.0, 8.0, 16.0]) == pytest.approx(0.2 ** 2 / 8.0)
    assert threshold_of(LabelRule(threshold=0.5), [4.0, 8.0, 16.0]) == 0.5  # calibration off
    with pytest.raises(ValueError, match="calibration_quantile"):
        LabelRule(calibration_quantile=1.0)

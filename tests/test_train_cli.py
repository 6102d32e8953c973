"""``ntkal train``: config checks before JAX, a tiny pretraining run and its checkpoint in ``ntkal select``,
element coverage (outside the model: error; known but unseen in training: warning), and the
``train_elements`` of the shipped checkpoints."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import ase.io
import jax
import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
import pytest

from tiny_models import TINY
from ntkal.cli import main
from ntkal.data import UnknownElementError
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.models import load_pretrained, pretrained_names
from ntkal.models.coverage import UnseenElementWarning, check_element_coverage, element_coverage
from ntkal.train import TrainConfig
from ntkal.train.spec import TrainConfigError, load_train_spec

CU, NI, PT, AU = 29, 28, 78, 79
MODEL_ELEMENTS = ("Cu", "Pt", "Au")  # Au: known by the model, absent from the training data
N_TRAIN, N_VAL = 6, 2
TRAIN = {"max_epochs": 2, "batch_size": 4, "seed": 3}


def _frames(n, seed, swap=None, every=False):
    """``n`` EMT-labelled 8-atom Cu/Pt slabs; ``swap`` = atomic number put on atom 0 of the last
    frame (of every frame with ``every``), relabelled with EMT."""
    frames = list(cu_pt_slab_frames(n, seed=seed, size=(2, 2, 2)))
    for atoms in frames:
        atoms.info.pop("adsorbate_info", None)
    for atoms in (frames if every else frames[-1:]) if swap is not None else ():
        atoms.numbers[0] = swap
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return frames


def _toml(value) -> str:
    return json.dumps(value)  # JSON strings, numbers and lists are TOML


def _write_config(path, *, model=None, data=None, train=None, top=None) -> None:
    top = {"out": "models/tiny.msgpack", "seed": 1} if top is None else top
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    for table, values in (("model", model), ("data", data), ("train", train)):
        if values is not None:
            lines += [f"[{table}]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


# one interaction block, l <= 1: the training step compiles in ~20 s on 2 busy cores
TINY_MODEL = {"elements": list(MODEL_ELEMENTS), **TINY, "num_layers": 1, "lmax": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained by ``ntkal train`` on an extxyz file (+ a compressed validation file)."""
    root = tmp_path_factory.mktemp("train_cli")
    frames = _frames(N_TRAIN + N_VAL, seed=1)
    ase.io.write(root / "train.extxyz", frames[:N_TRAIN])
    ase.io.write(root / "val.extxyz.xz", frames[N_TRAIN:])
    _write_config(root / "train.toml", model=TINY_MODEL, data={"train": "train.extxyz", "val": ["val.extxyz.xz"]},
                  train=TRAIN)
    assert main(["train", str(root / "train.toml"), "--quiet", "--no-compile-cache"]) == 0
    return root


def test_checkpoint_metadata_and_card(trained):
    path = trained / "models" / "tiny.msgpack"
    model, params, meta = load_pretrained(str(path))
    assert model.config.symbols == MODEL_ELEMENTS
    assert meta["name"] == "tiny" and meta["train_elements"] == [CU, PT]
    files = {kind: meta["data"][kind] for kind in ("train", "val")}
    for kind, name, frames in (("train", "train.extxyz", N_TRAIN), ("val", "val.extxyz.xz", N_VAL)):
        (entry,) = files[kind]
        assert entry["path"] == str(trained / name) and entry["frames"] == frames
        assert entry["sha256"] == hashlib.sha256((trained / name).read_bytes()).hexdigest()
    assert meta["train_config"] == dataclasses.asdict(TrainConfig(**TRAIN))
    assert meta["epochs_run"] == 2 and meta["best_epoch"] in (0, 1) and len(meta["history"]) == 2
    for split in ("train", "val"):
        for key in ("energy_mae_per_atom", "energy_rmse_per_atom", "energy_mae", "force_mae", "force_rmse"):
            assert np.isfinite(meta["errors"][split][key]) and meta["errors"][split][key] >= 0
    assert meta["errors"]["val"]["n_structures"] == N_VAL
    assert meta["command"].startswith("ntkal train ") and meta["ntkal_version"] and meta["wall_s"] > 0
    assert meta["init"] == {"new": True, "seed": 1}
    card = (trained / "models" / "tiny.md").read_text()
    assert "`tiny`" in card and "Cu, Pt; never seen in training: Au" in card
    assert files["train"][0]["sha256"] in card and "| val | 2 |" in card


def test_rerun_resumes_from_the_fit_state_and_other_settings_are_refused(trained, capsys):
    """The fit state beside the checkpoint: the same command again resumes a finished fit (same
    parameters, no epoch trained); a changed [train] table is refused (exit 2) naming --no-resume."""
    state = trained / "models" / "tiny.state.npz"
    assert state.exists()
    _, first, _ = load_pretrained(str(trained / "models" / "tiny.msgpack"))
    capsys.readouterr()
    assert main(["train", str(trained / "train.toml"), "--no-compile-cache"]) == 0
    assert f"resuming from {state}" in capsys.readouterr().out
    _, again, _ = load_pretrained(str(trained / "models" / "tiny.msgpack"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                                     jax.tree_util.tree_leaves(again)))
    _write_config(trained / "other.toml", model=TINY_MODEL, data={"train": "train.extxyz", "val": ["val.extxyz.xz"]},
                  train={**TRAIN, "learning_rate": 1e-4})
    assert main(["train", str(trained / "other.toml"), "--quiet", "--no-compile-cache"]) == 2
    err = capsys.readouterr().err
    assert "belongs to a fit with other inputs" in err and "--no-resume" in err


def test_select_uses_it_and_warns_on_elements_unseen_in_training(trained, tmp_path):
    ase.io.write(tmp_path / "pool.extxyz", _frames(6, seed=5, swap=AU))  # Au in frame 5
    out = tmp_path / "picked.extxyz"
    with pytest.warns(UnseenElementWarning, match=r"Au, which the model knows but never saw.*frame 5"):
        code = main(["select", "--model", str(trained / "models" / "tiny.msgpack"),
                     "--pool", str(tmp_path / "pool.extxyz"), "--train", str(trained / "train.extxyz"),
                     "--budget", "2", "--out", str(out), "--kernel", "last_layer", "--sketch-dim", "none",
                     "--shortlist", "4", "--chunk-size", "4", "--no-progress", "--no-compile-cache"])
    assert code == 0
    assert len(ase.io.read(out, ":")) == 2
    summary = json.loads(out.with_name("picked.summary.json").read_text())
    assert "Au" in summary["element_warning"] and "1 of 6" in summary["element_warning"]


def test_select_rejects_a_pool_element_outside_the_model(trained, tmp_path, capsys):
    ase.io.write(tmp_path / "pool.extxyz", _frames(4, seed=6, swap=NI))  # Ni in frame 3
    out = tmp_path / "picked.extxyz"
    code = main(["select", "--model", str(trained / "models" / "tiny.msgpack"),
                 "--pool", str(tmp_path / "pool.extxyz"), "--train", str(trained / "train.extxyz"),
                 "--budget", "2", "--out", str(out), "--no-progress", "--no-compile-cache"])
    err = capsys.readouterr().err
    assert code == 2 and "['Ni']" in err and "pool.extxyz, frame 3)" in err and "1 of 4" in err
    assert not out.exists()


def test_fine_tune_with_holdout_warns_on_unseen_elements(trained, capsys):
    """init_from the trained checkpoint on Au-bearing frames: e0 stays frozen, Au joins train_elements."""
    parent = trained / "models" / "tiny.msgpack"
    ase.io.write(trained / "ft.extxyz", _frames(5, seed=7, swap=AU, every=True))
    _write_config(trained / "ft.toml", top={"out": "models/ft.msgpack", "name": "tiny-ft"},
                  model={"init_from": "models/tiny.msgpack"}, data={"train": "ft.extxyz", "val_fraction": 0.4},
                  train={**TRAIN, "max_epochs": 1})
    assert main(["train", str(trained / "ft.toml"), "--no-compile-cache"]) == 0
    out = capsys.readouterr().out
    assert "warning: the training data holds Au, which the model knows but never saw in training" in out
    assert "fine-tuning" in out and "trained tiny-ft: best epoch 0 of 1" in out
    _, before, parent_meta = load_pretrained(str(parent))
    _, after, meta = load_pretrained(str(trained / "models" / "ft.msgpack"))
    assert meta["init"] == {"init_from": str(parent), "name": "tiny", "train_elements": [CU, PT],
                            "sha256": hashlib.sha256(parent.read_bytes()).hexdigest()}
    assert meta["data_elements"] == [CU, PT, AU] and meta["train_elements"] == [CU, PT, AU]
    data = meta["data"]
    assert (data["n_train"], data["n_holdout"], data["n_val"]) == (3, 2, 2) and data["val"] == []
    held = [h["frame"] for h in data["holdout"]]
    assert len(set(held)) == 2 and set(held) <= set(range(5))
    assert all(h["path"] == str(trained / "ft.extxyz") for h in data["holdout"])
    np.testing.assert_array_equal(after["e0"], before["e0"])  # reference energies are frozen
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), after["net"], before["net"])
    assert any(jax.tree_util.tree_leaves(changed))
    assert "fine-tuned from" in (trained / "models" / "ft.md").read_text()


def test_unlabelled_or_unknown_element_frames_are_named(tmp_path, capsys):
    """Data errors surface after the checks, before any compile: exit 2 naming file and frame."""
    frames = _frames(3, seed=2)
    frames[1].calc = None  # no energy label
    ase.io.write(tmp_path / "t.extxyz", frames)
    _write_config(tmp_path / "c.toml", model=TINY_MODEL, data={"train": "t.extxyz"}, train=TRAIN)
    assert main(["train", str(tmp_path / "c.toml"), "--quiet", "--no-compile-cache"]) == 2
    assert f"(file {tmp_path / 't.extxyz'}, frame 1): no energy label" in capsys.readouterr().err
    ase.io.write(tmp_path / "t.extxyz", _frames(3, seed=2, swap=NI))
    assert main(["train", str(tmp_path / "c.toml"), "--quiet", "--no-compile-cache"]) == 2
    assert "frame 2): elements ['Ni'] are not known to the model" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------------------------
# config checks


def test_bad_config_exits_2_naming_file_and_line_before_jax(tmp_path):
    """In a fresh interpreter: ``train --help`` and a bad key are answered without importing JAX."""
    config = tmp_path / "bad.toml"
    config.write_text('out = "m.msgpack"\n[data]\ntrain = "x.extxyz"\n[train]\nmax_epoch = 3\n')
    (tmp_path / "x.extxyz").write_text("")  # also a problem: empty
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys, time
        from ntkal.cli import main
        out = {{}}
        for argv in (["train", "--help"], ["train", {str(config)!r}]):
            t, buf, err = time.perf_counter(), io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as stop:
                    code = stop.code
            out[argv[1]] = [code, buf.getvalue() + err.getvalue(), time.perf_counter() - t]
        out["jax"] = "jax" in sys.modules
        print(json.dumps(out))
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - t
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["jax"] is False
    assert out["--help"][0] == 0 and "--out" in out["--help"][1]
    code, text, _ = out[str(config)]
    assert code == 2 and text.startswith("ntkal train: error: ")
    assert f"{config}, line 5: unknown key 'max_epoch' in [train]" in text
    assert f"{config}, line 3: [data] train: " in text and "is empty" in text
    assert wall < 60


def _problems(path) -> str:
    with pytest.raises(TrainConfigError) as info:
        load_train_spec(path)
    return str(info.value)


def test_config_problems_are_all_reported_with_lines(tmp_path):
    ase.io.write(tmp_path / "t.extxyz", _frames(2, seed=0))
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent("""\
        out = "m.ckpt"
        colour = 1
        [model]
        elements = ["Cu", "Qq"]
        cutof = 4.0
        [data]
        train = ["t.extxyz", "missing.xyz"]
        val = "t.extxyz"
        val_fraction = 0.2
        [train]
        batch_size = 0
    """))
    text = _problems(path)
    for line, what in ((1, "must be a .msgpack file"), (2, "unknown top-level key 'colour'"),
                       (4, "'Qq' is not a chemical symbol"), (5, "unknown key 'cutof' in [model]"),
                       (7, "no such file"), (8, "is both a training and a validation file"),
                       (9, "with val files, remove it"), (11, "batch_size must be ≥ 1")):
        assert f"{path}, line {line}: " in text and what in text, (line, what, text)

    path.write_text('out = "m.msgpack"\n[model]\ninit_from = "no_such_model"\ncutoff = 3.0\n[data]\ntrain = "t.extxyz"\n')
    text = _problems(path)
    assert f"{path}, line 4: [model] init_from fine-tunes" in text and "remove cutoff" in text
    assert f"{path}, line 3: [model] init_from: 'no_such_model' is neither" in text

    path.write_text("[data\n")
    assert "invalid TOML" in _problems(path)


def test_spec_resolves_paths_and_seeds(tmp_path):
    ase.io.write(tmp_path / "t.extxyz", _frames(2, seed=0))
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text('out = "../o/m.msgpack"\nseed = 7\n[model]\ninit_from = "oc20_like"\n'
                    '[data]\ntrain = "../t.extxyz"\nval_fraction = 0.25\n')
    spec = load_train_spec(path)
    assert spec.init_from == "oc20_like" and spec.model is None
    assert spec.train_files == (str(tmp_path / "t.extxyz"),)
    assert spec.out == tmp_path / "o" / "m.msgpack" and spec.card == tmp_path / "o" / "m.md"
    assert spec.name == "m" and spec.train == {"seed": 7, "val_fraction": 0.25}
    assert load_train_spec(path, out=tmp_path / "x.msgpack").out == tmp_path / "x.msgpack"


def test_config_classes_load_without_jax():
    """``ntkal train`` checks [model] and [train] before JAX loads: the config classes must come
    from JAX-free modules (run in a fresh interpreter)."""
    code = ("import sys; from ntkal.train.spec import model_config_class, train_config_class; "
            "model_config_class(); train_config_class()(batch_size=2); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# coverage


def test_element_coverage():
    numbers = [np.array([CU, AU]), np.array([8, 8, CU])]
    assert element_coverage((CU, PT, AU), (CU, PT), numbers) == ((8,), (AU,))
    assert element_coverage((CU, PT, AU), None, np.array([[CU, AU]])) == ((), ())
    assert check_element_coverage((CU, PT, AU), {"train_elements": [CU, PT]}, [np.array([CU, PT])]) is None
    assert check_element_coverage((CU, PT, AU), {}, [np.array([AU])]) is None  # no train_elements: no warning
    text = check_element_coverage((CU, PT, AU), {"train_elements": [CU]}, [np.array([CU]), np.array([PT, AU])],
                                  locate=lambda k: ("b.xyz", 10 + k))
    assert text.startswith("the pool holds Pt, Au, which the model knows") and "file b.xyz, frame 11" in text
    with pytest.raises(UnknownElementError, match=r"file a.xyz, frame 1\).*\['O', 'Ni'\].*2 of 3") as info:
        check_element_coverage((CU, PT), None, [np.array([CU]), np.array([8]), np.array([NI, CU])], source="a.xyz")
    assert isinstance(info.value, ValueError) and info.value.frame == 1


def test_shipped_checkpoints_record_their_training_elements():
    for name in pretrained_names():
        model, _, meta = load_pretrained(name)
        train = meta["train_elements"]
        assert train == sorted(set(train)) and set(train) <= set(model.config.elements), name
    _, _, oc20 = load_pretrained("oc20_like")
    # Cu/Ag/Au/Ni/Pt slabs with H/C/N/O adsorbates; the model also knows Al and Pd, never trained on
    assert oc20["train_elements"] == [1, 6, 7, 8, NI, CU, 47, PT, AU]
    _, _, t1x = load_pretrained("t1x_like")
    assert t1x["train_elements"] == [1, 6, 7, 8]

"""The ntkal command: argument handling and error reporting (the heavy paths are tested elsewhere).

Whatever must happen before JAX loads (``--help``, every argument and file check) is run in a fresh
interpreter, because this test process has JAX imported already (``conftest.py``).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import ase
import ase.io
import pytest

from ntkal.acquire import AcquisitionConfig
from ntkal.cli import main
from ntkal.cache import default_cache_dir, enable_compile_cache_or_warn
from ntkal.kernels import KernelConfig
from ntkal.cli.select import (ACQUISITION_FLAGS, SelectArgumentError, add_select_arguments, config_from_args,
                               config_to_argv, main_select, validate_select_args)
from ntkal.file_checks import shipped_model_names

HEAVY = ("jax", "matplotlib", "ntkal.select", "ntkal.plots", "ntkal.loop", "ntkal.experiment")


def _python(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a fresh interpreter (one BLAS thread, wide help output)."""
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


# --------------------------------------------------------------------------------------------
# unchanged behaviour


def test_run_reports_config_errors_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[model]\ncheckpoint = "oc20_like"\n[loop]\nmethod = "nope"\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 5" in err and "method" in err


def test_unknown_benchmark_is_an_error(capsys):
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "no_such_benchmark" in capsys.readouterr().err


def test_subcommands_are_mounted():
    for command in ("run", "select", "plot", "bench"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0


# --------------------------------------------------------------------------------------------
# (a) help without JAX, with the defaults of AcquisitionConfig

_HELP_SCRIPT = """
import contextlib, io, json, sys
from ntkal.cli import main
out = {}
for argv in (["--help"], ["select", "--help"], ["run", "--help"], ["plot", "--help"], ["summarize", "--help"]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(argv)
            code = None
        except SystemExit as stop:
            code = stop.code
    out[" ".join(argv)] = [code, buf.getvalue()]
print(json.dumps({"out": out, "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def help_texts():
    proc = _python("-c", _HELP_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_does_not_import_jax_or_matplotlib(help_texts):
    assert help_texts["loaded"] == []
    for argv, (code, text) in help_texts["out"].items():
        assert code == 0, argv
        assert text.startswith("usage: ntkal"), argv


def test_module_help_imports_nothing_heavy():
    proc = _python("-X", "importtime", "-m", "ntkal.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "select" in proc.stdout and "plot" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_select_help_shows_the_defaults_of_acquisition_config(help_texts):
    entries: dict[str, str] = {}  # option -> its help entry (continuation lines joined)
    for line in help_texts["out"]["select --help"][1].splitlines():
        if re.match(r"  --?[\w-]", line):
            flag = line.split()[0]
            entries[flag] = line
        elif line.startswith("    ") and entries:
            entries[flag] += " " + line
    defaults = AcquisitionConfig()
    for spec in ACQUISITION_FLAGS:
        entry = " ".join(entries[spec.flag].split())
        assert entry.endswith(f"(default: {spec.show(spec.value_in(defaults))})"), (spec.flag, entry)
    assert {"--model", "--pool", "--train", "--budget", "--out", "--no-compile-cache"} <= set(entries)


# --------------------------------------------------------------------------------------------
# (b) bad inputs: exit 2, a message naming the argument, no JAX


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("select_files")
    frames = [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74 + 0.01 * i]], cell=[5, 5, 5], pbc=True)
              for i in range(3)]
    ase.io.write(root / "pool.extxyz", frames)
    ase.io.write(root / "train.extxyz", frames[:1])
    ase.io.write(root / "target.extxyz", frames[1:])
    (root / "pool.foo").write_text("not a structure file\n")
    (root / "empty.extxyz").write_text("")
    (root / "a_file.txt").write_text("x\n")
    (root / "ok.toml").write_text('name = "ok"\n[model]\ncheckpoint = "oc20_like"\n')
    (root / "folder").mkdir()
    (root / "dir.extxyz").mkdir()
    return root


def _select(files: Path, **override) -> list[str]:
    args = {"--model": "oc20_like", "--pool": str(files / "pool.extxyz"), "--train": str(files / "train.extxyz"),
            "--budget": "2", "--out": str(files / "out" / "picked.extxyz")}
    args.update(override)
    argv = ["select"]
    for flag, value in args.items():
        if value is not None:
            argv += [flag, value]
    return argv


def _bad_cases(files: Path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (argv, the argument the error must name, a fragment of the message)."""
    pool = str(files / "pool.extxyz")
    return {
        "budget 0": (_select(files, **{"--budget": "0"}), "--budget", ">= 1"),
        "missing pool": (_select(files, **{"--pool": str(files / "nope.extxyz")}), "--pool", "no such file"),
        "unknown pool format": (_select(files, **{"--pool": str(files / "pool.foo")}), "--pool", "foo"),
        "pool is a folder": (_select(files, **{"--pool": str(files / "folder")}), "--pool", "not a file"),
        "empty train": (_select(files, **{"--train": str(files / "empty.extxyz")}), "--train", "empty"),
        "unknown model": (_select(files, **{"--model": "no_such_model"}), "--model", "oc20_like"),
        "out under a file": (_select(files, **{"--out": str(files / "a_file.txt" / "sub" / "p.extxyz")}), "--out",
                             "not a folder"),
        "out single-frame format": (_select(files, **{"--out": str(files / "picked.png")}), "--out",
                                    "single structure"),
        "out without a format": (_select(files, **{"--out": str(files / "picked")}), "--out", "output format"),
        "out is the pool": (_select(files, **{"--out": pool}), "--out", "same file as --pool"),
        "missing target": (_select(files, **{"--target": str(files / "nope.extxyz"), "--selector": "varred"}),
                           "--target", "no such file"),
        "out is the target": (_select(files, **{"--target": str(files / "target.extxyz"), "--selector": "varred",
                                                "--out": str(files / "target.extxyz")}), "--out", "same file as --target"),
        "target without varred": (_select(files, **{"--target": pool, "--selector": "lcmd"}), "--target",
                                  "needs --selector varred"),
        "out is a folder": (_select(files, **{"--out": str(files / "dir.extxyz")}), "--out", "not a regular file"),
        "negative noise": (_select(files, **{"--noise-var": "-1"}), "--noise-var", "noise_var must be > 0"),
        "zero sketch": (_select(files, **{"--sketch-dim": "0"}), "--sketch-dim", "sketch_dim"),
        "bad sketch": (_select(files, **{"--sketch-dim": "wide"}), "--sketch-dim", "integer or 'none'"),
        "bad cascade": (_select(files, **{"--cascade": "joint"}), "--cascade", "energy"),
        "bad joint weights": (_select(files, **{"--joint-weights": "1,2,3"}), "--joint-weights", "w_E,w_F"),
        "evidence without energy": (_select(files, **{"--kernel": "embedding", "--noise-rule": "evidence"}),
                                    "--noise-rule", "energy"),
        "bad joint force": (_select(files, **{"--joint-force": "both"}), "--joint-force", "probe"),
        "run: missing config": (["run", str(files / "nope.toml")], "nope.toml", "cannot read"),
        "run: invalid TOML": (["run", str(files / "pool.extxyz")], "pool.extxyz", "invalid TOML"),
        "run: out is a file": (["run", str(files / "ok.toml"), "--out", str(files / "a_file.txt")], "--out",
                               "not a folder"),
        "plot: missing results": (["plot", str(files / "nope.json")], "results", "no such file"),
    }


_BAD_SCRIPT = """
import contextlib, io, json, sys
from ntkal.cli import main
cases = json.loads(sys.argv[1])
out = {}
for name, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    out[name] = [code, err.getvalue(), sorted(m for m in %r if m in sys.modules)]
print(json.dumps(out))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def bad_results(files):
    cases = {name: argv for name, (argv, _, _) in _bad_cases(files).items()}
    proc = _python("-c", _BAD_SCRIPT, json.dumps(cases), env={"NTKAL_CACHE_DIR": str(files / "cache")})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", list(_bad_cases(Path("/x"))))
def test_bad_input_is_rejected_before_jax(name, files, bad_results):
    _, argument, fragment = _bad_cases(files)[name]
    code, err, loaded = bad_results[name]
    assert code == 2, (name, err)
    assert loaded == [], (name, loaded)
    assert argument in err and fragment in err, (name, err)
    lines = [line for line in err.splitlines() if line.startswith("argument") or "error:" in line]
    assert len(lines) == 1, err  # one problem, one line; the good arguments are not blamed
    assert not (files / "out").exists() and not (files / "cache").exists()


def test_all_file_problems_are_reported_at_once(files):
    args = add_select_arguments(argparse.ArgumentParser()).parse_args(_select(
        files, **{"--budget": "0", "--pool": str(files / "nope.extxyz"), "--out": str(files / "x.png")})[1:])
    with pytest.raises(SelectArgumentError) as info:
        validate_select_args(args)
    assert [flag for flag, _ in info.value.problems] == ["--budget", "--pool", "--out"]
    assert str(info.value).count("\n") == 2


def test_good_arguments_pass_and_reach_the_compute_entry_point(files, monkeypatch, capsys):
    calls, targets = [], []

    def select_from_files(model_path, pool_path, train_path, budget, *, out_path, config, progress=True,
                          program_cache=None, target_path=None, test_paths=(), test_overlap="error",
                          collectives=None):
        assert program_cache is None  # --no-compile-cache: no traced programs on disk either
        assert collectives.count == 1 and collectives.is_writer  # no --distributed: this process alone
        targets.append(target_path)
        calls.append((model_path, pool_path, train_path, budget, out_path, config, progress))
        return types.SimpleNamespace(budget=budget, n_pool=3, out_path=out_path, summary_path="s.json",
                                     timings={"total_s": 1.25}, config=config, n_pool_in_train=0,
                                     pool_duplicates=0)

    monkeypatch.setitem(sys.modules, "ntkal.select", types.SimpleNamespace(select_from_files=select_from_files))
    argv = _select(files, **{"--out": str(files / "new" / "deeper" / "picked.extxyz.gz")})
    args = add_select_arguments(argparse.ArgumentParser()).parse_args(
        argv[1:] + ["--selector", "lcmd", "--no-progress", "--no-compile-cache"])
    validate_select_args(args)
    assert main_select(args) == 0
    (model, pool, train, budget, out, config, progress), = calls
    assert (model, budget, progress) == ("oc20_like", 2, False)
    assert config == dataclasses.replace(AcquisitionConfig(), selector="lcmd")
    assert (files / "new" / "deeper").is_dir()
    assert "picked 2 of 3" in capsys.readouterr().out
    with_target = add_select_arguments(argparse.ArgumentParser()).parse_args(
        argv[1:] + ["--target", str(files / "target.extxyz"), "--no-progress", "--no-compile-cache"])
    assert main_select(with_target) == 0
    assert targets == [None, str(files / "target.extxyz")]


def test_an_existing_checkpoint_file_is_a_valid_model(files):
    ckpt = files / "model.msgpack"
    ckpt.write_bytes(b"\x80")
    args = add_select_arguments(argparse.ArgumentParser()).parse_args(_select(files, **{"--model": str(ckpt)})[1:])
    validate_select_args(args)


def test_shipped_names_match_the_model_registry():
    from ntkal.models.pretrained import pretrained_names

    from ntkal.models.converted_names import CONVERTED_NAMES

    assert shipped_model_names() == tuple(sorted(pretrained_names() + CONVERTED_NAMES))
    assert {"oc20_like", "sevennet-0"} <= set(shipped_model_names())


# --------------------------------------------------------------------------------------------
# (c) the flags and AcquisitionConfig round-trip


def _parse(argv: list[str]) -> argparse.Namespace:
    required = ["--model", "m", "--pool", "p", "--train", "t", "--budget", "1", "--out", "o.extxyz"]
    return add_select_arguments(argparse.ArgumentParser()).parse_args(required + argv)


def test_defaults_are_acquisition_config_defaults():
    assert config_from_args(_parse([])) == AcquisitionConfig()


def test_every_config_field_has_a_flag():
    top = {spec.fields[i] for spec in ACQUISITION_FLAGS for i in range(len(spec.fields))}
    assert {f.name for f in dataclasses.fields(AcquisitionConfig)} - {"kernel"} <= top
    assert len({spec.flag for spec in ACQUISITION_FLAGS}) == len(ACQUISITION_FLAGS)


@pytest.mark.parametrize("config", [
    AcquisitionConfig(),
    AcquisitionConfig(
        kernel=KernelConfig(kind="force_probe", sketch_dim=None, num_probes=2,
                            param_filter=("interaction_1", "readout"), seed=3),
        joint_weights=(1.0, 0.25), selector="lcmd", shortlist=50, noise_var=3e-3, noise_rule="fixed",
        feature_norm="per_structure", reduction="max", max_force_quantile=0.9, cascade="embedding",
        cascade_keep=0.3, chunk_size=8, size_classes=2, prefetch=0, seed=3, target_weighting="per_structure",
        force_noise_scale=2.5, evidence_offsets=True),
    AcquisitionConfig(
        kernel=KernelConfig(kind="joint", sketch_dim=64, num_probes=4, joint_force="exact",
                            param_filter=("readout",), seed=7),
        noise_rule="evidence", selector="maxdet", cascade="energy", seed=7),
    AcquisitionConfig(kernel=KernelConfig(kind="energy", sketch_dim=512, num_probes=4, param_filter="last_interaction")),
])
def test_flags_round_trip_the_config(config):
    argv = config_to_argv(config)
    assert config_from_args(_parse(argv)) == config
    assert AcquisitionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_seed_sets_both_seeds_and_param_filter_splits():
    config = config_from_args(_parse(["--seed", "5", "--param-filter", "interaction_1", "--sketch-dim", "none",
                                      "--joint-weights", "1,0.5", "--cascade", "none"]))
    assert config.seed == config.kernel.seed == 5
    assert config.kernel.param_filter == ("interaction_1",) and config.kernel.sketch_dim is None
    assert config.joint_weights == (1.0, 0.5) and config.cascade is None


def test_config_to_argv_refuses_what_no_flag_reaches():
    with pytest.raises(ValueError, match="seed"):
        config_to_argv(AcquisitionConfig(seed=1))  # kernel.seed stays 0
    with pytest.raises(ValueError, match="kernel"):
        config_to_argv(AcquisitionConfig(kernel=KernelConfig(kind="joint", sketch_dim=512, num_probes=4, pool="sum")))


# --------------------------------------------------------------------------------------------
# (d) the compilation cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NTKAL_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NTKAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ntkal" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "ntkal" / "jax"


def test_enable_compile_cache_sets_jax_config_and_caches(tmp_path):
    code = """
import json, os, sys
from ntkal.cache import enable_compile_cache
assert "jax" not in sys.modules
path = enable_compile_cache(sys.argv[1], min_compile_time_s=0)
import jax, jax.numpy as jnp
jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)(jnp.ones(3)).block_until_ready()
print(json.dumps({"path": str(path), "dir": jax.config.jax_compilation_cache_dir,
                  "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "min_size": jax.config.jax_persistent_cache_min_entry_size_bytes,
                  "mode": oct(os.stat(path).st_mode & 0o777), "entries": len(os.listdir(path))}))
"""
    folder = tmp_path / "new" / "cache"
    proc = _python("-c", code, str(folder))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["path"] == got["dir"] == str(folder.resolve())
    assert got["min_time"] == 0.0 and got["min_size"] == -1 and got["mode"] == "0o700"
    assert got["entries"] >= 1  # the compiled program was written


def test_unusable_cache_folder_only_warns(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert enable_compile_cache_or_warn(blocker / "cache") is None
    assert "without the compilation cache" in capsys.readouterr().err

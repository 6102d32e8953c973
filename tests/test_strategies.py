"""ntkal.strategies: the two named strategies, in TOML configs, ``ntkal select`` and ``ntkal run``."""

import argparse
from pathlib import Path

import pytest

from ntkal.acquire import AcquisitionConfig
from ntkal.cli.run import print_strategies
from ntkal.experiment import load_sweep
from ntkal.experiment.config import ConfigError
from ntkal.loop import LoopConfig
from ntkal.cli.select import SelectArgumentError, add_select_arguments, config_from_args
from ntkal.strategies import KNOBS, STRATEGIES, strategy_knobs, strategy_of

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def _of(loop: LoopConfig, has_target_set: bool) -> str | None:
    return strategy_of(loop, has_target_set=has_target_set, uses_evidence=loop.uses_evidence)


def test_the_defaults_are_the_default_strategy_in_the_loop_and_in_select():
    assert _of(LoopConfig(), False) == "extrapolation"
    acq = AcquisitionConfig()
    knobs = {k: getattr(acq, k) for k in KNOBS if hasattr(acq, k)}
    assert strategy_of(knobs, has_target_set=False, uses_evidence=acq.uses_evidence()) == "extrapolation"
    assert {k: getattr(LoopConfig(), k) for k in KNOBS} == strategy_knobs("extrapolation", has_target_set=False)


@pytest.mark.parametrize("config, expected", [
    ("sevennet_pool_shift.toml", {"joint-varred-d512-k4-med-ev-pre": "extrapolation",
                                  "joint-varred-d512-k4-cos-s1-tws-tgt-pre": "representative",
                                  "energy-varred-d512-med-ev-pre": "extrapolation"}),
    ("pool_shift_target.toml", {"joint-varred-d512-k4-med-ev-pre-rp32": "extrapolation",
                                "joint-varred-d512-k4-med-ev-tgt-pre-rp32": None,  # evidence over the target set
                                "joint-varred-d512-k4-cos-s1-tws-tgt-pre-rp32": "representative",
                                "joint-varred-d512-k4-cos-s1-tws-pre-rp32": "representative"}),
    ("oc20_payoff_large_huber.toml", {"joint-varred-d512-k4-med-ev-pre-rp32": "extrapolation",
                                      "joint-varred-d512-k4-med-ev-fq0.9-pre-rp32": "extrapolation",
                                      "joint-varred-d512-k4-cos-s1-tws-pre-rp32": "representative"}),
])
def test_the_shipped_studies_arms_are_the_named_strategies(config, expected):
    """The arms the studies measured as 'the evidence default' and 'the representative regime'
    are exactly the two named strategies (so the README's evidence for each is theirs)."""
    got = {}
    for point in load_sweep(CONFIGS / config):
        if point.loop.method not in ("random", "committee"):
            got[point.label] = _of(point.loop, point.data.has_target_set)
    assert got == expected


_TOML = """name = "s"
[model]
checkpoint = "t1x_like"
[data]
dataset = "t1x_like"
size = "small"
target_set = ["val:20"]
[loop]
method = "joint"
strategy = "representative"
"""


def test_a_strategy_in_a_config_sets_its_knobs_and_a_contradicting_knob_is_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(_TOML)
    (point,) = load_sweep(path)
    assert {k: getattr(point.loop, k) for k in KNOBS} == strategy_knobs("representative", has_target_set=True)
    assert point.loop.variance_target == "target_set"
    path.write_text(_TOML.replace('target_set = ["val:20"]\n', ""))
    (point,) = load_sweep(path)
    assert point.loop.variance_target == "pool" and _of(point.loop, False) == "representative"
    path.write_text(_TOML + "noise_var = 0.01\n")
    with pytest.raises(ConfigError, match=r"line 11: \[loop\] noise_var = 0.01 contradicts strategy"):
        load_sweep(path)
    path.write_text(_TOML + "noise_var = 1.0\n")  # agreeing is fine
    assert load_sweep(path)[0].loop.noise_var == 1.0
    path.write_text(_TOML.replace('"representative"', '"bold"'))
    with pytest.raises(ConfigError, match="line 10: strategy must be one of extrapolation, representative"):
        load_sweep(path)


def test_select_strategy_sets_the_flags_knobs_and_refuses_contradicting_flags():
    parser = add_select_arguments(argparse.ArgumentParser())
    base = ["--model", "m", "--pool", "p", "--train", "t", "--budget", "1", "--out", "o.extxyz"]
    for name in STRATEGIES:
        config = config_from_args(parser.parse_args(base + ["--strategy", name]))
        knobs = strategy_knobs(name, has_target_set=False)
        assert {k: getattr(config, k) for k in KNOBS if hasattr(config, k)} == \
            {k: v for k, v in knobs.items() if k != "variance_target"}
    with pytest.raises(SelectArgumentError, match="--noise-var.*contradicts strategy 'representative'"):
        config_from_args(parser.parse_args(base + ["--strategy", "representative", "--noise-var", "0.5"]))


def test_run_names_the_strategy_of_every_kernel_arm(capsys):
    print_strategies(load_sweep(CONFIGS / "sevennet_pool_shift.toml"))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "joint-varred-d512-k4-med-ev-pre: strategy: extrapolation (the default; what you simulate may lie outside "
        "the pool's bulk: median-trace features, evidence σ², the pool's variance reduced)",
        "joint-varred-d512-k4-cos-s1-tws-tgt-pre: strategy: representative (by its settings; the pool (or the "
        "target set) looks like what you simulate: cosine features, each target structure once, σ² = 1; "
        "variance over the target set)",
        "energy-varred-d512-med-ev-pre: strategy: extrapolation (the default; what you simulate may lie outside "
        "the pool's bulk: median-trace features, evidence σ², the pool's variance reduced)"]

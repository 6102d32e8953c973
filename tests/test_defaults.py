"""The loop's defaults are the settings the pay-off studies ran (issue 29).

Every shipped pay-off study must fine-tune with :data:`ntkal.train.FINETUNE_DEFAULTS` except in
the fields its config names on purpose (and the older studies pinned to their own fine-tune must
really differ from it), so that a user who copies the README's config gets a measured setting.
"""

import dataclasses
from pathlib import Path

import pytest

from ntkal.experiment import load_sweep
from ntkal.loop import LoopConfig
from ntkal.train import FINETUNE_DEFAULTS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"

# study config -> the [train] fields it sets apart from the default, on purpose (see its comments)
PAYOFF_STUDIES = {
    "demo.toml": {"grad_clip", "force_huber_delta"},
    "pilot_small.toml": set(),
    "cascade_small.toml": set(),
    "cascade_small_s3_6.toml": set(),
    "oc20_payoff.toml": set(),
    "oc20_payoff_shipped.toml": set(),
    "oc20_payoff_large.toml": set(),
    "oc20_payoff_large_clip.toml": {"grad_clip"},
    "oc20_payoff_large_huber.toml": {"grad_clip", "force_huber_delta"},
    "oc20_payoff_large_huber_s5_9.toml": {"grad_clip", "force_huber_delta"},
    "pool_shift_payoff.toml": set(),
    "pool_shift_payoff_s5_9.toml": set(),
    "pool_shift_target.toml": set(),
    "pool_shift_target_s5_9.toml": set(),
    "sevennet_pool_shift.toml": {"trainable", "refit_e0"},
    "sevennet_pmechdb.toml": {"trainable", "refit_e0"},
    "sevennet_oc20.toml": {"trainable", "refit_e0"},
    "sevennet_finetune_all.toml": {"refit_e0"},
    "sevennet_finetune_last_block.toml": {"trainable", "refit_e0"},
    "sevennet_finetune_readout.toml": {"trainable", "refit_e0"},
    "sevennet_finetune_e0_only.toml": {"max_epochs", "trainable", "refit_e0"},
}
# the first slice's studies, pinned to the fine-tune they ran (no hold-out, constant rate)
PINNED_OLDER = ["quickstart.toml", "oc20_like.toml", "t1x_like.toml", "pool_shift.toml",
                "pmechdb_like.toml", str(ROOT / "experiments" / "user_example" / "config.toml")]


def _differing(train: TrainConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)
            if getattr(train, f.name) != getattr(FINETUNE_DEFAULTS, f.name)}


def test_the_loops_fine_tune_is_the_studies_not_fits_from_scratch_defaults():
    assert LoopConfig().train == FINETUNE_DEFAULTS
    assert (FINETUNE_DEFAULTS.max_epochs, FINETUNE_DEFAULTS.patience, FINETUNE_DEFAULTS.val_fraction,
            FINETUNE_DEFAULTS.schedule) == (15, 5, 0.1, "cosine")
    assert FINETUNE_DEFAULTS != TrainConfig()  # fit()'s own defaults are left alone


def test_every_shipped_config_is_listed_here():
    listed = set(PAYOFF_STUDIES) | {Path(p).name for p in PINNED_OLDER}
    shipped = {p.name for p in CONFIGS.glob("*.toml")} - {"train_example.toml"}  # an `ntkal train` file
    assert shipped <= listed, f"classify these configs in tests/test_defaults.py: {sorted(shipped - listed)}"


@pytest.mark.parametrize("name", sorted(PAYOFF_STUDIES))
def test_payoff_studies_fine_tune_with_the_default_except_where_they_say(name):
    points = load_sweep(CONFIGS / name)
    assert points
    for point in points:
        assert _differing(point.loop.train) == PAYOFF_STUDIES[name], point.label


@pytest.mark.parametrize("config", PINNED_OLDER)
def test_older_studies_are_pinned_to_the_fine_tune_they_ran(config):
    for point in load_sweep(CONFIGS / config):
        train = point.loop.train
        assert (train.patience, train.val_fraction, train.schedule) == (10, 0.0, "constant")
        assert {"patience", "val_fraction", "schedule"} <= _differing(train)


def test_a_train_table_that_sets_one_key_keeps_the_other_defaults(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('name = "x"\nseeds = [0]\n[model]\ncheckpoint = "oc20_like"\n[data]\ndataset = "oc20_like"\n'
                      '[loop]\nmethod = "random"\n[train]\nmax_epochs = 3\n')
    (point,) = load_sweep(config)
    assert point.loop.train == dataclasses.replace(FINETUNE_DEFAULTS, max_epochs=3)
    config.write_text('name = "x"\nseeds = [0]\n[model]\ncheckpoint = "oc20_like"\n[data]\ndataset = "oc20_like"\n[loop]\nmethod = "random"\n')
    (point,) = load_sweep(config)
    assert point.loop.train == FINETUNE_DEFAULTS

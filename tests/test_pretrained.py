"""Shipped pretrained checkpoints reproduce their model-card errors on the stored validation frames."""

import lzma

import ase.io
import jax
import numpy as np
import pytest

from ntkal.data import structures_from_atoms
from ntkal.models import PRETRAINED_DIR, load_pretrained, pretrained_names
from ntkal.train import evaluate, make_batches, make_error_sums_fn


def test_shipped_checkpoints_exist_and_are_small():
    assert set(pretrained_names()) >= {"oc20_like", "t1x_like"}
    for name in pretrained_names():
        assert (PRETRAINED_DIR / f"{name}.msgpack").stat().st_size <= 5 * 2**20
        assert (PRETRAINED_DIR / f"{name}.md").exists()


@pytest.mark.parametrize("name", ["oc20_like", "oc20_like_large", "t1x_like"])
def test_checkpoint_reproduces_model_card_errors(name):
    model, params, meta = load_pretrained(name)
    with lzma.open(PRETRAINED_DIR / f"{name}.val.extxyz.xz", "rt") as f:
        atoms = ase.io.read(f, index=":", format="extxyz")
    structures = [s for _, s in structures_from_atoms(atoms, model.config.cutoff, elements=model.config.elements)]
    got = evaluate(jax.jit(make_error_sums_fn(model.energy)), params, make_batches(structures, 16))
    card = meta["errors"]["source_val"]
    assert got["n_structures"] == card["n_structures"] == meta["val_frames"]
    for key in ("energy_mae_per_atom", "force_mae", "force_rmse"):
        np.testing.assert_allclose(got[key], card[key], rtol=1e-5)
    # The card's table shows the same numbers.
    text = (PRETRAINED_DIR / f"{name}.md").read_text()
    assert f"{card['force_mae']:.4f}" in text


def test_unknown_pretrained_name():
    with pytest.raises(FileNotFoundError, match="oc20_like"):
        load_pretrained("no_such_model")

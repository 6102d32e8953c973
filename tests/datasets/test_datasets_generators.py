"""Generated stand-ins (tiny size): real formats, split hygiene, labels = fresh calculator."""

import os
import time

import h5py
import numpy as np
import pytest
from ase.calculators.emt import EMT

from ntkal.datasets import (dataset_dir, generate, load_split, read_oc20_extxyz, read_t1x,
                            splits_of)
from ntkal.datasets.oc20_like import (ID_ADSORBATES, ID_METALS, OOD_ADSORBATES, OOD_METALS,
                                      is_source)

OC20_SPLITS = ("train", "val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")


@pytest.fixture(scope="module")
def oc20(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    t0 = time.process_time()  # CPU time: robust to other jobs sharing the cores
    paths = generate("oc20_like", "tiny", seed=0, cache_dir=cache, progress=False)
    elapsed = time.process_time() - t0
    frames = {s: list(load_split("oc20_like", s, size="tiny", cache_dir=cache)) for s in splits_of("oc20_like")}
    return dict(cache=cache, paths=paths, frames=frames, elapsed=elapsed)


def test_oc20_tiny_is_fast_and_cached(oc20):
    assert oc20["elapsed"] < 20.0
    root, man = dataset_dir("oc20_like", "tiny", 0, oc20["cache"], progress=False)
    mtime = os.path.getmtime(os.path.join(root, "manifest.json"))
    t0 = time.perf_counter()
    again = generate("oc20_like", "tiny", seed=0, cache_dir=oc20["cache"], progress=False)
    assert again == oc20["paths"] and time.perf_counter() - t0 < 1.0
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == mtime
    assert [d for d in os.listdir(oc20["cache"]) if ".tmp-" in d] == []


def test_oc20_files_are_real_s2ef_layout(oc20):
    xyz = oc20["paths"]["train"][0]
    assert xyz.endswith("0.extxyz.xz") and os.path.exists(xyz[: -len(".extxyz.xz")] + ".txt.xz")
    import lzma

    with lzma.open(xyz, "rt") as fh:
        fh.readline()
        header = fh.readline()
    assert "Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3" in header
    assert 'pbc="T T T"' in header and "energy=" in header and "free_energy=" in header
    with lzma.open(xyz[: -len(".extxyz.xz")] + ".txt.xz", "rt") as fh:
        first = fh.readline().strip().split(",")
    assert first[0].startswith("random") and first[1] == "frame0"
    float(first[2])


def test_oc20_splits_disjoint_and_ood_sets(oc20):
    fr = oc20["frames"]
    systems = {s: {a.info["system_id"] for a in fr[s]} for s in OC20_SPLITS}
    for i, a in enumerate(OC20_SPLITS):
        assert systems[a], a
        for b in OC20_SPLITS[i + 1:]:
            assert not systems[a] & systems[b], (a, b)
    meta = lambda s, k: {a.info[k] for a in fr[s]}
    assert meta("train", "metal") <= set(ID_METALS) and meta("val_id", "metal") <= set(ID_METALS)
    assert meta("train", "adsorbate") <= set(ID_ADSORBATES) | {"clean"}
    assert meta("val_ood_ads", "adsorbate") <= set(OOD_ADSORBATES)
    assert meta("val_ood_ads", "metal") <= set(ID_METALS)
    assert meta("val_ood_cat", "metal") <= set(OOD_METALS)
    assert meta("val_ood_cat", "adsorbate") <= set(ID_ADSORBATES) | {"clean"}
    assert meta("val_ood_both", "metal") <= set(OOD_METALS)
    assert meta("val_ood_both", "adsorbate") <= set(OOD_ADSORBATES)
    pre = fr["pretrain"]
    assert pre and all(is_source(a) for a in pre)
    assert {a.info["system_id"] for a in pre} < systems["train"]
    assert {a.info["kind"] for a in fr["train"]} == {"relax", "rattle", "md"}


def test_oc20_tags_constraints_and_fresh_labels(oc20):
    frames = [a for s in OC20_SPLITS for a in oc20["frames"][s]]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(frames), size=12, replace=False):
        a = frames[i]
        tags = a.get_tags()
        fixed = np.zeros(len(a), bool)
        fixed[a.constraints[0].index] = True
        assert np.all(fixed == (tags == 0)) and fixed.any()
        n_ads = {"clean": 0}.get(a.info["adsorbate"], len(a.info["adsorbate"].replace("2", "")) + a.info["adsorbate"].count("2"))
        assert (tags == 2).sum() == n_ads
        ref = a.copy()
        ref.calc = EMT()
        # positions are stored with 8 decimals (extxyz), so compare at 1e-6
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(apply_constraint=False),
                                   ref.get_forces(apply_constraint=False), atol=1e-6)
        assert not np.allclose(a.get_forces(apply_constraint=False), 0.0)


def test_oc20_aselmdb_matches_extxyz_and_adsorption_energy(oc20):
    pytest.importorskip("ase_db_backends")
    for s in ("train", "val_ood_both"):
        x = oc20["frames"][s]
        d = list(load_split("oc20_like", s, size="tiny", cache_dir=oc20["cache"], fmt="aselmdb",
                            adsorption_energy=True))
        assert oc20["paths"][s][-1].endswith(".aselmdb")
        assert len(d) == len(x)
        for a, b in zip(x, d):
            assert a.info["system_id"] == b.info["system_id"]
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
            assert b.get_potential_energy() == pytest.approx(
                a.get_potential_energy() - a.info["reference_energy"], abs=1e-6)
            assert b.info["kind"] == a.info["kind"]


def test_oc20_seeded_reproducible(oc20, tmp_path):
    other = generate("oc20_like", "tiny", seed=0, cache_dir=str(tmp_path), progress=False)
    e1 = [a.get_potential_energy() for a in read_oc20_extxyz(oc20["paths"]["val_id"][0])]
    e2 = [a.get_potential_energy() for a in read_oc20_extxyz(other["val_id"][0])]
    assert e1 == e2


@pytest.fixture(scope="module")
def t1x(tmp_path_factory):
    pytest.importorskip("tblite")
    cache = str(tmp_path_factory.mktemp("cache_t1x"))
    t0 = time.process_time()
    paths = generate("t1x_like", "tiny", seed=0, cache_dir=cache, progress=False)
    elapsed = time.process_time() - t0
    root, man = dataset_dir("t1x_like", "tiny", 0, cache, progress=False)
    return dict(cache=cache, paths=paths, man=man, elapsed=elapsed)


def test_t1x_tiny_layout_and_split_by_formula(t1x):
    assert t1x["elapsed"] < 20.0
    h5 = t1x["paths"]["train"][0]
    with h5py.File(h5, "r") as f:
        for s in ("train", "val", "test"):
            for formula in f[s]:
                link = f[s].get(formula, getlink=True)
                assert isinstance(link, h5py.SoftLink) and link.path == f"/data/{formula}"
        rxn = next(iter(f["data"].values()))
        g = next(iter(rxn.values()))
        assert set(g.keys()) >= {"atomic_numbers", "positions", "GFN2-xTB.energy", "GFN2-xTB.forces",
                                 "reactant", "transition_state", "product"}
        assert g["positions"].ndim == 3 and g["reactant/positions"].shape[0] == 1
        assert "hash" in g["transition_state"]
    formulas = {}
    for s in ("train", "val", "test"):
        frames = list(load_split("t1x_like", s, size="tiny", cache_dir=t1x["cache"]))
        assert frames, s
        formulas[s] = {a.info["system_id"] for a in frames}
    assert not formulas["train"] & formulas["val"] and not formulas["train"] & formulas["test"]
    assert not formulas["val"] & formulas["test"]
    pre = list(load_split("t1x_like", "pretrain", size="tiny", cache_dir=t1x["cache"]))
    assert pre and {a.info["system_id"] for a in pre} <= formulas["train"]
    assert {a.info["image_kind"] for a in pre} == {"md"}


def test_t1x_path_rule_and_stationary_points(t1x):
    for r in t1x["man"]["reactions"]:
        # endpoints once + 8 images per kept iteration (T1x rule), minus dropped frames
        assert (r["n_path_frames"] - 2 + r["dropped_frames"]) % 8 == 0
        assert 1 <= (r["n_path_frames"] - 2) // 8 <= r["neb_iterations"]
    h5 = t1x["paths"]["train"][0]
    lot = "GFN2-xTB"
    r, ts, p = (list(read_t1x(h5, None, level_of_theory=lot, image_kinds=(k,))) for k in ("reactant", "ts", "product"))
    for a, b, c in zip(r, ts, p):
        assert b.get_potential_energy() > max(a.get_potential_energy(), c.get_potential_energy())
        assert np.abs(a.get_forces()).max() < 0.1  # relaxed endpoints


def test_t1x_labels_equal_fresh_xtb(t1x):
    from tblite.ase import TBLite

    frames = list(load_split("t1x_like", "train", size="tiny", cache_dir=t1x["cache"]))
    frames += list(load_split("t1x_like", "pretrain", size="tiny", cache_dir=t1x["cache"]))
    rng = np.random.default_rng(1)
    for i in rng.choice(len(frames), size=6, replace=False):
        a = frames[i]
        ref = a.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-5)

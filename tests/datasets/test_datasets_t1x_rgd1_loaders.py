"""T1x and RGD1 HDF5 loaders on fixtures written directly with h5py in the published schema."""

import h5py
import numpy as np
import pytest
from ase.units import Hartree

from ntkal.datasets import T1X_ATOMIC_ENERGIES, DatasetFormatError, read_rgd1, read_t1x

LOT = "wB97x_6-31G(d)"
RNG = np.random.default_rng(1)


def _rxn(g, z, m, *, lot=LOT):
    n = len(z)
    truth = dict(z=np.array(z), pos=RNG.normal(size=(m, n, 3)), e=RNG.normal(size=m) - 100,
                 f=RNG.normal(size=(m, n, 3)))
    g["atomic_numbers"] = truth["z"]
    g["positions"] = truth["pos"]
    g[f"{lot}.energy"] = truth["e"]
    g[f"{lot}.forces"] = truth["f"]
    for j, sub in enumerate(("reactant", "transition_state", "product")):
        s = g.create_group(sub)
        s["atomic_numbers"] = truth["z"]
        s["positions"] = truth["pos"][j:j + 1]
        s[f"{lot}.energy"] = truth["e"][j:j + 1]
        s[f"{lot}.forces"] = truth["f"][j:j + 1]
        s["hash"] = np.int64(1234 + j)
    return truth


def _t1x_file(path, lot=LOT):
    truth = {}
    with h5py.File(path, "w") as f:
        d = f.create_group("data")
        truth[("CH4O", "rxn0001")] = _rxn(d.create_group("CH4O/rxn0001"), [6, 8, 1, 1, 1, 1], 4, lot=lot)
        truth[("CH4O", "rxn0007")] = _rxn(d.create_group("CH4O/rxn0007"), [6, 8, 1, 1, 1, 1], 3, lot=lot)
        truth[("H2O2", "rxn0002")] = _rxn(d.create_group("H2O2/rxn0002"), [8, 8, 1, 1], 5, lot=lot)
        f.create_group("train")["CH4O"] = h5py.SoftLink("/data/CH4O")
        f.create_group("val")["H2O2"] = h5py.SoftLink("/data/H2O2")
        f.create_group("test")
    return truth


def test_t1x_split_paths_and_subgroups(tmp_path):
    path = str(tmp_path / "t1x.h5")
    truth = _t1x_file(path)
    train = list(read_t1x(path, "train"))
    assert len(train) == 7
    assert {a.info["system_id"] for a in train} == {"CH4O"}
    for a in train:
        t = truth[(a.info["formula"], a.info["rxn"])]
        j = a.info["group_frame"]
        np.testing.assert_allclose(a.positions, t["pos"][j])
        np.testing.assert_allclose(a.get_forces(), t["f"][j])
        assert a.get_potential_energy() == pytest.approx(t["e"][j])
        assert a.info["image_kind"] == "path" and a.info["split"] == "train"
        assert a.info["source"] == path
    assert [a.info["frame"] for a in train] == list(range(7))
    val = list(read_t1x(path, "val", image_kinds=("reactant", "ts", "product")))
    assert [a.info["image_kind"] for a in val] == ["reactant", "ts", "product"]
    t = truth[("H2O2", "rxn0002")]
    assert [a.get_potential_energy() for a in val] == pytest.approx(t["e"][:3])
    assert list(read_t1x(path, "test")) == []
    assert len(list(read_t1x(path, None))) == 12


def test_t1x_atomization_and_level_of_theory(tmp_path):
    path = str(tmp_path / "t1x.h5")
    truth = _t1x_file(path, lot="GFN2-xTB")
    with pytest.raises(DatasetFormatError, match=r"wB97x_6-31G\(d\)\.energy: missing dataset"):
        list(read_t1x(path, "val"))
    a = next(read_t1x(path, "val", level_of_theory="GFN2-xTB", atomic_energies=T1X_ATOMIC_ENERGIES))
    shift = 2 * T1X_ATOMIC_ENERGIES[8] + 2 * T1X_ATOMIC_ENERGIES[1]
    e = truth[("H2O2", "rxn0002")]["e"][0]
    assert a.get_potential_energy() == pytest.approx(e - shift)
    assert a.info["total_energy"] == pytest.approx(e)


def test_t1x_malformed(tmp_path):
    path = str(tmp_path / "bad.h5")
    _t1x_file(path)
    with h5py.File(path, "a") as f:
        del f["data/H2O2/rxn0002/positions"]
        f["data/H2O2/rxn0002/positions"] = RNG.normal(size=(5, 3, 3))
        f["data/CH4O/rxn0007/" + LOT + ".energy"][1] = np.nan
        f["test"]["C2H6"] = h5py.SoftLink("/data/C2H6")
    with pytest.raises(DatasetFormatError, match=r"bad.h5: /data/H2O2/rxn0002/positions: shape"):
        list(read_t1x(path, "val"))
    with pytest.raises(DatasetFormatError, match=r"/data/CH4O/rxn0007 frame 1: non-finite energy"):
        list(read_t1x(path, "train"))
    with pytest.raises(DatasetFormatError, match="dangling link"):
        list(read_t1x(path, "test"))
    with pytest.raises(DatasetFormatError, match="/nosplit: missing group"):
        list(read_t1x(path, "nosplit"))
    trunc = str(tmp_path / "trunc.h5")
    raw = open(path, "rb").read()
    open(trunc, "wb").write(raw[: len(raw) // 3])
    with pytest.raises(DatasetFormatError, match="trunc.h5"):
        list(read_t1x(trunc, "train"))


def _rgd1_file(path):
    truth = {}
    with h5py.File(path, "w") as f:
        for key, z in (("MR_10_0", [6, 1, 1, 8]), ("MR_10_1", [6, 1, 1, 8]), ("MR_11_0", [7, 1, 1, 1])):
            g = f.create_group(key)
            g["elements"] = np.array(z)
            g["Rsmiles"] = b"C=O"
            g["Psmiles"] = b"[CH]O"
            t = {}
            for geo, e in (("RG", "R"), ("TSG", "TS"), ("PG", "P")):
                t[geo] = RNG.normal(size=(len(z), 3))
                t[e] = float(RNG.normal() - 50)
                g[geo] = t[geo]
                g[f"{e}_E"] = t[e]
                g[f"{e}_H"] = t[e] + 0.01
            truth[key] = t
    return truth


def test_rgd1_energy_only(tmp_path):
    path = str(tmp_path / "rgd1.h5")
    truth = _rgd1_file(path)
    frames = list(read_rgd1(path))
    assert len(frames) == 9
    for a in frames:
        t = truth[a.info["key"][1:]]
        geo, e = {"reactant": ("RG", "R"), "ts": ("TSG", "TS"), "product": ("PG", "P")}[a.info["image_kind"]]
        np.testing.assert_allclose(a.positions, t[geo])
        assert a.get_potential_energy() == pytest.approx(t[e] * Hartree)
        assert "forces" not in a.calc.results
        assert a.info["rsmiles"] == "C=O"
    assert {a.info["system_id"] for a in frames} == {"MR_10", "MR_11"}
    assert [a.info["frame"] for a in frames] == list(range(9))
    with h5py.File(path, "a") as f:
        del f["MR_11_0/TS_E"]
    with pytest.raises(DatasetFormatError, match="rgd1.h5: /MR_11_0: missing dataset"):
        list(read_rgd1(path))

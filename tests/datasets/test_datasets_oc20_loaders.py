"""OC20 S2EF loaders on fixtures written by hand (lzma text, ase.db), not ntkal's writer."""

import lzma
import math
import os

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from ntkal.datasets import (DatasetFormatError, read_ase_db, read_extxyz, read_oc20_aselmdb,
                            read_oc20_extxyz, read_oc20_s2ef)

RNG = np.random.default_rng(0)


def _frame_text(n, energy, *, lattice=10.0, pos=None, forces=None, tags=None, move=None,
                drop_force_of_atom=None):
    pos = RNG.uniform(0, lattice, (n, 3)) if pos is None else pos
    forces = RNG.normal(size=(n, 3)) if forces is None else forces
    tags = np.array([0] * (n // 2) + [1] * (n - n // 2 - 1) + [2]) if tags is None else tags
    move = tags > 0 if move is None else move
    syms = ["Cu"] * (n - 1) + ["O"]
    lines = [str(n),
             f'Lattice="{lattice} 0.0 0.0 0.0 {lattice} 0.0 0.0 0.0 {lattice}" '
             "Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 "
             f'energy={energy} free_energy={energy} pbc="T T T"']
    for i in range(n):
        f = forces[i] if i != drop_force_of_atom else forces[i][:2]
        lines.append(f"{syms[i]} {pos[i][0]:.8f} {pos[i][1]:.8f} {pos[i][2]:.8f} "
                     f"{'T' if move[i] else 'F'} {tags[i]} " + " ".join(f"{x:.8f}" for x in f))
    return "\n".join(lines) + "\n", pos, forces, tags, move


def _write_chunk(d, k, frames, refs, sid=("random123", "random456")):
    """frames: list of (n, energy, kwargs); writes <k>.extxyz.xz and <k>.txt.xz."""
    texts, truth = [], []
    for j, (n, e, kw) in enumerate(frames):
        t, pos, f, tags, move = _frame_text(n, e, **kw)
        texts.append(t)
        truth.append(dict(n=n, energy=e, pos=pos, forces=f, tags=tags, move=move))
    xyz = os.path.join(d, f"{k}.extxyz.xz")
    txt = os.path.join(d, f"{k}.txt.xz")
    with lzma.open(xyz, "wt") as fh:
        fh.write("".join(texts))
    with lzma.open(txt, "wt") as fh:
        for j, r in enumerate(refs):
            fh.write(f"{sid[j % len(sid)]},frame{j},{r}\n")
    return xyz, txt, truth


def test_reads_s2ef_chunk_with_labels_tags_constraints(tmp_path):
    xyz, txt, truth = _write_chunk(tmp_path, 0, [(5, -3.5, {}), (6, -4.25, {}), (5, 1.0, {})],
                                   [-1.0, -2.0, 0.5])
    frames = list(read_oc20_extxyz(xyz, split="train"))
    assert len(frames) == 3
    for j, (a, t) in enumerate(zip(frames, truth)):
        assert len(a) == t["n"]
        assert a.get_potential_energy() == pytest.approx(t["energy"])
        np.testing.assert_allclose(a.get_forces(apply_constraint=False), t["forces"], atol=1e-8)
        np.testing.assert_allclose(a.positions, t["pos"], atol=1e-8)
        np.testing.assert_array_equal(a.get_tags(), t["tags"])
        fixed = a.constraints[0].index
        np.testing.assert_array_equal(np.sort(fixed), np.flatnonzero(~t["move"]))
        assert a.info["frame"] == j and a.info["source"] == xyz and a.info["split"] == "train"
        assert a.info["system_id"] == ("random123", "random456")[j % 2]
        assert a.info["fid"] == j
    assert frames[1].info["reference_energy"] == pytest.approx(-2.0)
    ads = list(read_oc20_extxyz(xyz, txt, adsorption_energy=True))
    assert [a.get_potential_energy() for a in ads] == pytest.approx([-2.5, -2.25, 0.5])
    assert ads[0].info["total_energy"] == pytest.approx(-3.5)


def test_directory_reads_chunks_in_numeric_order(tmp_path):
    for k in (10, 2):
        _write_chunk(tmp_path, k, [(4, float(k), {})], [0.0])
    energies = [a.get_potential_energy() for a in read_oc20_s2ef(tmp_path)]
    assert energies == [2.0, 10.0]


def test_truncated_xz_names_file_and_frame(tmp_path):
    xyz, _, _ = _write_chunk(tmp_path, 0, [(30, -1.0, {})] * 40, [0.0] * 40)
    data = open(xyz, "rb").read()
    with open(xyz, "wb") as fh:
        fh.write(data[: len(data) // 2])
    seen = 0
    with pytest.raises(DatasetFormatError) as err:
        for _ in read_oc20_extxyz(xyz):
            seen += 1
    assert xyz in str(err.value) and f"frame {seen}" in str(err.value)
    assert 0 < seen < 40


def test_truncated_text_and_malformed_row_name_frame(tmp_path):
    xyz, txt, _ = _write_chunk(tmp_path, 0, [(4, -1.0, {}), (4, -1.0, {"drop_force_of_atom": 2})],
                               [0.0, 0.0])
    with pytest.raises(DatasetFormatError, match=r"0\.extxyz\.xz: frame 1:"):
        list(read_oc20_extxyz(xyz))
    text, *_ = _frame_text(4, -1.0)
    cut = os.path.join(tmp_path, "cut.extxyz")
    open(cut, "w").write(text + text[: len(text) - 60])
    with pytest.raises(DatasetFormatError, match="cut.extxyz: frame 1:"):
        list(read_extxyz(cut))


def test_nan_energy_and_txt_mismatch_raise(tmp_path):
    xyz, _, _ = _write_chunk(tmp_path, 0, [(4, -1.0, {}), (4, math.nan, {})], [0.0, 0.0])
    with pytest.raises(DatasetFormatError, match="frame 1: non-finite energy"):
        list(read_oc20_extxyz(xyz))
    xyz, txt, _ = _write_chunk(tmp_path, 1, [(4, -1.0, {}), (4, -1.0, {})], [0.0])
    with pytest.raises(DatasetFormatError, match=r"1\.txt\.xz: frame 1: txt has fewer lines"):
        list(read_oc20_extxyz(xyz))
    xyz, txt, _ = _write_chunk(tmp_path, 2, [(4, -1.0, {})], [0.0])
    with lzma.open(txt, "wt") as fh:
        fh.write("random1,frameX,1.0\n")
    with pytest.raises(DatasetFormatError, match="malformed S2EF txt line"):
        list(read_oc20_extxyz(xyz))


def _db_atoms(i):
    a = Atoms("Cu4O", positions=RNG.uniform(0, 5, (5, 3)), cell=np.eye(3) * 6, pbc=True)
    a.set_tags([0, 0, 1, 1, 2])
    a.set_constraint(FixAtoms(indices=[0, 1]))
    f = RNG.normal(size=(5, 3))
    a.calc = SinglePointCalculator(a, energy=-1.5 * i, forces=f)
    return a, f


@pytest.mark.parametrize("ext", [".aselmdb", ".db"])
def test_ase_db_and_aselmdb(tmp_path, ext):
    if ext == ".aselmdb":
        pytest.importorskip("ase_db_backends")
    import ase.db

    path = str(tmp_path / f"x{ext}")
    db = ase.db.connect(path)
    truth = []
    for i in range(3):
        a, f = _db_atoms(i)
        db.write(a, sid=1000 + i // 2, fid=i, ref_energy=0.25 * i, data={"note": "x"})
        truth.append((a.positions.copy(), f, -1.5 * i))
    if hasattr(db, "close"):
        db.close()
    frames = list(read_oc20_aselmdb(path, split="val_id", adsorption_energy=True))
    assert len(frames) == 3
    for i, (a, (pos, f, e)) in enumerate(zip(frames, truth)):
        np.testing.assert_allclose(a.positions, pos)
        np.testing.assert_allclose(a.get_forces(apply_constraint=False), f)
        assert a.get_potential_energy() == pytest.approx(e - 0.25 * i)
        assert a.info["system_id"] == f"random{1000 + i // 2}"
        assert a.info["frame"] == i and a.info["split"] == "val_id"
        np.testing.assert_array_equal(a.get_tags(), [0, 0, 1, 1, 2])
        assert list(a.constraints[0].index) == [0, 1]
    assert len(list(read_ase_db(path, "fid>0"))) == 2


def test_missing_db_file_is_not_created(tmp_path):
    path = str(tmp_path / "nope.db")
    with pytest.raises(DatasetFormatError, match="does not exist"):
        list(read_ase_db(path))
    assert not os.path.exists(path)

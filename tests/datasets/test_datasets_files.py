"""``read_structure_file`` dispatches each format to its reader: it must give exactly what the
dedicated reader (or ``ase.io``) gives, tagged with the spec and frame index."""

import ase.io
import numpy as np
import pytest

from test_datasets_oc20_loaders import _db_atoms, _write_chunk
from test_datasets_t1x_rgd1_loaders import _rgd1_file, _t1x_file
from ntkal.data.toy import cu_pt_slab_frames
from ntkal.datasets import read_ase_db, read_oc20_aselmdb, read_oc20_extxyz, read_rgd1, read_t1x
from ntkal.datasets.files import file_spec_problem, read_structure_file, split_spec


def same_frames(got, expected, spec):
    assert len(got) == len(expected) > 0
    for k, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions)
        if b.calc is not None and "energy" in b.calc.results:
            assert a.get_potential_energy() == b.get_potential_energy()
        if b.calc is not None and "forces" in b.calc.results:
            np.testing.assert_array_equal(a.get_forces(apply_constraint=False), b.get_forces(apply_constraint=False))
        assert a.info["source"] == str(spec) and a.info["frame"] == k


def test_plain_extxyz_and_traj(tmp_path):
    frames = list(cu_pt_slab_frames(3, size=(2, 2, 2)))
    for name in ("x.extxyz", "x.traj"):
        ase.io.write(tmp_path / name, frames)
        same_frames(list(read_structure_file(tmp_path / name)), ase.io.read(tmp_path / name, ":"), tmp_path / name)


def test_oc20_chunk_with_txt_uses_the_oc20_reader(tmp_path):
    xyz, _, _ = _write_chunk(tmp_path, 0, [(5, -3.5, {}), (6, -4.25, {})], [-1.0, -2.0])
    got = list(read_structure_file(xyz))
    same_frames(got, list(read_oc20_extxyz(xyz)), xyz)
    assert got[0].info["system_id"] == "random123"  # from the txt: the OC20 reader ran


@pytest.mark.parametrize("ext", [".db", ".aselmdb"])
def test_ase_databases(tmp_path, ext):
    if ext == ".aselmdb":
        pytest.importorskip("ase_db_backends")
    import ase.db

    path = tmp_path / f"x{ext}"
    db = ase.db.connect(str(path))
    for i in range(3):
        db.write(_db_atoms(i)[0], sid=1000 + i, fid=i, ref_energy=0.0)
    if hasattr(db, "close"):
        db.close()
    reader = read_oc20_aselmdb if ext == ".aselmdb" else read_ase_db
    same_frames(list(read_structure_file(path)), list(reader(str(path))), path)


def test_hdf5_transition1x_split_and_rgd1(tmp_path):
    t1x = str(tmp_path / "t1x.h5")
    _t1x_file(t1x)
    same_frames(list(read_structure_file(t1x + ":train")), list(read_t1x(t1x, "train")), t1x + ":train")
    same_frames(list(read_structure_file(t1x)), list(read_t1x(t1x, None)), t1x)
    assert split_spec(t1x + ":val") == (t1x, "val") and file_spec_problem(t1x + ":val") is None
    rgd1 = str(tmp_path / "rgd1.h5")
    _rgd1_file(rgd1)
    same_frames(list(read_structure_file(rgd1)), list(read_rgd1(rgd1)), rgd1)
    with pytest.raises(ValueError, match="selects a split of a Transition1x file"):
        list(read_structure_file(rgd1 + ":train"))


def test_problems_are_named(tmp_path):
    assert "no such file" in file_spec_problem(str(tmp_path / "nope.extxyz"))
    (tmp_path / "empty.extxyz").write_text("")
    assert "empty" in file_spec_problem(str(tmp_path / "empty.extxyz"))
    (tmp_path / "x.foo").write_text("hello\n")
    assert file_spec_problem(str(tmp_path / "x.foo")) is not None


def test_frames_not_kept_are_stepped_over_and_the_kept_ones_parsed_as_ase_parses_them(tmp_path, monkeypatch):
    """``iter_ase_frames(path, keep)`` on a plain extxyz/xyz file yields the frames ``ase.io``
    reads at those indices (numbers, positions, cell, pbc, labels, constraints, info), for
    round-robin parts as several processes take them; the frames left out are never parsed."""
    from ase.constraints import FixAtoms

    from ntkal.datasets.files import iter_ase_frames

    small, large = list(cu_pt_slab_frames(4, seed=4, size=(2, 2, 2))), list(cu_pt_slab_frames(3, seed=5, size=(2, 2, 3)))
    frames = []
    for k, atoms in enumerate(small[i // 2] if i % 2 == 0 else large[i // 2] for i in range(7)):  # 8 and 12 atoms
        if k % 3 == 0:
            atoms.set_constraint(FixAtoms(indices=[0, 1]))
        atoms.info["tag_text"] = f"frame {k}"
        frames.append(atoms)
    for name in ("pool.extxyz", "pool.xyz"):
        ase.io.write(tmp_path / name, frames, format="extxyz")
        whole = ase.io.read(tmp_path / name, ":")
        parsed = []
        real = ase.io.read
        monkeypatch.setattr(ase.io, "read", lambda *a, **k: (parsed.append(1), real(*a, **k))[1])
        for count in (1, 2, 3):
            for index in range(count):
                part = range(index, 7, count)
                parsed.clear()
                got = list(iter_ase_frames(tmp_path / name, part.__contains__))
                assert [i for i, _ in got] == list(part)
                assert len(parsed) == len(part)  # one parse per kept frame, none for the others
                for i, atoms in got:
                    ref = whole[i]
                    np.testing.assert_array_equal(atoms.numbers, ref.numbers)
                    np.testing.assert_array_equal(atoms.positions, ref.positions)
                    np.testing.assert_array_equal(atoms.cell.array, ref.cell.array)
                    np.testing.assert_array_equal(atoms.pbc, ref.pbc)
                    assert atoms.get_potential_energy() == ref.get_potential_energy()
                    np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False),
                                                  ref.get_forces(apply_constraint=False))
                    assert [c.todict() for c in atoms.constraints] == [c.todict() for c in ref.constraints]
                    assert atoms.info == ref.info and atoms.info["tag_text"] == f"frame {i}"
        monkeypatch.undo()


def test_a_file_that_ends_inside_a_frame_names_that_frame(tmp_path):
    from ntkal.datasets import DatasetFormatError
    from ntkal.datasets.files import iter_ase_frames

    ase.io.write(tmp_path / "pool.extxyz", list(cu_pt_slab_frames(3, size=(2, 2, 2))))
    lines = (tmp_path / "pool.extxyz").read_text().splitlines(keepends=True)
    (tmp_path / "cut.extxyz").write_text("".join(lines[:-3]))  # the last frame loses 3 atoms
    for keep in (lambda i: i == 2, lambda i: i == 0):  # parsed, and stepped over
        with pytest.raises(DatasetFormatError, match="frame 2.*ends inside the frame"):
            list(iter_ase_frames(tmp_path / "cut.extxyz", keep))
    (tmp_path / "bad.extxyz").write_text("".join(lines[:10]) + "eight\n" + "".join(lines[11:]))
    with pytest.raises(DatasetFormatError, match="frame 1.*expected the atom count"):
        list(iter_ase_frames(tmp_path / "bad.extxyz", lambda i: False))

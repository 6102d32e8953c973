"""Copies of a structure across a run's inputs: frames, the copy index and the leakage audit."""

import io
import warnings

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from ntkal.data.overlap import (TOLERANCE, FrameIndex, LeakageError, LeakageWarning, audit_inputs,
                                count_duplicates, frame_of, frames_of, repeats_of, same_frame)
from ntkal.data.toy import cu_pt_slab_frames


@pytest.fixture(scope="module")
def frames():
    out = [a.copy() for a in cu_pt_slab_frames(6, seed=5, size=(2, 2, 2))]
    for a in out:
        a.info = {}  # no file origin: frames are named by their index in their group
    return out


def _round_trip(atoms, fmt="extxyz"):
    buffer = io.StringIO() if fmt == "extxyz" else io.BytesIO()
    ase.io.write(buffer, atoms, format=fmt)
    buffer.seek(0)
    return ase.io.read(buffer, format=fmt)


def test_every_file_round_trip_is_found_again_and_no_other_frame_is():
    """Copies through extxyz's 8 decimals land anywhere relative to a rounding grid (rounding
    to 1e-6 Å and hashing missed 77 of these 200); the index finds all of them, and a frame
    moved by 1e-5 Å in one coordinate is not a copy."""
    rng = np.random.default_rng(0)
    originals = [ase.Atoms("Cu38Pt2", positions=rng.uniform(0, 10, (40, 3)), cell=[10.123456789, 10, 10], pbc=True)
                 for _ in range(200)]
    index = FrameIndex()
    for k, atoms in enumerate(originals):
        index.add(frame_of(atoms), k)
    assert [index.find(frame_of(_round_trip(a))) for a in originals] == list(range(200))
    moved = []
    for k, atoms in enumerate(originals[:50]):
        other = atoms.copy()
        other.positions[k % 40, k % 3] += 1e-5
        moved.append(index.find(frame_of(other)))
    assert moved == [None] * 50


def test_what_makes_two_frames_the_same_structure(frames, tmp_path):
    atoms = frames[0]
    ase.io.write(tmp_path / "a.traj", atoms)
    assert same_frame(frame_of(ase.io.read(tmp_path / "a.traj")), frame_of(atoms))
    nudged = atoms.copy()
    nudged.positions[3, 1] += 0.5 * TOLERANCE
    assert same_frame(frame_of(nudged), frame_of(atoms))
    for change in ("move", "number", "cell", "pbc", "order"):
        other = atoms.copy()
        if change == "move":
            other.positions[3, 1] += 2 * TOLERANCE
        elif change == "number":
            other.numbers[0] = 78 if other.numbers[0] != 78 else 29
        elif change == "cell":
            other.cell[2, 2] += 1e-4
        elif change == "pbc":
            other.pbc = [True, True, not atoms.pbc[2]]
        else:
            other = other[[1, 0] + list(range(2, len(other)))]
        assert not same_frame(frame_of(other), frame_of(atoms)), change
        index = FrameIndex()
        index.add(frame_of(atoms), "original")
        assert index.find(frame_of(other)) is None, change


def test_labels_tags_and_info_do_not_matter(frames):
    atoms = frames[1]
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=-3.0, forces=np.ones((len(atoms), 3)))
    labelled.info.update(source="elsewhere.extxyz", frame=7)
    labelled.set_tags(np.arange(len(atoms)))
    zero = atoms.copy()
    zero.positions[zero.positions == 0.0] = -0.0
    assert same_frame(frame_of(labelled), frame_of(atoms)) and same_frame(frame_of(zero), frame_of(atoms))


def test_repeats_and_duplicates_are_counted_and_the_first_copy_is_found(frames):
    group = frames_of(frames + [frames[2], _round_trip(frames[4]), frames[2]])
    assert count_duplicates(group) == 3
    np.testing.assert_array_equal(repeats_of(group, frames_of([_round_trip(frames[4]), frames[0]])), [0, 4, 7])
    index = FrameIndex()
    for k, frame in enumerate(group):
        index.add(frame, k)
    assert index.find(frame_of(frames[2])) == 2 and index.find(frame_of(frames[4])) == 4


def test_a_test_frame_in_the_pool_initial_or_target_set_is_named_with_both_files(frames, tmp_path):
    pool = frames[:4]
    for k, a in enumerate(pool):
        a.info.update(source="pool.extxyz", frame=k)
    ase.io.write(tmp_path / "test.extxyz", [frames[5], frames[2]])  # test frame 1 is pool frame 2
    test = list(ase.io.iread(tmp_path / "test.extxyz"))
    for k, a in enumerate(test):
        a.info.update(source="test.extxyz", frame=k)
    with pytest.raises(LeakageError, match=r"1 test frame.*\n.*test split 'val' test.extxyz frame 1 is also "
                                           r"pool pool.extxyz frame 2"):
        audit_inputs(pool, {"val": test})
    with pytest.raises(LeakageError, match=r"test.extxyz frame 0 is also initial labelled set frame 0"):
        audit_inputs(pool[:2], {"val": test[:1]}, initial=[frames[5]])
    with pytest.raises(LeakageError, match=r"test.extxyz frame 0 is also target set frame 1"):
        audit_inputs(pool[:2], {"val": test[:1]}, target=[frames[4], frames[5]])
    with pytest.warns(LeakageWarning, match="test.extxyz frame 1 is also pool"):
        audit = audit_inputs(pool, {"val": test}, test_overlap="warn")
    assert len(audit.leaks) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = audit_inputs(pool, {"val": test[:1]})  # no copy: no error, no warning
    assert clean.leaks == () and clean.pool_duplicates == 0 and clean.pool_in_initial.size == 0
    with pytest.raises(ValueError, match="test_overlap must be"):
        audit_inputs(pool, {}, test_overlap="ignore")


def test_pool_frames_repeating_the_initial_set_and_each_other_are_found(frames):
    pool = [frames[0], frames[3], frames[1].copy(), frames[0].copy(), frames[4]]
    audit = audit_inputs(pool, {}, initial=[frames[1], frames[4]])
    np.testing.assert_array_equal(audit.pool_in_initial, [2, 4])
    assert audit.pool_duplicates == 1
    assert audit.notes() == ["2 pool frame(s) repeat the initial labelled set; they are never offered as candidates",
                             "1 pool frame(s) repeat an earlier pool frame (kept)"]

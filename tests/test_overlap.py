"""Copies of a structure across a run's inputs: the frame key and the leakage audit."""

import warnings

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from ntkal.data.overlap import (LeakageError, LeakageWarning, audit_inputs, count_duplicates, frame_key,
                                repeats_of)
from ntkal.data.toy import cu_pt_slab_frames


@pytest.fixture(scope="module")
def frames():
    out = [a.copy() for a in cu_pt_slab_frames(6, seed=5, size=(2, 2, 2))]
    for a in out:
        a.info = {}  # no file origin: frames are named by their index in their group
    return out


def test_a_file_round_trip_keeps_the_key_and_a_real_change_does_not(frames, tmp_path):
    atoms = frames[0]
    ase.io.write(tmp_path / "a.extxyz", atoms)  # positions written to 8 decimals
    back = ase.io.read(tmp_path / "a.extxyz")
    assert frame_key(back) == frame_key(atoms)
    ase.io.write(tmp_path / "a.traj", atoms)
    assert frame_key(ase.io.read(tmp_path / "a.traj")) == frame_key(atoms)
    nudged = atoms.copy()
    nudged.positions[3, 1] += 1e-9  # below the 1e-6 Å resolution
    assert frame_key(nudged) == frame_key(atoms)
    for change in ("move", "number", "cell", "pbc", "order"):
        other = atoms.copy()
        if change == "move":
            other.positions[3, 1] += 1e-5
        elif change == "number":
            other.numbers[0] = 78 if other.numbers[0] != 78 else 29
        elif change == "cell":
            other.cell[2, 2] += 1e-4
        elif change == "pbc":
            other.pbc = [True, True, not atoms.pbc[2]]
        else:
            other = other[[1, 0] + list(range(2, len(other)))]
        assert frame_key(other) != frame_key(atoms), change


def test_labels_tags_and_info_do_not_change_the_key(frames):
    atoms = frames[1]
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=-3.0, forces=np.ones((len(atoms), 3)))
    labelled.info.update(source="elsewhere.extxyz", frame=7)
    labelled.set_tags(np.arange(len(atoms)))
    zero = atoms.copy()
    zero.positions[zero.positions == 0.0] = -0.0
    assert frame_key(labelled) == frame_key(atoms) == frame_key(zero)


def test_repeats_and_duplicates_are_counted(frames):
    keys = [frame_key(a) for a in frames + [frames[2], frames[4].copy(), frames[2]]]
    assert count_duplicates(keys) == 3
    np.testing.assert_array_equal(repeats_of(keys, [frame_key(frames[4]), frame_key(frames[0])]), [0, 4, 7])


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

"""ntkal.data.neighbours.neighbour_list: the same edges as ASE's neighbor_list, fast or not."""

from __future__ import annotations

import ase
import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

import ntkal.data.neighbours as neighbours
from ntkal.data import atoms_to_structure
from ntkal.data.neighbours import neighbour_list, vesin_available


def _slab(pbc=(True, True, False), size=(2, 2, 3), vacuum=6.0) -> ase.Atoms:
    atoms = fcc111("Cu", size=size, vacuum=vacuum, periodic=True)
    add_adsorbate(atoms, molecule("CO"), 2.0, "fcc")
    atoms.pbc = pbc
    return atoms


def _structures() -> dict[str, ase.Atoms]:
    out = {"slab TTF (mixed pbc)": _slab(),
           "slab FTT (mixed pbc)": _slab(pbc=(False, True, True)),
           # Vacuum gap < cutoff: the non-periodic direction really removes edges.
           "thin-vacuum slab TTF (mixed pbc)": _slab(vacuum=1.0)}
    zero_c = _slab()
    zero_c.cell[2] = 0.0
    out["slab TTF, zero c vector"] = zero_c
    outside = _slab()
    outside.positions[:3] += 1.7 * outside.cell[0] - 0.4 * outside.cell[1] - [0.0, 0.0, 20.0]
    out["slab TTF, atoms outside the cell"] = outside
    rotated = _slab()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated.set_cell(rotated.cell.array @ q.T, scale_atoms=True)
    rotated.positions -= 40.0
    out["rotated slab TTF, negative coordinates"] = rotated
    out["bulk smaller than cutoff TTT (self-images)"] = bulk("Cu")
    prim_2d = bulk("Cu")
    prim_2d.pbc = (True, True, False)
    out["bulk smaller than cutoff TTF"] = prim_2d
    out["molecule, no cell"] = molecule("CH3CH2OH")
    out["isolated atom"] = ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [25, 25, 25]])
    out["single atom, no cell"] = ase.Atoms("H", positions=[[0, 0, 0]])
    out["triclinic TTT"] = ase.Atoms(
        "CuPt", positions=[[0, 0, 0], [1.0, 0.5, 0.7]],
        cell=[[2.5, 0, 0], [1.1, 2.3, 0], [0.7, 0.9, 2.1]], pbc=True)
    # Second-neighbour shell at exactly 2a = cutoff: ASE's strict d < cutoff drops it.
    out["simple cubic, shell at the cutoff"] = ase.Atoms(
        "Po", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)
    return out


STRUCTURES = _structures()
CUTOFF = 5.0


def _ase_reference(atoms, cutoff):
    i, j, shifts, dist = ase_neighbor_list("ijSd", atoms, cutoff, self_interaction=False)
    edges = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), dist.tolist()))
    return [e[:3] for e in edges], np.array([e[3] for e in edges])


def _ours(atoms, cutoff, **kwargs):
    return neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, **kwargs)


def _assert_matches_ase(result, atoms, cutoff):
    i, j, shifts, dist = result
    ref_edges, ref_dist = _ase_reference(atoms, cutoff)
    edges = list(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))
    assert edges == ref_edges  # also checks our order is (i, j, S)-lexicographic
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize("backend", ["auto", "ase"])
def test_edges_equal_ase(name, backend):
    atoms = STRUCTURES[name]
    _assert_matches_ase(_ours(atoms, CUTOFF, backend=backend), atoms, CUTOFF)


@pytest.mark.skipif(not vesin_available(), reason="vesin not installed")
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_vesin_backend_equals_ase_backend(name):
    atoms = STRUCTURES[name]
    fast = _ours(atoms, CUTOFF, backend="vesin")
    slow = _ours(atoms, CUTOFF, backend="ase")
    for a, b in zip(fast[:3], slow[:3]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fast[3], slow[3], rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(12))
def test_random_triclinic_cells_and_pbc_match_ase(seed):
    """Random skewed cells (some smaller than the cutoff), atoms anywhere, any pbc mix."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    cell = rng.uniform(2.0, 6.0) * (np.eye(3) + 0.4 * rng.uniform(-1, 1, (3, 3)))
    pbc = rng.integers(0, 2, 3).astype(bool)
    positions = rng.uniform(-1.0, 2.0, (n, 3)) @ cell  # some outside the cell
    atoms = ase.Atoms(numbers=[29] * n, positions=positions, cell=cell, pbc=pbc)
    cutoff = float(rng.uniform(2.0, 5.0))
    _assert_matches_ase(_ours(atoms, cutoff), atoms, cutoff)


def test_cases_cover_what_they_claim():
    edges = {name: _ours(atoms, CUTOFF)[:3] for name, atoms in STRUCTURES.items()}
    i, j, shifts = edges["bulk smaller than cutoff TTT (self-images)"]
    assert np.any(i == j) and np.all(np.any(shifts[i == j] != 0, axis=1))
    assert np.all(edges["slab TTF (mixed pbc)"][2][:, 2] == 0)
    assert np.any(edges["slab TTF (mixed pbc)"][2][:, :2] != 0)
    thin = STRUCTURES["thin-vacuum slab TTF (mixed pbc)"]
    periodic = thin.copy()
    periodic.pbc = True
    assert _ours(periodic, CUTOFF)[0].size > edges["thin-vacuum slab TTF (mixed pbc)"][0].size
    i, j, _ = edges["isolated atom"]
    assert 2 not in i and 2 not in j and i.size == 2
    assert edges["single atom, no cell"][0].size == 0
    assert edges["simple cubic, shell at the cutoff"][0].size == 26  # 6 + 12 + 8, not 2a


def test_boundary_pair_uses_ase_rounding():
    # A pair whose distance rounds to exactly the cutoff is excluded, one just inside kept.
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [3.0, 0, 0]])
    assert _ours(atoms, 3.0)[0].size == 0
    assert _ours(atoms, np.nextafter(3.0, 4.0))[0].size == 2


def test_output_types_and_order():
    i, j, shifts, dist = _ours(STRUCTURES["triclinic TTT"], CUTOFF)
    assert i.dtype == j.dtype == shifts.dtype == np.int64 and dist.dtype == np.float64
    assert shifts.shape == (i.size, 3) and dist.shape == i.shape == j.shape
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    np.testing.assert_array_equal(order, np.arange(i.size))
    atoms = STRUCTURES["triclinic TTT"]
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), dist, rtol=0, atol=1e-12)


def test_sort_key_overflow_falls_back_to_lexsort():
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, 5, size=(2, 200))
    shifts = rng.integers(-2, 3, size=(200, 3))
    packed = neighbours._sort_order(i, j, shifts, n_atoms=5)
    lexsorted = neighbours._sort_order(i, j, shifts, n_atoms=2**40)  # key would overflow
    np.testing.assert_array_equal(packed, lexsorted)


def test_fallback_without_vesin(monkeypatch):
    atoms = STRUCTURES["slab TTF (mixed pbc)"]
    monkeypatch.setattr(neighbours, "_vesin", None)
    assert not vesin_available()
    _assert_matches_ase(_ours(atoms, CUTOFF), atoms, CUTOFF)
    with pytest.raises(RuntimeError, match="vesin"):
        _ours(atoms, CUTOFF, backend="vesin")


def test_fallback_when_vesin_fails(monkeypatch):
    class BrokenVesin:
        class NeighborList:
            def __init__(self, **kwargs):
                raise RuntimeError("boom")

    atoms = STRUCTURES["bulk smaller than cutoff TTF"]
    monkeypatch.setattr(neighbours, "_vesin", BrokenVesin)
    with pytest.warns(RuntimeWarning, match="boom"):
        result = _ours(atoms, CUTOFF)
    _assert_matches_ase(result, atoms, CUTOFF)
    with pytest.raises(RuntimeError, match="boom"):
        _ours(atoms, CUTOFF, backend="vesin")


def test_old_vesin_is_not_used():
    assert neighbours._version_tuple("0.5.7") < neighbours._MIN_VESIN
    assert neighbours._version_tuple("0.6.2") >= neighbours._MIN_VESIN
    assert neighbours._version_tuple("1.0.0rc1") >= neighbours._MIN_VESIN


def test_empty_and_invalid_inputs():
    i, j, shifts, dist = neighbour_list(np.zeros((0, 3)), np.zeros((3, 3)), [False] * 3, 4.0)
    assert i.shape == j.shape == dist.shape == (0,) and shifts.shape == (0, 3)
    atoms = STRUCTURES["molecule, no cell"]
    for cutoff in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="cutoff"):
            _ours(atoms, cutoff)
    with pytest.raises(ValueError, match="positions"):
        neighbour_list(np.zeros((4, 2)), np.eye(3), [True] * 3, 4.0)
    with pytest.raises(ValueError, match="cell"):
        neighbour_list(np.zeros((4, 3)), np.eye(2), [True] * 3, 4.0)
    with pytest.raises(ValueError, match="pbc"):
        neighbour_list(np.zeros((4, 3)), np.eye(3), [True] * 2, 4.0)
    with pytest.raises(ValueError, match="backend"):
        _ours(atoms, 4.0, backend="matscipy")


def test_atoms_to_structure_uses_ase_edge_set():
    atoms = STRUCTURES["slab TTF (mixed pbc)"]
    s = atoms_to_structure(atoms, CUTOFF)
    i, j, shifts, _ = ase_neighbor_list("ijSd", atoms, CUTOFF, self_interaction=False)
    cartesian = (shifts @ atoms.cell.array).round(9)
    ref = sorted(zip(i.tolist(), j.tolist(), map(tuple, cartesian.tolist())))
    ours = s.shifts.round(9)
    got = list(zip(s.receivers.tolist(), s.senders.tolist(), map(tuple, ours.tolist())))
    assert sorted(got) == ref
    assert got == sorted(got, key=lambda edge: edge[:2])  # ordered by (receiver, sender)
    assert s.senders.dtype == s.receivers.dtype == np.int32

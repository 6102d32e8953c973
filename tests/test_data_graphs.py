"""Atoms → graphs: neighbour lists against a brute-force reference, padding, chunk streaming."""

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import given, settings, strategies as st

from ntkal.data import (EmptyInputError, InvalidStructureError, UnknownElementError, atoms_to_structure,
                        batch_structures, bucket, iterate_chunks)
from ntkal.data.toy import cu_pt_slab_frames


def brute_force_edges(atoms, cutoff):
    """All (receiver i, sender j, image shift S) with 0 < |r_j + S·cell − r_i| < cutoff."""
    cell = atoms.cell.array
    pos = atoms.positions
    # Enough images: cutoff / (distance between opposite faces) in each periodic direction.
    inv = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(inv, axis=0)
    reps = [int(np.ceil(cutoff / h)) + 1 if p else 0 for h, p in zip(heights, atoms.pbc)]
    edges = set()
    for s in itertools.product(*[range(-r, r + 1) for r in reps]):
        shift = np.asarray(s) @ cell
        d = np.linalg.norm(pos[None, :, :] + shift - pos[:, None, :], axis=-1)
        for i, j in zip(*np.nonzero((d < cutoff) & (d > 1e-9))):
            edges.add((int(i), int(j), tuple(int(x) for x in s)))
    return edges


def graph_edges(structure, cell):
    inv = np.linalg.inv(cell)
    out = set()
    for r, snd, sh in zip(structure.receivers, structure.senders, structure.shifts):
        s = np.rint(sh @ inv).astype(int)
        assert np.allclose(s @ cell, sh)
        out.add((int(r), int(snd), tuple(int(x) for x in s)))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), scale=st.floats(1.6, 6.0))
def test_periodic_neighbour_list_matches_brute_force(seed, n, scale):
    rng = np.random.default_rng(seed)
    # Random triclinic cell; scale < cutoff gives cells smaller than the cutoff (self-images).
    cell = scale * (np.eye(3) + 0.3 * rng.uniform(-1, 1, (3, 3)))
    if abs(np.linalg.det(cell)) < 0.3 * scale**3:
        cell = scale * np.eye(3)
    frac = rng.uniform(0, 1, (n, 3))
    atoms = Atoms("Cu" * n, scaled_positions=frac, cell=cell, pbc=True)
    d = atoms.get_all_distances(mic=True) + 10 * np.eye(n)
    if n > 1 and d.min() < 0.5:
        return
    cutoff = 3.5
    try:
        s = atoms_to_structure(atoms, cutoff)
    except InvalidStructureError:
        return  # self-image closer than 0.3 Å: rejected by design
    assert graph_edges(s, cell) == brute_force_edges(atoms, cutoff)
    vec = s.positions[s.senders] - s.positions[s.receivers] + s.shifts
    assert np.all(np.linalg.norm(vec, axis=1) < cutoff)


def test_small_cell_has_self_images():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)
    s = atoms_to_structure(atoms, 4.0)
    assert s.n_edges > 0 and np.all(s.senders == 0) and np.all(s.receivers == 0)
    assert graph_edges(s, atoms.cell.array) == brute_force_edges(atoms, 4.0)


def test_mixed_pbc_slab_matches_brute_force():
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)  # pbc = (T, T, F)
    s = atoms_to_structure(slab, 4.0)
    cell = slab.cell.array
    assert graph_edges(s, cell) == brute_force_edges(slab, 4.0)


def test_bucket_sizes_are_few_and_sufficient():
    sizes = {bucket(n) for n in range(1, 2049)}
    assert len(sizes) <= 2 * 11
    for n in range(1, 2049):
        b = bucket(n)
        assert n <= b <= max(8, 1.5 * n)


def test_batch_layout_and_masks():
    frames = list(cu_pt_slab_frames(3, seed=1))
    structures = [atoms_to_structure(a, 4.0) for a in frames]
    g = batch_structures(structures, n_graph=5)
    assert g.n_node.shape == (5,) and g.n_node.sum() == g.nodes["positions"].shape[0]
    assert list(g.n_node[:3]) == [12, 12, 12] and g.n_node[3] == 0
    assert g.globals["has_energy"][:3].all() and not g.globals["has_energy"][3:].any()
    np.testing.assert_allclose(g.nodes["forces"][12:24], structures[1].forces)
    # Graph g's nodes and edges are contiguous, in slot order, and its edges stay inside its nodes
    # (ntkal.kernels.split_graphs relies on this).
    node_start = np.concatenate([[0], np.cumsum(g.n_node)[:-1]])
    edge_start = np.concatenate([[0], np.cumsum(g.n_edge)[:-1]])
    for k in range(3):
        e = slice(edge_start[k], edge_start[k] + g.n_edge[k])
        assert np.all((g.senders[e] >= node_start[k]) & (g.senders[e] < node_start[k] + g.n_node[k]))
        assert np.all((g.receivers[e] >= node_start[k]) & (g.receivers[e] < node_start[k] + g.n_node[k]))
    # Padded edges point at the last (padding) node.
    n_real = g.n_edge[:-1].sum()
    assert np.all(g.senders[n_real:] == g.nodes["positions"].shape[0] - 1)


def test_chunk_iterator_is_lazy_and_keeps_ids():
    pulled = []

    def stream():
        for k, a in enumerate(cu_pt_slab_frames(7, seed=2)):
            pulled.append(k)
            yield a

    chunks = iterate_chunks(stream(), 4.0, max_graphs=3)
    first = next(chunks)
    assert len(pulled) <= 4  # at most one structure beyond the first chunk
    rest = list(chunks)
    ids = np.concatenate([c.ids for c in [first] + rest])
    assert sorted(ids[ids >= 0].tolist()) == list(range(7))
    assert all(c.graph.n_node.shape == (4,) for c in [first] + rest)


def test_chunk_iterator_fixed_budget_gives_one_shape():
    chunks = list(iterate_chunks(cu_pt_slab_frames(5, seed=3), 4.0, max_graphs=2, max_nodes=40,
                                 max_edges=2048, fixed_budget=True))
    shapes = {(c.graph.nodes["positions"].shape, c.graph.senders.shape) for c in chunks}
    assert shapes == {((40, 3), (2048,))}
    with pytest.raises(ValueError, match="exceeds the chunk budget"):
        list(iterate_chunks(cu_pt_slab_frames(1), 4.0, max_nodes=8, max_edges=2048, fixed_budget=True))


def test_node_budget_closes_chunks():
    chunks = list(iterate_chunks(cu_pt_slab_frames(5, seed=4), 4.0, max_graphs=8, max_nodes=30))
    assert [int((c.ids >= 0).sum()) for c in chunks] == [2, 2, 1]


# --- bad input -------------------------------------------------------------------------------

def labelled(atoms, energy=0.0, forces=None):
    atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                       forces=np.zeros((len(atoms), 3)) if forces is None else forces)
    return atoms


def good():
    return labelled(molecule("H2O"))


@pytest.mark.parametrize("make_bad, error, text", [
    (lambda: Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]], pbc=True), InvalidStructureError, "cell"),
    (lambda: labelled(molecule("H2O"), energy=np.nan), InvalidStructureError, "energy label is not finite"),
    (lambda: labelled(molecule("H2O"), forces=np.full((3, 3), np.inf)), InvalidStructureError,
     "forces are not finite"),
    (lambda: labelled(molecule("H2O"), forces=np.zeros((2, 3))), InvalidStructureError, r"shape \(2, 3\)"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.2]]), InvalidStructureError, "0.200 Å apart"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [0, 0, np.nan]]), InvalidStructureError, "positions"),
    (lambda: molecule("CH4"), UnknownElementError, "'C'"),
    (lambda: Atoms(), InvalidStructureError, "no atoms"),
])
def test_bad_input_names_the_structure(make_bad, error, text):
    stream = [good(), good(), make_bad()]
    with pytest.raises(error, match=text) as info:
        list(iterate_chunks(stream, 4.0, elements=(1, 8)))
    assert "structure 2" in str(info.value)
    assert info.value.index == 2


def test_bad_input_names_file_and_frame():
    bad = labelled(molecule("H2O"), energy=np.inf)
    bad.info.update(source="pool.extxyz", frame=41)
    with pytest.raises(InvalidStructureError, match=r"structure 0 \(file pool.extxyz, frame 41\)"):
        atoms_to_structure(bad, 4.0, index=0)


def test_empty_input():
    with pytest.raises(EmptyInputError):
        list(iterate_chunks(iter([]), 4.0))


def test_missing_labels_when_required():
    with pytest.raises(InvalidStructureError, match="no energy"):
        atoms_to_structure(molecule("H2O"), 4.0, index=0, require_labels=True)

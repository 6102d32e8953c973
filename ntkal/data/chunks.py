"""Streaming an arbitrarily long sequence of structures into padded chunks.

The input is any iterable of ``ase.Atoms`` — typically a generator over a file —
and is consumed lazily: at most one chunk of structures is held at a time.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import ase
import jraph
import numpy as np

from ntkal.data.errors import EmptyInputError
from ntkal.data.padding import batch_structures, bucket
from ntkal.data.structure import Structure, atoms_to_structure

__all__ = ["Chunk", "iterate_chunks", "structures_from_atoms", "batch_atoms"]


class Chunk(NamedTuple):
    """A padded batch and where its graphs came from.

    Attributes:
      graph: padded ``jraph.GraphsTuple`` with ``n_graph`` slots.
      ids: (n_graph,) int64 position of each graph in the input stream; -1 for padding.
    """

    graph: jraph.GraphsTuple
    ids: np.ndarray


def structures_from_atoms(
    atoms_iter: Iterable[ase.Atoms],
    cutoff: float,
    *,
    elements: Sequence[int] | None = None,
    require_labels: bool = False,
) -> Iterator[tuple[int, Structure]]:
    """Lazily validate and graph each structure; yields ``(index, Structure)``.

    Raises:
      EmptyInputError: the iterable yielded nothing.
      InvalidStructureError: see :func:`atoms_to_structure`.
    """
    count = 0
    for index, atoms in enumerate(atoms_iter):
        yield index, atoms_to_structure(atoms, cutoff, index=index, elements=elements,
                                        require_labels=require_labels)
        count += 1
    if count == 0:
        raise EmptyInputError("no structures in the input")


def iterate_chunks(
    atoms_iter: Iterable[ase.Atoms],
    cutoff: float,
    *,
    max_graphs: int = 16,
    max_nodes: int | None = None,
    max_edges: int | None = None,
    fixed_budget: bool = False,
    elements: Sequence[int] | None = None,
    require_labels: bool = False,
) -> Iterator[Chunk]:
    """Turn a stream of ``ase.Atoms`` into padded chunks.

    A chunk is closed when it holds ``max_graphs`` structures or when adding the
    next one would exceed ``max_nodes`` (real nodes + 1 padding) or ``max_edges``.
    Each chunk has ``max_graphs + 1`` graph slots. Node/edge budgets are bucketed
    (see :func:`ntkal.data.padding.bucket`); with ``fixed_budget=True`` every
    chunk is padded to exactly ``(max_nodes, max_edges)`` (both required), so one
    jit compilation serves the whole stream.

    Args:
      atoms_iter: any iterable of structures; consumed lazily.
      cutoff: neighbour cutoff (Å).
      max_graphs: structures per chunk.
      max_nodes: node budget per chunk including one padding node.
      max_edges: edge budget per chunk.
      fixed_budget: pad every chunk to exactly ``(max_nodes, max_edges)``.
      elements: atomic numbers the model knows.
      require_labels: every structure must carry an energy.

    Yields:
      ``Chunk(graph, ids)``.

    Raises:
      ValueError: a single structure exceeds the budgets, or bad arguments.
      EmptyInputError, InvalidStructureError: see :func:`structures_from_atoms`.
    """
    if max_graphs < 1:
        raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
    if fixed_budget and (max_nodes is None or max_edges is None):
        raise ValueError("fixed_budget=True needs max_nodes and max_edges")
    node_cap = max_nodes if max_nodes is not None else np.inf
    edge_cap = max_edges if max_edges is not None else np.inf

    pending: list[Structure] = []
    ids: list[int] = []
    nodes = edges = 0

    def flush() -> Chunk:
        if fixed_budget:
            graph = batch_structures(pending, n_graph=max_graphs + 1, n_node=max_nodes, n_edge=max_edges)
        else:
            graph = batch_structures(pending, n_graph=max_graphs + 1, n_node=bucket(nodes + 1),
                                     n_edge=bucket(max(edges, 1)))
        out = np.full((max_graphs + 1,), -1, np.int64)
        out[: len(ids)] = ids
        return Chunk(graph, out)

    for index, s in structures_from_atoms(atoms_iter, cutoff, elements=elements,
                                          require_labels=require_labels):
        if s.n_atoms + 1 > node_cap or s.n_edges > edge_cap:
            raise ValueError(
                f"structure {index} ({s.n_atoms} atoms, {s.n_edges} edges) exceeds the chunk "
                f"budget max_nodes={max_nodes} (incl. 1 padding node), max_edges={max_edges}")
        if pending and (len(pending) == max_graphs or nodes + s.n_atoms + 1 > node_cap
                        or edges + s.n_edges > edge_cap):
            yield flush()
            pending, ids, nodes, edges = [], [], 0, 0
        pending.append(s)
        ids.append(index)
        nodes += s.n_atoms
        edges += s.n_edges
    if pending:
        yield flush()


def batch_atoms(atoms_list: Sequence[ase.Atoms], cutoff: float, *,
                elements: Sequence[int] | None = None) -> jraph.GraphsTuple:
    """All of ``atoms_list`` as one padded batch (convenience for small inputs and tests)."""
    structures = [s for _, s in structures_from_atoms(atoms_list, cutoff, elements=elements)]
    return batch_structures(structures)

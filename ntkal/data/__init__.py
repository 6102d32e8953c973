"""Atoms → graphs: validation, periodic neighbour lists, padding buckets, chunk streaming."""

from ntkal.data.chunks import Chunk, batch_atoms, iterate_chunks, structures_from_atoms
from ntkal.data.errors import EmptyInputError, InvalidStructureError, UnknownElementError
from ntkal.data.padding import (batch_structures, bucket, budget_for, edge_mask, graph_mask,
                                node_graph_index, node_mask)
from ntkal.data.structure import MIN_DISTANCE, Structure, atoms_to_structure, labels_of

__all__ = [
    "Chunk", "batch_atoms", "iterate_chunks", "structures_from_atoms",
    "EmptyInputError", "InvalidStructureError", "UnknownElementError",
    "batch_structures", "bucket", "budget_for", "edge_mask", "graph_mask", "node_graph_index",
    "node_mask", "MIN_DISTANCE", "Structure", "atoms_to_structure", "labels_of",
]

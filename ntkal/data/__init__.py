"""Atoms → graphs: validation, periodic neighbour lists, padding buckets, chunk streaming.

Names are imported on first use, so ``import ntkal.data.parallel`` (the dataset generators and
their spawned workers) or ``from ntkal.data import Structure`` loads no JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    **{name: "ntkal.data.chunks" for name in ("Chunk", "batch_atoms", "iterate_chunks",
                                              "structures_from_atoms")},
    **{name: "ntkal.data.errors" for name in ("EmptyInputError", "InvalidStructureError",
                                              "UnknownElementError")},
    **{name: "ntkal.data.padding" for name in ("batch_structures", "bucket", "budget_for", "edge_mask",
                                               "graph_mask", "node_graph_index", "node_mask")},
    **{name: "ntkal.data.structure" for name in ("MIN_DISTANCE", "Structure", "atoms_to_structure",
                                                 "labels_of")},
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

"""Batching structures into one padded ``jraph.GraphsTuple``.

Layout of every batch (``n_graph`` slots, the last one or more being padding):

* ``nodes``:   ``positions`` (n_node, 3) Å, ``numbers`` (n_node,) int32 (0 = padding),
  ``forces`` (n_node, 3) eV/Å, ``free`` (n_node,) bool.
* ``edges``:   ``shifts`` (n_edge, 3) Å.
* ``globals``: ``energy`` (n_graph,) eV (0 where unlabelled), ``has_energy`` (n_graph,) bool,
  ``has_forces`` (n_graph,) bool, ``cell`` (n_graph, 3, 3) Å.
* ``senders``/``receivers`` (n_edge,) int32, ``n_node``/``n_edge`` (n_graph,) int32.

Padding nodes and edges all belong to the last graph slot; padded edges join the
last padding node to itself with a zero shift. Masks: ``node_mask``, ``edge_mask``,
``graph_mask``. Budgets are rounded up to :func:`bucket` sizes so that jit sees a
handful of shapes rather than one per batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data.structure import Structure

__all__ = ["bucket", "batch_structures", "node_mask", "edge_mask", "graph_mask",
           "node_graph_index", "budget_for"]


def bucket(n: int, minimum: int = 8) -> int:
    """Smallest size ≥ n in the sequence 8, 12, 16, 24, 32, 48, 64, ... (2^k and 1.5·2^k)."""
    n = max(int(n), minimum)
    k = max(0, math.ceil(math.log2(n)) - 1)
    for size in (2**k, 3 * 2 ** (k - 1) if k >= 1 else 2**k, 2 ** (k + 1)):
        if size >= n:
            return size
    return 2 ** (k + 1)


def budget_for(structures: Sequence[Structure]) -> tuple[int, int]:
    """Bucketed (n_node, n_edge) budgets that fit ``structures`` plus one padding node."""
    n_node = sum(s.n_atoms for s in structures) + 1
    n_edge = sum(s.n_edges for s in structures)
    return bucket(n_node), bucket(max(n_edge, 1))


def batch_structures(
    structures: Sequence[Structure],
    *,
    n_graph: int | None = None,
    n_node: int | None = None,
    n_edge: int | None = None,
) -> jraph.GraphsTuple:
    """Concatenate ``structures`` and pad to (n_graph, n_node, n_edge).

    Args:
      structures: the graphs, in order; graph slot g holds ``structures[g]``.
      n_graph: graph slots; at least ``len(structures) + 1`` (default exactly that).
      n_node: node budget (default: bucketed total + 1).
      n_edge: edge budget (default: bucketed total).

    Returns:
      A padded ``jraph.GraphsTuple`` of numpy arrays (layout in the module docstring).
    """
    n_real = len(structures)
    default_nodes, default_edges = budget_for(structures)
    n_graph = n_real + 1 if n_graph is None else int(n_graph)
    n_node = default_nodes if n_node is None else int(n_node)
    n_edge = default_edges if n_edge is None else int(n_edge)
    total_nodes = sum(s.n_atoms for s in structures)
    total_edges = sum(s.n_edges for s in structures)
    if n_graph < n_real + 1 or n_node < total_nodes + 1 or n_edge < total_edges:
        raise ValueError(
            f"budget too small: need n_graph>={n_real + 1}, n_node>={total_nodes + 1}, "
            f"n_edge>={total_edges}; got {n_graph}, {n_node}, {n_edge}")

    positions = np.zeros((n_node, 3))
    numbers = np.zeros((n_node,), np.int32)
    forces = np.zeros((n_node, 3))
    free = np.zeros((n_node,), bool)
    shifts = np.zeros((n_edge, 3))
    senders = np.full((n_edge,), n_node - 1, np.int32)
    receivers = np.full((n_edge,), n_node - 1, np.int32)
    energy = np.zeros((n_graph,))
    has_energy = np.zeros((n_graph,), bool)
    has_forces = np.zeros((n_graph,), bool)
    cell = np.zeros((n_graph, 3, 3))
    count_nodes = np.zeros((n_graph,), np.int32)
    count_edges = np.zeros((n_graph,), np.int32)

    a = e = 0
    for g, s in enumerate(structures):
        na, ne = s.n_atoms, s.n_edges
        positions[a:a + na] = s.positions
        numbers[a:a + na] = s.numbers
        forces[a:a + na] = s.forces
        free[a:a + na] = s.free
        shifts[e:e + ne] = s.shifts
        senders[e:e + ne] = s.senders + a
        receivers[e:e + ne] = s.receivers + a
        energy[g] = 0.0 if np.isnan(s.energy) else s.energy
        has_energy[g] = not np.isnan(s.energy)
        has_forces[g] = s.has_forces
        cell[g] = s.cell
        count_nodes[g], count_edges[g] = na, ne
        a += na
        e += ne
    # All padding nodes/edges go to the last slot; intermediate padding slots are empty.
    count_nodes[-1] += n_node - a
    count_edges[-1] += n_edge - e
    return jraph.GraphsTuple(
        nodes={"positions": positions, "numbers": numbers, "forces": forces, "free": free},
        edges={"shifts": shifts},
        globals={"energy": energy, "has_energy": has_energy, "has_forces": has_forces, "cell": cell},
        senders=senders,
        receivers=receivers,
        n_node=count_nodes,
        n_edge=count_edges,
    )


def graph_mask(graph: jraph.GraphsTuple):
    """(n_graph,) bool: True for real graph slots (all slots holding ≥1 real node)."""
    n_graph = graph.n_node.shape[0]
    return (jnp.arange(n_graph) < n_graph - 1) & (graph.n_node > 0)


def node_mask(graph: jraph.GraphsTuple):
    """(n_node,) bool: True for nodes of real graphs."""
    n_node = graph.nodes["numbers"].shape[0]
    return jnp.arange(n_node) < jnp.sum(graph.n_node[:-1])


def edge_mask(graph: jraph.GraphsTuple):
    """(n_edge,) bool: True for edges of real graphs."""
    n_edge = graph.senders.shape[0]
    return jnp.arange(n_edge) < jnp.sum(graph.n_edge[:-1])


def node_graph_index(graph: jraph.GraphsTuple):
    """(n_node,) int32: graph slot of each node."""
    n_graph = graph.n_node.shape[0]
    n_node = graph.nodes["numbers"].shape[0]
    return jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=n_node)

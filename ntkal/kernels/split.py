"""Chunk → per-graph padded subgraphs, so per-structure derivatives cost one structure each.

A chunk is one padded disjoint union of structures (``ntkal.data`` layout). Per-structure
quantities such as ∇_θE_g need one backward pass per graph; run on the whole chunk each
pass would cost the whole chunk. :func:`split_graphs` cuts the chunk into ``n_graph``
two-slot graphs (slot 0 = the structure, slot 1 = padding) of static size
``(max_atoms + 1)`` nodes and ``max_edges`` edges, stacked along a leading axis for
``vmap``/``lax.map``. Padding slots of the chunk become empty graphs (``n_node[0] = 0``).

Static sizes are chosen in plain Python from the concrete chunk (:func:`graph_sizes`,
rounded up with :func:`ntkal.data.bucket`, so a stream sees few shapes); the split itself is
jittable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from ntkal.data import bucket, graph_mask

__all__ = ["GraphSizes", "graph_sizes", "split_graphs"]


class GraphSizes(NamedTuple):
    """Static per-graph budgets (hashable; changing them recompiles).

    Attributes:
      max_atoms: atom slots per graph (force rows are ``3 * max_atoms``).
      max_edges: edge slots per graph.
    """

    max_atoms: int
    max_edges: int


def graph_sizes(graph: jraph.GraphsTuple, *, minimum: int = 8) -> GraphSizes:
    """Bucketed budgets that fit every real graph of a concrete (numpy) chunk."""
    n_node = np.asarray(graph.n_node)[:-1]
    n_edge = np.asarray(graph.n_edge)[:-1]
    max_n = int(n_node.max()) if n_node.size else 1
    max_e = int(n_edge.max()) if n_edge.size else 1
    return GraphSizes(bucket(max(max_n, 1), minimum), bucket(max(max_e, 1), minimum))


def exclusive_cumsum(x):
    """[0, x_0, x_0 + x_1, …] (same length as ``x``): e.g. each graph's first node from ``n_node``."""
    return jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(x)[:-1]])


def split_graphs(graph: jraph.GraphsTuple, sizes: GraphSizes) -> jraph.GraphsTuple:
    """Stack of per-graph padded subgraphs with a leading ``n_graph`` axis.

    Args:
      graph: a padded chunk (``ntkal.data`` layout); real graphs must fit ``sizes``.
      sizes: static budgets (see :func:`graph_sizes`).

    Returns:
      A ``GraphsTuple`` whose every array has a leading axis of length ``n_graph``; element
      g is a valid two-slot ``ntkal.data`` batch holding chunk graph g (empty for padding).
      Node i < n_atoms of element g is node ``offset_g + i`` of the chunk.
    """
    m, e_max = int(sizes.max_atoms), int(sizes.max_edges)
    real = graph_mask(graph)
    n_node = jnp.where(real, jnp.asarray(graph.n_node), 0).astype(jnp.int32)
    n_edge = jnp.where(real, jnp.asarray(graph.n_edge), 0).astype(jnp.int32)
    node_off = exclusive_cumsum(jnp.asarray(graph.n_node).astype(jnp.int32))
    edge_off = exclusive_cumsum(jnp.asarray(graph.n_edge).astype(jnp.int32))
    total_nodes = graph.nodes["numbers"].shape[0]
    total_edges = graph.senders.shape[0]
    senders = jnp.asarray(graph.senders)
    receivers = jnp.asarray(graph.receivers)
    globals_ = {k: jnp.asarray(v) for k, v in graph.globals.items()}

    def one(g):
        local = jnp.arange(m + 1)
        valid = local < n_node[g]
        idx = jnp.clip(node_off[g] + local, 0, total_nodes - 1)
        nodes = {}
        for k, v in graph.nodes.items():
            v = jnp.asarray(v)
            mask = valid.reshape((-1,) + (1,) * (v.ndim - 1))
            nodes[k] = jnp.where(mask, v[idx], jnp.zeros((), v.dtype))
        elocal = jnp.arange(e_max)
        evalid = elocal < n_edge[g]
        eidx = jnp.clip(edge_off[g] + elocal, 0, total_edges - 1)
        pad = jnp.int32(m)
        s = jnp.where(evalid, senders[eidx] - node_off[g], pad).astype(jnp.int32)
        r = jnp.where(evalid, receivers[eidx] - node_off[g], pad).astype(jnp.int32)
        edges = {}
        for k, v in graph.edges.items():
            v = jnp.asarray(v)
            mask = evalid.reshape((-1,) + (1,) * (v.ndim - 1))
            edges[k] = jnp.where(mask, v[eidx], jnp.zeros((), v.dtype))
        glob = {k: jnp.stack([v[g], jnp.zeros_like(v[g])]) for k, v in globals_.items()}
        return jraph.GraphsTuple(
            nodes=nodes, edges=edges, globals=glob, senders=s, receivers=r,
            n_node=jnp.stack([n_node[g], m + 1 - n_node[g]]).astype(jnp.int32),
            n_edge=jnp.stack([n_edge[g], e_max - n_edge[g]]).astype(jnp.int32))

    return jax.vmap(one)(jnp.arange(graph.n_node.shape[0]))

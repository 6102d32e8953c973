"""Scoring one pool with several processes (hosts), on JAX's own multi-process runtime.

One process per host (or per GPU) reads its own part of the pool, featurises and scores it, and
keeps its local top-m posterior-variance shortlist; the shortlists are gathered once, the batch
selector runs once (process 0) and the picks are written once. Between the processes only the
small things travel: the training features (every process fits the same posterior from them),
the pool's varred moment (d × d), the guard's per-candidate max |F| and the shortlists.

- :class:`ClusterConfig` (JAX-free): where the coordinator is and which process this is, from
  arguments, a ``[cluster]`` TOML table, ``NTKAL_*`` variables (:mod:`ntkal.launch`) or JAX's
  own cluster detection (SLURM, Open MPI, ...).
- :func:`initialize`: :func:`jax.distributed.initialize` (CPU collectives over gloo) and the
  :class:`Collectives` of this process group.
- :class:`Collectives`: host-level gather / sum / broadcast over the processes; a single
  process gets :class:`LocalCollectives`, whose operations are the identity.
- :func:`split_of`: which frames of the pool a process holds (round-robin over the frame index).

Names are imported on first use: ``from ntkal.cluster import ClusterConfig`` loads no JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "ClusterConfig": "ntkal.cluster.config", "ClusterConfigError": "ntkal.cluster.config",
    "split_of": "ntkal.cluster.config",
    "Collectives": "ntkal.cluster.collectives", "LocalCollectives": "ntkal.cluster.collectives",
    "ProcessCollectives": "ntkal.cluster.collectives", "initialize": "ntkal.cluster.collectives",
}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

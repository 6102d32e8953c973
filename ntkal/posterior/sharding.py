"""Sharding the pool over devices: a 1-D mesh and the collectives selectors use.

Every scorer and selector in :mod:`ntkal.posterior` runs inside
``jax.shard_map`` over a 1-D :class:`jax.sharding.Mesh` whose single axis
(``"pool"``) splits the candidate / graph axis.  The small posterior
(``d x d``) and the selection state that must agree everywhere (picked
indices, cluster weights, the picked structure's rows) are replicated.  On one
device the very same code path runs on a 1-device mesh.

Collectives:

* :func:`global_argmax` -- local ``argmax`` then ``all_gather`` of
  ``(value, global index)``; ties resolve to the lowest global index, exactly
  like ``jnp.argmax`` on the unsharded array.
* :func:`gather_picked` -- broadcast one candidate's rows from its owner with a
  ``psum`` of zeros elsewhere (bitwise exact).

Several processes
-----------------
A mesh spans the devices of *this* process (:func:`make_pool_mesh`'s default is
``jax.local_devices()``): with several processes (:mod:`ntkal.cluster`), each scores its own part
of the pool on its own devices, and the processes exchange their shortlists once, at the end,
as host arrays (:class:`ntkal.cluster.Collectives`). Per-chunk collectives across hosts would
make every process wait for the slowest at every chunk, and the processes' parts of a pool
differ in size. :func:`initialize_distributed` is the bare :func:`jax.distributed.initialize`;
:func:`ntkal.cluster.initialize` adds the CPU collectives and the timeouts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

__all__ = [
    "POOL_AXIS",
    "make_pool_mesh",
    "initialize_distributed",
    "global_argmax",
    "gather_picked",
    "local_offset",
    "pad_to_multiple",
]

POOL_AXIS = "pool"


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    **kwargs,
) -> bool:
    """Initialise multi-host JAX when more than one process is requested.

    Thin wrapper over :func:`jax.distributed.initialize`.  It must run before
    any computation.  ``num_processes in (None, 1)`` without a coordinator is
    treated as single-process and does nothing.

    Returns:
      ``True`` if :func:`jax.distributed.initialize` was called.
    """
    if coordinator_address is None and num_processes in (None, 1):
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )
    return True


def make_pool_mesh(
    devices: Optional[Sequence] = None, axis_name: str = POOL_AXIS
) -> Mesh:
    """1-D mesh over ``devices`` (default: this process's devices).

    Args:
      devices: devices to use; default ``jax.local_devices()`` (the same as ``jax.devices()``
        with one process; with several, each process's mesh holds its own devices).
      axis_name: mesh axis name used by the collectives.

    Returns:
      a :class:`jax.sharding.Mesh` of shape ``(n_devices,)``.
    """
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_pool_mesh needs at least one device")
    return Mesh(np.asarray(devs, dtype=object), (axis_name,))


def local_offset(n_local: int, axis_name: str = POOL_AXIS) -> jnp.ndarray:
    """Global index of this shard's first element (inside ``shard_map``)."""
    return jax.lax.axis_index(axis_name) * n_local


def global_argmax(values: jnp.ndarray, axis_name: str = POOL_AXIS):
    """Global ``(max value, lowest global index attaining it)`` over shards.

    Args:
      values: ``(n_local,)`` local scores; NaN is treated as ``-inf``.

    Returns:
      ``(value, index)`` replicated scalars; index is int32.
    """
    values = jnp.where(jnp.isnan(values), -jnp.inf, values)
    n_local = values.shape[0]
    i = jnp.argmax(values)
    v = values[i]
    gi = (local_offset(n_local, axis_name) + i).astype(jnp.int32)
    all_v = jax.lax.all_gather(v, axis_name)
    all_i = jax.lax.all_gather(gi, axis_name)
    best = jnp.max(all_v)
    big = jnp.iinfo(jnp.int32).max
    idx = jnp.min(jnp.where(all_v == best, all_i, big))
    return best, idx


def gather_picked(x: jnp.ndarray, global_index: jnp.ndarray, axis_name: str = POOL_AXIS):
    """Replicate ``x_global[global_index]`` from the shard that owns it.

    Args:
      x: ``(n_local, ...)`` local block.
      global_index: replicated int scalar.

    Returns:
      ``x_global[global_index]`` with shape ``x.shape[1:]`` on every shard.
    """
    n_local = x.shape[0]
    local = global_index - local_offset(n_local, axis_name)
    mine = (local >= 0) & (local < n_local)
    row = x[jnp.clip(local, 0, n_local - 1)]
    return jax.lax.psum(jnp.where(mine, row, jnp.zeros_like(row)), axis_name)


def pad_to_multiple(arrays, multiple: int, fills):
    """Pad numpy arrays along axis 0 to a multiple of ``multiple``."""
    n = arrays[0].shape[0]
    target = max(multiple, -(-n // multiple) * multiple)
    out = []
    for a, f in zip(arrays, fills):
        a = np.asarray(a)
        if a.shape[0] < target:
            pad = np.full((target - a.shape[0],) + a.shape[1:], f, dtype=a.dtype)
            a = np.concatenate([a, pad])
        out.append(a)
    return out


def replicated() -> PartitionSpec:
    return PartitionSpec()


def sharded(axis_name: str = POOL_AXIS) -> PartitionSpec:
    return PartitionSpec(axis_name)

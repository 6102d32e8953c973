"""Featurising on several devices: k equal-shape chunks, one per device, in one SPMD call.

The feature map of one chunk runs on one device. With k local devices (GPUs, or host CPU
devices under ``XLA_FLAGS=--xla_force_host_platform_device_count=k``) the acquirer stacks k
consecutive chunks of the same size class (so of the same padded shape) along a new leading
axis and calls the map once under ``jax.shard_map`` over a 1-D mesh of those devices: each
device featurises its own chunk, the parameters and the hoisted sketch are replicated once per
pass, and there is one compilation per size class for all devices together (not one per
device). A group cut short by a class boundary or the end of the pool is filled with copies of
its last chunk whose outputs are dropped.

Only this process's devices are used (``jax.local_devices()``); with several processes
(``jax.distributed``) each featurises what it is given.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["FEATURE_AXIS", "feature_devices", "MultiDeviceFeatures"]

FEATURE_AXIS = "chunks"


def feature_devices(requested: int) -> list:
    """The local devices to featurise on: all of them for ``requested = 0``, else the first
    ``requested`` (``ValueError`` when there are fewer)."""
    local = jax.local_devices()
    if requested < 0:
        raise ValueError(f"feature_devices must be >= 0, got {requested}")
    if requested > len(local):
        raise ValueError(f"feature_devices={requested} but this process has {len(local)} "
                         f"{local[0].platform} device(s)")
    return list(local if requested == 0 else local[:requested])


class MultiDeviceFeatures:
    """``fmap`` applied to k stacked chunks at once, one chunk per device.

    Args:
      fmap: a :class:`~ntkal.kernels.FeatureMap`.
      devices: k ≥ 1 devices of this process.

    Call ``replicate(params)`` once per pass, then ``apply(replicated, graphs, sizes)`` with up
    to k graphs of the same padded shape.
    """

    def __init__(self, fmap, devices: Sequence):
        self.fmap = fmap
        self.mesh = Mesh(np.array(list(devices)), (FEATURE_AXIS,))
        self.k = len(devices)
        self._replicated = NamedSharding(self.mesh, P())
        self._constants = (None if fmap.constants is None
                           else jax.device_put(fmap.constants, self._replicated))
        self._compiled: dict = {}

    def replicate(self, params):
        """``params`` on every device of the mesh (do it once per pass, not per group)."""
        return jax.device_put(params, self._replicated)

    def _fn(self, sizes) -> Callable:
        if sizes not in self._compiled:
            fmap = self.fmap

            def local(params, graph, salt, constants):
                # Mark the replicated parameters as per-device values: a gradient taken inside
                # shard_map with respect to a replicated input is summed over the devices (the
                # transpose of the implicit broadcast), which would add the other chunks' NTKs.
                params = jax.tree.map(lambda x: jax.lax.pcast(x, FEATURE_AXIS, to="varying"), params)
                one = jax.tree.map(lambda x: x[0], graph)
                rows, mask = fmap.apply_padded(params, one, sizes, salt=salt[0], constants=constants)
                return rows[None], mask[None]

            spmd = jax.shard_map(local, mesh=self.mesh,
                                 in_specs=(P(), P(FEATURE_AXIS), P(FEATURE_AXIS), P()),
                                 out_specs=(P(FEATURE_AXIS), P(FEATURE_AXIS)))
            self._compiled[sizes] = jax.jit(spmd)
        return self._compiled[sizes]

    def apply(self, params, graphs: Sequence, sizes):
        """Features of up to k graphs (same padded shape) in one call.

        Args:
          params: from :meth:`replicate`.
          graphs: 1..k padded ``jraph.GraphsTuple`` with identical leaf shapes.
          sizes: their :class:`~ntkal.kernels.GraphSizes` (static).

        Returns:
          ``(rows, mask)`` device arrays of shapes (k, n_graph, r, d) and (k, n_graph, r),
          sharded over the devices; entries past ``len(graphs)`` are filler.
        """
        if not 1 <= len(graphs) <= self.k:
            raise ValueError(f"expected 1..{self.k} graphs, got {len(graphs)}")
        group = list(graphs) + [graphs[-1]] * (self.k - len(graphs))
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *group)
        salt = np.zeros((self.k, np.shape(graphs[0].n_node)[0]), np.uint32)
        return self._fn(sizes)(params, stacked, salt, self._constants)

"""Host-level collectives over the processes of a job, and joining the job.

The pool scoring needs no communication until its end: each process streams its own
candidates through the featurisation and the top-m shortlist. What the processes then exchange
is small and crosses the hosts once, as host (NumPy) arrays: :class:`ProcessCollectives`
gathers, sums and broadcasts them through :mod:`jax.experimental.multihost_utils`, i.e. over
JAX's own runtime (gloo on CPUs, NCCL/ICI on accelerators). Arrays travel as raw bytes, so
float64 values and int64 ids arrive bit for bit whatever ``jax_enable_x64`` says.

:class:`LocalCollectives` (one process) has the same methods, as the identity: the single-process
path runs the very same code.
"""

from __future__ import annotations

import numpy as np

from ntkal.cluster.config import ClusterConfig

__all__ = ["Collectives", "LocalCollectives", "ProcessCollectives", "initialize"]


class Collectives:
    """Operations every process calls in the same order (a process that skips one hangs the
    others until the heartbeat timeout fails the job).

    Attributes:
      index: this process (0 … count − 1); process 0 selects and writes.
      count: processes in the job.
    """

    index: int = 0
    count: int = 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the outputs (process 0)."""
        return self.index == 0

    def gather(self, array) -> list[np.ndarray]:
        """Every process's ``array`` (same dtype and trailing shape, any leading length), in
        process order, on every process."""
        return [np.asarray(array)]

    def concat(self, array) -> np.ndarray:
        """:meth:`gather` concatenated along axis 0."""
        return np.concatenate(self.gather(array))

    def sum(self, array) -> np.ndarray:
        """Elementwise sum over the processes, added in process order (the same bits everywhere)."""
        parts = self.gather(np.asarray(array)[None])
        total = parts[0][0].copy()
        for part in parts[1:]:
            total += part[0]
        return total

    def total(self, count: int) -> int:
        """``count`` summed over the processes (e.g. candidates held by each)."""
        return int(self.sum(np.asarray(int(count), np.int64)))

    def broadcast(self, array) -> np.ndarray:
        """Process 0's ``array`` on every process (others pass an array of the same shape and dtype)."""
        return np.asarray(array)

    def barrier(self, name: str) -> None:
        """Wait until every process reaches the barrier ``name``."""

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Process 0's ``data`` on every process (the others pass anything, e.g. ``None``): a
        length, then the bytes. For what is not an array of a shape known everywhere (a
        serialised loop state, labelled structures, parameters)."""
        mine = b"" if data is None or not self.is_writer else bytes(data)
        if self.count == 1:
            return mine
        length = int(self.broadcast(np.asarray([len(mine)], np.int64))[0])
        buffer = np.zeros(length, np.uint8)
        if self.is_writer:
            buffer[:] = np.frombuffer(mine, np.uint8)
        return self.broadcast(buffer).tobytes() if length else b""


class LocalCollectives(Collectives):
    """One process: every operation is the identity."""


def _as_bytes(array: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(array)
    return a.view(np.uint8).reshape(a.shape[0], -1) if a.ndim else a.reshape(1).view(np.uint8)[None]


class ProcessCollectives(Collectives):
    """The processes of a :func:`jax.distributed.initialize` d job."""

    def __init__(self):
        import jax
        self.index = jax.process_index()
        self.count = jax.process_count()

    def _allgather(self, array: np.ndarray) -> np.ndarray:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=False))

    def gather(self, array) -> list[np.ndarray]:
        array = np.asarray(array)
        if array.ndim == 0:
            array = array[None]
        lengths = self._allgather(np.array([array.shape[0]], np.int64))[:, 0]
        raw = _as_bytes(array)  # (n, bytes per row)
        longest = max(int(lengths.max()), 1)
        padded = np.zeros((longest, raw.shape[1]), np.uint8)
        padded[:raw.shape[0]] = raw
        everyone = self._allgather(padded)  # (count, longest, bytes per row)
        tail = array.shape[1:]
        return [np.ascontiguousarray(everyone[p, :int(n)]).view(array.dtype).reshape((int(n),) + tail)
                for p, n in enumerate(lengths)]

    def broadcast(self, array) -> np.ndarray:
        from jax.experimental import multihost_utils
        array = np.asarray(array)
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        got = np.asarray(multihost_utils.broadcast_one_to_all(raw))
        return np.ascontiguousarray(got).view(array.dtype).reshape(array.shape)

    def barrier(self, name: str) -> None:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def initialize(cluster: ClusterConfig | None) -> Collectives:
    """Join the job described by ``cluster`` (before any other JAX computation).

    ``None``, or one process without ``auto``, is the single-process path: nothing is
    initialised and :class:`LocalCollectives` comes back. Otherwise the CPU backend is set to
    gloo collectives and :func:`jax.distributed.initialize` is called (with ``auto``: JAX's own
    cluster detection), with the config's heartbeat and start-up timeouts.
    """
    if cluster is None or (not cluster.auto and cluster.num_processes == 1):
        return LocalCollectives()
    import jax

    try:  # CPU processes talk over gloo (JAX's default CPU backend has no cross-process collectives)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: its default is used
        pass
    kwargs = dict(heartbeat_timeout_seconds=cluster.heartbeat_timeout_s,
                  initialization_timeout=cluster.initialization_timeout_s)
    if cluster.auto:
        jax.distributed.initialize(**kwargs)
    else:
        jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id, **kwargs)
    collectives = ProcessCollectives()
    # The CPU collectives' context is made at the first collective, and making it waits only 30 s
    # for the other processes: a process that reaches its first gather later than that (a slower
    # read of its part of the pool, a compile the others found in the cache) fails the job. Made
    # here, while every process has just joined, the context is then reused by every collective,
    # which waits for the slowest process as long as it takes.
    collectives.concat(np.zeros(1, np.int64))
    return collectives

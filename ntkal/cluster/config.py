"""Which process this is and where its coordinator listens: :class:`ClusterConfig` (JAX-free).

Three ways to fill it, in the order a user meets them:

- ``python -m ntkal.launch -n 2 -- ntkal select ... --distributed`` on one machine (tests, a
  workstation): the launcher sets ``NTKAL_COORDINATOR``, ``NTKAL_NUM_PROCESSES`` and
  ``NTKAL_PROCESS_ID`` for every process it starts (:meth:`ClusterConfig.from_env`).
- A cluster launcher (``srun``, ``mpirun``): ``auto = true`` lets
  :func:`jax.distributed.initialize` detect the cluster itself (SLURM, Open MPI, ...); or set
  the three ``NTKAL_*`` variables per task in the job script.
- Explicit ``coordinator``, ``num_processes``, ``process_id`` (a ``[cluster]`` table, or
  arguments).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

__all__ = ["ClusterConfig", "ClusterConfigError", "split_of", "ENV_COORDINATOR", "ENV_NUM_PROCESSES",
           "ENV_PROCESS_ID"]

ENV_COORDINATOR = "NTKAL_COORDINATOR"
ENV_NUM_PROCESSES = "NTKAL_NUM_PROCESSES"
ENV_PROCESS_ID = "NTKAL_PROCESS_ID"


class ClusterConfigError(ValueError):
    """An unusable cluster setting (the message names it)."""


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """How this process joins the others.

    Attributes:
      coordinator: ``"host:port"`` of process 0's coordination service (every process gives
        the same address); ``None`` with ``auto``.
      num_processes: processes in the job (≥ 1).
      process_id: this process, ``0 ≤ process_id < num_processes``; process 0 runs the batch
        selector and writes the outputs.
      auto: let JAX detect the cluster from the launcher's environment (SLURM, Open MPI,
        ...); the three fields above must then be unset.
      heartbeat_timeout_s: a process that has not been heard from for this long fails the job
        on every other process (seconds, ≥ 1).
      initialization_timeout_s: how long process 0 waits for the others to join (seconds, ≥ 1).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    heartbeat_timeout_s: int = 30
    initialization_timeout_s: int = 120

    def __post_init__(self):
        given = [f for f in ("coordinator", "num_processes", "process_id") if getattr(self, f) is not None]
        if self.auto and given:
            raise ClusterConfigError(f"cluster: auto = true detects the cluster itself; leave "
                                     f"{', '.join(given)} unset")
        if not self.auto and len(given) != 3:
            missing = sorted({"coordinator", "num_processes", "process_id"} - set(given))
            raise ClusterConfigError(f"cluster: set coordinator, num_processes and process_id "
                                     f"(missing {', '.join(missing)}), or auto = true")
        if not self.auto:
            host, sep, port = str(self.coordinator).rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise ClusterConfigError(f"cluster: coordinator must be 'host:port', got {self.coordinator!r}")
            if not (isinstance(self.num_processes, int) and self.num_processes >= 1):
                raise ClusterConfigError(f"cluster: num_processes must be an integer >= 1, got {self.num_processes!r}")
            if not (isinstance(self.process_id, int) and 0 <= self.process_id < self.num_processes):
                raise ClusterConfigError(f"cluster: process_id must be in [0, {self.num_processes}), "
                                         f"got {self.process_id!r}")
        for name in ("heartbeat_timeout_s", "initialization_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ClusterConfigError(f"cluster: {name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "ClusterConfig":
        """From ``NTKAL_COORDINATOR``, ``NTKAL_NUM_PROCESSES`` and ``NTKAL_PROCESS_ID`` (set by
        :mod:`ntkal.launch` or a job script); with none of them set, ``auto = true``."""
        environ = os.environ if environ is None else environ
        names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
        if not any(environ.get(n) for n in names):
            return cls(auto=True, **overrides)

        def integer(name):
            text = environ.get(name)
            if text is None or not text.strip().lstrip("-").isdigit():
                raise ClusterConfigError(f"environment: {name} must be an integer, got {text!r}")
            return int(text)

        return cls(coordinator=environ.get(ENV_COORDINATOR) or None, num_processes=integer(ENV_NUM_PROCESSES),
                   process_id=integer(ENV_PROCESS_ID), **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_of(n: int, process_id: int, num_processes: int):
    """The frame indices (into ``range(n)``) that process ``process_id`` holds: every
    ``num_processes``-th frame from ``process_id`` on (round-robin, so every process gets a
    similar mix of sizes however the pool file is ordered). Returns a ``range``."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    return range(process_id, n, num_processes)

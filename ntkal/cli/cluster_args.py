"""The ``--distributed`` arguments shared by ``ntkal select`` and ``ntkal run`` (JAX-free)."""

from __future__ import annotations

import argparse

__all__ = ["ClusterArgumentError", "add_cluster_arguments", "cluster_from_args"]


class ClusterArgumentError(ValueError):
    """An unusable ``--distributed`` argument.

    Attributes:
      problems: ``(flag, what is wrong)`` pairs; the message has one line each.
    """

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("\n".join(f"argument {flag}: {what}" for flag, what in self.problems))


def add_cluster_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--distributed``, ``--coordinator``, ``--num-processes`` and ``--process-id`` to
    ``parser`` as one group titled with ``what`` (how the work is shared)."""
    group = parser.add_argument_group(f"several processes (docs/cluster.md): every process runs the same "
                                      f"command; {what}")
    group.add_argument("--distributed", action="store_true",
                       help="join the job's other processes: from NTKAL_COORDINATOR, NTKAL_NUM_PROCESSES and "
                            "NTKAL_PROCESS_ID (python -m ntkal.launch sets them), else JAX's detection of the "
                            "cluster (SLURM, Open MPI, ...), unless the three flags below are given")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="process 0's address, the same for every process (with --distributed)")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the job (with --distributed)")
    group.add_argument("--process-id", type=int, default=None, help="this process, 0-based (with --distributed)")


def cluster_from_args(args: argparse.Namespace):
    """The :class:`ntkal.cluster.ClusterConfig` of ``--distributed`` (``None`` without it): the
    three flags when given, else the environment or JAX's detection.

    Raises:
      ClusterArgumentError: a flag without ``--distributed``, or an unusable setting.
    """
    from ntkal.cluster.config import ClusterConfig, ClusterConfigError

    given = {name: getattr(args, name, None) for name in ("coordinator", "num_processes", "process_id")}
    if not getattr(args, "distributed", False):
        extra = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if extra:
            raise ClusterArgumentError([(extra[0], "needs --distributed")])
        return None
    try:
        if any(v is not None for v in given.values()):
            return ClusterConfig(**given)
        return ClusterConfig.from_env()
    except ClusterConfigError as err:
        raise ClusterArgumentError([("--distributed", str(err))]) from None

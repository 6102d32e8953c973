"""Start one command as N cooperating processes on this machine, the way a cluster job does.

    python -m ntkal.launch -n 2 -- ntkal select --distributed --model M --pool P --train T ...

Every process gets ``NTKAL_COORDINATOR`` (a free local port; process 0 serves it),
``NTKAL_NUM_PROCESSES`` and ``NTKAL_PROCESS_ID`` (:meth:`ntkal.cluster.ClusterConfig.from_env`)
and, with ``--cores-per-process k``, its own k CPU cores (affinity and ``XLA_FLAGS`` thread
counts), which mirrors one SLURM task per node or per GPU. The launcher waits for all of them;
if one fails, it stops the others at once and exits nonzero with one line naming the process,
as ``srun --kill-on-bad-exit=1`` does. It imports neither JAX nor NumPy.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

__all__ = ["main", "launch"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def launch(command: list[str], processes: int, *, host: str = "127.0.0.1", port: int | None = None,
           cores_per_process: int | None = None, poll_s: float = 0.1, grace_s: float = 5.0) -> int:
    """Run ``command`` as ``processes`` processes; returns 0 when all succeed, else the failing
    process's exit status (1 when it was killed by a signal) after stopping the others."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if not command:
        raise ValueError("no command to launch")
    port = _free_port(host) if port is None else port
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    children = []
    for rank in range(processes):
        env = dict(os.environ, NTKAL_COORDINATOR=f"{host}:{port}", NTKAL_NUM_PROCESSES=str(processes),
                   NTKAL_PROCESS_ID=str(rank))
        preexec = None
        if cores_per_process:
            mine = cores[rank * cores_per_process:(rank + 1) * cores_per_process]
            if len(mine) < cores_per_process:
                raise ValueError(f"{processes} processes x {cores_per_process} cores need "
                                 f"{processes * cores_per_process} cores; this process may use {len(cores)}")
            env.update(OMP_NUM_THREADS=str(cores_per_process), OPENBLAS_NUM_THREADS=str(cores_per_process),
                       NTKAL_CORES=",".join(map(str, mine)))
            preexec = (lambda mine=mine: os.sched_setaffinity(0, mine))
        children.append(subprocess.Popen(command, env=env, preexec_fn=preexec))
    failed = None
    try:
        while failed is None and any(c.poll() is None for c in children):
            for rank, child in enumerate(children):
                if child.poll() not in (None, 0):
                    failed = rank
                    break
            else:
                time.sleep(poll_s)
        if failed is None:
            failed = next((r for r, c in enumerate(children) if c.returncode != 0), None)
    except KeyboardInterrupt:
        failed = -1
    if failed is not None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if failed == -1:
            print("ntkal.launch: interrupted; stopped every process", file=sys.stderr, flush=True)
            return 130
        code = children[failed].returncode
        print(f"ntkal.launch: process {failed} of {processes} failed ({_describe(code)}); "
              f"stopped the other processes", file=sys.stderr, flush=True)
        return code if code > 0 else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ntkal.launch",
        description="Run a command as N cooperating processes on this machine (NTKAL_COORDINATOR, "
                    "NTKAL_NUM_PROCESSES, NTKAL_PROCESS_ID set for each); if one fails, stop all.")
    parser.add_argument("-n", "--processes", type=int, required=True, help="number of processes")
    parser.add_argument("--host", default="127.0.0.1", help="coordinator host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--cores-per-process", type=int, default=None,
                        help="pin each process to its own k CPU cores (default: no pinning)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    try:
        return launch(command, args.processes, host=args.host, port=args.port,
                      cores_per_process=args.cores_per_process)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())

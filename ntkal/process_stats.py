"""What a long process holds: mapped memory regions, resident memory, compiled programs.

A compiled XLA:CPU program keeps its machine code in a few hundred mapped memory regions (one
set of sections per kernel), released only when the program is. A process that compiles the
same program again and again without releasing the old copies (a model object rebuilt per
sweep point, a cache that never evicts) runs into the kernel's per-process limit
(``/proc/sys/vm/max_map_count``, 65,530 by default) and dies with ``LLVM ERROR: Unable to
allocate section memory`` long before its memory is used up. :func:`snapshot` reads the counters
that show it; ``ntkal run --diagnose`` and ``benchmarks/sweep_memory.py`` print them after every
sweep point.

JAX-free at import; :class:`CompileCounter` imports JAX when entered.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Snapshot", "snapshot", "mapped_regions", "resident_mb", "max_map_count", "CompileCounter"]


def mapped_regions() -> int | None:
    """Memory regions mapped by this process (lines of ``/proc/self/maps``; ``None`` off Linux)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def resident_mb() -> float | None:
    """Resident set size of this process in MiB (``VmRSS``; ``None`` off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def max_map_count() -> int | None:
    """The kernel's limit on mapped regions per process (``None`` when unknown)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class CompileCounter:
    """Counts XLA compilations (JAX's ``backend_compile`` events) while entered.

    Example:
      >>> with CompileCounter() as compiles:      # doctest: +SKIP
      ...     f(x)
      >>> compiles.count                           # doctest: +SKIP
      1

    A program loaded from JAX's persistent compilation cache counts too (it is mapped all the
    same); a call that hits a jitted function's in-memory cache does not.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.seconds = 0.0

    def _listener(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.count += 1
            self.seconds += float(duration)

    def __enter__(self) -> "CompileCounter":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)


class Snapshot(NamedTuple):
    """Counters of this process at one moment.

    Attributes:
      mapped_regions: lines of ``/proc/self/maps`` (``None`` off Linux).
      resident_mb: resident memory, MiB (``None`` off Linux).
      compiles: compilations counted so far by the :class:`CompileCounter` given (``None``
        without one).
    """

    mapped_regions: int | None
    resident_mb: float | None
    compiles: int | None

    def line(self, limit: int | None = None) -> str:
        """``"mapped regions 5,136 (8% of 65,530), RSS 1,123 MiB, 120 compiles"``."""
        maps = "?" if self.mapped_regions is None else f"{self.mapped_regions:,}"
        if limit and self.mapped_regions is not None:
            maps += f" ({100 * self.mapped_regions / limit:.0f}% of {limit:,})"
        rss = "?" if self.resident_mb is None else f"{self.resident_mb:,.0f} MiB"
        out = f"mapped regions {maps}, RSS {rss}"
        return out if self.compiles is None else f"{out}, {self.compiles} compiles"


def snapshot(compiles: CompileCounter | None = None) -> Snapshot:
    """The counters now (``compiles``: an entered :class:`CompileCounter`, optional)."""
    return Snapshot(mapped_regions(), resident_mb(), None if compiles is None else compiles.count)

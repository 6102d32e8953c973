"""One live run per output folder: an advisory lock that names its holder.

Two runs writing one folder would compute every point twice and race on its files (one removes
the other's temporary files as "left by a killed run"). :func:`hold_folder` takes an exclusive
``flock`` on ``<folder>/.ntkal.lock`` for the life of the run and writes the holder's pid and
host into it; a second run is refused with :class:`FolderInUseError` naming them. The kernel
drops the lock when the holder's process ends, however it ends, so a killed run never leaves a
stale lock behind. ``flock`` reaches other hosts on NFS (Linux emulates it with POSIX locks).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = ["LOCK_NAME", "FolderInUseError", "hold_folder"]

LOCK_NAME = ".ntkal.lock"


class FolderInUseError(ValueError):
    """Another live process holds the output folder."""


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, *, what: str = "ntkal run") -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for the duration of the ``with`` block.

    Args:
      folder: the output folder.
      what: the holder's description, written into the lock file.

    Yields:
      The lock file's path.

    Raises:
      FolderInUseError: another live process holds the folder (its pid, host and start time
        are in the message).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; run unguarded
        yield Path(folder) / LOCK_NAME
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by a live process
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "holder unknown"
            raise FolderInUseError(f"{folder} is in use by another live run ({holder}); wait for it to "
                                   f"finish or give another --out") from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"{what}, pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock

"""Atomic file writes: a crash leaves the old file or the new one, never a partial file.

A new file is written to a temporary ``.<name>.<random>.tmp`` beside its target, flushed, given
the permissions a plain ``open`` would give it, and moved over the target with ``os.replace``.
Every writer of ntkal (checkpoints, label stores' exports, picks, summaries, traced programs)
goes through here; no ntkal module is imported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write_bytes", "atomic_path", "new_file_mode", "remove_stale_temp_files", "TEMP_SUFFIX"]

#: suffix of the temporary files of :func:`atomic_write_bytes` (``.<name>.<random>.tmp``)
TEMP_SUFFIX = ".tmp"


def new_file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file (0o666 minus the
    umask). ``tempfile.mkstemp`` creates 0o600 files; atomic writes restore this mode."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def remove_stale_temp_files(folder: str | os.PathLike, *, names: tuple[str, ...] | None = None,
                            recursive: bool = False) -> list[Path]:
    """Delete temporary files left in ``folder`` by atomic writes that were killed.

    Only names of the form ``.<name>.<random>.tmp`` (what :func:`atomic_write_bytes` and the
    picks writer create) are removed; with ``names``, only those of the given target file
    names (use this in a user's folder). Call it when a run starts, before anything writes.

    Returns:
      the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [f".{name}.*{TEMP_SUFFIX}" for name in names] if names is not None else [f".*{TEMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for path in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
            if path.is_file() and path.name.count(".") >= 3:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path ``.<name>.<random>.tmp`` beside ``path``; when the block ends
    without an error it gets normal permissions (:func:`new_file_mode`) and replaces ``path``
    (``os.replace``), otherwise it is removed. A crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`), flushed to disk first."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

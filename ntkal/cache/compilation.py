"""JAX's persistent compilation cache, in the user's cache folder (JAX-free at import).

One of the three program caches of :mod:`ntkal.cache`: this one skips the XLA compile of a
program JAX has compiled before, in any process.

The feature maps of ``ntkal select`` and ``ntkal run`` take tens of seconds to compile; with the
cache on, a second run with the same model, kernel and padding classes loads the compiled
programs from disk instead. The ``ntkal`` command turns the cache on by default
(``--no-compile-cache`` turns it off); library users call :func:`enable_compile_cache` themselves,
before their first compilation.

The cache is trusted code: JAX runs what it finds there, so the folder is created private to the
user (mode 0700) and should never be shared with other users.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["default_cache_dir", "enable_compile_cache", "enable_compile_cache_or_warn",
           "add_compile_cache_argument"]


def default_cache_dir() -> Path:
    """Where the compiled programs go: ``$NTKAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/ntkal/jax``,
    else ``~/.cache/ntkal/jax`` (empty variables count as unset)."""
    explicit = os.environ.get("NTKAL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ntkal" / "jax"


def enable_compile_cache(path: str | os.PathLike | None = None, min_compile_time_s: float = 0.0,
                         min_entry_size_bytes: int = -1) -> Path:
    """Turn on JAX's persistent compilation cache (imports JAX).

    Sets ``jax_compilation_cache_dir``, ``jax_persistent_cache_min_compile_time_secs`` and, where
    this JAX has it, ``jax_persistent_cache_min_entry_size_bytes`` with ``jax.config.update``.
    Programs compiled before the call are not cached; call it before the heavy compilations. If
    a cache in another folder is already open, it is reset so that ``path`` takes effect.

    Args:
      path: cache folder (created, with its parents, private to the user); ``None`` =
        :func:`default_cache_dir`.
      min_compile_time_s: only programs that took at least this long to compile are written.
        The default 0 writes every program (entries of a few kB): with 0.5 a warm ``ntkal
        select`` recompiled its ~30 small programs (eager array ops, padding, PRNG) every time;
        measured on 2 busy CPU cores (load average ~5), its compile + load time fell from 3.1 s
        to 1.2 s.
      min_entry_size_bytes: only entries at least this large are written; ``-1`` = no size limit
        (the compile-time threshold alone decides).

    Returns:
      The absolute cache folder.

    Raises:
      OSError: the folder cannot be created or is not writable.
    """
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"compile cache folder {folder} is not writable")

    import jax

    if jax.config.jax_compilation_cache_dir not in (None, str(folder)):
        # JAX opens its cache once, at the first compilation after a folder is set: forget an open
        # cache in another folder so that this one takes effect.
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    if hasattr(jax.config, "jax_persistent_cache_min_entry_size_bytes"):
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    return folder


def enable_compile_cache_or_warn(path: str | os.PathLike | None = None) -> Path | None:
    """:func:`enable_compile_cache`, but an unusable folder only warns (on stderr) and runs without.

    Returns:
      The cache folder, or ``None`` when the cache could not be turned on.
    """
    try:
        return enable_compile_cache(path)
    except OSError as err:
        print(f"ntkal: warning: running without the compilation cache ({err}); "
              "set NTKAL_CACHE_DIR or pass --no-compile-cache", file=sys.stderr)
        return None


def add_compile_cache_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--no-compile-cache`` (``args.no_compile_cache``) to a subcommand's parser."""
    parser.add_argument("--no-compile-cache", action="store_true",
                        help=f"do not use the persistent JAX compilation cache ({default_cache_dir()}; "
                             "NTKAL_CACHE_DIR moves it)")

"""Traced programs kept on disk with ``jax.export``, so that a warm run skips Python tracing.

JAX's persistent compilation cache (:mod:`ntkal.cache.compilation`) skips the XLA compile of a
program it has seen, but every run still traces and lowers the program in Python first: for
the force-aware feature map of an e3nn model that is several seconds, the largest part of a
warm ``ntkal select`` after the imports. A :class:`ProgramCache` serialises the traced program
(StableHLO, via :func:`jax.export.export`) the first time and deserialises it afterwards; the
compile of the deserialised program then hits the persistent compilation cache.

A program is found again only under the same key: a SHA-256 of

- the code: the versions of jax, jaxlib, flax and e3nn-jax, and the source text of every module
  of the installed ``ntkal`` (any edit to ntkal invalidates every program);
- the platform and the ``jax_enable_x64`` flag;
- the caller's description of the function (``static``: e.g. the model and kernel configs and
  the padded sizes, everything that the traced function closes over);
- the argument pytree's structure and every leaf's shape and dtype.

The same folder also keeps arrays that are costly to compute and cheap to read
(:meth:`ProgramCache.arrays`): the hoisted Gaussian sketch of a feature map (P_s × d normals,
0.3 s to draw on 2 CPU cores for the shipped 35k-parameter model at d = 512, 72 MB on disk) is
drawn once and read back afterwards. Their key adds JAX's PRNG settings (implementation and
``jax_threefry_partitionable``), which decide the random bits.

Files are written atomically; an unreadable file is replaced. Serialised programs and arrays
are data (no pickles: ``.npz`` is read with ``allow_pickle=False``), but like the compilation
cache the folder belongs to one user.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

__all__ = ["ProgramCache", "code_fingerprint"]


def code_fingerprint() -> str:
    """SHA-256 over the versions of the tracing libraries and the source of every ntkal module."""
    digest = hashlib.sha256()
    for package in ("jax", "jaxlib", "flax", "e3nn-jax"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{package}={version};".encode())
    root = _package_root()
    for path in package_sources():
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _package_root() -> Path:
    """The folder of the ``ntkal`` package (this module is ``ntkal/cache/programs.py``)."""
    return Path(__file__).resolve().parent.parent


def package_sources() -> list[Path]:
    """Every ``.py`` file of the ``ntkal`` package, subpackages included, sorted: what
    :func:`code_fingerprint` hashes."""
    return sorted(_package_root().rglob("*.py"))


def _dtype(x):
    import numpy as np
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


class ProgramCache:
    """A folder of exported programs, and the ones loaded in this process.

    Args:
      folder: where the ``.jaxexport`` files go (created private to the user).
      fingerprint: the code fingerprint in the key (default :func:`code_fingerprint`).

    Attributes:
      exported: programs traced and written by this object.
      loaded: programs read from the folder by this object.
      arrays_saved: array sets computed and written by :meth:`arrays`.
      arrays_loaded: array sets read from the folder by :meth:`arrays`.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str | None = None):
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fingerprint = code_fingerprint() if fingerprint is None else str(fingerprint)
        self._programs: dict[str, Callable] = {}
        self.exported = 0
        self.loaded = 0
        self.arrays_saved = 0
        self.arrays_loaded = 0

    def key(self, static: Any, args) -> str:
        """The file stem of ``static`` applied to ``args`` (see the module docstring)."""
        import jax

        return self._key(static, *jax.tree.flatten(args))

    def _key(self, static: Any, leaves: list, treedef) -> str:
        import jax
        import numpy as np

        avals = ";".join(f"{np.shape(x)}{_dtype(x)}" for x in leaves)
        text = "\n".join([self.fingerprint, jax.default_backend(), str(bool(jax.config.jax_enable_x64)),
                          repr(static), str(treedef), avals])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def arrays(self, static: Any, build: Callable[[], list]) -> list:
        """``build()``, a list of arrays, computed at most once per key and folder.

        Args:
          static: a ``repr``-stable description of everything the arrays depend on (besides the
            code fingerprint, backend, x64 flag and PRNG settings, which the key adds).
          build: ``build() -> list`` of arrays (numpy or JAX).

        Returns:
          The list of arrays (JAX arrays on the default device), bitwise equal to ``build()``'s.
        """
        import io

        import jax
        import numpy as np

        from ntkal.atomic import atomic_write_bytes

        prng = (str(jax.config.jax_default_prng_impl), bool(jax.config.jax_threefry_partitionable))
        path = self.folder / f"{self._key(('arrays', prng, static), [], None)}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    values = [stored[f"arr_{i}"] for i in range(len(stored.files))]
                self.arrays_loaded += 1
                return [jax.device_put(v) for v in values]
            except Exception:  # truncated or foreign file: compute again and replace it
                pass
        values = list(build())
        buffer = io.BytesIO()
        np.savez(buffer, *[np.asarray(v) for v in values])
        atomic_write_bytes(path, buffer.getbuffer())
        self.arrays_saved += 1
        return values

    def call(self, static: Any, fn: Callable, args: tuple):
        """``fn(*args)``, traced at most once per key and folder.

        Args:
          static: a ``repr``-stable description of everything ``fn`` closes over.
          fn: ``fn(*args) -> tuple of arrays``, jittable; ``args`` is a tuple of pytrees of
            arrays (numpy or JAX).
          args: its arguments.

        Returns:
          The tuple of output arrays.
        """
        import jax

        leaves, treedef = jax.tree.flatten(args)  # once per call: the key and the call share it
        name = self._key(static, leaves, treedef)
        program = self._programs.get(name)
        if program is None:
            program = self._load_or_export(name, fn, leaves, treedef)
            self._programs[name] = program
        return program(*leaves)

    def _load_or_export(self, name: str, fn: Callable, leaves: list, treedef) -> Callable:
        import jax
        import numpy as np

        from ntkal.atomic import atomic_write_bytes

        path = self.folder / f"{name}.jaxexport"
        exported = None
        if path.exists():
            try:
                exported = jax.export.deserialize(bytearray(path.read_bytes()))
                self.loaded += 1
            except Exception:  # truncated or foreign file: trace again and replace it
                exported = None
        if exported is None:
            def flat(*leaves):
                return tuple(fn(*jax.tree.unflatten(treedef, leaves)))

            avals = [jax.ShapeDtypeStruct(np.shape(x), _dtype(x)) for x in leaves]
            exported = jax.export.export(jax.jit(flat))(*avals)
            atomic_write_bytes(path, exported.serialize())
            self.exported += 1
        return jax.jit(exported.call)

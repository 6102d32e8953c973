"""On-disk cache for generated datasets: keyed directories written atomically.

A dataset lives in ``<cache_dir>/<generator>-<size>-seed<seed>-v<version>/``
with a ``manifest.json`` written last. It is built in a sibling temporary
directory and moved into place with one ``os.rename``, so a crashed or
concurrent generation never leaves a half-written dataset under the final key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["cache_key", "cached_build", "DEFAULT_CACHE_DIR"]

DEFAULT_CACHE_DIR = "data_cache"
MANIFEST = "manifest.json"


def cache_key(generator: str, size: str, seed: int, version: int) -> str:
    return f"{generator}-{size}-seed{seed}-v{version}"


def cached_build(cache_dir: str | os.PathLike, key: str,
                 build: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Return ``(directory, manifest)``, building with ``build(tmp_dir)`` if absent.

    ``build`` writes files into ``tmp_dir`` and returns a JSON-serialisable
    manifest whose paths are *relative* to the dataset directory.
    """
    cache_dir = os.fspath(cache_dir)
    final = os.path.join(cache_dir, key)
    man_path = os.path.join(final, MANIFEST)
    if os.path.exists(man_path):
        with open(man_path) as fh:
            return final, json.load(fh)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the dataset is shared
    try:
        manifest = build(tmp)
        with open(os.path.join(tmp, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.exists(man_path):  # not a concurrent winner: real error
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(man_path) as fh:
        return final, json.load(fh)

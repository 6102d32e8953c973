"""What a run directory records about the configuration that made it, and the resume check.

Every point directory holds ``config.json``: the full resolved sweep point (every field of
:class:`~ntkal.experiment.ExperimentConfig`, defaults included), the sha256 digests of the data
files it reads and a hash of both. A run resumes only when the recorded configuration equals
the one asked for; otherwise :class:`ConfigMismatchError` names the settings that changed, so an
edited config never returns the results of the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ntkal.added_fields import omitted
from ntkal.jsonio import dumps as strict_dumps
from ntkal.models import atomic_write_bytes

__all__ = ["ConfigMismatchError", "config_record", "record_hash", "check_record", "write_record",
           "changed_keys", "file_digest", "RECORD_NAME"]

RECORD_NAME = "config.json"
#: fields of a sweep point that do not change its results (where the config file lives, where
#: the sweep writes its table)
_NOT_RECORDED = ("source", "out")
#: [oracle] keys that change where and how fast labels are computed, not the labels: a run may
#: resume on a cluster after starting on one machine
_ORACLE_LOGISTICS = ("executor", "workers", "scheduler", "store", "scratch")


class ConfigMismatchError(ValueError):
    """A saved run was made with other settings than the config asks for now."""


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(spec: str) -> str:
    """sha256 of the file behind a data file spec (``path`` or ``path.h5:group``), memoised per
    (path, size, mtime) within a process."""
    from ntkal.datasets.files import file_sha256, split_spec

    path = Path(split_spec(spec)[0])
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a field added later, at its no-op default, is recorded as before it existed
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not omitted(f, getattr(value, f.name))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_record(config) -> dict:
    """The resolved sweep point as plain JSON-able data, plus ``data_files``: each data file spec
    → its sha256 (so an edited data file counts as a changed setting)."""
    record = {k: v for k, v in _plain(config).items() if k not in _NOT_RECORDED}
    if record.get("oracle"):  # where and how fast labels are computed does not change them
        record["oracle"] = {k: v for k, v in record["oracle"].items() if k not in _ORACLE_LOGISTICS}
    record["data_files"] = {spec: file_digest(spec) for specs in config.data.file_specs().values()
                            for spec in specs}
    return record


def record_hash(record: dict) -> str:
    """A short hash of a record (canonical JSON: sorted keys)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(record, dict):
        out = {}
        for key, value in record.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: record}


def changed_keys(old: dict, new: dict) -> list[str]:
    """``"loop.train.max_epochs: 30 → 40"`` for every setting that differs (dotted keys)."""
    a, b = _flat(old), _flat(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            show = lambda v: "(unset)" if v is missing else json.dumps(v)
            out.append(f"{key}: {show(x)} → {show(y)}")
    return out


def check_record(directory: str | Path, config, *, has_state: bool) -> None:
    """Raise :class:`ConfigMismatchError` unless ``directory`` may be resumed for ``config``.

    A directory with saved state must hold a ``config.json`` equal to ``config``'s record.
    """
    path = Path(directory) / RECORD_NAME
    if not path.exists():
        if has_state:
            raise ConfigMismatchError(f"{directory} holds a saved run but no {RECORD_NAME} (made by an older "
                                      f"ntkal?): its settings are unknown; rerun with --no-resume to start over")
        return
    saved = json.loads(path.read_text())
    new = config_record(config)
    if saved.get("config") != new:
        changes = changed_keys(saved.get("config", {}), new)
        shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
        raise ConfigMismatchError(f"{directory} was run with other settings; changed:\n  {shown}\n"
                                  f"rerun with --no-resume to start this point over, or give another --out")


def write_record(directory: str | Path, config) -> dict:
    """Atomically write ``<directory>/config.json`` (``{"hash", "config"}``); returns it."""
    record = config_record(config)
    payload = {"hash": record_hash(record), "config": record}
    atomic_write_bytes(Path(directory) / RECORD_NAME, strict_dumps(payload, indent=1).encode())
    return payload

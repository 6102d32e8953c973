"""Checking TOML config files, shared by the commands that read them (``ntkal train``,
``ntkal md``): every problem collected as ``path, line N: what is wrong``, keys and value types
checked against a config dataclass, data-file and checkpoint references resolved and checked.
JAX-free: a config is checked in full before any heavy module loads."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

from ntkal.file_checks import input_file_problem, shipped_model_names

__all__ = ["ConfigFileError", "Problems", "check_fields", "resolve_path", "spec_file", "file_spec_problem",
           "file_list", "init_from_problem", "read_toml"]


class ConfigFileError(ValueError):
    """An unusable config file: one line per problem, each naming the file and, where it can be
    found, the line (``path, line N: what is wrong``)."""

    def __init__(self, problems: list[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects ``path, line N: message`` lines; the line of a key is looked up in its table."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines, self.problems = path, text.splitlines(), []

    def line_of(self, table: str | None, key: str | None = None) -> int | None:
        """Line (1-based) of ``key`` in ``[table]`` (``None``: top level), or of the table header."""
        current = None
        header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]\s*(#.*)?$")
        for number, line in enumerate(self.lines, 1):
            match = header.match(line)
            if match:
                current = match.group(1).strip("\"'")
                if key is None and current == table:
                    return number
                continue
            if key is not None and current == table and re.match(
                    rf"^\s*(?:\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=", line):
                return number
        return None

    def add(self, table: str | None, key: str | None, message: str) -> None:
        line = self.line_of(table, key) if key is not None or table is not None else None
        if line is None and table is not None and key is not None:
            line = self.line_of(table)
        self.problems.append(f"{self.path}, line {line}: {message}" if line else f"{self.path}: {message}")


_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def check_fields(problems: Problems, table: str, values: dict, cls: type, skip=()) -> dict | None:
    """Keys and value types of ``[table]`` against the dataclass ``cls``; then ``cls(**values)``'s own
    checks. Returns the values (floats as floats) or ``None`` after a problem."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    ok = True
    out = {}
    for key, value in values.items():
        if key not in fields:
            problems.add(table, key, f"unknown key {key!r} in [{table}] (expected one of {', '.join(sorted(fields))})")
            ok = False
            continue
        kind = str(fields[key].type)
        check = _TYPE_CHECKS.get(kind)
        if check and not check[0](value):
            problems.add(table, key, f"[{table}] {key} must be {check[1]}, got {value!r}")
            ok = False
            continue
        out[key] = float(value) if kind == "float" else value
    if not ok:
        return None
    try:
        cls(**out)
    except (TypeError, ValueError, KeyError) as err:
        key = next((k for k in re.findall(r"\b([a-z_]+)\b", str(err)) if k in out), None)
        problems.add(table, key, f"[{table}] {err}")
        return None
    return out


def resolve_path(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


#: Suffixes read by ntkal's own readers (:mod:`ntkal.datasets.files`) rather than ``ase.io``.
_NTKAL_FORMATS = (".h5", ".hdf5", ".aselmdb", ".db", ".json")


def spec_file(spec: str) -> str:
    """The file of a file spec (``file.h5:train`` → ``file.h5``)."""
    return spec if os.path.exists(spec) or ":" not in spec else spec.rpartition(":")[0]


def file_spec_problem(spec: str) -> str | None:
    """Why the file spec cannot be read (``None``: it looks readable). Plain structure files take
    the fast ASE check of ``ntkal select``; HDF5, LMDB and database files (and ``file.h5:split``)
    :func:`ntkal.datasets.files.file_spec_problem`, which imports the readers."""
    if spec_file(spec).lower().endswith(_NTKAL_FORMATS):
        from ntkal.datasets.files import file_spec_problem as readers_problem

        return readers_problem(spec)
    return input_file_problem(spec)


def file_list(problems: Problems, base: Path, key: str, value, table: str = "data") -> tuple[str, ...]:
    """The file specs of ``[table] key`` (one name or a list, relative to ``base``), resolved; a
    problem is added for a value of the wrong type and for every file that cannot be read."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(table, key, f"[{table}] {key} must be a file name or a list of file names, got {value!r}")
        return ()
    specs = []
    for item in value:
        spec = str(resolve_path(base, item))
        problem = file_spec_problem(spec)
        if problem:
            problems.add(table, key, f"[{table}] {key}: {problem}")
        specs.append(spec)
    return tuple(specs)


def init_from_problem(base: Path, value: str) -> tuple[str | None, str | None]:
    """``(resolved, problem)`` of ``[model] init_from``: a checkpoint file (relative to the
    config's folder) or a shipped name."""
    path = resolve_path(base, value)
    if path.is_file():
        if path.stat().st_size == 0:
            return None, f"checkpoint {path} is empty"
        if not os.access(path, os.R_OK):
            return None, f"checkpoint {path} is not readable"
        if path.suffix == ".zip":
            from ntkal.models.config import mlip_available

            if not mlip_available():
                return None, f"{path} is an mlip model file; reading it needs pip install 'ntkal[mlip]'"
        return str(path), None
    if value in shipped_model_names():
        return value, None
    if path.exists():
        return None, f"{path} is not a checkpoint file"
    return None, (f"{value!r} is neither a checkpoint file ({path}) nor a shipped model "
                  f"({', '.join(shipped_model_names())})")


def read_toml(path: Path) -> tuple[str, dict]:
    """``(text, parsed)`` of a TOML config, or :class:`ConfigFileError` naming the file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigFileError([f"{path}: cannot read ({err.strerror})"]) from err
    except UnicodeDecodeError as err:
        raise ConfigFileError([f"{path}: not a text (TOML) file ({err})"]) from err
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError([f"{path}: invalid TOML: {err}"]) from err

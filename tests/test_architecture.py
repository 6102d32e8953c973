"""The house drawn from the imports (docs/architecture.md): no import circle, and no import that
runs up a layer. Every import of a module counts, also those inside functions."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ntkal"

# docs/architecture.md's table, bottom (1) to top (10): the first matching prefix decides
LAYERS = [
    (10, ("ntkal.cli", "ntkal.launch")),
    (9, ("ntkal.experiment",)),
    (8, ("ntkal.loop", "ntkal.onthefly")),
    (7, ("ntkal.train",)),
    (6, ("ntkal.select", "ntkal.calculator", "ntkal.labelling", "ntkal.toml_checks")),
    (5, ("ntkal.acquire", "ntkal.datasets", "ntkal.cluster")),
    (4, ("ntkal.kernels", "ntkal.file_checks")),
    (3, ("ntkal.models", "ntkal.pretrained")),
    (2, ("ntkal.data", "ntkal.posterior", "ntkal.acquisition", "ntkal.summarize")),
    (1, ("ntkal.strategies", "ntkal.plots", "ntkal.added_fields", "ntkal.jsonio", "ntkal.folder_lock",
         "ntkal.process_stats", "ntkal._lazy", "ntkal.atomic", "ntkal._parallel", "ntkal.cache", "ntkal.compile_cache",
         "ntkal.program_cache")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("ntkal",) + path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    for layer, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    raise AssertionError(f"{module} is in no layer: add it to docs/architecture.md and LAYERS here")


def _imports(module: str, path: Path, modules: dict) -> set[str]:
    """The ntkal modules ``module`` imports (``from a import b``: ``a.b`` when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != module}


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items() if m != "ntkal"}


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)


def test_no_import_runs_up_a_layer():
    up = sorted(f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
                for a, targets in _graph().items() for b in targets if b != "ntkal" and _layer(b) > _layer(a))
    assert not up, "\n".join(up)


def test_no_import_circle():
    graph = {m: {t for t in ts if t in _graph_keys} for m, ts in _graph().items()} if (
        _graph_keys := set(_graph())) else {}
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checks_see_a_planted_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a fake package where a low module imports a high one, and back."""
    global ROOT
    fake = tmp_path / "ntkal"
    (fake / "cli").mkdir(parents=True)
    (fake / "data").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli" / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "cli" / "run.py").write_text("from ntkal.data import grid\n")
    (fake / "data" / "grid.py").write_text("def f():\n    from ntkal.cli import run\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake, raising=False)
    graph = _graph()
    assert graph["ntkal.data.grid"] == {"ntkal.cli.run"} and graph["ntkal.cli.run"] == {"ntkal.data.grid"}
    import pytest
    with pytest.raises(AssertionError, match="layer 2. imports ntkal.cli.run"):
        test_no_import_runs_up_a_layer()
    with pytest.raises(AssertionError):
        test_no_import_circle()


def test_the_renamed_package_still_answers_for_one_release_with_a_warning():
    import warnings

    import pytest

    import ntkal.acquisition as old
    import ntkal.posterior as new
    with pytest.warns(DeprecationWarning, match="import it from ntkal.posterior"):
        assert old.select_batch is new.select_batch
    with pytest.warns(DeprecationWarning):
        assert old.fit_posterior is new.fit_posterior
    with pytest.raises(AttributeError, match="ntkal.posterior now"):
        old.no_such_name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert new.select_batch  # the new name does not warn

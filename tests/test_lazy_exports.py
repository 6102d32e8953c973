"""Lazily exported names never collide with submodule names.

Importing ``pkg.sub`` sets the attribute ``pkg.sub`` to the module, so a lazily exported
function of the same name would turn into a module for every later ``from pkg import sub``
(this happened with ``ntkal.train.fit`` once ``ntkal train`` had imported its submodule).
"""

import importlib
import pkgutil

import ntkal


def test_no_lazy_export_is_shadowed_by_a_submodule():
    checked = 0
    for info in pkgutil.walk_packages(ntkal.__path__, "ntkal."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        exported = getattr(package, "_WHERE", {})
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        clashes = sorted(set(exported) & submodules)
        assert not clashes, f"{info.name} exports {clashes}, which are also submodule names"
        checked += len(exported)
    assert checked > 50  # the lazy packages were found


def test_fit_is_the_function_after_its_module_is_imported():
    importlib.import_module("ntkal.train.from_files")
    from ntkal.train import fit

    assert callable(fit) and fit.__module__ == "ntkal.train.fitting"


def test_renamed_lazy_export_and_no_generator_import_for_a_reader():
    import subprocess
    import sys
    code = ("import sys; from ntkal.datasets import DatasetFormatError; "
            "from ntkal.datasets.files import read_ase_frames; "
            "print(sorted(m for m in sys.modules if m.startswith('ntkal.datasets.') and m.endswith(('_like', '.registry', '.oracles'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # `ntkal select` reads files without the dataset generators
    from ntkal.datasets import oc20_is_source
    from ntkal.datasets.oc20_like import is_source
    assert oc20_is_source is is_source

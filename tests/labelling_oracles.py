"""Importable test oracles for ``tests/test_labelling.py`` (run in spawned / Dask workers too).

Every call appends one line ``"<outcome> <structure hash>"`` to the file ``log`` (one ``write``
in append mode, so lines from several processes do not interleave), which counts real oracle
calls across processes.
"""

import os

from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT

from ntkal.labelling.store import structure_hash


def _log(log, outcome, atoms):
    if log:
        with open(log, "a") as fh:
            fh.write(f"{outcome} {structure_hash(atoms)}\n")


def counting_emt(atoms, log="", crash_flag=""):
    """EMT ``(energy, forces)``; ``info["poison"]`` → CalculationFailed (retryable);
    ``info["crash"]`` while the file ``crash_flag`` exists → RuntimeError (not retryable)."""
    if atoms.info.get("poison"):
        _log(log, "fail", atoms)
        raise CalculationFailed("poisoned structure: SCF did not converge")
    if crash_flag and atoms.info.get("crash") and os.path.exists(crash_flag):
        _log(log, "crash", atoms)
        raise RuntimeError("simulated crash of the DFT code")
    work = atoms.copy()
    work.calc = EMT()
    energy, forces = work.get_potential_energy(), work.get_forces(apply_constraint=False)
    _log(log, "ok", atoms)
    return energy, forces


def emt_atoms(atoms):
    """EMT, returning the labelled ``Atoms``."""
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def bad_shape(atoms):
    return 0.0, [[0.0, 0.0, 0.0]]


def emt_until_flag(atoms, log="", crash_after=0):
    """EMT ``(energy, forces)``, logging every call; while the file ``<log>.crash`` exists and the
    log already holds ``crash_after`` successful calls, raises RuntimeError (not retryable): a
    DFT code or node dying partway through a batch."""
    if log and os.path.exists(log + ".crash"):
        with open(log) if os.path.exists(log) else open(os.devnull) as fh:
            done = sum(1 for line in fh if line.startswith("ok "))
        if done >= crash_after:
            _log(log, "crash", atoms)
            raise RuntimeError("simulated crash of the DFT code")
    return counting_emt(atoms, log)


def slow_emt(atoms, delay=0.0):
    """EMT ``(energy, forces)`` after sleeping ``delay`` s (a slow oracle to kill a run in)."""
    import time

    time.sleep(float(delay))
    work = atoms.copy()
    work.calc = EMT()
    return work.get_potential_energy(), work.get_forces(apply_constraint=False)

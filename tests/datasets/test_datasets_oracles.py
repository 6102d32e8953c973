"""Labelling oracles: labels equal the calculator, retry ladder, failures are reported."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111, molecule
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from ntkal.datasets import LabellingError, Oracle, RetryStep, calculator_oracle, emt_oracle


def test_emt_oracle_matches_direct_evaluation_with_raw_forces():
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    slab.rattle(0.05, seed=1)
    slab.info["tag"] = "keep"
    out = emt_oracle().label([slab, molecule("CO")])
    ref = slab.copy()
    ref.calc = EMT()
    assert out[0].get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    f = out[0].get_forces(apply_constraint=False)
    np.testing.assert_allclose(f, ref.get_forces(apply_constraint=False), atol=1e-12)
    assert np.abs(f[:4]).max() > 0  # fixed atoms keep their raw forces
    assert out[0].info["tag"] == "keep" and out[0].info["oracle"] == "emt"
    assert slab.calc is None  # input untouched


class _Flaky(Calculator):
    """Fails unless ``damping`` is set (and ``hot`` when ``hard``); counts instances."""

    implemented_properties = ["energy", "forces"]
    made = []

    def __init__(self, hard=False, **params):
        super().__init__()
        self.p = params
        self.hard = hard
        _Flaky.made.append(params)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        ok = "damping" in self.p and (not self.hard or "hot" in self.p)
        if not ok:
            raise CalculationFailed("SCF did not converge")
        self.results = {"energy": float(len(atoms)), "forces": np.zeros((len(atoms), 3))}


LADDER = (RetryStep("default"), RetryStep("fresh"), RetryStep("damped", {"damping": 1}),
          RetryStep("hot", {"damping": 1, "hot": 1}, flag="hot"))


def test_retry_ladder_order_and_flags():
    _Flaky.made.clear()
    hard_idx = {1}
    atoms = [Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)]) for _ in range(3)]
    for i in hard_idx:
        atoms[i].info["hard"] = True
    oracle = Oracle(lambda **kw: _Flaky(hard=False, **kw), "flaky", ladder=LADDER)
    out = oracle.label(atoms)
    assert [a.info["labelling_attempt"] for a in out] == ["damped"] * 3
    assert all("labelling_flag" not in a.info for a in out)
    assert len(_Flaky.made) == 9  # default, fresh, damped per structure
    hard = Oracle(lambda **kw: _Flaky(hard=True, **kw), "flaky", ladder=LADDER)
    out = hard.label(atoms[:1])
    assert out[0].info["labelling_attempt"] == "hot" and out[0].info["labelling_flag"] == "hot"


def test_failures_are_reported_never_dropped():
    atoms = [Atoms("H"), Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.7)]), Atoms("H")]
    short = Oracle(lambda **kw: _Flaky(hard=True, **kw), "flaky", ladder=LADDER[:3])
    with pytest.raises(LabellingError) as err:
        short.label(atoms)
    assert err.value.index == 0 and err.value.attempts == ("default", "fresh", "damped")
    res = short.label_with_failures(atoms)
    assert res.atoms == [] and [f.index for f in res.failures] == [0, 1, 2]
    assert "SCF did not converge" in res.failures[0].error


def test_non_retryable_errors_propagate():
    class Broken(Calculator):
        implemented_properties = ["energy"]

        def calculate(self, *a, **k):
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        calculator_oracle(lambda **kw: Broken(), "broken").label([Atoms("H")])


def test_xtb_oracle_matches_fresh_tblite():
    pytest.importorskip("tblite")
    from tblite.ase import TBLite

    from ntkal.datasets import xtb_oracle

    mols = [molecule("H2O"), molecule("CH3OH")]
    mols[1].rattle(0.02, seed=3)
    out = xtb_oracle().label(mols)
    for m, a in zip(mols, out):
        ref = m.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-7)
        assert a.info["labelling_attempt"] == "default"

"""ntkal.data.compositions: which reference energies a refit can fix, against the rank of the
composition matrix and against what fit_reference_energies really predicts."""

import types
import warnings

import ase
import numpy as np
import pytest

from ntkal.data.compositions import (ReferenceEnergyWarning, composition_matrix, reference_energy_gaps,
                                     unresolved_mask)
from ntkal.models import fit_reference_energies

PT, CU, H, C, N, O = 78, 29, 1, 6, 7, 8


def slab(metal, adsorbate=()):
    """Atomic numbers of a 36-atom slab with an adsorbate (the OC20-like frames' compositions)."""
    return np.array([metal] * 36 + list(adsorbate))


POOL = [slab(PT, [O, O]), slab(PT, [C, O]), slab(CU, [N, N]), slab(CU, [O, O]), slab(PT, [N, N])]


def test_slabs_with_two_atom_adsorbates_leave_one_direction_and_flag_other_ratios():
    tests = {"val_id": [slab(PT), slab(PT, [O]), slab(CU, [C, O]), slab(PT, [H]), slab(CU, [N, N])],
             "ood": [slab(PT, [N, O]), slab(CU, [C, N])]}
    gaps = reference_energy_gaps(POOL, tests)
    assert [g.name for g in gaps] == ["val_id"]  # NO and CN on a slab: 36 metal + 2 of C/N/O, fixable
    (gap,) = gaps
    assert gap.unresolved.tolist() == [True, True, False, True, False]
    assert gap.unlabelled_elements == (H,)
    # +1 eV on every metal and -18 eV on every adsorbate element leaves every pool energy unchanged
    assert gap.direction == pytest.approx({CU: -1.0, PT: -1.0, C: 18.0, N: 18.0, O: 18.0}, rel=1e-9)
    counts = composition_matrix(POOL, sorted(gap.direction))
    assert np.allclose(counts @ np.array([gap.direction[z] for z in sorted(gap.direction)]), 0.0)
    text = gap.message()
    assert "3 of 5 structures" in text and "H" in text and "+18 eV per C, N, O atom" in text


def test_varied_compositions_fix_every_reference_energy():
    pool = [np.array([C, H, H, H, H]), np.array([O, H, H]), np.array([C, O]), np.array([N, N]),
            np.array([C, O, O]), np.array([N, H, H, H])]
    tests = {"test": [np.array([C, C, H, H, H, H, H, H, O]), np.array([H, H]), np.array([N, O])]}
    assert reference_energy_gaps(pool, tests) == []


def test_without_labelled_structures_every_energy_is_unfixable():
    (gap,) = reference_energy_gaps([], {"t": [np.array([O, H, H])]})
    assert gap.unresolved.tolist() == [True] and gap.unlabelled_elements == (H, O)


@pytest.mark.parametrize("seed", range(6))
def test_the_mask_equals_a_rank_test(seed):
    """Peer reference: n is fixable iff appending it to the labelled compositions keeps the rank."""
    rng = np.random.default_rng(seed)
    n_el = 5
    basis = rng.integers(0, 4, size=(rng.integers(1, 4), n_el))  # rank ≤ 3 < 5 labelled directions
    labelled = rng.integers(0, 3, size=(12, basis.shape[0])) @ basis
    inside = rng.integers(-2, 3, size=(6, basis.shape[0])) @ basis
    anywhere = rng.integers(0, 5, size=(6, n_el))
    evaluated = np.concatenate([inside, anywhere]).astype(float)
    rank = np.linalg.matrix_rank(labelled)
    expected = [np.linalg.matrix_rank(np.vstack([labelled, row])) > rank for row in evaluated]
    assert unresolved_mask(labelled.astype(float), evaluated).tolist() == expected
    assert any(expected) and not all(expected)


def test_refit_predicts_exactly_the_energies_it_calls_fixable_and_misses_the_others():
    """The consequence the note is about: the refit's e0 (fit_reference_energies, the loop's fit)
    reproduces a generic true e0's energy on fixable compositions and not on the others."""
    elements = (H, C, N, O, CU, PT)
    rng = np.random.default_rng(0)
    true = dict(zip(elements, rng.normal(-4.0, 2.0, len(elements))))
    energy = lambda numbers: float(sum(true[int(z)] for z in numbers))
    labelled = [types.SimpleNamespace(numbers=z, energy=energy(z)) for z in POOL]
    e0 = dict(zip(elements, fit_reference_energies(types.SimpleNamespace(elements=elements), labelled)))
    tests = [slab(PT), slab(PT, [O]), slab(CU, [C, O]), slab(PT, [N, O]), slab(CU, [O, H]), slab(CU, [C, N])]
    (gap,) = reference_energy_gaps(POOL, {"t": tests})
    error = np.array([sum(e0[int(z)] for z in numbers) - energy(numbers) for numbers in tests])
    assert gap.unresolved.tolist() == [True, True, False, False, True, False]
    assert np.all(np.abs(error[~gap.unresolved]) < 1e-6)
    assert np.all(np.abs(error[gap.unresolved]) > 1e-2)


def test_a_run_with_refit_e0_warns_before_any_compute_and_names_the_split():
    from ntkal.experiment.run import check_reference_energies

    atoms = lambda numbers: ase.Atoms(numbers=numbers, positions=np.zeros((len(numbers), 3)))
    lines = []
    with pytest.warns(ReferenceEnergyWarning, match="test split 'val_id'"):
        messages = check_reference_energies([atoms(z) for z in POOL], {"val_id": [atoms(slab(PT))],
                                                                       "ood": [atoms(slab(PT, [N, O]))]},
                                            log=lines.append)
    assert len(messages) == 1 and lines == [f"warning: {messages[0]}"]
    # an initial labelled set with a clean slab fixes the metals' offset against the adsorbates
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_reference_energies([atoms(z) for z in POOL], {"val_id": [atoms(slab(PT))]},
                                        initial=[atoms(slab(PT))], log=None) == []

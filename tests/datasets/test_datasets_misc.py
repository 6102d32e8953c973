"""Smaller contracts: generic extxyz, ordered parallel map, OC20-like flags, energy-only oracle."""

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.calculators.emt import EMT

from ntkal.datasets import DatasetFormatError, calculator_oracle, read_extxyz
from ntkal.data.parallel import ordered_map
from ntkal.datasets.oc20_like import _flags


def test_read_extxyz_plain_and_unlabelled(tmp_path):
    p = tmp_path / "x.extxyz"
    p.write_text(
        "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.25 system_id=abc pbc=\"F F F\"\n"
        "H 0 0 0 0.1 0.2 0.3\nH 0 0 0.74 -0.1 -0.2 -0.3\n"
        "1\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\nHe 0 0 0\n")
    a, b = list(read_extxyz(p, split="test"))
    assert a.get_potential_energy() == -1.25 and a.info["system_id"] == "abc"
    np.testing.assert_allclose(a.get_forces()[1], [-0.1, -0.2, -0.3])
    assert a.info["split"] == "test" and a.info["frame"] == 0
    assert b.calc is None and b.info["system_id"].endswith("#1")
    with pytest.raises(DatasetFormatError, match="frame 1: frame has no energy label"):
        list(read_extxyz(p, require_labels=True))
    p.write_text("2\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\nH 0 0 0\nx\n")
    with pytest.raises(DatasetFormatError, match="frame 0"):
        list(read_extxyz(p))


def test_ordered_map_workers_match_serial():
    xs = [float(i) for i in range(12)]
    assert list(ordered_map(math.sqrt, xs, workers=1)) == [math.sqrt(x) for x in xs]
    it = ordered_map(math.sqrt, xs, workers=2)
    assert [next(it) for _ in range(6)] == [math.sqrt(x) for x in xs[:6]]
    it.close()  # early stop terminates the pool


def test_ordered_map_module_loads_no_jax():
    """The generators and their spawned workers import ``ntkal.data.parallel``: no JAX in them."""
    import subprocess
    import sys
    code = ("import sys; import ntkal.data.parallel as p; assert callable(p.ordered_map); "
            "print(sorted(m for m in ('jax', 'ntkal.data.padding', 'ntkal.data.chunks') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_dissociation_and_desorption_flags():
    slab = fcc111("Cu", (2, 2, 3), vacuum=8.0)
    slab.pbc = True
    top = slab.positions[:, 2].max()
    n = len(slab)
    bound = slab + Atoms("CO", positions=[(0, 0, top + 1.9), (0, 0, top + 3.05)])
    assert _flags(bound, n, "CO") == (False, False)
    broken = slab + Atoms("CO", positions=[(0, 0, top + 1.9), (1.3, 1.3, top + 1.9)])
    assert _flags(broken, n, "CO") == (True, False)
    gone = slab + Atoms("CO", positions=[(0, 0, top + 5.0), (0, 0, top + 6.15)])
    assert _flags(gone, n, "CO") == (False, True)
    assert _flags(slab, n, "clean") == (False, False)


def test_energy_only_oracle_has_no_forces():
    out = calculator_oracle(lambda **kw: EMT(), "emt", compute_forces=False).label(
        [Atoms("Cu2", positions=[(0, 0, 0), (0, 0, 2.5)])])
    assert "forces" not in out[0].calc.results and np.isfinite(out[0].get_potential_energy())


def test_large_sizes_guarantee_50k_oc20_frames_and_bad_names_raise(tmp_path):
    from ntkal.datasets import generate, load_split
    from ntkal.datasets.oc20_like import OC20_LIKE_SIZES

    cfg = OC20_LIKE_SIZES["large"]
    # rattled copies + MD frames (observers fire at step 0 too) alone, relaxations extra
    assert sum(cfg.n_systems.values()) * (cfg.n_rattle + cfg.md_steps // cfg.md_every + 1) >= 50_000
    with pytest.raises(ValueError, match="unknown generator"):
        generate("oc21", "tiny", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown size"):
        generate("oc20_like", "huge", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown split"):
        next(load_split("oc20_like", "val_ood", size="tiny", cache_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # nothing generated for bad arguments

"""PMechDB-like generator (tiny size): atom mapping, fresh xTB labels, template splits, loaders."""

import time

import h5py
import numpy as np
import pytest
from ase import Atoms

from ntkal.datasets import dataset_dir, generate, load_split, read_t1x, splits_of
from ntkal.datasets.files import read_structure_file
from ntkal.datasets.t1x_like import bond_graph

pytest.importorskip("rdkit")
pytest.importorskip("tblite")

LOT = "GFN2-xTB"
SPLITS = ("train", "val_id", "val", "test")


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache_pmechdb"))
    t0 = time.process_time()  # CPU time: robust to other jobs sharing the cores
    paths = generate("pmechdb_like", "tiny", seed=0, cache_dir=cache, progress=False)
    elapsed = time.process_time() - t0
    root, man = dataset_dir("pmechdb_like", "tiny", 0, cache, progress=False)
    return dict(cache=cache, paths=paths, man=man, elapsed=elapsed, h5=paths["train"][0])


def _rdkit_complex(smiles):
    """Reactants with explicit H, combined in template order (the documented atom order)."""
    from rdkit import Chem

    mols = [Chem.AddHs(Chem.MolFromSmiles(s)) for s in smiles]
    combined = mols[0]
    for m in mols[1:]:
        combined = Chem.CombineMols(combined, m)
    return mols, combined


def _graph(mol):
    return frozenset(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds())


def _template_changes(smarts):
    """Map-number pairs whose bond is present on one side of the template only."""
    from rdkit.Chem import AllChem

    rxn = AllChem.ReactionFromSmarts(smarts)

    def pairs(mols):
        return {tuple(sorted((b.GetBeginAtom().GetAtomMapNum(), b.GetEndAtom().GetAtomMapNum())))
                for m in mols for b in m.GetBonds()}
    return rxn, pairs(rxn.GetReactants()) ^ pairs(rxn.GetProducts())


def test_tiny_is_fast_and_has_reactions(pm):
    man = pm["man"]
    assert pm["elapsed"] < 20.0
    assert len(man["reactions"]) == 4 and man["n_path_frames"] > 0 and man["n_eq_frames"] > 0
    assert man["level_of_theory"] == LOT
    for r in man["reactions"]:
        assert r["template"] in man["templates"] and r["key"].startswith(r["template"] + "__")
        # endpoints once + 8 images per kept iteration (T1x rule), minus dropped frames
        assert (r["n_path_frames"] - 2 + r["dropped_frames"]) % 8 == 0
        assert r["barrier_eV"] > 0


def test_atom_mapping_and_template_bond_changes(pm):
    """Same atoms in the same order on both sides; relaxed endpoints have the RDKit bond graphs
    and differ exactly by the bonds the template forms/breaks, at a true template match."""
    man = pm["man"]
    with h5py.File(pm["h5"], "r") as f:
        for r in man["reactions"]:
            g = f[f"/data/{r['key']}/rxn0000"]
            mols, react = _rdkit_complex(r["reactants"])
            z = np.array([a.GetAtomicNum() for a in react.GetAtoms()])
            zr, zp = g["reactant/atomic_numbers"][()], g["product/atomic_numbers"][()]
            np.testing.assert_array_equal(zr, z)
            np.testing.assert_array_equal(zp, z)
            np.testing.assert_array_equal(g["atomic_numbers"][()], z)
            ar = Atoms(numbers=zr, positions=g["reactant/positions"][0])
            ap = Atoms(numbers=zp, positions=g["product/positions"][0])
            g_r, g_p = bond_graph(ar), bond_graph(ap)
            assert g_r == _graph(react), r["key"]

            rxn, changes = _template_changes(man["templates"][r["template"]]["smarts"])
            tmap = {int(m): i for m, i in r["template_atoms"].items()}
            # the stored map is a real match of each reactant template in its own molecule
            offset = 0
            for k, mol in enumerate(mols):
                tpl = rxn.GetReactantTemplate(k)
                want = tuple(tmap[a.GetAtomMapNum()] - offset for a in tpl.GetAtoms())
                assert want in mol.GetSubstructMatches(tpl, uniquify=False), (r["key"], k)
                offset += mol.GetNumAtoms()
            expected_change = {tuple(sorted((tmap[a], tmap[b]))) for a, b in changes}
            assert expected_change, r["template"]
            assert set(g_r ^ g_p) == expected_change, r["key"]
            assert sorted(map(tuple, r["bonds_formed"])) == sorted(g_p - g_r)
            assert sorted(map(tuple, r["bonds_broken"])) == sorted(g_r - g_p)


def test_every_frame_equals_fresh_xtb(pm):
    from tblite.ase import TBLite

    frames = list(read_t1x(pm["h5"], None, level_of_theory=LOT,
                           image_kinds=("path", "reactant", "ts", "product")))
    frames += list(read_t1x(pm["paths"]["pretrain"][0], None, level_of_theory=LOT))  # all MD frames
    assert len(frames) == pm["man"]["n_path_frames"] + 3 * 4 + pm["man"]["n_eq_frames"]
    for a in frames:
        ref = a.copy()
        ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-5)
    assert not np.allclose(frames[-1].get_forces(), 0.0)


def test_splits_are_template_disjoint_and_non_empty(pm):
    assert splits_of("pmechdb_like") == (*SPLITS, "pretrain")
    ids, templates = {}, {}
    for s in SPLITS:
        frames = list(load_split("pmechdb_like", s, size="tiny", cache_dir=pm["cache"]))
        assert frames, s
        ids[s] = {a.info["system_id"] for a in frames}
        templates[s] = {a.info["template"] for a in frames}
        assert ids[s] == set(pm["man"]["splits"][s])
        assert {a.info["split"] for a in frames} == {s}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test"), ("val_id", "val"),
                 ("val_id", "test")):
        assert not templates[a] & templates[b], (a, b)
    assert templates["val_id"] <= templates["train"]  # in distribution: seen mechanisms
    assert not ids["val_id"] & ids["train"]  # ... but unseen reactions
    with h5py.File(pm["h5"], "r") as f:
        assert set().union(*ids.values()) == set(f["data"].keys())
        assert sum(len(v) for v in ids.values()) == len(f["data"].keys())
    pre = list(load_split("pmechdb_like", "pretrain", size="tiny", cache_dir=pm["cache"]))
    assert pre and {a.info["system_id"] for a in pre} <= ids["train"]
    assert {a.info["image_kind"] for a in pre} == {"md"}


def test_reads_back_through_t1x_loader_and_read_structure_file(pm):
    h5 = pm["h5"]
    assert all(pm["paths"][s] == (h5,) for s in SPLITS)
    with h5py.File(h5, "r") as f:
        for s in SPLITS:
            for key in f[s]:
                link = f[s].get(key, getlink=True)
                assert isinstance(link, h5py.SoftLink) and link.path == f"/data/{key}"
    total = 0
    for s in SPLITS:
        ref = list(read_t1x(h5, s, level_of_theory=LOT))
        got = list(read_structure_file(f"{h5}:{s}"))
        assert len(got) == len(ref) > 0
        total += len(got)
        for a, b in zip(got, ref):
            assert a.info["system_id"] == b.info["system_id"]
            np.testing.assert_array_equal(a.numbers, b.numbers)
            np.testing.assert_array_equal(a.positions, b.positions)
            assert a.get_potential_energy() == b.get_potential_energy()
            np.testing.assert_array_equal(a.get_forces(), b.get_forces())
    assert len(list(read_structure_file(h5))) == total == pm["man"]["n_path_frames"]
    ts = list(read_t1x(h5, "test", level_of_theory=LOT, image_kinds=("reactant", "ts", "product")))
    for r, t, p in zip(ts[::3], ts[1::3], ts[2::3]):
        assert t.get_potential_energy() > max(r.get_potential_energy(), p.get_potential_energy())
        assert np.abs(r.get_forces()).max() < 0.1 and np.abs(p.get_forces()).max() < 0.1

"""SevenNet-0 in JAX: the converted checkpoint against sevenn's own calculator, invariances,
finite differences, the converter's weight patch and its refusals.

The references (``tests/data/sevennet0_reference.json``) were computed by sevenn 0.13.0 with
PyTorch 2.13.0 (CPU) by ``experiments/sevennet_reference.py``; the model-dependent tests need
only the checkpoint file of the ``sevenn`` wheel (``pip install --no-deps sevenn==0.13.0``, as
``make test`` does) and are skipped without it.
"""

import hashlib
import importlib.util
import json
import pickle
import zipfile
from pathlib import Path

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ntkal.data import structures_from_atoms
from ntkal.data.padding import batch_structures
from ntkal.models import energy_and_forces_fn

REFERENCE = json.loads((Path(__file__).parent / "data" / "sevennet0_reference.json").read_text())
needs_sevenn = pytest.mark.skipif(importlib.util.find_spec("sevenn") is None,
                                  reason="needs the sevenn wheel's checkpoint (pip install --no-deps sevenn==0.13.0)")
N_GRAPH, N_NODE, N_EDGE = 5, 64, 2048  # one padded budget for every batch below: one compile per dtype


@pytest.fixture(scope="module")
def sevennet(tmp_path_factory):
    """SevenNet-0 converted into a fresh cache folder (the user's cache is not touched)."""
    if importlib.util.find_spec("sevenn") is None:
        pytest.skip("needs the sevenn wheel's checkpoint")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NTKAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache") / "jax"))
        from ntkal.models import load_pretrained

        model, params, card = load_pretrained("sevennet-0")
        again = load_pretrained("sevennet-0")  # from the cache, not converted again
    return model, params, card, again


def _structure(name):
    rec = REFERENCE["structures"][name]
    return ase.Atoms(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"], pbc=rec["pbc"])


def _batch(model, atoms_list):
    structures = [s for _, s in structures_from_atoms(atoms_list, model.config.cutoff, elements=model.config.elements)]
    return batch_structures(structures, n_graph=N_GRAPH, n_node=N_NODE, n_edge=N_EDGE)


def _energies_forces(model, params, atoms_list):
    e, f = jax.jit(energy_and_forces_fn(model.energy))(params, _batch(model, atoms_list))
    e, f = np.asarray(e), np.asarray(f)
    out, start = [], 0
    for k, atoms in enumerate(atoms_list):
        out.append((float(e[k]), f[start:start + len(atoms)]))
        start += len(atoms)
    return out


@needs_sevenn
def test_the_model_card_and_the_cache(sevennet):
    model, params, card, (model2, params2, card2) = sevennet
    assert model2 is model and card2 == card
    assert card["parameters"] == 842_440 and len(card["elements"]) == 89 and card["cutoff"] == 5.0
    assert card["source_version"] == "0.13.0" and card["licence"].startswith("MIT")
    assert card["source_sha256"].startswith("7052cb42b7b3be42")  # the file sevenn 0.13.0 ships
    assert model.config.backbone == "sevennet" and model.config.energy_scale == pytest.approx(1.73)
    np.testing.assert_array_equal(params2["net"]["interaction_2"]["radial_mlp"]["layer2"],
                                  params["net"]["interaction_2"]["radial_mlp"]["layer2"])


@needs_sevenn
def test_float32_energies_and_forces_equal_sevenns_calculator(sevennet):
    """A bulk cell with self-image edges, a slab with an adsorbate and a molecule, in one batch."""
    model, params, *_ = sevennet
    names = ["ethanol", "cu_bulk", "cu111_o"]
    for name, (energy, forces) in zip(names, _energies_forces(model, params, [_structure(n) for n in names])):
        ref = REFERENCE["structures"][name]["float32"]
        n = len(ref["forces"])
        assert abs(energy - ref["energy"]) / n <= 2e-6, name  # measured 0, 0 and 1.2e-6 eV/atom
        np.testing.assert_allclose(forces, ref["forces"], atol=2e-5, err_msg=name)  # measured ≤ 4.2e-6 eV/Å


@needs_sevenn
@pytest.mark.usefixtures("x64")
def test_float64_energies_forces_invariances_and_finite_differences(sevennet):
    model, params, *_ = sevennet
    names = ["ethanol", "cu_bulk", "cu111_o"]
    atoms = [_structure(n) for n in names]
    results = _energies_forces(model, params, atoms)
    for name, (energy, forces) in zip(names, results):
        ref = REFERENCE["structures"][name]["float64"]
        assert abs(energy - ref["energy"]) / len(ref["forces"]) <= 5e-8, name  # measured ≤ 8.8e-9
        # sevenn rounds its edge vectors to float32 even in a float64 model: ~2e-6 eV/Å of the gap
        np.testing.assert_allclose(forces, ref["forces"], atol=1e-5, err_msg=name)
    slab, (e_slab, f_slab) = atoms[2], results[2]
    rot = Rotation.from_euler("zyx", [0.3, -1.1, 0.7]).as_matrix()
    turned = slab.copy()
    turned.positions = slab.positions @ rot.T + np.array([0.4, -2.0, 1.3])
    turned.cell = slab.cell.array @ rot.T
    order = np.random.default_rng(0).permutation(len(slab))
    shuffled = slab[order]
    # finite differences of the energy along a random direction (central, h = 1e-4 Å)
    direction = np.random.default_rng(1).normal(size=slab.positions.shape)
    plus, minus = slab.copy(), slab.copy()
    plus.positions += 1e-4 * direction
    minus.positions -= 1e-4 * direction
    (e_turned, f_turned), (e_shuffled, f_shuffled), (e_plus, _), (e_minus, _) = _energies_forces(
        model, params, [turned, shuffled, plus, minus])
    assert abs(e_turned - e_slab) < 1e-9 and abs(e_shuffled - e_slab) < 1e-9
    np.testing.assert_allclose(f_turned, f_slab @ rot.T, atol=1e-8)
    np.testing.assert_allclose(f_shuffled, f_slab[order], atol=1e-9)
    fd = -(e_plus - e_minus) / 2e-4
    assert fd == pytest.approx(float(np.sum(f_slab * direction)), rel=1e-6, abs=1e-7)


@needs_sevenn
def test_the_converters_weight_patch_equals_sevenns():
    """Blocks 1-3's radial output columns after the v0.9.1 patch, against sha256 of sevenn's own
    patched state dict (``SevenNetCheckpoint.build_model().state_dict()``, sevenn 0.13.0)."""
    from ntkal.models.sevennet_convert import convert_sevennet, find_sevenn_checkpoint

    _, params, _ = convert_sevennet(find_sevenn_checkpoint("sevennet-0"))
    sevenn_sha256 = {1: "d89c264cf6e73aed8bcbed1c22f86b9667108151e46f98db67e817a7d5d69489",
                     2: "1cf165ed0c848b06e41a86acac132eb41ac3fbf377bd5eaeeca4c98c87355187",
                     3: "d6f66d491afdf352cd1d90d8e988efa7379b4aab83996221325048e106025d3e"}
    for t, digest in sevenn_sha256.items():
        layer2 = np.ascontiguousarray(params["net"][f"interaction_{t}"]["radial_mlp"]["layer2"], np.float32)
        assert hashlib.sha256(layer2.tobytes()).hexdigest() == digest, t


@needs_sevenn
def test_a_checkpoint_of_another_architecture_is_refused_naming_the_setting(monkeypatch):
    from ntkal.models import sevennet_convert, torch_pickle

    path = sevennet_convert.find_sevenn_checkpoint("sevennet-0")
    real = torch_pickle.load_torch_zip(path)
    for key, value in (("is_parity", True), ("self_connection_type", "nequip"), ("interaction_type", "mace")):
        edited = {**real, "config": {**real["config"], key: value}}
        monkeypatch.setattr(torch_pickle, "load_torch_zip", lambda _p, edited=edited: edited)
        with pytest.raises(ValueError, match=rf"unsupported SevenNet checkpoint: config {key} = {value!r}"):
            sevennet_convert.convert_sevennet(path)


def test_the_checkpoint_reader_runs_no_code_from_the_file(tmp_path):
    """A pickle naming any global outside the allow-list is refused, before it is called."""
    from ntkal.models.torch_pickle import load_torch_zip

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"model_state_dict": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system"):
        load_torch_zip(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "plain.pth").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip-format PyTorch checkpoint"):
        load_torch_zip(tmp_path / "plain.pth")


def test_the_checkpoint_reader_rebuilds_strided_tensors(tmp_path):
    """Tensors are views into storages (offset, shape, strides): a transposed slice comes back right."""
    from ntkal.models.torch_pickle import _Storage, _rebuild_tensor

    storage = np.arange(24, dtype=np.float32)
    got = _rebuild_tensor(storage, 2, (3, 4), (1, 5))
    want = np.lib.stride_tricks.as_strided(storage[2:], (3, 4), (4, 20))
    np.testing.assert_array_equal(got, want)
    assert _rebuild_tensor(storage, 7, (), ()) == 7.0
    assert _Storage(np.float64).dtype is np.float64


SUBSET = ("interaction_4", "readout")  # the last interaction block and the readout: 93,760 parameters


@needs_sevenn
@pytest.mark.usefixtures("x64")
def test_ntk_rows_on_a_parameter_subset_equal_explicit_grad_and_jvp_references(sevennet):
    """Unsketched energy, exact force and probe rows of SevenNet-0 over a parameter subset, against
    ``jax.grad`` of the energy and ``jax.jvp`` of that gradient along each coordinate (float64)."""
    from ntkal.kernels import KernelConfig, make_feature_map, select_params

    model, params, *_ = sevennet
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)  # float64 throughout
    atoms = _structure("ethanol")
    graph = _batch(model, [atoms])
    selection = select_params(params, SUBSET)
    assert selection.num_params == 93_760 and all(p.startswith(SUBSET) for p in selection.paths)

    def energy_of(leaves, positions):
        p = selection.put(params, leaves)
        return model.energy(p, graph._replace(nodes={**graph.nodes, "positions": positions}))[0]

    leaves, positions = selection.take(params), graph.nodes["positions"]
    flat = lambda tree: np.concatenate([np.ravel(x) for x in tree])  # noqa: E731
    grad = jax.jit(jax.grad(energy_of))
    energy_ref = flat(grad(leaves, positions))
    energy_rows = make_feature_map(model, KernelConfig(kind="energy", sketch_dim=None, param_filter=SUBSET),
                                   params).apply(params, graph).rows
    np.testing.assert_allclose(np.asarray(energy_rows[0, 0]), energy_ref, rtol=1e-10, atol=1e-12)

    n = len(atoms)
    directional = jax.jit(lambda t: jax.jvp(lambda r: grad(leaves, r), (positions,), (t,))[1])
    force_ref = []
    for k in range(3 * n):
        t = np.zeros(positions.shape)
        t[k // 3, k % 3] = 1.0
        force_ref.append(-flat(directional(t)))  # −∂(∇θ E)/∂r along one coordinate
    force_ref = np.stack(force_ref)
    exact = make_feature_map(model, KernelConfig(kind="force_exact", sketch_dim=None, param_filter=SUBSET),
                             params).apply(params, graph)
    np.testing.assert_allclose(np.asarray(exact.rows[0, :3 * n]), force_ref, rtol=1e-9, atol=1e-11)
    # probe row j = Σ_(a,x) t_j,a,x·(force row of a, x) / √k, t = ±1 drawn per atom from the kernel's
    # seed (structure salt 0, as ntkal.kernels.features draws them)
    config = KernelConfig(kind="force_probe", sketch_dim=None, num_probes=2, param_filter=SUBSET)
    probe = make_feature_map(model, config, params).apply(params, graph)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 0x9E3779B9 & 0x7FFFFFFF), 0)
    t = np.stack([np.asarray(jax.random.rademacher(jax.random.fold_in(key, a), (2, 3), jnp.float64))
                  for a in range(n)], axis=1)  # (k, n, 3)
    np.testing.assert_allclose(np.asarray(probe.rows[0]), t.reshape(2, 3 * n) @ force_ref / np.sqrt(2),
                               rtol=1e-9, atol=1e-11)


@needs_sevenn
def test_ntkal_select_runs_on_sevennet_0_by_name(sevennet, tmp_path, monkeypatch, capsys):
    """``ntkal select --model sevennet-0`` with the NTK over the last block and the readout."""
    import lzma

    import ase.io

    from ntkal.cli import main

    model, *_ = sevennet
    monkeypatch.setenv("NTKAL_CACHE_DIR", str(tmp_path / "cache" / "jax"))
    root = Path(__file__).resolve().parent.parent
    with lzma.open(root / "ntkal" / "pretrained" / "t1x_like.val.extxyz.xz", "rt") as f:
        frames = list(ase.io.iread(f, format="extxyz"))
    ase.io.write(tmp_path / "pool.extxyz", frames[:12])
    ase.io.write(tmp_path / "train.extxyz", frames[12:18])
    code = main(["select", "--model", "sevennet-0", "--pool", str(tmp_path / "pool.extxyz"), "--train",
                 str(tmp_path / "train.extxyz"), "--budget", "3", "--out", str(tmp_path / "picked.extxyz"),
                 "--param-filter", "interaction_4,readout", "--sketch-dim", "64", "--num-probes", "2",
                 "--no-progress", "--no-compile-cache"])
    assert code == 0, capsys.readouterr().err
    picked = ase.io.read(tmp_path / "picked.extxyz", index=":")
    assert len(picked) == 3 and len({a.info["pool_id"] for a in picked}) == 3
    summary = json.loads((tmp_path / "picked.summary.json").read_text())
    assert summary["config"]["kernel"]["param_filter"] == ["interaction_4", "readout"]

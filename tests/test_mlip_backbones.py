"""InstaDeep ``mlip`` backbones (MACE, NequIP, ViSNet) through ntkal's adapter.

For each backbone (tiny networks; float64): energies and forces equal ``mlip``'s own graph
construction and network call on the same structure (a periodic cell small enough that atoms see
their own images, and a molecule); invariance under rotation, translation and permutation;
forces = −∂E/∂r by central finite differences; the unsketched energy-NTK rows and Gram equal
explicit ∇θE; padding changes nothing; a checkpoint round trip; a 2-round active-learning loop.
Skipped when the optional ``mlip`` package is absent (``pip install 'ntkal[mlip]'``; CI has it).
"""

import json

import ase.build
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("mlip")

from ntkal.cli import main  # noqa: E402
from ntkal.data import atoms_to_structure, batch_atoms, batch_structures  # noqa: E402
from ntkal.data.toy import cu_pt_slab_frames  # noqa: E402
from ntkal.kernels import KernelConfig, make_feature_map  # noqa: E402
from ntkal.loop import LoopConfig, make_context, run_loop  # noqa: E402
from ntkal.models import (ModelConfig, build_model, energy_and_forces_fn, load_checkpoint,  # noqa: E402
                          load_pretrained, save_checkpoint)
from ntkal.models.mlip_adapter import load_mlip_zip, mlip_network  # noqa: E402
from ntkal.train import TrainConfig  # noqa: E402
from ntkal.train.spec import TrainConfigError, load_train_spec  # noqa: E402

ELEMENTS = (1, 6, 8, 29, 78)
CUTOFF = 4.0
COMMON = dict(elements=ELEMENTS, cutoff=CUTOFF, num_layers=2, lmax=1, num_radial=4, avg_num_neighbors=8.0)
OPTIONS = {
    "mace": {"num_channels": 8, "correlation": 2, "radial_mlp_hidden": [8], "readout_irreps": ["4x0e", "0e"]},
    "nequip": {"target_irreps": "4x0e + 4x1o", "radial_mlp_hidden": [8]},
    "visnet": {"num_channels": 8, "num_heads": 2},
}
BUDGET = dict(n_graph=2, n_node=24, n_edge=512)
ROTATION = Rotation.from_euler("xyz", [0.4, -0.9, 2.2]).as_matrix()


def config_for(backbone, **kw):
    return ModelConfig(**{**COMMON, **kw}, backbone=backbone, backbone_options=OPTIONS[backbone])


def ethanol():
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    return atoms


def cu_cell():
    """A 4-atom periodic Cu/Pt cell (a = 3.6 Å < cutoff): every atom sees its own images."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[1] = 78
    atoms.positions += np.random.default_rng(1).normal(0, 0.08, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module", params=["mace", "nequip", "visnet"])
def setup(request, x64):
    backbone = request.param
    model = build_model(config_for(backbone))
    params = model.init(jax.random.key(0), batch_structures([atoms_to_structure(ethanol(), CUTOFF)], **BUDGET))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    params["e0"] = jnp.asarray([-0.5, -1.0, -2.0, -3.0, -4.0])
    ef = jax.jit(energy_and_forces_fn(model.energy))
    return backbone, model, params, ef


def predict(setup, atoms, **budget):
    _, _, params, ef = setup
    e, f = ef(params, batch_structures([atoms_to_structure(atoms, CUTOFF)], **(budget or BUDGET)))
    return float(e[0]), np.asarray(f[: len(atoms)])


def e0_sum(atoms):
    table = dict(zip(ELEMENTS, [-0.5, -1.0, -2.0, -3.0, -4.0]))
    return sum(table[int(z)] for z in atoms.numbers)


def mlip_reference(net, variables, atoms):
    """Energy (eV) and forces from ``mlip``'s own neighbour list, graph and network ``net`` (a
    peer); its per-node energies include whatever atomic energies its ``DatasetInfo`` holds."""
    from mlip.data.chemical_system import ChemicalSystem
    from mlip.graph import Graph

    graph = Graph.from_chemical_system(ChemicalSystem.from_ase_atoms(atoms), graph_cutoff_angstrom=CUTOFF)
    graph = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64)
                                   if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, graph)

    def energy(pos):
        out = net.apply(variables, graph.replace(nodes=graph.nodes.replace(positions=pos)))
        return jnp.sum(out.nodes.features["energy"])

    e, g = jax.jit(jax.value_and_grad(energy))(jnp.asarray(atoms.positions, jnp.float64))  # one program
    return float(e), -np.asarray(g)


@pytest.mark.parametrize("make", [ethanol, cu_cell], ids=["molecule", "periodic"])
def test_equals_mlip_own_graph_and_network(setup, make):
    _, model, params, _ = setup
    atoms = make()
    e, f = predict(setup, atoms)
    e_ref, f_ref = mlip_reference(mlip_network(model.config), params["net"], atoms)
    e_ref += e0_sum(atoms)  # the adapter's network has zero atomic energies; ntkal adds e0
    assert abs(e - e_ref) < 1e-9 * max(1.0, abs(e_ref))
    np.testing.assert_allclose(f, f_ref, atol=1e-9)
    assert np.abs(f).max() > 1e-3  # a real, non-trivial force field


@pytest.mark.parametrize("make", [ethanol, cu_cell], ids=["molecule", "periodic"])
def test_rotation_translation_permutation(setup, make):
    atoms = make()
    e, f = predict(setup, atoms)
    moved = atoms.copy()
    moved.positions = atoms.positions @ ROTATION.T + np.array([0.7, -1.3, 2.1])
    if atoms.pbc.any():
        moved.cell = atoms.cell.array @ ROTATION.T
    perm = np.random.default_rng(3).permutation(len(atoms))
    moved = moved[perm]
    e2, f2 = predict(setup, moved)
    assert abs(e2 - e) < 1e-9 * max(1.0, abs(e))
    np.testing.assert_allclose(f2, (f @ ROTATION.T)[perm], atol=1e-9)


def test_forces_equal_central_finite_differences(setup):
    atoms = cu_cell()
    _, f = predict(setup, atoms)
    h = 1e-5
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(predict(setup, plus)[0] - predict(setup, minus)[0]) / (2 * h)
        assert abs(fd - f[i, k]) < 1e-7 * max(1.0, abs(f[i, k])), (i, k, fd, f[i, k])


def test_padding_changes_nothing(setup):
    atoms = [ethanol(), cu_cell()]
    singles = [predict(setup, a) for a in atoms]
    _, _, params, ef = setup
    graph = batch_structures([atoms_to_structure(a, CUTOFF) for a in atoms], n_graph=4, n_node=40, n_edge=1024)
    e, f = ef(params, graph)
    assert np.asarray(e)[2:].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(np.asarray(e)[:2], [s[0] for s in singles], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f)[:9], singles[0][1], atol=1e-10)
    np.testing.assert_allclose(np.asarray(f)[9:13], singles[1][1], atol=1e-10)
    assert np.all(np.asarray(f)[13:] == 0.0)


def test_energy_ntk_gram_equals_explicit_gradients(setup):
    _, model, params, _ = setup
    graph = batch_atoms([ethanol(), cu_cell()], CUTOFF, elements=ELEMENTS)
    fm = make_feature_map(model, KernelConfig(kind="energy", sketch_dim=None), params)
    rows, mask = fm.apply(params, graph)
    feats = np.asarray(rows[:2, 0])
    assert np.asarray(mask[:, 0]).tolist() == [True, True, False]

    # reverse mode over the two real graphs, one compiled program (op by op it costs 20-40 s)
    jac = jax.jit(jax.jacrev(lambda net: model.energy({**params, "net": net}, graph)[:2]))(params["net"])
    ref = np.concatenate([np.reshape(x, (2, -1)) for x in jax.tree_util.tree_leaves(jac)], axis=1)
    assert feats.shape == ref.shape == (2, fm.num_params)
    np.testing.assert_allclose(feats @ feats.T, ref @ ref.T, rtol=1e-10)
    np.testing.assert_allclose(feats, ref, rtol=1e-9, atol=1e-12)


def test_checkpoint_records_backbone_and_round_trips(setup, tmp_path):
    backbone, model, params, _ = setup
    save_checkpoint(tmp_path / "m.msgpack", params, model.config, {"name": "tiny"})
    loaded, loaded_params, meta = load_checkpoint(tmp_path / "m.msgpack")
    assert loaded.config == model.config and loaded.config.backbone == backbone
    assert dict(loaded.config.backbone_options) == dict(model.config.backbone_options)
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), params, loaded_params)
    assert all(jax.tree_util.tree_leaves(same))


def test_two_round_loop():
    """The loop with an mlip backbone (float32 parameters under "net"). The loop only sees the
    model's energy function, which the tests above check per backbone, so one backbone (the
    cheapest to compile) stands for all three: each two-round loop costs 30-50 s on 2 cores."""
    model = build_model(config_for("nequip"))
    with jax.enable_x64(False):
        pool = list(cu_pt_slab_frames(16, seed=11, size=(2, 2, 2)))
        tests = {"id": list(cu_pt_slab_frames(4, seed=12, size=(2, 2, 2)))}
        params = model.init(jax.random.key(1), batch_atoms(pool[:2], CUTOFF))
        config = LoopConfig(method="joint", selector="lcmd", initial=4, batch=3, rounds=1, shortlist=8,
                            kernel=KernelConfig(kind="joint", sketch_dim=16, num_probes=2),
                            train=TrainConfig(max_epochs=1, batch_size=4))
        ctx = make_context(model, params, pool, tests, lambda a: list(a), config, progress=False)
        state = run_loop(ctx, None, log=None)
    assert state.round == 2 and len(set(state.labelled.tolist())) == 7
    assert [r["n_labels"] for r in state.rows] == [4, 7]
    assert all(np.isfinite(r["force_mae"]) and r["force_mae"] > 0 for r in state.rows)
    picks = [p for p in state.picks if p["round"] == 1]
    assert len(picks) == 3 and all(np.isfinite(p["pv"]) and p["pv"] > 0 for p in picks)


def test_bad_backbone_settings_are_named():
    with pytest.raises(ValueError, match="backbone must be one of"):
        ModelConfig(backbone="schnet")
    with pytest.raises(ValueError, match="set the model field 'num_layers'"):
        ModelConfig(backbone="mace", backbone_options={"num_layers": 3})
    with pytest.raises(ValueError, match="backbone_options are for an mlip backbone"):
        ModelConfig(backbone_options={"num_channels": 8})
    with pytest.raises(ValueError, match="'num_chanels' is not a Mace option"):
        mlip_network(ModelConfig(backbone="mace", backbone_options={"num_chanels": 8}))
    with pytest.raises(ValueError, match="nequip backbone_options"):
        mlip_network(ModelConfig(backbone="nequip", backbone_options={"target_irreps": "not irreps"}))
    config = config_for("mace")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert hash(config) == hash(ModelConfig.from_dict(config.to_dict()))


def test_ntkal_train_pretrains_an_mlip_backbone(tmp_path):
    """``ntkal train`` with ``[model] backbone = "mace"``: checkpoint, card, and the config's checks."""
    frames = list(cu_pt_slab_frames(6, seed=1, size=(2, 2, 2)))
    for atoms in frames:
        atoms.info.pop("adsorbate_info", None)
    ase.io.write(tmp_path / "train.extxyz", frames)
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in OPTIONS["mace"].items())
    model = 'backbone = "mace"\nelements = ["Cu", "Pt"]\ncutoff = 4.0\nnum_layers = 2\nlmax = 1\nnum_radial = 4\n'
    text = (f'out = "m.msgpack"\nseed = 1\n[model]\n{model}[model.backbone_options]\n{options}\n'
            f'[data]\ntrain = "train.extxyz"\nval_fraction = 0.34\n[train]\nmax_epochs = 2\nbatch_size = 4\n')
    (tmp_path / "c.toml").write_text(text)
    with jax.enable_x64(False):
        assert main(["train", str(tmp_path / "c.toml"), "--quiet", "--no-compile-cache"]) == 0
    loaded, params, meta = load_checkpoint(tmp_path / "m.msgpack")
    assert loaded.config.backbone == "mace" and dict(loaded.config.backbone_options)["num_channels"] == 8
    assert loaded.config.avg_num_neighbors != COMMON["avg_num_neighbors"]  # measured on the data
    assert "MACE (InstaDeep mlip) model" in (tmp_path / "m.md").read_text()
    assert np.isfinite(meta["errors"]["val"]["force_mae"])

    (tmp_path / "bad.toml").write_text(text.replace("lmax = 1\n", 'lmax = 1\nhidden_irreps = "8x0e"\n'))
    with pytest.raises(TrainConfigError, match=r"bad.toml, line 9: \[model\] hidden_irreps is a setting of the built-in"):
        load_train_spec(tmp_path / "bad.toml")


def test_loads_an_mlip_model_file(setup, tmp_path):
    """A model saved by mlip's own ``save_model_to_zip`` (with atomic energies and energy
    rescaling) loads as an ntkal model whose energies and forces equal mlip's network."""
    from mlip.data.dataset_info import DatasetInfo
    from mlip.models import ForceField
    from mlip.models.model_io import save_model_to_zip
    from mlip.typing.properties import Properties

    backbone, model, params, _ = setup
    base = mlip_network(model.config)
    info = DatasetInfo(atomic_energies_map={1: -13.6, 6: -1029.8, 8: -2041.5, 29: -3.2, 78: -5.1},
                       graph_cutoff_angstrom=CUTOFF, avg_num_neighbors=7.0, scaling_mean=0.3, scaling_stdev=1.7)
    net = type(base)(base.config, info)
    props = Properties()
    predictor = ForceField.get_predictor_class(props, net.config)(
        mlip_network=net, required_properties=props, energy_head=ForceField.get_energy_head(net.config, props, net))
    save_model_to_zip(tmp_path / "m.zip", ForceField(predictor, {"params": {"mlip_network": params["net"]["params"]}}))

    loaded, loaded_params, meta = load_mlip_zip(tmp_path / "m.zip")
    via_name = load_pretrained(str(tmp_path / "m.zip"))  # what [model] checkpoint / init_from use
    assert via_name[0].config == loaded.config
    assert loaded.config.backbone == backbone and loaded.config.energy_scale == 1.7
    assert loaded.config.avg_num_neighbors == 7.0 and loaded.config.elements == ELEMENTS
    assert loaded.config.options_dict() == OPTIONS[backbone]
    atoms = cu_cell()
    e_ref, f_ref = mlip_reference(net, params["net"], atoms)
    loaded_params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), loaded_params)
    e, f = jax.jit(energy_and_forces_fn(loaded.energy))(loaded_params, batch_structures([atoms_to_structure(atoms, CUTOFF)], **BUDGET))
    # ntkal keeps e0 in float32 (as every checkpoint does): agreement to its rounding
    e0_rounding = 2 * np.finfo(np.float32).eps * np.abs(np.asarray(loaded_params["e0"])).sum()
    assert abs(float(e[0]) - e_ref) < e0_rounding and abs(e_ref) > 10
    np.testing.assert_allclose(np.asarray(f)[:4], f_ref, atol=1e-9)

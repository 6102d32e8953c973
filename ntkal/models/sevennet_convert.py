"""SevenNet checkpoints (``sevenn``'s ``.pth``) → ntkal checkpoints, without PyTorch.

:func:`convert_sevennet` reads a ``sevenn`` checkpoint with :func:`~ntkal.models.torch_pickle.load_torch_zip`
(no PyTorch, no code from the file runs), checks that its architecture is the one
:mod:`ntkal.models.sevennet` implements (NequIP interaction, SO(3), linear self-connection, Bessel
basis with XPLOR cutoff, no biases, linear readout, species-wise shift and one scale), applies the
weight patch ``sevenn`` applies to checkpoints older than 0.10 (the radial-MLP output columns of
blocks 1 to L−2 reordered from generation order to output-degree order, and the paths
(1,2,2), (2,1,2), (2,2,1) negated: their stored Wigner-3j had the opposite sign), and returns the
ntkal :class:`~ntkal.models.ModelConfig`, parameters and a model card.

``load_pretrained("sevennet-0")`` finds the checkpoint inside an installed ``sevenn`` package
(``pip install --no-deps sevenn==0.13.0``: only its files are read, it is never imported),
converts it once and keeps the result in ``<cache>/models/sevennet-0.msgpack`` (:func:`cached_sevennet`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SEVENNET_CHECKPOINTS", "find_sevenn_checkpoint", "convert_sevennet", "cached_sevennet",
           "sevennet_cache_path", "patch_old_convolution"]

from ntkal.models.converted_names import SEVENNET_CHECKPOINTS

#: what the checkpoint's config must say for the port to be exact (key → accepted value)
_REQUIRED = {
    "interaction_type": "nequip", "is_parity": False, "self_connection_type": "linear",
    "use_bias_in_linear": False, "readout_as_fcn": False, "_normalize_sph": True,
    "act_radial": "silu", "act_scalar": {"e": "silu", "o": "tanh"}, "act_gate": {"e": "silu", "o": "tanh"},
    "use_species_wise_shift_scale": True, "lmax_edge": -1, "lmax_node": -1,
}


def find_sevenn_checkpoint(name: str = "sevennet-0") -> Path:
    """The ``.pth`` file of ``name`` inside the installed ``sevenn`` package (not imported).

    Raises:
      FileNotFoundError: ``sevenn`` is not installed or lacks the file (says how to install it).
    """
    if name not in SEVENNET_CHECKPOINTS:
        raise ValueError(f"unknown SevenNet checkpoint {name!r}; known: {sorted(SEVENNET_CHECKPOINTS)}")
    spec = importlib.util.find_spec("sevenn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name} is converted from the checkpoint shipped in the sevenn package, which is not installed; "
            "`pip install --no-deps sevenn==0.13.0` is enough (ntkal reads the file, it needs neither sevenn's "
            "code nor PyTorch)")
    path = Path(list(spec.submodule_search_locations)[0]) / SEVENNET_CHECKPOINTS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed sevenn has no {name} checkpoint")
    return path


def _paths_generation_order(mul_in: dict, lmax: int, lmax_out: int) -> list[tuple[int, int, int, int]]:
    return [(l1, l2, l3, mul_in[l1]) for l1 in mul_in for l2 in range(lmax + 1)
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1)]


def patch_old_convolution(weight: np.ndarray, mul_in: dict, lmax: int, lmax_out: int) -> np.ndarray:
    """The radial-MLP output weight ``(hidden, n_weights)`` of a pre-0.10 checkpoint, reordered
    from generation order to output-degree order with the paths (1,2,2), (2,1,2), (2,2,1) negated
    (what ``sevenn.scripts.backward_compatibility.sort_old_convolution`` does)."""
    generated = _paths_generation_order(mul_in, lmax, lmax_out)
    start, starts = 0, {}
    for l1, l2, l3, width in generated:
        starts[(l1, l2, l3)] = (start, width)
        start += width
    if start != weight.shape[1]:
        raise ValueError(f"radial weight has {weight.shape[1]} columns, the paths need {start}")
    columns, signs = [], []
    for l1, l2, l3, width in sorted(generated, key=lambda p: p[2]):
        s, _ = starts[(l1, l2, l3)]
        columns.extend(range(s, s + width))
        signs.extend([-1.0 if (l1, l2, l3) in ((1, 2, 2), (2, 1, 2), (2, 2, 1)) else 1.0] * width)
    return weight[:, columns] * np.asarray(signs, weight.dtype)[None, :]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".")[:3] if p.isdigit())


def _blocks(flat: np.ndarray, shapes: list[tuple[int, int]], key: str) -> list[np.ndarray]:
    """Split an e3nn ``o3.Linear`` flat weight into its (mul_in, mul_out) blocks."""
    out, start = [], 0
    for rows, cols in shapes:
        out.append(np.asarray(flat[start:start + rows * cols], np.float32).reshape(rows, cols))
        start += rows * cols
    if start != flat.size:
        raise ValueError(f"{key}: {flat.size} weights, the irreps need {start}")
    return out


def convert_sevennet(path: str | os.PathLike, *, name: str = "sevennet") -> tuple[Any, dict, dict]:
    """Convert a ``sevenn`` checkpoint file.

    Returns:
      ``(config, params, metadata)``: the :class:`~ntkal.models.ModelConfig` (``backbone =
      "sevennet"``, elements in the checkpoint's type order), ``{"net": ..., "e0": (n_types,) eV}``
      (e0 = the species-wise shift) and the model card fields.

    Raises:
      ValueError: the checkpoint's architecture is not the one ntkal ports (naming the setting).
    """
    import jax

    from ntkal.models.config import ModelConfig
    from ntkal.models.sevennet import _mul_of, param_shapes, spec_of
    from ntkal.models.torch_pickle import load_torch_zip

    path = Path(path)
    checkpoint = load_torch_zip(path)
    cfg, state = checkpoint["config"], checkpoint["model_state_dict"]
    for key, want in _REQUIRED.items():
        if cfg.get(key) != want:
            raise ValueError(f"{path}: unsupported SevenNet checkpoint: config {key} = {cfg.get(key)!r} "
                             f"(ntkal's port needs {want!r})")
    if cfg["radial_basis"].get("radial_basis_name") != "bessel" or cfg["cutoff_function"].get(
            "cutoff_function_name") != "XPLOR":
        raise ValueError(f"{path}: unsupported radial basis or cutoff {cfg['radial_basis']}, {cfg['cutoff_function']}")
    if list(cfg["weight_nn_hidden_neurons"]) != [cfg["weight_nn_hidden_neurons"][0]] * 2:
        raise ValueError(f"{path}: the port needs two equal radial hidden layers, got {cfg['weight_nn_hidden_neurons']}")
    irreps = list(cfg["irreps_manual"])
    hidden = irreps[1]
    if irreps[0] != hidden.split("+")[0] or any(x != hidden for x in irreps[1:-1]) or irreps[-1] != irreps[0]:
        raise ValueError(f"{path}: unsupported irreps_manual {irreps}")
    layers = int(cfg["num_convolution_layer"])
    shift = np.asarray(state["rescale_atomic_energy.shift"], np.float64)
    scale = np.asarray(state["rescale_atomic_energy.scale"], np.float64)
    if not np.all(scale == scale[0]):
        raise ValueError(f"{path}: species-wise scales differ; ntkal's energy_scale is one number")
    denominators = {float(state[f"{t}_convolution.denominator"][0]) for t in range(layers)}
    if len(denominators) != 1:
        raise ValueError(f"{path}: the blocks have different message denominators {sorted(denominators)}")
    species = list(cfg["chemical_species"])
    type_map = dict(cfg["_type_map"])
    import ase.data
    elements = tuple(ase.data.atomic_numbers[s] for s in species)
    if [type_map[z] for z in elements] != list(range(len(elements))):
        raise ValueError(f"{path}: the type map does not follow chemical_species")
    config = ModelConfig(
        elements=elements, cutoff=float(cfg["cutoff"]), hidden_irreps=hidden, num_layers=layers,
        lmax=int(cfg["lmax"]), num_radial=int(cfg["radial_basis"]["bessel_basis_num"]),
        radial_hidden=int(cfg["weight_nn_hidden_neurons"][0]),
        readout_hidden=int(np.asarray(state["reduce_input_to_hidden.linear.weight"]).size // _mul_of(hidden)[0]),
        avg_num_neighbors=float(np.asarray(cfg["avg_num_neigh"]).reshape(-1)[0]),
        energy_scale=float(np.float32(scale[0])), backbone="sevennet",
        backbone_options={"cutoff_on": float(cfg["cutoff_function"]["cutoff_on"]),
                          "denominator": denominators.pop()})
    spec = spec_of(config)
    shapes = param_shapes(spec)
    old = _version(cfg.get("version", "0")) < (0, 10)
    net = {"radial_frequencies": np.asarray(state["edge_embedding.basis_function.coeffs"], np.float32),
           "embedding": _blocks(state["onehot_to_feature_x.linear.weight"], [shapes["embedding"]],
                                "onehot_to_feature_x")[0]}
    for t, block in enumerate(spec.blocks):
        mine = shapes[f"interaction_{t}"]
        entry = {}
        for ours, theirs in (("self_connection", "self_connection_intro"), ("linear_1", "self_interaction_1"),
                             ("linear_2", "self_interaction_2")):
            keys = sorted(mine[ours], key=int)
            key = f"{t}_{theirs}.linear.weight"
            entry[ours] = dict(zip(keys, _blocks(state[key], [mine[ours][k] for k in keys], key)))
        mlp = {f"layer{k}": np.asarray(state[f"{t}_convolution.weight_nn.layer{k}.weight"], np.float32)
               for k in range(3)}
        lmax_out = max(p.l3 for p in block.paths)
        if old and 0 < t < layers - 1:
            mlp["layer2"] = patch_old_convolution(mlp["layer2"], block.mul_in, config.lmax, lmax_out)
        entry["radial_mlp"] = mlp
        net[f"interaction_{t}"] = entry
    net["readout"] = {
        "hidden": _blocks(state["reduce_input_to_hidden.linear.weight"], [shapes["readout"]["hidden"]],
                          "reduce_input_to_hidden")[0],
        "energy": _blocks(state["reduce_hidden_to_energy.linear.weight"], [shapes["readout"]["energy"]],
                          "reduce_hidden_to_energy")[0]}
    for where, got, want in _shape_mismatches(net, shapes):
        raise ValueError(f"{path}: {where} has shape {got}, the port expects {want}")
    params = {"net": net, "e0": np.asarray(shift, np.float32)}
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(net)))
    metadata = {
        "name": name, "source": "sevenn", "source_file": str(path),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source_version": _sevenn_version(), "checkpoint_version": str(cfg.get("version")),
        "licence": "MIT (sevenn; SevenNet-0 weights trained on MPtrj)",
        "elements": list(elements), "cutoff": config.cutoff, "parameters": n_params,
        "train_elements": list(elements),
        "converted_by": "ntkal.models.sevennet_convert (no PyTorch)",
    }
    return config, params, metadata


def _shape_mismatches(net, shapes, where=""):
    for key, want in shapes.items():
        got = net.get(key)
        if isinstance(want, dict):
            yield from _shape_mismatches(got or {}, want, f"{where}{key}/")
        elif got is None or tuple(np.shape(got)) != tuple(want):
            yield f"{where}{key}", None if got is None else np.shape(got), want


def _sevenn_version() -> str:
    try:
        return metadata.version("sevenn")
    except metadata.PackageNotFoundError:
        return "unknown"


def sevennet_cache_path(name: str) -> Path:
    """Where the converted checkpoint of ``name`` is kept (beside the compilation cache)."""
    from ntkal.cache import default_cache_dir

    return default_cache_dir().parent / "models" / f"{name}.msgpack"


def cached_sevennet(name: str = "sevennet-0"):
    """``(model, params, metadata)`` of ``name``, converted on first use and cached.

    The cached file is reused while its recorded source sha256 matches the installed
    checkpoint (a reinstalled or upgraded ``sevenn`` is converted again); an unreadable cached
    file is replaced.
    """
    from ntkal.models.checkpoint import load_checkpoint, save_checkpoint

    source = find_sevenn_checkpoint(name)
    target = sevennet_cache_path(name)
    if target.is_file():
        try:
            model, params, meta = load_checkpoint(target)
        except ValueError:
            meta = {}
        if meta.get("source_sha256") == hashlib.sha256(source.read_bytes()).hexdigest():
            return model, params, meta
    config, params, meta = convert_sevennet(source, name=SEVENNET_CHECKPOINTS[name][1])
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_checkpoint(target, params, config, metadata=meta)
    return load_checkpoint(target)

"""InstaDeep ``mlip`` networks (MACE, NequIP, ViSNet) as ntkal :class:`~ntkal.models.MLIP` s.

Needs the optional extra: ``pip install 'ntkal[mlip]'``. Chosen by ``ModelConfig.backbone``
(``"mace"``, ``"nequip"``, ``"visnet"``); :func:`ntkal.models.build_model` dispatches here, so
every feature map, the loop, ``ntkal select``, the ASE calculator, ``ntkal md`` and
``ntkal train`` work unchanged, and checkpoints record the backbone and its options in their
``ModelConfig``.

The adapter turns ntkal's padded ``jraph.GraphsTuple`` (see :mod:`ntkal.data.padding`) into an
``mlip.graph.Graph`` inside the traced function:

* the same senders and receivers (messages are aggregated on the receiver in both); ``mlip``
  computes an edge vector as ``r[receiver] − r[sender] + shift @ cell``, ntkal as
  ``r[sender] − r[receiver] + shift`` (Cartesian, Å), so the adapter passes the cell as the
  identity and the shift negated: ``mlip`` sees the vector of its own convention, and energies and
  forces equal ``mlip``'s own ``ForceField`` on the same structure (tested);
* edges are sorted by sender (``EdgeOrdering.SENDER``, what ``mlip``'s fused GPU kernels need);
* padded edges (a padding node joined to itself) get a vector of twice the cutoff, outside the
  radial envelope, instead of a zero vector, so no derivative sees 0/0.

``mlip``'s own per-element energies and energy rescaling are switched off (a zero
``atomic_energies_map``, mean 0, standard deviation 1): as for the built-in network, the energy
is E_g = Σ_{i∈g} [energy_scale · net_i + e0[Z_i]] with ntkal's reference energies ``e0``.

``ModelOutput.node_scalars`` and ``readout_inputs`` (embedding and last-layer kernels) are both
the invariant (0e) channels of the network's final node features (``latent``; ViSNet's
``latent_scalars``): those are what the network's readout reads. The ``"readout"`` and
``"last_interaction"`` parameter filters address the built-in network's module names and do not
apply to ``mlip`` networks.

Pretrained ``mlip`` weights come from a model hub these machines cannot reach; a user's
``mlip`` parameter file is loaded with :func:`params_from_mlip`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import jraph

from ntkal.data.padding import edge_mask, graph_mask, node_graph_index, node_mask
from ntkal.models.config import MLIP_BACKBONES, NETWORK_CONFIG_FIELDS, ModelConfig

__all__ = ["build_mlip_model", "mlip_network", "to_mlip_graph", "params_from_mlip", "load_mlip_zip"]

_CLASSES = {"mace": "Mace", "nequip": "Nequip", "visnet": "Visnet"}


def _mlip():
    try:
        import mlip.models
        from mlip.data.dataset_info import DatasetInfo
        from mlip.graph import Graph, GraphEdges, GraphGlobals, GraphNodes
        from mlip.graph.edge_ordering import EdgeOrdering
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("the mace / nequip / visnet backbones need InstaDeep's mlip package: "
                          "pip install 'ntkal[mlip]'") from err
    return mlip.models, DatasetInfo, (Graph, GraphNodes, GraphEdges, GraphGlobals), EdgeOrdering


def mlip_network(config: ModelConfig):
    """The ``mlip`` flax module for ``config`` (``config.backbone`` in :data:`MLIP_BACKBONES`).

    Raises:
      ValueError: ``config`` is not an ``mlip`` backbone, or ``backbone_options`` are not valid
        options of the network's ``Config`` (the message names the option).
    """
    if config.backbone not in MLIP_BACKBONES:
        raise ValueError(f"backbone {config.backbone!r} is not an mlip backbone ({', '.join(MLIP_BACKBONES)})")
    models, DatasetInfo, _, _ = _mlip()
    cls = getattr(models, _CLASSES[config.backbone])
    info = DatasetInfo(atomic_energies_map={int(z): 0.0 for z in config.elements},
                       graph_cutoff_angstrom=float(config.cutoff),
                       avg_num_neighbors=float(config.avg_num_neighbors),
                       scaling_mean=0.0, scaling_stdev=1.0)
    given = {name: getattr(config, field) for name, field in NETWORK_CONFIG_FIELDS.items()}
    given.update(config.options_dict())
    fields = getattr(cls.Config, "model_fields", {})
    unknown = sorted(set(given) - set(fields)) if fields else []
    if unknown:
        raise ValueError(f"backbone_options {unknown[0]!r} is not a {_CLASSES[config.backbone]} option "
                         f"(known: {', '.join(sorted(set(fields) - set(NETWORK_CONFIG_FIELDS)))})")
    try:
        net_config = cls.Config(**given)
    except Exception as err:  # pydantic.ValidationError
        raise ValueError(f"{config.backbone} backbone_options: {err}") from err
    return cls(net_config, info)


def to_mlip_graph(config: ModelConfig, graph: jraph.GraphsTuple):
    """ntkal's padded graph as an ``mlip.graph.Graph`` with the same edge vectors (module docstring).

    Args:
      config: the model's config (its ``cutoff`` places padded edges outside the envelope).
      graph: a padded ``jraph.GraphsTuple`` (layout of :mod:`ntkal.data.padding`).

    Returns:
      An ``mlip`` ``Graph`` whose edges are sorted by sender; cell = identity per graph slot.
    """
    _, _, (Graph, GraphNodes, GraphEdges, GraphGlobals), EdgeOrdering = _mlip()
    positions = jnp.asarray(graph.nodes["positions"])
    dtype = positions.dtype
    senders = jnp.asarray(graph.senders)
    receivers = jnp.asarray(graph.receivers)
    far = jnp.asarray([2.0 * config.cutoff, 0.0, 0.0], dtype)
    shifts = jnp.where(edge_mask(graph)[:, None], -jnp.asarray(graph.edges["shifts"]).astype(dtype), far)
    order = jnp.argsort(senders, stable=True)
    n_graph = graph.n_node.shape[0]
    return Graph(
        nodes=GraphNodes(positions=positions, atomic_numbers=jnp.asarray(graph.nodes["numbers"])),
        edges=GraphEdges(shifts=shifts[order]),
        globals=GraphGlobals(cell=jnp.broadcast_to(jnp.eye(3, dtype=dtype), (n_graph, 3, 3)),
                             weight=jnp.ones((n_graph,), dtype)),
        n_node=jnp.asarray(graph.n_node), n_edge=jnp.asarray(graph.n_edge),
        senders=senders[order], receivers=receivers[order],
        ordering=EdgeOrdering.SENDER,
    )


def _invariants(features: dict) -> jax.Array:
    """(n_node, F) invariant channels of the final node features."""
    if "latent_scalars" in features:  # ViSNet keeps scalars and vectors apart
        return features["latent_scalars"]
    latent = features["latent"]
    irreps = getattr(latent, "irreps", None)
    if irreps is None:  # pragma: no cover - every mlip network so far stores an IrrepsArray
        raise ValueError("cannot find the invariant node features of this mlip network")
    return latent.filter(keep="0e").array


def build_mlip_model(config: ModelConfig):
    """An ntkal :class:`~ntkal.models.MLIP` backed by the ``mlip`` network of ``config.backbone``.

    ``params = {"net": <mlip flax variables>, "e0": (n_elements,) eV}``; energies in eV.
    """
    from ntkal.models.mlip import MLIP, ModelOutput, species_index

    net = mlip_network(config)

    def init(key, graph: jraph.GraphsTuple):
        variables = net.init(key, to_mlip_graph(config, graph))
        return {"net": variables, "e0": jnp.zeros((len(config.elements),), jnp.float32)}

    init = jax.jit(init)

    def apply(params, graph: jraph.GraphsTuple):
        out = net.apply(params["net"], to_mlip_graph(config, graph))
        features = out.nodes.features
        node_out = features["energy"]
        mask = node_mask(graph)
        species = species_index(config, graph.nodes["numbers"])
        e0 = params["e0"].astype(node_out.dtype)
        node_energy = jnp.where(mask, config.energy_scale * node_out + e0[species], 0.0)
        n_graph = graph.n_node.shape[0]
        energy = jax.ops.segment_sum(node_energy, node_graph_index(graph), n_graph)
        energy = jnp.where(graph_mask(graph), energy, 0.0)
        scalars = jnp.where(mask[:, None], _invariants(features), 0.0)
        return ModelOutput(energy=energy, node_energy=node_energy, node_scalars=scalars,
                           readout_inputs=scalars)

    def energy(params, graph):
        return apply(params, graph).energy

    return MLIP(config=config, init=init, apply=apply, energy=energy)


def params_from_mlip(config: ModelConfig, mlip_params: Any, e0=None) -> dict:
    """ntkal parameters from an ``mlip`` network's parameters.

    Args:
      config: the ntkal config the parameters belong to (its ``backbone`` and options must
        describe the same network).
      mlip_params: ``ForceField.params`` (``{"params": {"mlip_network": ...}}``) or the network's
        own variables (``{"params": ...}``), e.g. loaded with ``mlip``'s ``load_model_from_zip``.
      e0: (n_elements,) eV reference energies in ``config.elements`` order (default zeros; fit
        them with :func:`ntkal.models.fit_reference_energies`). ``mlip``'s own atomic energies
        are not carried over: ntkal adds ``e0`` itself. A network trained with ``mlip``'s energy
        rescaling (``DatasetInfo.scaling_mean``/``scaling_stdev``) needs
        ``config.energy_scale = scaling_stdev`` and ``scaling_mean`` folded into ``e0``.
    """
    inner = mlip_params.get("params", mlip_params)
    if "mlip_network" in inner:
        inner = inner["mlip_network"]
    e0 = jnp.zeros((len(config.elements),), jnp.float32) if e0 is None else jnp.asarray(e0, jnp.float32)
    if e0.shape != (len(config.elements),):
        raise ValueError(f"e0 must have shape ({len(config.elements)},), got {e0.shape}")
    return {"net": {"params": inner}, "e0": e0}


_SIGNATURES = {"mace": "correlation", "nequip": "target_irreps", "visnet": "num_heads"}


def load_mlip_zip(path, *, backbone: str | None = None):
    """An ``mlip`` model file (``mlip.models.model_io.save_model_to_zip``) as an ntkal model.

    Everything is converted exactly: elements and reference energies from the file's
    ``atomic_energies_map``, the cutoff and ``avg_num_neighbors`` from its ``DatasetInfo``, the
    network's hyper-parameters into ``ModelConfig`` (``num_layers``, ``l_max`` → ``lmax``,
    ``num_rbf`` → ``num_radial``; options that differ from the network's defaults into
    ``backbone_options``), and ``mlip``'s energy rescaling ``stdev · out + mean + E0[Z]`` into
    ``energy_scale = stdev`` and ``e0[Z] = mean + E0[Z]``, so energies and forces equal ``mlip``'s.

    Args:
      path: the ``.zip`` file (``hyperparams.json`` + ``params.npz``).
      backbone: ``"mace"``, ``"nequip"`` or ``"visnet"``; default: recognised from the file's
        network config (the file does not name its class).

    Returns:
      ``(model, params, metadata)`` like :func:`ntkal.models.load_checkpoint`; save it with
      :func:`ntkal.models.save_checkpoint` to use it as ``[model] checkpoint`` / ``--model``.

    Raises:
      ValueError: not an ``mlip`` model file, an unrecognised or multi-dataset model, or an
        option ntkal's config cannot hold (named).
    """
    import json
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            hyper = json.loads(archive.read("hyperparams.json"))
            with archive.open("params.npz") as f:
                arrays = np.load(f)
                flat = {k: np.asarray(arrays[k]) for k in arrays.files}
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not an mlip model file (hyperparams.json + params.npz): {err}") from err
    info, net_config = hyper.get("dataset_info", {}), dict(hyper.get("config", {}))
    if backbone is None:
        found = [b for b, key in _SIGNATURES.items() if key in net_config]
        if len(found) != 1:
            raise ValueError(f"{path}: cannot tell the network class from its config; pass backbone=")
        backbone = found[0]
    if backbone not in MLIP_BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(MLIP_BACKBONES)}, got {backbone!r}")
    energies = info.get("atomic_energies_map")
    if not isinstance(energies, dict):
        raise ValueError(f"{path}: multi-dataset mlip models (a list of atomic_energies_map) are not supported")
    if "cutoff_distance_angstrom" in info:  # mlip v1 files
        info["graph_cutoff_angstrom"] = info.pop("cutoff_distance_angstrom")
    elements = tuple(sorted(int(z) for z in energies))
    models, _, _, _ = _mlip()
    cls = getattr(models, _CLASSES[backbone])
    plain = json.loads(cls.Config().model_dump_json())
    given = {name: net_config.pop(name, plain[name]) for name in NETWORK_CONFIG_FIELDS}
    # defaults given the shared fields (some defaults follow them, e.g. MACE's node_symmetry)
    defaults = json.loads(cls.Config(**given).model_dump_json())
    avg = net_config.get("avg_num_neighbors") or info.get("avg_num_neighbors", 1.0)
    shared = {field: given[name] for name, field in NETWORK_CONFIG_FIELDS.items()}
    net_config.pop("avg_num_neighbors", None)
    options = {k: v for k, v in net_config.items() if k in defaults and v != defaults[k]}
    for key, value in options.items():
        if isinstance(value, dict):
            raise ValueError(f"{path}: option {key!r} = {value!r} differs from the default and is a table, "
                             f"which ModelConfig.backbone_options cannot hold")
    mean, stdev = float(info.get("scaling_mean", 0.0)), float(info.get("scaling_stdev", 1.0))
    config = ModelConfig(elements=elements, cutoff=float(info["graph_cutoff_angstrom"]),
                         avg_num_neighbors=float(avg), energy_scale=stdev, backbone=backbone,
                         backbone_options=options, **shared)
    params = {}
    for key, value in flat.items():
        node = params
        *parents, leaf = key.split("#")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    e0 = [mean + float(energies[str(z)] if str(z) in energies else energies[z]) for z in elements]
    metadata = {"name": str(path), "mlip_version": hyper.get("version"), "source": "mlip zip",
                "train_elements": list(elements)}
    return build_mlip_model(config), params_from_mlip(config, params, e0), metadata

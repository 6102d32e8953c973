"""Parameter filters: which parameters θ_s ⊂ θ the NTK differentiates.

Only ``params["net"]`` is ever selected; the per-element reference energies
``params["e0"]`` are constants of the fit and never part of θ_s.
Leaves are addressed by their "/"-joined path inside ``params["net"]``, e.g.
``params/interaction_1/radial_mlp/Dense_0/kernel``.

Filters:

* ``"all"`` — every leaf of ``params["net"]``.
* ``"readout"`` — the final linear readout (module named exactly ``readout``). Its
  gradient is Σ_atoms of the readout inputs times a constant (the last-layer kernel).
* ``"last_interaction"`` — the last interaction block ``interaction_{L-1}``.
* a tuple of substrings — every leaf whose path contains any of them.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import jax
import numpy as np

__all__ = ["ParamSelection", "select_params", "leaf_paths"]


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def leaf_paths(net_params) -> list[str]:
    """"/"-joined paths of the leaves of ``params["net"]`` in flattening order."""
    return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(net_params)[0]]


class ParamSelection(NamedTuple):
    """A static selection of leaves of ``params["net"]``.

    Attributes:
      indices: positions (in ``leaf_paths`` order) of the selected leaves; also the
        ``fold_in`` index of each leaf's sketch block, so a leaf's block does not
        depend on the filter.
      paths: their paths.
      sizes: number of scalars per selected leaf.
      num_params: P_s = sum(sizes).
      take: ``take(params) -> list`` of the selected leaves.
      put: ``put(params, leaves) -> params`` with the selected leaves replaced.
    """

    indices: tuple[int, ...]
    paths: tuple[str, ...]
    sizes: tuple[int, ...]
    num_params: int
    take: Callable
    put: Callable


def _matches(path: str, param_filter, last_block: str) -> bool:
    parts = path.split("/")
    if param_filter == "all":
        return True
    if param_filter == "readout":
        return "readout" in parts
    if param_filter == "last_interaction":
        return last_block in parts
    if isinstance(param_filter, str):
        raise ValueError(f"unknown param_filter {param_filter!r}; use 'all', 'readout', "
                         "'last_interaction' or a tuple of path substrings")
    return any(s in path for s in param_filter)


def select_params(params, param_filter="all") -> ParamSelection:
    """Resolve ``param_filter`` against the structure of ``params``.

    Args:
      params: model parameters ``{"net": ..., "e0": ...}`` (only the tree structure and
        leaf shapes are read).
      param_filter: see the module docstring.

    Returns:
      A :class:`ParamSelection`.

    Raises:
      ValueError: unknown filter name, or a filter that selects nothing.
    """
    net = params["net"]
    paths = leaf_paths(net)
    leaves, treedef = jax.tree_util.tree_flatten(net)
    blocks = sorted({int(m.group(1)) for p in paths for m in [re.search(r"interaction_(\d+)", p)] if m})
    last_block = f"interaction_{blocks[-1]}" if blocks else "interaction_"
    indices = tuple(i for i, p in enumerate(paths) if _matches(p, param_filter, last_block))
    if not indices:
        raise ValueError(f"param_filter {param_filter!r} selects no parameters; paths are {paths}")
    sizes = tuple(int(np.size(leaves[i])) for i in indices)

    def take(p):
        flat = jax.tree_util.tree_leaves(p["net"])
        return [flat[i] for i in indices]

    def put(p, selected):
        flat = list(jax.tree_util.tree_leaves(p["net"]))
        for i, leaf in zip(indices, selected):
            flat[i] = leaf
        return {**p, "net": jax.tree_util.tree_unflatten(treedef, flat)}

    return ParamSelection(indices=indices, paths=tuple(paths[i] for i in indices), sizes=sizes,
                          num_params=int(sum(sizes)), take=take, put=put)

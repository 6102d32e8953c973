"""Kernel feature maps: energy / force (exact, probe) / joint NTK, embedding, last-layer.

See :mod:`ntkal.kernels.features` for the definitions and row layouts.

Submodules are imported on first use (PEP 562), so light-weight users (the CLI, configs)
do not pay for JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

#: public name -> defining module
_WHERE = {
    "FeatureMap": "ntkal.kernels.api",
    "default_joint_weights": "ntkal.kernels.api",
    "featurize": "ntkal.kernels.api",
    "make_feature_map": "ntkal.kernels.api",
    "KINDS": "ntkal.kernels.config",
    "SKETCH_KINDS": "ntkal.kernels.config",
    "ForceFormulation": "ntkal.kernels.config",
    "KernelConfig": "ntkal.kernels.config",
    "FeatureRows": "ntkal.kernels.features",
    "NTKFunctions": "ntkal.kernels.features",
    "batched_map": "ntkal.kernels.features",
    "ntk_functions": "ntkal.kernels.features",
    "ParamSelection": "ntkal.kernels.filters",
    "leaf_paths": "ntkal.kernels.filters",
    "select_params": "ntkal.kernels.filters",
    "Sketch": "ntkal.kernels.sketch",
    "make_sketch": "ntkal.kernels.sketch",
    "GraphSizes": "ntkal.kernels.split",
    "graph_sizes": "ntkal.kernels.split",
    "split_graphs": "ntkal.kernels.split",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

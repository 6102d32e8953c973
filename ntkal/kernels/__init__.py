"""Kernel feature maps: energy / force (exact, probe) / joint NTK, embedding, last-layer.

See :mod:`ntkal.kernels.features` for the definitions and row layouts.
"""

from ntkal.kernels.api import FeatureMap, default_joint_weights, featurize, make_feature_map
from ntkal.kernels.config import KINDS, SKETCH_KINDS, ForceFormulation, KernelConfig
from ntkal.kernels.features import FeatureRows, NTKFunctions, batched_map, ntk_functions
from ntkal.kernels.filters import ParamSelection, leaf_paths, select_params
from ntkal.kernels.sketch import Sketch, make_sketch
from ntkal.kernels.split import GraphSizes, graph_sizes, split_graphs

__all__ = [
    "FeatureMap", "default_joint_weights", "featurize", "make_feature_map",
    "KINDS", "SKETCH_KINDS", "ForceFormulation", "KernelConfig",
    "FeatureRows", "NTKFunctions", "batched_map", "ntk_functions",
    "ParamSelection", "leaf_paths", "select_params",
    "Sketch", "make_sketch",
    "GraphSizes", "graph_sizes", "split_graphs",
]

"""One acquisition pipeline: featurise → scale → posterior → [cheap stage →] shortlist → select.

Used by ``ntkal select``, the active-learning loop and the calculator. Submodules are imported on
first use (PEP 562): ``from ntkal.acquire import AcquisitionConfig`` does not import JAX.
"""

from __future__ import annotations

from ntkal._lazy import lazy_attributes

_WHERE = {
    "AcquisitionConfig": "ntkal.acquire.config",
    "CASCADE_KINDS": "ntkal.acquire.config",
    "DISTANCE_SELECTORS": "ntkal.acquire.config",
    "Acquirer": "ntkal.acquire.pipeline",
    "Picks": "ntkal.acquire.pipeline",
    "StructureSet": "ntkal.acquire.pipeline",
    "structure_set": "ntkal.acquire.pipeline",
    "fit_scale": "ntkal.acquire.pipeline",
    "trace_equalising_w_force": "ntkal.acquire.pipeline",
    "evidence_from_residuals": "ntkal.acquire.pipeline",
    "shortlist_and_select": "ntkal.acquire.pipeline",
    "prefetch": "ntkal.acquire.prefetching",
    "MultiDeviceFeatures": "ntkal.acquire.devices",
    "feature_devices": "ntkal.acquire.devices",
}

__all__ = list(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

r"""The acquisition pipeline: featurise → scale → posterior → [cheap stage →] shortlist → select.

One :class:`Acquirer` is built per run from a model, its parameters' structure and an
:class:`~ntkal.acquire.AcquisitionConfig`; it owns the compiled feature maps (the force-aware
one and, with a cascade, the cheap one), the jitted energy/forces and the shortlist and selector
programs (in its ``store``, which a sweep shares between the acquirers of one pool), so nothing
is cached at module level (:mod:`ntkal.cache.owned`). :meth:`Acquirer.pick` is the one entry
point used by ``ntkal select``, the active-learning loop and the calculator's users:

1. **Graphs, sized right.** The structures come as a :class:`StructureSet` (graphs built once,
   a size-class plan from :func:`ntkal.data.size_classes.plan_size_classes`); every chunk is
   padded to its own class's atom/edge budget and built on a background thread ahead of the
   device (:func:`~ntkal.acquire.prefetching.prefetch`).
2. **Cascade** (optional, ``config.cascade``): a cheap kernel (energy NTK, embedding or
   last-layer) scores every candidate by posterior variance; only the top ``cascade_keep``
   fraction (at least ``budget`` structures) goes on to the force-aware kernel.
3. **Scale** (:func:`fit_scale`): joint block weights (``"auto"``: w_F² = Σ‖φ_E‖²/Σ‖Φ_F‖²_F
   over the training set) and the feature normalisation, fitted on the training features and
   applied to both sets.
4. **Posterior** A = Φ̂_TᵀΦ̂_T + σ²I with σ² fixed or chosen by evidence on the training
   energies' residuals (:func:`evidence_from_residuals`).
5. **Shortlist and select**: the candidates stream through the sharded top-m posterior-variance
   shortlist (with the outlier guard and, for ``varred``, the pool's second moment gathered in
   the same pass); the selector picks the batch from the shortlist.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntkal.acquire.config import DISTANCE_SELECTORS, AcquisitionConfig
from ntkal.acquire.devices import MultiDeviceFeatures, feature_devices
from ntkal.acquire.prefetching import prefetch
from ntkal.cluster.collectives import Collectives, LocalCollectives
from ntkal.posterior import (FeatureChunk, FeatureScale, ScoreConfig, accumulate_second_moment,
                               apply_feature_scale, evidence_noise_var, fit_feature_scale,
                               fit_posterior, pad_chunk, select_batch, shortlist_pool,
                               target_second_moment)
from ntkal.posterior.shortlist import ShortlistState, merge_topk, streaming_shortlist
from ntkal.data import Structure
from ntkal.data.size_classes import SizeClasses, class_chunks, padded_slots, plan_size_classes
from ntkal.kernels import GraphSizes, make_feature_map
from ntkal.models import energy_and_forces_fn
from ntkal.cache import ProgramCache, build_once

__all__ = ["StructureSet", "structure_set", "Picks", "Acquirer", "fit_scale",
           "trace_equalising_w_force", "evidence_from_residuals", "force_noise_factor",
           "shortlist_and_select"]


class StructureSet(NamedTuple):
    """Graphed structures (built once) and their padding plan; ids index ``structures``.

    Attributes:
      structures: indexable :class:`~ntkal.data.Structure` s.
      plan: size classes over all of them.
      n_atoms: (n,) atoms per structure.
    """

    structures: Sequence[Structure]
    plan: SizeClasses
    n_atoms: np.ndarray

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def max_sizes(self) -> GraphSizes:
        """The largest class budget (the row count of exact force features is 3 × its atoms)."""
        return GraphSizes(*self.plan.budgets[-1])

    def padding_ratio(self, chunk_size: int) -> float:
        """Atom slots featurised / real atoms when every structure is featurised once."""
        return padded_slots(self.plan, chunk_size) / max(int(self.n_atoms.sum()), 1)


def structure_set(structures: Sequence[Structure], max_classes: int,
                  max_padding: float = 1.0) -> StructureSet:
    """Plan the size classes of ``structures`` (see :func:`ntkal.data.size_classes.plan_size_classes`)."""
    if len(structures) == 0:
        raise ValueError("no structures")
    n_atoms = np.array([s.n_atoms for s in structures], np.int64)
    n_edges = np.array([s.n_edges for s in structures], np.int64)
    return StructureSet(structures, plan_size_classes(n_atoms, n_edges, max_classes,
                                                      max_padding=max_padding), n_atoms)


class Picks(NamedTuple):
    """What :meth:`Acquirer.pick` chose and why.

    Attributes:
      ids: (budget,) int64 ids (into the :class:`StructureSet`) in pick order.
      scores: (budget,) the selector's criterion at the time of each pick.
      pv: (budget,) posterior variance of each pick (the shortlist score, in the scaled unit).
      noise_var: σ² used (fixed or the evidence maximiser).
      w_force: the joint force-block weight used (``None`` for other kernels).
      scale: the fitted :class:`~ntkal.posterior.FeatureScale`.
      stats: counts and seconds: ``n_candidates``, ``feature_devices``, ``n_kept`` (after the cascade),
        ``n_features`` (force-aware feature evaluations in this call, cache hits excluded),
        ``n_cheap_features``, ``cascade_s``, ``train_features_s``, ``score_s``, ``select_s``.
    """

    ids: np.ndarray
    scores: np.ndarray
    pv: np.ndarray
    noise_var: float
    w_force: float | None
    scale: FeatureScale
    stats: dict


def trace_equalising_w_force(train: FeatureChunk) -> float:
    """w_F with w_F² = Σ‖φ_E‖² / Σ‖Φ_F‖²_F over the valid training structures (joint rows
    [φ_E; Φ_F] with unit weights): both blocks then carry the same total prior variance."""
    rows = np.asarray(train.rows, np.float64)
    keep = np.asarray(train.row_mask, bool) & (np.asarray(train.ids) >= 0)[:, None]
    sq = np.where(keep, np.sum(rows * rows, axis=-1), 0.0)
    return float(np.sqrt(sq[:, 0].sum() / max(sq[:, 1:].sum(), 1e-30)))


def fit_scale(config: AcquisitionConfig, train_raw: FeatureChunk) -> tuple[FeatureScale, float | None]:
    """Joint block weights and feature normalisation from unit-weight training features.

    Returns:
      ``(scale, w_force)``: apply ``scale`` with :func:`~ntkal.posterior.apply_feature_scale`
      to training and pool features alike; ``w_force`` is the joint force weight (``None``
      for other kernels; with ``per_structure`` normalisation and ``"auto"`` weights both
      blocks already have unit norm and w_F = 1).
    """
    host = FeatureChunk(*(np.asarray(x) for x in train_raw))
    groups = weights = w_force = None
    if config.kind == "joint":
        r = host.rows.shape[1]
        groups = (0,) + (1,) * (r - 1)
        if config.joint_weights != "auto":
            weights = tuple(config.joint_weights)
        elif config.feature_norm == "per_structure":
            weights = (1.0, 1.0)
        else:
            weights = (1.0, trace_equalising_w_force(host))
        w_force = float(weights[1])
    scale = fit_feature_scale(host, config.feature_norm, row_groups=groups, group_weights=weights)
    return scale, w_force


def without_element_offsets(residuals: np.ndarray, structures: Sequence[Structure], elements) -> np.ndarray:
    """``residuals`` (eV) minus their per-element least-squares fit Σ_i c[Z_i] over ``structures``
    (:func:`ntkal.models.fit_reference_energies`): what a refit of the reference energies leaves."""
    from ntkal.models.config import ModelConfig
    from ntkal.models.reference import fit_reference_energies

    config = ModelConfig(elements=tuple(elements))
    shifted = [s._replace(energy=float(r)) for s, r in zip(structures, residuals)]
    offsets = fit_reference_energies(config, shifted)
    column = {z: k for k, z in enumerate(config.elements)}
    fitted = np.array([sum(offsets[column[int(z)]] for z in s.numbers) for s in structures])
    return np.asarray(residuals, np.float64) - fitted


def evidence_from_residuals(train_raw: FeatureChunk, train_scaled: FeatureChunk,
                            residuals: np.ndarray) -> float:
    """σ² maximising the evidence of the energy residuals (eV) under the scaled energy rows.

    Row 0 of every structure is its energy feature. A per-structure normalisation rescales a
    structure's row by c = ‖φ̂_E‖/‖φ_E‖; the residual is rescaled by the same c so that the GP
    model y = φ̂ w + ε keeps its meaning (see :func:`ntkal.posterior.evidence_noise_var`).
    """
    raw = np.asarray(train_raw.rows, np.float64)[:, 0]
    scaled = np.asarray(train_scaled.rows, np.float64)[:, 0]
    factor = np.linalg.norm(scaled, axis=1) / np.maximum(np.linalg.norm(raw, axis=1), 1e-30)
    return evidence_noise_var(scaled, np.asarray(residuals, np.float64) * factor)


def force_noise_factor(fmax: np.ndarray, candidates: np.ndarray, scale: float, *,
                       median_of: np.ndarray | None = None) -> np.ndarray:
    """Per-structure noise factors ``1 + (f / (scale · f_med))²`` of the soft outlier weight.

    Args:
      fmax: predicted max |F| (eV/Å), indexed by structure id.
      candidates: the ids whose median sets ``f_med``.
      scale: c > 0 (:attr:`AcquisitionConfig.force_noise_scale`).
      median_of: the values whose median is ``f_med`` instead (e.g. every process's
        candidates' max |F|); ``None``: ``fmax[candidates]``.

    Returns:
      ``fmax``-shaped float64 factors (all 1 when ``f_med`` is 0: nothing to compare with).
    """
    values = np.asarray(fmax)[np.asarray(candidates, np.int64)] if median_of is None else median_of
    reference = scale * float(np.median(values))
    if not reference > 0.0:
        return np.ones(np.shape(fmax))
    return 1.0 + (np.asarray(fmax, np.float64) / reference) ** 2


def shortlist_and_select(config: AcquisitionConfig, posterior, scale: FeatureScale,
                         train_scaled: FeatureChunk, pool_raw: Iterable[FeatureChunk], budget: int,
                         key, *, n_candidates: int, allowed: np.ndarray | None = None,
                         noise_factor: np.ndarray | None = None, target_moment: np.ndarray | None = None,
                         collectives: Collectives | None = None, global_ids: np.ndarray | None = None,
                         num_rows: int | None = None, timings: dict | None = None,
                         compiled: dict | None = None):
    """Stream raw pool features through scale → guard → top-m PV shortlist, then select.

    Args:
      config: the acquisition settings (shortlist, reduction, selector).
      posterior: from the scaled training features.
      scale: the fitted feature scale.
      train_scaled: scaled training features (initial centres of the distance selectors).
      pool_raw: unit-weight pool feature chunks (ids = candidate ids, -1 padding).
      budget: structures to pick.
      key: PRNG key of the selector.
      n_candidates: candidates that may be picked (sizes the shortlist).
      allowed: optional bool array indexed by id; ``False`` candidates are never picked (they
        still count in ``varred``'s target moment).
      noise_factor: optional array (≥ 1) indexed by id: candidate ``i`` counts as observed with
        noise ``σ² · noise_factor[i]`` (its rows, as the shortlist and the selector see them, are
        divided by ``sqrt(noise_factor[i])``; ``varred``'s target moment is taken before that).
      target_moment: ``varred`` only: ``(d, d)`` second moment of the scaled features of a
        target set (:func:`~ntkal.posterior.target_second_moment`); ``None`` = the scored
        candidates themselves.
      collectives: with several processes (:mod:`ntkal.cluster`), each streams its own part of
        the pool: ``n_candidates`` is then the total over the processes, the varred moment of
        the scored candidates is summed over them, the local top-m shortlists are gathered and
        merged (the shortlist's order is total, so the merge is the single-process shortlist),
        and process 0 runs the selector and broadcasts its picks. ``None``: one process.
      global_ids: ``(n,)`` int64 map from the ids of ``pool_raw`` (indices into ``allowed`` and
        ``noise_factor``) to the ids the picks are reported in and ties are broken by (e.g. the
        frame index in the whole pool file); ``None``: the ids themselves.
      num_rows: the row count r of the shortlist (≥ every chunk's; chunks with fewer rows are
        padded with masked rows): all processes must agree on it. ``None``: the first chunk's.
      timings: optional dict that receives seconds: ``shortlist_s`` (streaming this process's
        candidates), ``gather_s`` (several processes: merging the shortlists and the varred
        moment) and ``select_s`` (the selector, with the broadcast of its picks).
      compiled: the caller's dict that keeps the shortlist and selector programs between
        calls (:mod:`ntkal.cache.owned`); ``None``: compiled for this call only.

    Returns:
      ``(ids, scores, pv)`` numpy arrays of length ``budget`` (ids through ``global_ids``).
    """
    dim = posterior.dim
    if target_moment is not None and config.selector != "varred":
        raise ValueError(f"a target set needs selector 'varred', got {config.selector!r}")
    own_target = config.selector == "varred" and target_moment is None
    target = np.zeros((dim, dim)) if own_target else target_moment

    def chunks():
        stream = (apply_feature_scale(chunk, scale) for chunk in pool_raw)
        if own_target:  # varred's target is every scored candidate, guarded or not
            stream = accumulate_second_moment(stream, target, config.target_weighting)
        for chunk in stream:
            ids, rows = chunk.ids, chunk.rows
            host = np.asarray(ids) if allowed is not None or noise_factor is not None else None
            if allowed is not None:
                ids = np.where((host >= 0) & allowed[np.maximum(host, 0)], host, -1)
            if noise_factor is not None:  # observing φ/√f with σ² = observing φ with f·σ²
                factor = np.where(host >= 0, noise_factor[np.maximum(host, 0)], 1.0)
                rows = jnp.asarray(rows)
                rows = rows * jnp.asarray(1.0 / np.sqrt(factor), rows.dtype)[:, None, None]
            row_mask = chunk.row_mask
            if global_ids is not None:
                host = np.asarray(ids)
                ids = np.where(host >= 0, global_ids[np.maximum(host, 0)], -1)
            if num_rows is not None:
                rows, row_mask = _pad_rows(jnp.asarray(rows), jnp.asarray(row_mask), num_rows)
            yield FeatureChunk(jnp.asarray(rows), jnp.asarray(row_mask), jnp.asarray(ids, jnp.int32))

    m = max(min(config.shortlist, n_candidates), budget)
    score_config = ScoreConfig(reduction=config.reduction)
    timings = {} if timings is None else timings
    t = time.perf_counter()
    if collectives is None or collectives.count == 1:
        short = shortlist_pool(chunks(), posterior, m, score_config=score_config, compiled=compiled)
        jax.block_until_ready(short.values)
        timings["shortlist_s"] = time.perf_counter() - t
        t = time.perf_counter()
        picked = _select(config, short, budget, key, posterior, train_scaled, score_config, target, compiled)
        timings["select_s"] = time.perf_counter() - t
        return picked
    if num_rows is None:
        raise ValueError("several processes must agree on the shortlist's row count: pass num_rows")
    short = _gathered_shortlist(collectives, chunks(), posterior, m, num_rows, score_config, timings, compiled)
    if own_target:
        t = time.perf_counter()
        target = collectives.sum(target)
        timings["gather_s"] += time.perf_counter() - t
    t = time.perf_counter()
    picked = [np.zeros(budget, np.int64), np.zeros(budget, np.float64), np.zeros(budget, np.float64)]
    if collectives.is_writer:  # the selector runs once; every process gets its picks
        picked = list(_select(config, short, budget, key, posterior, train_scaled, score_config, target, compiled))
    picked = tuple(collectives.broadcast(x) for x in picked)
    timings["select_s"] = time.perf_counter() - t
    return picked


def _select(config: AcquisitionConfig, short, budget: int, key, posterior, train_scaled: FeatureChunk,
            score_config: ScoreConfig, target, compiled: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch selector on the shortlist: ``(ids, scores, pv)`` (checked: distinct, valid)."""
    selection = select_batch(config.selector, short.as_chunk(), budget=budget, key=key,
                             posterior=posterior,
                             train=train_scaled if config.selector in DISTANCE_SELECTORS else None,
                             score_config=score_config, target_gram=target, compiled=compiled)
    ids = np.asarray(selection.ids, np.int64)
    if len(set(ids.tolist())) != budget or (ids < 0).any():
        raise RuntimeError(f"selector {config.selector!r} returned invalid or duplicate ids {ids.tolist()}")
    pv = np.asarray(short.values, np.float64)[np.asarray(selection.indices)]
    return ids, np.asarray(selection.scores, np.float64), pv


def _gathered_shortlist(collectives: Collectives, chunks: Iterable[FeatureChunk], posterior, m: int,
                        num_rows: int, score_config: ScoreConfig, timings: dict,
                        compiled: dict | None = None) -> ShortlistState:
    """This process's top-``m`` of ``chunks`` merged with every other process's: the top-``m``
    of the whole pool (a process may hold no candidate at all). ``timings`` gets
    ``shortlist_s`` (the local stream) and ``gather_s`` (the merge, waiting for the others
    included)."""
    t = time.perf_counter()
    fns = streaming_shortlist(posterior, m, score_config=score_config, compiled=compiled)
    state = fns.init(num_rows, posterior.dim)
    for chunk in chunks:
        state = fns.update(chunk, state)
    jax.block_until_ready(state.values)
    timings["shortlist_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_seen = collectives.total(state.n_seen)
    if n_seen == 0:
        raise ValueError("empty pool: no process streamed a valid candidate")
    everyone = FeatureChunk(*(collectives.concat(np.asarray(x)) for x in (state.rows, state.row_mask, state.ids)))
    values = collectives.concat(np.asarray(state.values))
    merged = merge_topk(fns.init(num_rows, posterior.dim), everyone, jnp.asarray(values), m)
    timings["gather_s"] = time.perf_counter() - t
    return merged._replace(n_seen=jnp.asarray(n_seen, jnp.int32))


def _pad_rows(rows, mask, r: int, pad=jnp.pad):
    """Pad the row axis to ``r`` (zero rows, mask False): classes of exact force features differ.
    ``pad = np.pad`` keeps host arrays on the host."""
    extra = r - rows.shape[1]
    if extra <= 0:
        return rows, mask
    return (pad(rows, ((0, 0), (0, extra), (0, 0))), pad(mask, ((0, 0), (0, extra))))


def jitted_model(model, store: dict) -> tuple:
    """``(energy_and_forces, energy)`` of ``model``, jitted once per model and ``store`` (the
    acquirers of a sweep and the loop's own evaluations share them)."""
    return build_once(store, ("acquire", id(model), "model functions"),
                      lambda: (jax.jit(energy_and_forces_fn(model.energy)), jax.jit(model.energy)),
                      holds=model)  # holding the model keeps id(model) unique


class Acquirer:
    """Compiled functions of one acquisition configuration (build once per run).

    Args:
      model: the MLIP.
      params: parameters whose *structure* the feature maps are built for (any parameters of
        the same structure can be passed to :meth:`pick`).
      config: the :class:`~ntkal.acquire.AcquisitionConfig`.
      store: optional dict shared by several acquirers of the same model (e.g. the runs of a
        sweep): feature maps, jitted functions and the shortlist and selector programs are kept
        there (:mod:`ntkal.cache.owned`), so a kernel is compiled once however many selectors or
        seeds use it, and all are released with the dict. Default: a dict of this acquirer's own.
      programs: optional :class:`~ntkal.cache.ProgramCache`: the single-device feature
        maps and the energy function are traced once and kept on disk, and so is a hoisted
        sketch (``ntkal select`` uses it beside the compilation cache, so a warm run skips
        tracing the model and drawing the sketch).

    Attributes:
      feature_map: the (second-stage) feature map, unit joint weights.
      cascade_map: the first-stage map, or ``None``.
      energy_and_forces: jitted ``(params, graph) -> (energies (n_graph,) eV, forces (n_node, 3) eV/Å)``.
      energy: jitted ``(params, graph) -> (n_graph,)`` eV.
      compiled: the dict that owns the shortlist and selector programs (kept inside ``store``,
        so the acquirers sharing a store share them; the acquirer does not hold ``store``
        itself, which may hold the acquirer).
    """

    def __init__(self, model, params, config: AcquisitionConfig, *, store: dict | None = None,
                 programs: ProgramCache | None = None):
        self.config = config
        self.model = model
        self.programs = programs
        store = {} if store is None else store
        self.compiled = build_once(store, ("acquire", "shortlist and selector programs"), dict)

        def shared(key, build):  # holding the model keeps id(model) unique
            return build_once(store, ("acquire", id(model)) + key, build, holds=model)

        unit = dataclasses.replace(config.kernel, w_energy=1.0, w_force=1.0)
        self.feature_map = shared(("map", unit), lambda: make_feature_map(model, unit, params, store=programs))
        self.cascade_map = None
        if config.cascade is not None:
            cheap = config.cascade_kernel
            self.cascade_map = shared(("map", cheap), lambda: make_feature_map(model, cheap, params, store=programs))
        self.energy_and_forces, self.energy = jitted_model(model, store)
        self.devices = feature_devices(config.feature_devices)
        self._multi = {}
        if len(self.devices) > 1:
            names = tuple(d.id for d in self.devices)
            for fmap in (self.feature_map, self.cascade_map):
                if fmap is not None:
                    self._multi[id(fmap)] = shared(("devices", fmap.config, names),
                                                   lambda fmap=fmap: MultiDeviceFeatures(fmap, self.devices))

    # --- streaming over a StructureSet ----------------------------------------------------

    def _graphs(self, data: StructureSet, ids: np.ndarray):
        chunks = class_chunks(data.structures, ids, data.plan, self.config.chunk_size)
        return prefetch(chunks, self.config.prefetch)

    def stream_features(self, fmap, params, data: StructureSet, ids, *, progress: bool = False,
                        desc: str = "featurise") -> Iterator[FeatureChunk]:
        """Unit-weight feature chunks of ``data[ids]``, class by class (ids = set ids, -1 padding).

        Every chunk has ``chunk_size + 1`` graph slots and ``fmap.num_rows(data.max_sizes)``
        rows (exact force features of smaller classes are padded with masked rows).
        """
        ids = np.asarray(ids, np.int64)
        r = fmap.num_rows(data.max_sizes)
        chunks = self._graphs(data, ids)
        if progress:
            counts = np.bincount(data.plan.class_of[ids], minlength=data.plan.num_classes)
            total = int(sum(-(-int(n) // self.config.chunk_size) for n in counts))
            chunks = tqdm(chunks, total=total, desc=desc, unit="chunk", leave=False)
        multi = self._multi.get(id(fmap))
        if multi is not None:
            yield from self._stream_multi(multi, params, data, chunks, r)
            return
        for c, chunk_ids, graph in chunks:
            rows, mask = self._apply(fmap, params, graph, GraphSizes(*data.plan.budgets[c]))
            rows, mask = _pad_rows(jnp.asarray(rows), jnp.asarray(mask), r)
            yield FeatureChunk(rows, mask, jnp.asarray(chunk_ids, jnp.int32))

    def _apply(self, fmap, params, graph, sizes: GraphSizes):
        """``fmap.apply`` on one padded chunk, through the program cache when there is one."""
        if self.programs is None:
            return fmap.apply(params, graph, sizes=sizes)
        salt = np.zeros(np.shape(graph.n_node), np.uint32)
        return self.programs.call(
            ("features", self.model.config, fmap.config, sizes),
            lambda p, g, s, k: tuple(fmap.apply_padded(p, g, sizes, salt=s, constants=k)),
            (params, graph, salt, fmap.constants))

    def _energy(self, params, graph):
        """(n_graph,) model energies (eV) of one padded chunk."""
        if self.programs is None:
            return self.energy(params, graph)
        return self.programs.call(("energy", self.model.config), lambda p, g: (self.model.energy(p, g),),
                                  (params, graph))[0]

    @staticmethod
    def _stream_multi(multi: MultiDeviceFeatures, params, data: StructureSet, chunks,
                      r: int) -> Iterator[FeatureChunk]:
        """``stream_features`` on k devices: groups of ≤ k same-class chunks, one per device.

        Group j+1 is dispatched before group j is brought to the host, so the devices work while
        the consumer scores; chunks come back as host arrays, in the order of ``chunks``.
        """
        replicated = multi.replicate(params)

        def groups():
            group: list = []
            for c, chunk_ids, graph in chunks:
                if group and (c != group[0][0] or len(group) == multi.k):
                    yield group
                    group = []
                group.append((c, chunk_ids, graph))
            if group:
                yield group

        def finish(group, out):
            rows, mask = (np.asarray(x) for x in out)
            for k, (_, chunk_ids, _) in enumerate(group):
                yield FeatureChunk(*_pad_rows(rows[k], mask[k], r, np.pad), np.asarray(chunk_ids, np.int32))

        pending = None
        for group in groups():
            out = multi.apply(replicated, [g for _, _, g in group],
                              GraphSizes(*data.plan.budgets[group[0][0]]))
            if pending is not None:
                yield from finish(*pending)
            pending = (group, out)
        if pending is not None:
            yield from finish(*pending)

    def warm_up(self, params, data: StructureSet, *, threads: int | None = None) -> float:
        """Compile the feature maps for every size class of ``data`` up front; returns seconds.

        One chunk per class and map is featurised, the classes in parallel threads (XLA
        compiles release the GIL), so K classes cost about one compile's wall time on a
        many-core host instead of K. Optional: :meth:`pick` compiles lazily otherwise.
        """
        from concurrent.futures import ThreadPoolExecutor
        t = time.perf_counter()
        firsts = [int(np.flatnonzero(data.plan.class_of == c)[0]) for c in range(data.plan.num_classes)]
        maps = [m for m in (self.feature_map, self.cascade_map) if m is not None]

        def one(job):
            fmap, i = job
            for chunk in self.stream_features(fmap, params, data, [i]):
                jax.block_until_ready(chunk.rows)

        jobs = [(m, i) for m in maps for i in firsts]
        with ThreadPoolExecutor(threads or len(jobs)) as pool:
            list(pool.map(one, jobs))
        return time.perf_counter() - t

    def _features(self, fmap, params, data: StructureSet, ids, cache: dict | None, name,
                  counter: dict, *, progress: bool, desc: str) -> Iterator[FeatureChunk]:
        """Feature chunks of ``data[ids]``; with ``cache`` (fixed ``params``!) every structure
        is featurised at most once per cache and chunks come from host arrays in ``ids`` order."""
        ids = np.asarray(ids, np.int64)
        if cache is None:
            counter[name] = counter.get(name, 0) + len(ids)
            yield from self.stream_features(fmap, params, data, ids, progress=progress, desc=desc)
            return
        key = ("features", name, fmap.config, len(data))
        if key not in cache:
            r = fmap.num_rows(data.max_sizes)
            cache[key] = (np.zeros((len(data), r, fmap.dim), np.float32 if not jax.config.jax_enable_x64
                                   else np.float64), np.zeros((len(data), r), bool),
                          np.zeros(len(data), bool))
        rows, mask, have = cache[key]
        missing = ids[~have[ids]]
        counter[name] = counter.get(name, 0) + len(missing)
        for chunk in self.stream_features(fmap, params, data, missing, progress=progress, desc=desc):
            got = np.asarray(chunk.ids)
            real = got >= 0
            rows[got[real]] = np.asarray(chunk.rows)[real]
            mask[got[real]] = np.asarray(chunk.row_mask)[real]
            have[got[real]] = True
        size = self.config.chunk_size
        for k in range(0, len(ids), size):
            part = ids[k:k + size]
            yield pad_chunk(FeatureChunk(rows[part], mask[part], part.astype(np.int32)), size)

    def _concat(self, chunks: Iterable[FeatureChunk]) -> FeatureChunk:
        """Concatenate chunks on the host, dropping padding slots."""
        parts = [FeatureChunk(*(np.asarray(x) for x in c)) for c in chunks]
        keep = [p.ids >= 0 for p in parts]
        return FeatureChunk(*(np.concatenate([getattr(p, f)[k] for p, k in zip(parts, keep)])
                              for f in FeatureChunk._fields))

    def _per_graph(self, params, data: StructureSet, ids: np.ndarray, what: str) -> np.ndarray:
        """(len(ids),) predicted energy (eV) or max free-atom |F| (eV/Å), in ``ids`` order."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros(len(data))
        for _, chunk_ids, graph in self._graphs(data, ids):
            if what == "energy":
                values = np.asarray(self._energy(params, graph))
                for g, i in enumerate(chunk_ids):
                    if i >= 0:
                        out[i] = values[g]
                continue
            _, forces = self.energy_and_forces(params, graph)
            norms = np.linalg.norm(np.asarray(forces), axis=-1)
            start = 0
            for i in chunk_ids:
                if i < 0:
                    break
                s = data.structures[i]
                part = norms[start:start + s.n_atoms][s.free]
                out[i] = part.max() if part.size else 0.0
                start += s.n_atoms
        return out[ids]

    def predicted_energies(self, params, data: StructureSet, ids) -> np.ndarray:
        """(len(ids),) model energies (eV) of ``data[ids]``."""
        return self._per_graph(params, data, ids, "energy")

    def predicted_fmax(self, params, data: StructureSet, ids) -> np.ndarray:
        """(len(ids),) max over free atoms of the predicted |F| (eV/Å) of ``data[ids]``."""
        return self._per_graph(params, data, ids, "fmax")

    # --- the pipeline ---------------------------------------------------------------------

    def _cascade(self, params, data, train_ids, candidates, budget, residuals, cache, counter,
                 progress, col: Collectives, global_ids: np.ndarray | None, n_total: int) -> np.ndarray:
        """First stage: ids of the top ``max(ceil(q · n), budget)`` candidates by cheap-kernel PV
        (``n`` = ``n_total``, over every process; each process returns its own kept ids)."""
        cfg, fmap = self.config, self.cascade_map
        keep = max(math.ceil(cfg.cascade_keep * n_total), budget)
        if keep >= n_total:
            return candidates
        train_raw = self._train_features(col, fmap, params, data, train_ids, cache, "cheap", counter,
                                         desc="cheap train")
        stage = dataclasses.replace(cfg, kernel=fmap.config, joint_weights="auto")
        scale, _ = fit_scale(stage, train_raw)
        train_scaled = apply_feature_scale(train_raw, scale)
        noise_var = cfg.noise_var
        if fmap.config.kind == "energy" and residuals is not None:
            noise_var = evidence_from_residuals(train_raw, train_scaled, residuals)
        posterior = fit_posterior([train_scaled], fmap.dim, noise_var=noise_var)
        pool = (apply_feature_scale(c, scale) for c in self._features(
            fmap, params, data, candidates, cache, "cheap", counter, progress=progress,
            desc="cascade: cheap kernel"))
        score_config = ScoreConfig(reduction=cfg.reduction)
        if col.count == 1:
            short = shortlist_pool(pool, posterior, keep, score_config=score_config, compiled=self.compiled)
            kept = np.asarray(short.ids, np.int64)
            return kept[kept >= 0]
        # every process's top-keep (values, global ids), merged with the shortlist's order
        ids_of = np.arange(len(data)) if global_ids is None else global_ids
        fns = streaming_shortlist(posterior, keep, score_config=score_config, compiled=self.compiled)
        state = fns.init(self._rows(col, fmap, data), fmap.dim)
        for chunk in pool:
            host = np.asarray(chunk.ids)
            chunk = FeatureChunk(*_pad_rows(jnp.asarray(chunk.rows), jnp.asarray(chunk.row_mask),
                                            state.rows.shape[1]),
                                 jnp.asarray(np.where(host >= 0, ids_of[np.maximum(host, 0)], -1), jnp.int32))
            state = fns.update(chunk, state)
        values = col.concat(np.asarray(state.values, np.float64))
        ids = col.concat(np.asarray(state.ids, np.int64))
        order = np.lexsort((ids, -values, ids < 0))[:keep]
        chosen = ids[order][ids[order] >= 0]
        return candidates[np.isin(ids_of[candidates], chosen)]

    def _rows(self, col: Collectives, fmap, data: StructureSet) -> int:
        """Rows per structure of ``fmap`` over every process's structures (exact force features
        have 1 + 3 N_max rows, and N_max differs between the processes' parts of the pool)."""
        return int(col.concat(np.asarray([fmap.num_rows(data.max_sizes)], np.int64)).max())

    def _across(self, col: Collectives, ids: np.ndarray, compute) -> list[np.ndarray]:
        """``compute(ids)`` with the work split over the processes: each computes every
        ``count``-th id, the parts are gathered and put back in ``ids`` order (every process
        gets the same arrays). ``compute`` returns a tuple of arrays with leading ``len(ids)``."""
        if col.count == 1:
            return list(compute(ids))
        mine = ids[col.index::col.count]
        parts = [col.gather(x) for x in compute(mine)]
        out = []
        for gathered in parts:
            whole = np.zeros((len(ids),) + gathered[0].shape[1:], gathered[0].dtype)
            for p, part in enumerate(gathered):
                whole[p::col.count] = part
            out.append(whole)
        return out

    def _train_features(self, col: Collectives, fmap, params, data: StructureSet, train_ids, cache,
                        name: str, counter: dict, *, desc: str) -> FeatureChunk:
        """Unit-weight features of the training structures on the host, in ``train_ids`` order
        (the order of the energy residuals the evidence pairs them with), the same arrays on every
        process: with several, each featurises its share and the shares are gathered."""
        r = fmap.num_rows(data.max_sizes) if col.count == 1 else self._rows(col, fmap, data)

        def compute(ids):
            if len(ids) == 0:
                dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
                return np.zeros((0, r, fmap.dim), dtype), np.zeros((0, r), bool)
            got = self._concat(self._features(fmap, params, data, ids, cache, name, counter,
                                              progress=False, desc=desc))
            rows, mask = _pad_rows(got.rows, got.row_mask, r, np.pad)
            where = {int(i): k for k, i in enumerate(got.ids)}
            order = np.array([where[int(i)] for i in ids])
            return np.asarray(rows)[order], np.asarray(mask)[order]

        rows, mask = self._across(col, np.asarray(train_ids, np.int64), compute)
        return FeatureChunk(rows, mask, np.asarray(train_ids, np.int32))

    def pick(self, params, data: StructureSet, train_ids, candidate_ids, budget: int, key, *,
             train_energies: np.ndarray | None = None, cache: dict | None = None,
             progress: bool = False, target_ids=None, collectives: Collectives | None = None,
             global_ids: np.ndarray | None = None) -> Picks:
        """Pick ``budget`` of ``candidate_ids`` given the training structures ``train_ids``.

        Args:
          params: the featurising parameters.
          data: all structures (training and candidates) with their size plan.
          train_ids: (n_T,) ids of the training structures (define the posterior; n_T ≥ 1).
          candidate_ids: (n_C,) ids that may be picked (disjoint from ``train_ids``).
          budget: 1 ≤ budget ≤ n_C.
          key: PRNG key of the selector.
          train_energies: (n_T,) energy labels (eV) aligned with ``train_ids``; needed by the
            evidence rule (``"auto"`` falls back to the fixed σ² without them).
          cache: a dict kept across calls *with the same params and data* (e.g. pretrained
            features in an AL loop): every structure is then featurised at most once.
          progress: progress bars.
          target_ids: optional ids of a target set (``varred`` only; e.g. unlabelled structures
            like those the model will be used on): the selector reduces the posterior variance
            summed over them instead of over the candidates. They are featurised, never picked.
          collectives: several processes (:func:`ntkal.cluster.initialize`), each with its own
            part of the pool: every process calls ``pick`` with the same training and target
            structures and its own ``candidate_ids``; ``budget`` is over all of them. The
            training and target structures are featurised in shares and gathered (so the
            posterior is the same everywhere), the guard's quantile and median are taken over
            every process's candidates, the cascade and the shortlist keep the global top, and
            process 0 runs the selector; every process returns the same :class:`Picks`.
            ``None``: this process alone.
          global_ids: ``(len(data),)`` int64: the id each structure is reported (and ties are
            broken) by, e.g. its frame index in the whole pool file; ``None``: its index in
            ``data``.

        Returns:
          :class:`Picks` (``ids`` through ``global_ids``).
        """
        cfg = self.config
        col = LocalCollectives() if collectives is None else collectives
        train_ids = np.asarray(train_ids, np.int64)
        candidates = np.asarray(candidate_ids, np.int64)
        if global_ids is not None:
            global_ids = np.asarray(global_ids, np.int64)
            if global_ids.shape != (len(data),):
                raise ValueError(f"global_ids must have shape ({len(data)},), got {global_ids.shape}")
        n_total = col.total(len(candidates))
        if train_ids.size == 0:
            raise ValueError("no training structures: the posterior needs at least one")
        if not 1 <= int(budget) <= n_total:
            raise ValueError(f"budget {budget} must be between 1 and the {n_total} candidates")
        if target_ids is not None:
            target_ids = np.asarray(target_ids, np.int64)
            if cfg.selector != "varred":
                raise ValueError(f"a target set needs selector 'varred', got {cfg.selector!r}")
            if target_ids.size == 0:
                raise ValueError("the target set is empty")
        if cfg.noise_rule == "evidence" and train_energies is None:
            raise ValueError("noise_rule='evidence' needs the training structures' energy labels")
        if train_energies is not None:
            train_energies = np.asarray(train_energies, np.float64)
            if train_energies.shape != train_ids.shape or not np.all(np.isfinite(train_energies)):
                raise ValueError(f"train_energies must be {train_ids.shape} finite values (eV), got "
                                 f"shape {train_energies.shape}")
        counter: dict = {}
        stats = {"n_candidates": n_total, "feature_devices": len(self.devices)}
        if col.count > 1:
            stats["processes"] = col.count
        fmap = self.feature_map

        residuals = None  # energy residuals (eV) of the training set, for the evidence σ²
        if cfg.uses_evidence(train_energies is not None) and train_energies is not None:
            (predicted,) = self._across(col, train_ids,
                                        lambda ids: (self.predicted_energies(params, data, ids),))
            residuals = train_energies - predicted
            if cfg.evidence_offsets:
                residuals = without_element_offsets(residuals, [data.structures[i] for i in train_ids],
                                                    self.model.config.elements)

        t = time.perf_counter()
        kept = candidates
        if self.cascade_map is not None:
            kept = self._cascade(params, data, train_ids, candidates, int(budget), residuals, cache,
                                 counter, progress, col, global_ids, n_total)
        stats["cascade_s"] = time.perf_counter() - t
        n_kept = col.total(len(kept))
        stats["n_kept"] = int(n_kept)

        t = time.perf_counter()
        train_raw = self._train_features(col, fmap, params, data, train_ids, cache, "main", counter,
                                         desc="train features")
        scale, w_force = fit_scale(cfg, train_raw)
        train_scaled = apply_feature_scale(train_raw, scale)
        noise_var = float(cfg.noise_var)
        if residuals is not None:
            noise_var = evidence_from_residuals(train_raw, train_scaled, residuals)
        posterior = fit_posterior([train_scaled], fmap.dim, noise_var=noise_var)
        stats["train_features_s"] = time.perf_counter() - t

        t = time.perf_counter()
        allowed = noise_factor = None
        n_allowed = n_kept
        if cfg.max_force_quantile < 1.0 or cfg.force_noise_scale > 0.0:
            fmax = np.zeros(len(data))
            fmax_key = ("fmax", len(data))
            if cache is not None and fmax_key in cache:
                fmax = cache[fmax_key]
            else:
                fmax[candidates] = self.predicted_fmax(params, data, candidates)
                if cache is not None:
                    cache[fmax_key] = fmax
        if cfg.max_force_quantile < 1.0 or cfg.force_noise_scale > 0.0:
            every_fmax = col.concat(fmax[candidates])  # every process's candidates
        if cfg.force_noise_scale > 0.0:
            noise_factor = force_noise_factor(fmax, candidates, cfg.force_noise_scale, median_of=every_fmax)
        if cfg.max_force_quantile < 1.0:
            limit = np.quantile(every_fmax, cfg.max_force_quantile)
            allowed = np.zeros(len(data), bool)
            allowed[candidates] = fmax[candidates] <= limit
            n_allowed = col.total(allowed[kept].sum())
            if n_allowed < budget:
                raise ValueError(f"max_force_quantile = {cfg.max_force_quantile} leaves {n_allowed} "
                                 f"candidates for a batch of {budget}")
        if n_kept < budget:
            raise ValueError(f"the cascade kept {n_kept} candidates for a batch of {budget}")
        target_moment = None
        if target_ids is not None:  # with several processes: each its share, summed
            share = target_ids if col.count == 1 else target_ids[col.index::col.count]
            target_moment = col.sum(target_second_moment(
                (apply_feature_scale(c, scale) for c in self._features(
                    fmap, params, data, share, cache, "main", counter, progress=progress,
                    desc="target features")), fmap.dim, cfg.target_weighting))
        stats["n_target"] = 0 if target_ids is None else int(len(target_ids))
        pool = self._features(fmap, params, data, kept, cache, "main", counter, progress=progress,
                              desc="score pool")
        stage_s: dict = {}
        ids, scores, pv = shortlist_and_select(cfg, posterior, scale, train_scaled, pool, int(budget),
                                               key, n_candidates=n_allowed, allowed=allowed,
                                               noise_factor=noise_factor, target_moment=target_moment,
                                               collectives=col, global_ids=global_ids,
                                               num_rows=None if col.count == 1 else self._rows(col, fmap, data),
                                               timings=stage_s, compiled=self.compiled)
        stats.update(stage_s)
        stats["score_select_s"] = time.perf_counter() - t
        stats["n_features"] = int(counter.get("main", 0))
        stats["n_cheap_features"] = int(counter.get("cheap", 0))
        return Picks(ids, scores, pv, noise_var, w_force, scale, stats)

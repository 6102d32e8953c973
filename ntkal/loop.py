"""The active-learning loop: featurise → score/shortlist → select → label → fine-tune → evaluate.

A round is a function ``state -> state`` of a :class:`LoopState` pytree (parameters,
labelled pool ids, PRNG key, metric rows), pure apart from the oracle call. Round 0
labels ``initial`` random pool structures; rounds 1..``rounds`` each acquire
``batch`` more with the configured method. :func:`run_loop` saves the state
atomically after every round (``state.msgpack`` plus the labelled structures in
``labelled.extxyz``) and resumes from the last completed round, giving the same picks
and metrics as an uninterrupted run.

Methods:

* ``random`` — uniform picks among unlabelled structures.
* ``committee`` — query by committee: ``committee_size`` models fine-tuned on bootstrap
  resamples of the labelled set; picks the largest force disagreement.
* any :data:`ntkal.kernels.KINDS` (``energy``, ``force_exact``, ``force_probe``, ``joint``,
  ``embedding``, ``last_layer``, ``atom_embedding``) — features of the labelled set give
  the posterior A = ΦᵀΦ + σ²I; the pool is streamed through the posterior-variance scorer
  keeping the top ``shortlist``; ``selector`` picks the batch from the shortlist.

Feature scale (``feature_norm``, see :mod:`ntkal.posterior.normalize`): ``"mean_trace"``
divides every row by sqrt(mean per-structure trace ‖Φ(x)‖²_F over the labelled set);
``"median_trace"`` uses the median; ``"per_structure"`` normalises each structure's energy and
force blocks to unit norm (a cosine kernel per block), so the score measures novelty of the
feature direction, not the feature norm. ``noise_var`` is relative to that unit.

Selector ``varred`` (expected reduction of the pool's total posterior variance) takes the
whole unlabelled pool as its target set, or, with ``variance_target = "target_set"``, the
context's target structures (unlabelled frames like the application's).
``max_force_quantile < 1`` excludes candidates whose predicted max |F| (by the featurising
model) lies above that quantile of the pool's (a guard against picking hard outliers such as
early relaxation frames).

With ``featurize_with = "pretrained"`` the features of every pool structure are computed once
per run and reused in every round (training features are rows of the same array).

Several processes (``LoopContext.collectives``, ``ntkal run --distributed``; docs/cluster.md)
run the same loop on the same inputs. The part that grows with the pool is split: pool id ``i``
belongs to process ``i % count``, which scores it (features, posterior variance, the committee's
forces); the shortlists are gathered and process 0 selects (:meth:`ntkal.acquire.Acquirer.pick`).
Process 0 alone reads and writes the run's folder, calls the oracle and fine-tunes (the
committee's members too); the starting state, each round's labels and each fine-tune's
parameters travel from it to the others, so every process holds the very same state, and the
picks equal one process's.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import ase
import ase.io
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from ntkal.acquire import Acquirer, AcquisitionConfig, StructureSet, structure_set
from ntkal.added_fields import added_field
from ntkal.cluster.collectives import Collectives, LocalCollectives
from ntkal.cache import build_once
from ntkal.acquire.pipeline import jitted_model
from ntkal.posterior import qbc_force_disagreement
from ntkal.data import Structure, batch_structures, bucket, labels_of, structures_from_atoms
from ntkal.data.overlap import InputAudit, audit_inputs
from ntkal.kernels import KINDS, KernelConfig
from ntkal.kernels.split import GraphSizes
from ntkal.models import MLIP, atomic_write_bytes
from ntkal.train import FINETUNE_DEFAULTS, TrainConfig, evaluate, fit, make_batches, make_error_sums_fn

__all__ = ["LoopConfig", "LoopState", "LoopContext", "make_context", "init_state", "run_round",
           "select_round", "RoundPicks",
           "run_loop", "save_state", "load_state", "replay_sample", "round0_fingerprint", "METHODS"]

METHODS = ("random", "committee") + KINDS


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Hyper-parameters of one active-learning run.

    Attributes:
      method: ``"random"``, ``"committee"`` or a kernel kind (:data:`ntkal.kernels.KINDS`).
      selector: batch selector on the shortlist (:data:`ntkal.posterior.SELECTORS`).
      kernel: feature-map settings (its ``kind`` is overridden by ``method``); for
        ``joint`` with ``w_force <= 0`` the trace-equalising weight is computed each round.
      shortlist: m, structures kept by the streaming posterior-variance top-m.
      noise_var: σ² relative to the feature unit set by ``feature_norm`` (``noise_rule="fixed"``).
      noise_rule: ``"fixed"`` (use ``noise_var``), ``"evidence"``: each round, σ² maximises
        the marginal likelihood of the labelled set's energy residuals (label − prediction of
        the featurising model) under the energy rows, in the same scaling
        (:func:`ntkal.posterior.evidence_noise_var`; ``energy`` and ``joint`` kernels only),
        or ``"auto"``: ``"evidence"`` for ``energy``/``joint``, ``"fixed"`` for the others.
        Defaults (``varred``, ``median_trace``, ``auto``, pretrained features, d = 512, 4 probes)
        were chosen on the small OC20-like dataset (``experiments/configs/pilot_small.toml``).
      feature_norm: one of :data:`ntkal.posterior.NORMALIZATIONS`.
      max_force_quantile: outlier guard; candidates with predicted max |F| above this quantile
        of the unlabelled pool's are never picked (1.0 = off).
      cascade: ``None`` or a cheap kernel kind (``energy``, ``embedding``, ``last_layer``,
        ``atom_embedding``) that screens the pool first; only the top ``cascade_keep`` fraction is
        featurised by ``method``.
      cascade_keep: q, fraction kept by the cascade.
      size_classes: at most this many padding classes of the pool (1 = pad to the largest).
      replay: pretraining structures (drawn once per run from ``seed``) added to every fine-tune.
      reduction: per-structure reduction of row variances (``total``, ``mean``, ``max``).
      initial: pool structures labelled at random in round 0 (0 is allowed when the context
        has an initial labelled set, :func:`make_context` ``initial_atoms``).
      batch: structures acquired per round.
      rounds: acquisition rounds after round 0.
      featurize_with: ``"current"`` (fine-tuned) or ``"pretrained"`` parameters.
      finetune_from: ``"pretrained"`` (retrain each round) or ``"current"`` (warm start).
      committee_size: models in the committee baseline.
      chunk_size: structures per featurisation chunk.
      train: fine-tuning hyper-parameters (``seed`` is combined with the run seed and round);
        default :data:`ntkal.train.FINETUNE_DEFAULTS`, the fine-tune of every pay-off study.
      seed: run seed (initial set, selectors, fine-tuning order).
      target_weighting: ``varred``'s target weighting (:class:`~ntkal.acquire.AcquisitionConfig`).
      force_noise_scale: soft outlier weight, c (0 = off): a candidate with predicted max |F| f
        counts as observed with noise ``σ²·(1 + (f / (c·f_med))²)``
        (:class:`~ntkal.acquire.AcquisitionConfig`).
      variance_target: whose summed posterior variance ``varred`` reduces: ``"pool"`` (the
        unlabelled pool) or ``"target_set"``: the context's target set (:func:`make_context`
        ``target_atoms``, from ``[data] target_set``), structures like those the model will be
        used on; they are featurised, never picked.
    """

    method: str = "joint"
    selector: str = "varred"
    kernel: KernelConfig = KernelConfig(kind="joint", sketch_dim=512, num_probes=4, w_force=0.0)
    shortlist: int = 2000
    noise_var: float = 1e-2
    noise_rule: str = "auto"
    feature_norm: str = "median_trace"
    max_force_quantile: float = 1.0
    cascade: str | None = None
    cascade_keep: float = 0.1
    size_classes: int = 6
    replay: int = 0
    reduction: str = "total"
    initial: int = 20
    batch: int = 10
    rounds: int = 3
    featurize_with: str = "pretrained"
    finetune_from: str = "pretrained"
    committee_size: int = 5
    chunk_size: int = 16
    train: TrainConfig = FINETUNE_DEFAULTS
    seed: int = 0
    target_weighting: str = added_field("none", added_in="0.1 (issue 9)")
    force_noise_scale: float = added_field(0.0, added_in="0.1 (issue 9)")
    variance_target: str = added_field("pool", added_in="0.1 (issue 9)")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.featurize_with not in ("current", "pretrained"):
            raise ValueError(f"featurize_with must be 'current' or 'pretrained', got {self.featurize_with!r}")
        if self.finetune_from not in ("current", "pretrained"):
            raise ValueError(f"finetune_from must be 'current' or 'pretrained', got {self.finetune_from!r}")
        if self.initial < 0 or self.batch < 1 or self.rounds < 0:
            raise ValueError("initial must be >= 0 (0 needs an initial labelled set), batch >= 1, rounds >= 0")
        if self.replay < 0:
            raise ValueError(f"replay must be >= 0, got {self.replay}")
        if self.method == "committee" and self.committee_size < 2:
            raise ValueError("committee_size must be >= 2")
        if self.variance_target not in ("pool", "target_set"):
            raise ValueError(f"variance_target must be 'pool' or 'target_set', got {self.variance_target!r}")
        if self.variance_target == "target_set" and self.selector != "varred":
            raise ValueError(f"variance_target = 'target_set' needs selector 'varred', got {self.selector!r}")
        # the acquisition settings follow AcquisitionConfig's rules (one set, in one place);
        # random and committee runs are checked as if they were joint-kernel runs
        self._acquisition(self.method if self.method in KINDS else "joint")

    @property
    def uses_evidence(self) -> bool:
        """Whether σ² is chosen by evidence (``noise_rule`` resolved for this method)."""
        return self.noise_rule == "evidence" or (self.noise_rule == "auto" and self.method in ("energy", "joint"))

    @property
    def kernel_config(self) -> KernelConfig:
        return dataclasses.replace(self.kernel, kind=self.method)

    @property
    def acquisition(self) -> AcquisitionConfig:
        """The :class:`~ntkal.acquire.AcquisitionConfig` of the kernel rounds (``method`` a
        kernel kind): ``kernel.w_force <= 0`` means ``joint_weights="auto"``."""
        return self._acquisition(self.method)

    def _acquisition(self, kind: str) -> AcquisitionConfig:
        auto = self.kernel.w_force <= 0
        param_filter = self.kernel.param_filter
        if self.train.trainable != "all":  # the NTK of the parameters the fine-tune updates
            if param_filter not in ("all", self.train.trainable):
                raise ValueError(f"kernel param_filter {param_filter!r} differs from train trainable "
                                 f"{self.train.trainable!r}: the kernel must describe the parameters that are trained")
            param_filter = self.train.trainable
        return AcquisitionConfig(
            kernel=dataclasses.replace(self.kernel, kind=kind, w_energy=1.0, w_force=1.0, param_filter=param_filter),
            joint_weights="auto" if auto else (self.kernel.w_energy, self.kernel.w_force),
            selector=self.selector, shortlist=self.shortlist, noise_var=self.noise_var,
            noise_rule=self.noise_rule, feature_norm=self.feature_norm, reduction=self.reduction,
            max_force_quantile=self.max_force_quantile, cascade=self.cascade,
            cascade_keep=self.cascade_keep, chunk_size=self.chunk_size, size_classes=self.size_classes,
            seed=self.seed, target_weighting=self.target_weighting,
            force_noise_scale=self.force_noise_scale, evidence_offsets=self.train.refit_e0)


class LoopState(NamedTuple):
    """Everything a run needs to continue (a pytree of arrays plus JSON-able records).

    Attributes:
      round: next round to run (0 = the initial random set).
      labelled: (n_labelled,) int64 pool ids in the order they were picked.
      params: current fine-tuned model parameters.
      key: (2,) uint32 raw PRNG key of the run.
      rows: metric records, one per (round, test split); ``n_labels`` is the size of the
        training set (the initial labelled set plus the labelled picks).
      picks: one record per picked structure: round, pool id, the selector's score at pick
        time, its posterior variance ``pv`` (kernel methods; NaN otherwise), the force MAE
        (eV/Å) of the model that scored it, ``force_mae_before``, and ``failed`` (the oracle
        could not label it; it is never offered again).
      failed: (n_failed,) int64 pool ids the oracle failed on.
    """

    round: int
    labelled: np.ndarray
    params: Any
    key: np.ndarray
    rows: list
    picks: list
    failed: np.ndarray = np.zeros((0,), np.int64)


class LoopContext(NamedTuple):
    """Static inputs of a run (not saved; rebuilt on resume).

    Attributes:
      model: the MLIP.
      pretrained: pretrained parameters (fine-tuning start, featurisation option).
      pool: candidate structures (``Structure``), index = pool id.
      pool_atoms: the same as ``ase.Atoms`` (what the oracle labels).
      tests: test split name → list of labelled ``Structure``.
      oracle: ``oracle(list of Atoms) -> list of labelled Atoms`` in input order; an entry may be
        ``None`` for a structure the oracle could not label (it is recorded and skipped).
      sizes: per-graph budgets shared by every feature chunk (so rows have one width r).
      config: the :class:`LoopConfig`.
      progress: show progress bars.
      replay: labelled pretraining structures replayed in every fine-tune (drawn once per run).
      cache: per-run store of what does not change between rounds: compiled functions (the
        fine-tuning step, feature maps, energy/forces, shortlist and selector programs: this
        dict owns them, :mod:`ntkal.cache.owned`), the pool's size plan, pretrained-parameter
        pool features and predicted max forces; filled lazily, never saved.
      initial: labelled structures (not from the pool) in every fine-tune and posterior.
      initial_atoms: the same as ``ase.Atoms``.
      target: unlabelled target structures (``variance_target = "target_set"``).
      excluded: (k,) int64 pool ids never offered as candidates: frames that repeat the initial
        labelled set (:func:`ntkal.data.overlap.audit_inputs`).
      audit: what :func:`ntkal.data.overlap.audit_inputs` found in the inputs (``None`` when
        not audited).
      collectives: the processes running this loop together (:func:`ntkal.cluster.initialize`;
        every one with the same inputs); ``None``: this process alone.
    """

    model: MLIP
    pretrained: Any
    pool: Sequence[Structure]
    pool_atoms: Sequence[ase.Atoms]
    tests: dict
    oracle: Callable
    sizes: GraphSizes
    config: LoopConfig
    progress: bool
    replay: Sequence[Structure] = ()
    cache: dict | None = None
    initial: Sequence[Structure] = ()
    initial_atoms: Sequence[ase.Atoms] = ()
    target: Sequence[Structure] = ()
    excluded: np.ndarray = np.zeros((0,), np.int64)
    audit: InputAudit | None = None
    collectives: Collectives | None = None


def make_context(model: MLIP, pretrained, pool_atoms: Sequence[ase.Atoms], tests: dict,
                 oracle: Callable, config: LoopConfig, *, progress: bool = True,
                 replay_atoms: Sequence[ase.Atoms] = (), cache: dict | None = None,
                 initial_atoms: Sequence[ase.Atoms] = (),
                 target_atoms: Sequence[ase.Atoms] = (), test_overlap: str = "error",
                 collectives: Collectives | None = None) -> LoopContext:
    """Validate and graph the pool and test sets once.

    The inputs are audited first (:func:`ntkal.data.overlap.audit_inputs`): a test frame that is
    also a pool, initial-set or target-set frame is a :class:`~ntkal.data.overlap.LeakageError`
    (``test_overlap="warn"`` downgrades it to a warning); pool frames that repeat the initial
    labelled set are never offered as candidates (``excluded``).

    Args:
      model: the MLIP (its cutoff and elements are used).
      pretrained: pretrained parameters.
      pool_atoms: candidate structures; labels on them are ignored (the oracle provides them).
      tests: split name → iterable of labelled ``ase.Atoms``.
      oracle: labelling function.
      config: loop hyper-parameters.
      replay_atoms: labelled source (pretraining) structures; ``config.replay`` of them are
        drawn once, from ``config.seed``, and added to every fine-tune.
      cache: a dict for values that depend only on the model, the pretrained parameters and the
        pool (compiled programs, pretrained pool features, predicted max forces); pass one dict
        to the contexts of several runs with the same model, parameters and pool (the seeds and
        methods of a sweep) to compute them once, and drop it to release them. Default: a new
        dict.
      initial_atoms: labelled structures (not from the pool) that every fine-tune includes and
        that define the posterior with the picks, e.g. the user's existing training set.
      target_atoms: unlabelled structures like those the model will be used on (labels
        ignored); ``config.variance_target = "target_set"`` needs them, other runs ignore them.
      test_overlap: ``"error"`` or ``"warn"``: what a test frame found among the other inputs is.
      collectives: several processes running this loop together, each given the same inputs
        (see the module docstring); ``None``: this process alone.
    """
    cutoff, elements = model.config.cutoff, model.config.elements
    pool_atoms = list(pool_atoms)
    tests = {name: list(atoms) for name, atoms in tests.items()}
    initial_atoms = list(initial_atoms)
    target_atoms = list(target_atoms) if config.variance_target == "target_set" else []
    audit = audit_inputs(pool_atoms, tests, initial_atoms, target_atoms, test_overlap=test_overlap)
    pool = [s for _, s in structures_from_atoms(pool_atoms, cutoff, elements=elements)]
    tests = {name: [s for _, s in structures_from_atoms(atoms, cutoff, elements=elements, require_labels=True)]
             for name, atoms in tests.items()}
    initial = ([s for _, s in structures_from_atoms(initial_atoms, cutoff, elements=elements, require_labels=True)]
               if initial_atoms else [])
    if config.initial == 0 and not initial:
        raise ValueError("initial = 0 needs an initial labelled set (initial_atoms / [data] initial_files)")
    available = len(pool) - len(audit.pool_in_initial)
    if config.initial + config.batch * config.rounds > available:
        repeats = (f" ({len(audit.pool_in_initial)} more repeat the initial labelled set)"
                   if len(audit.pool_in_initial) else "")
        raise ValueError(f"the run needs {config.initial + config.batch * config.rounds} labels but "
                         f"the pool holds only {available} candidate structures{repeats}")
    target = []
    if config.variance_target == "target_set":
        if not target_atoms:
            raise ValueError("variance_target = 'target_set' needs target structures (target_atoms / "
                             "[data] target_set)")
        target = [s for _, s in structures_from_atoms(target_atoms, cutoff, elements=elements)]
    sizes = GraphSizes(bucket(max(s.n_atoms for s in pool)), bucket(max(max(s.n_edges for s in pool), 1)))
    replay = []
    if config.replay:
        replay_atoms = list(replay_atoms)
        if len(replay_atoms) < config.replay:
            raise ValueError(f"replay = {config.replay} but only {len(replay_atoms)} replay structures given")
        pick = replay_sample(len(replay_atoms), config.replay, config.seed)
        replay = [s for _, s in structures_from_atoms([replay_atoms[i] for i in pick], cutoff,
                                                      elements=elements, require_labels=True)]
    return LoopContext(model, pretrained, pool, pool_atoms, tests, oracle, sizes, config, progress,
                       replay, {} if cache is None else cache, initial, initial_atoms, target,
                       audit.pool_in_initial, audit, collectives)


def replay_sample(n_available: int, count: int, seed: int) -> np.ndarray:
    """Indices of the replay sample: ``count`` of ``n_available``, drawn once per run from ``seed``."""
    rng = np.random.default_rng([seed, 0x5EED])
    return np.sort(rng.choice(n_available, count, replace=False))


def init_state(ctx: LoopContext) -> LoopState:
    """The state before round 0."""
    key = jax.random.key_data(jax.random.PRNGKey(ctx.config.seed))
    return LoopState(0, np.zeros((0,), np.int64), ctx.pretrained, np.asarray(key), [], [])


# --- several processes ----------------------------------------------------------------------

def _collectives(ctx: LoopContext) -> Collectives:
    return LocalCollectives() if ctx.collectives is None else ctx.collectives


def _own_part(col: Collectives, ids: np.ndarray) -> np.ndarray:
    """The ids this process scores: pool id ``i`` belongs to process ``i % count``, the same
    in every round (so each process's cached features and forces stay its own)."""
    return ids if col.count == 1 else ids[ids % col.count == col.index]


def _fitted_on_writer(col: Collectives, fit_params: Callable[[], Any], like):
    """``fit_params()`` run on process 0 alone, its parameters on every process (in the tree
    structure of ``like``, e.g. the fine-tune's starting point; NumPy leaves): the job holds
    one model, and the other processes wait instead of fitting a copy."""
    if col.count == 1:
        return fit_params()
    data = serialization.to_bytes(fit_params()) if col.is_writer else None
    return serialization.from_bytes(like, col.broadcast_bytes(data))


def _labels_from_writer(col: Collectives, atoms: Sequence | None) -> list:
    """Process 0's labelled structures (``None`` entries kept) on every process."""
    if col.count == 1:
        return list(atoms)
    data = None
    if col.is_writer:
        atoms = list(atoms)
        data = serialization.msgpack_serialize({"n": len(atoms), "atoms": {
            str(k): _atoms_record(a) for k, a in enumerate(atoms) if a is not None}})
    got = serialization.msgpack_restore(col.broadcast_bytes(data))
    records = got["atoms"] or {}
    return [_atoms_from_record(records[str(k)]) if str(k) in records else None for k in range(int(got["n"]))]


def _state_from_writer(col: Collectives, loaded: tuple[LoopState, list] | None) -> tuple[LoopState, list] | None:
    """Process 0's loaded ``(state, labelled atoms)`` (or ``None``) on every process."""
    if col.count == 1:
        return loaded
    data = _state_bytes(*loaded) if (col.is_writer and loaded is not None) else None
    got = col.broadcast_bytes(data)
    return _state_from_bytes(got, "process 0's state") if got else None


# --- features -------------------------------------------------------------------------------

def _chunks(structures: Sequence[Structure], ids: Sequence[int], chunk_size: int, sizes: GraphSizes):
    """Fixed-budget padded chunks of ``structures[ids]``: yields (ids (chunk_size+1,), graph)."""
    n_node = bucket(chunk_size * sizes.max_atoms + 1)
    n_edge = bucket(chunk_size * sizes.max_edges)
    ids = list(ids)
    for k in range(0, len(ids), chunk_size):
        part = ids[k:k + chunk_size]
        graph = batch_structures([structures[i] for i in part], n_graph=chunk_size + 1,
                                 n_node=n_node, n_edge=n_edge)
        out = np.full((chunk_size + 1,), -1, np.int64)
        out[:len(part)] = part
        yield out, graph


def _jitted(ctx: LoopContext):
    """Jitted energy+forces and error sums of the model, compiled once per context (and once
    per sweep when the contexts share ``cache``); energy+forces are the acquirers' own."""
    energy_and_forces, _ = jitted_model(ctx.model, ctx.cache)
    sums = build_once(ctx.cache, ("error sums", id(ctx.model)),
                      lambda: jax.jit(make_error_sums_fn(ctx.model.energy)), holds=ctx.model)
    return energy_and_forces, sums


def _acquirer(ctx: LoopContext) -> tuple[Acquirer, StructureSet]:
    """The run's :class:`~ntkal.acquire.Acquirer` and the pool's size plan (built once; feature
    maps shared through ``ctx.cache`` by every acquirer of the same model)."""
    cfg = ctx.config.acquisition
    acquirer = build_once(ctx.cache, ("acquirer", id(ctx.model), cfg),
                          lambda: Acquirer(ctx.model, ctx.pretrained, cfg, store=ctx.cache), holds=ctx.model)
    # ids: pool ids, then the initial set's, then the target set's
    structures = list(ctx.pool) + list(ctx.initial) + list(ctx.target)
    n = len(structures)
    plan_key = ("structure_set", cfg.max_classes(n), cfg.max_padding, len(ctx.pool), len(ctx.initial),
                len(ctx.target))
    if plan_key not in ctx.cache:
        ctx.cache[plan_key] = structure_set(structures, cfg.max_classes(n), cfg.max_padding)
    return acquirer, ctx.cache[plan_key]


def _kernel_picks(state: LoopState, ctx: LoopContext, unlabelled: np.ndarray, key, budget: int,
                  energies: np.ndarray | None = None):
    """Kernel-method picks through the acquisition pipeline: ``(ids, selector scores, pv, noise_var)``.

    ``energies`` (eV, aligned with ``state.labelled`` followed by the initial labelled set) feed
    the evidence rule. With ``featurize_with="pretrained"`` every pool structure is featurised once
    per run (or sweep).
    """
    pretrained_features = ctx.config.featurize_with == "pretrained"
    params = ctx.pretrained if pretrained_features else state.params
    acquirer, data = _acquirer(ctx)
    train_ids = np.concatenate([state.labelled, len(ctx.pool) + np.arange(len(ctx.initial))]).astype(np.int64)
    target_ids = None
    if ctx.config.variance_target == "target_set":
        target_ids = len(ctx.pool) + len(ctx.initial) + np.arange(len(ctx.target), dtype=np.int64)
    col = _collectives(ctx)
    picks = acquirer.pick(params, data, train_ids, _own_part(col, unlabelled), budget, key, target_ids=target_ids,
                          train_energies=None if energies is None else np.asarray(energies, np.float64),
                          cache=ctx.cache if pretrained_features else None,
                          progress=ctx.progress and not pretrained_features, collectives=col)
    return picks.ids, picks.scores, picks.pv, float(picks.noise_var)


def _committee_picks(ctx: LoopContext, labelled_structures, unlabelled, key, budget):
    """Query by committee: process 0 fits the members and sends them; each process scores its
    own part of ``unlabelled``; the top ``budget`` of all."""
    cfg = ctx.config
    col = _collectives(ctx)
    ef, _ = _jitted(ctx)
    pool_chunks = list(_chunks(ctx.pool, _own_part(col, unlabelled), cfg.chunk_size, ctx.sizes))
    forces = []
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
    for member in range(cfg.committee_size):
        sample = rng.integers(0, len(labelled_structures), len(labelled_structures))
        train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + 7919 * member + 1)
        members = [labelled_structures[i] for i in sample]
        params = _fitted_on_writer(col, lambda: fit(ctx.model, ctx.pretrained, members, None, train_cfg,
                                                    replay=ctx.replay, progress=False, compiled=ctx.cache).params,
                                   like=ctx.pretrained)
        member_forces = []
        for _, graph in pool_chunks:
            _, f = ef(params, graph)
            member_forces.append(_per_graph_forces(np.asarray(f), graph, ctx.sizes.max_atoms))
        forces.append(np.concatenate(member_forces) if member_forces else np.zeros((0, ctx.sizes.max_atoms, 3)))
    forces = np.stack(forces)  # (members, n_unlabelled_padded, max_atoms, 3)
    ids = (np.concatenate([chunk_ids for chunk_ids, _ in pool_chunks]) if pool_chunks
           else np.zeros((0,), np.int64))
    mask = np.zeros(forces.shape[1:3], bool)
    for k, i in enumerate(ids):
        if i >= 0:
            mask[k, : ctx.pool[i].n_atoms] = ctx.pool[i].free
    scores = (np.asarray(qbc_force_disagreement(jnp.asarray(forces), jnp.asarray(mask))) if len(ids)
              else np.zeros((0,)))
    ids, scores = ids[ids >= 0].astype(np.int64), np.asarray(scores[ids >= 0], np.float64)
    ids, scores = col.concat(ids), col.concat(scores)  # every process's part
    order = np.lexsort((ids, -scores))[:budget]
    return ids[order], scores[order]


def _per_graph_forces(forces, graph, max_atoms):
    n_node = np.asarray(graph.n_node)
    out = np.zeros((len(n_node), max_atoms, 3))
    start = 0
    for g, n in enumerate(n_node[:-1]):
        out[g, :n] = forces[start:start + n]
        start += n
    return out


# --- rounds ---------------------------------------------------------------------------------

def _labelled_structures(ctx: LoopContext, atoms: Sequence[ase.Atoms]) -> list[Structure]:
    if not len(atoms):
        return []
    return [s for _, s in structures_from_atoms(atoms, ctx.model.config.cutoff,
                                                elements=ctx.model.config.elements, require_labels=True)]


class RoundPicks(NamedTuple):
    """What round ``state.round`` acquires (:func:`select_round`).

    Attributes:
      ids: ``(budget,)`` int64 pool ids, in pick order (sorted for random picks).
      scores: ``(budget,)`` the selector's criterion (NaN for random picks).
      pv: ``(budget,)`` posterior variance of each pick (NaN unless a kernel method picked).
      noise_var: σ² used (NaN unless a kernel method picked).
    """

    ids: np.ndarray
    scores: np.ndarray
    pv: np.ndarray
    noise_var: float


def select_round(state: LoopState, ctx: LoopContext, labelled_atoms: Sequence[ase.Atoms]) -> RoundPicks:
    """The acquisition step of :func:`run_round` alone: round ``state.round``'s picks, nothing
    labelled or trained. Round 0 and ``random`` draw from the run's key folded with the round;
    ``committee`` and the kernel methods score the unlabelled pool (the pool minus the labelled,
    failed and excluded ids). Diagnostics replay a kernel arm's pick sequence with it
    (``experiments/diagnose_target.py``): with ``featurize_with = "pretrained"`` the picks depend
    only on the labelled set and its labels, not on the fine-tuned parameters.

    Args:
      state: the run's state before the round (``labelled``, ``failed``, ``key``, ``round``).
      ctx: the run's static inputs.
      labelled_atoms: labelled ``ase.Atoms`` aligned with ``state.labelled`` (their energies
        feed the evidence rule; the committee trains on them).

    Raises:
      RuntimeError: the selector returned a duplicate or an already labelled id.
    """
    cfg = ctx.config
    r = state.round
    key = jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(state.key)), r)
    unlabelled = np.setdiff1d(np.arange(len(ctx.pool)), np.concatenate([state.labelled, state.failed,
                                                                        ctx.excluded]))
    budget = min(cfg.initial if r == 0 else cfg.batch, len(unlabelled))
    pv = np.full((budget,), np.nan)
    noise_var = float("nan")
    if budget == 0:
        ids, scores = np.zeros((0,), np.int64), np.zeros((0,))
    elif r == 0 or cfg.method == "random":
        ids = np.sort(np.asarray(jax.random.choice(key, unlabelled, (budget,), replace=False), np.int64))
        scores = np.full((budget,), np.nan)
    elif cfg.method == "committee":
        ids, scores = _committee_picks(ctx, list(ctx.initial) + _labelled_structures(ctx, labelled_atoms),
                                       unlabelled, key, budget)
    else:
        energies = ([labels_of(a)[0] for a in list(labelled_atoms) + list(ctx.initial_atoms)]
                    if cfg.uses_evidence else None)
        ids, scores, pv, noise_var = _kernel_picks(state, ctx, unlabelled, key, budget, energies)
    if len(set(ids.tolist())) != len(ids) or np.isin(ids, state.labelled).any():
        raise RuntimeError(f"round {r}: selector returned duplicate or already-labelled ids {ids}")
    return RoundPicks(ids, scores, pv, noise_var)


def run_round(state: LoopState, ctx: LoopContext, labelled_atoms: list) -> tuple[LoopState, list]:
    """Run round ``state.round``: acquire, label, fine-tune, evaluate.

    Args:
      state: current state.
      ctx: the run's static inputs.
      labelled_atoms: labelled ``ase.Atoms`` so far, aligned with ``state.labelled``.

    Returns:
      ``(new_state, new_labelled_atoms)``.
    """
    cfg = ctx.config
    r = state.round
    times = {}
    t = time.perf_counter()
    ids, scores, pv, noise_var = select_round(state, ctx, labelled_atoms)
    times["select_s"] = time.perf_counter() - t

    t = time.perf_counter()
    col = _collectives(ctx)
    new_atoms = None
    if col.is_writer:  # process 0 labels; the others receive its labels
        new_atoms = list(ctx.oracle([ctx.pool_atoms[i] for i in ids])) if len(ids) else []
    new_atoms = _labels_from_writer(col, new_atoms)
    if len(new_atoms) != len(ids):
        raise RuntimeError(f"round {r}: the oracle returned {len(new_atoms)} structures for {len(ids)}")
    times["label_s"] = time.perf_counter() - t
    ok = np.array([a is not None for a in new_atoms], bool)
    labelled_atoms = list(labelled_atoms) + [a for a in new_atoms if a is not None]
    labelled = np.concatenate([state.labelled, ids[ok]])
    failed = np.concatenate([state.failed, ids[~ok]]).astype(np.int64)

    t = time.perf_counter()
    start = ctx.pretrained if cfg.finetune_from == "pretrained" else state.params
    picked = _labelled_structures(ctx, labelled_atoms)
    train_structures = list(ctx.initial) + picked
    # Realised error of the model that scored the picks (for PV-vs-error calibration).
    n_new = int(ok.sum())
    errors = iter(_pick_errors(ctx, state.params, picked[len(picked) - n_new:]))
    errors_before = [next(errors) if good else float("nan") for good in ok]
    train_cfg = dataclasses.replace(cfg.train, seed=cfg.train.seed + 1000 * cfg.seed + r)
    params = _fitted_on_writer(col, lambda: fit(ctx.model, start, train_structures, None, train_cfg,
                                                replay=ctx.replay, progress=ctx.progress,
                                                compiled=ctx.cache).params, like=start)
    times["finetune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _, sums = _jitted(ctx)
    metrics = {name: evaluate(sums, params, make_batches(structures, 16))
               for name, structures in ctx.tests.items()}
    times["evaluate_s"] = time.perf_counter() - t
    rows = list(state.rows) + [{"round": r, "n_labels": int(len(ctx.initial) + len(labelled)), "split": name, **m, **times}
                               for name, m in metrics.items()]
    picks = list(state.picks) + [{"round": r, "id": int(i), "score": float(s), "pv": float(v),
                                  "force_mae_before": float(e), "noise_var": noise_var, "failed": not good}
                                 for i, s, v, e, good in zip(ids, scores, pv, errors_before, ok)]
    return LoopState(r + 1, labelled, params, state.key, rows, picks, failed), labelled_atoms


def _pick_errors(ctx: LoopContext, params, structures: Sequence[Structure]) -> list[float]:
    """Force MAE (eV/Å) of ``params`` on each labelled structure (NaN without force labels)."""
    ef, _ = _jitted(ctx)
    out = []
    for s in structures:
        graph = batch_structures([s], n_graph=2, n_node=bucket(ctx.sizes.max_atoms + 1),
                                 n_edge=bucket(ctx.sizes.max_edges))
        _, f = ef(params, graph)
        err = np.abs(np.asarray(f)[: s.n_atoms] - s.forces)[s.free]
        out.append(float(err.mean()) if s.has_forces and err.size else float("nan"))
    return out


# --- persistence ----------------------------------------------------------------------------

def _atoms_record(atoms: ase.Atoms) -> dict:
    """Lossless arrays of a labelled structure (extxyz text rounds positions and labels)."""
    from ntkal.data import labels_of
    energy, forces = labels_of(atoms)
    fixed = np.zeros(len(atoms), bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
    return {"numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions),
            "cell": np.asarray(atoms.cell.array), "pbc": np.asarray(atoms.pbc), "tags": atoms.get_tags(),
            "fixed": fixed, "energy": np.asarray(np.nan if energy is None else energy, np.float64),
            "forces": np.asarray(forces if forces is not None else np.zeros((0, 3)), np.float64),
            "info": json.dumps({k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))})}


def _atoms_from_record(record: dict) -> ase.Atoms:
    atoms = ase.Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"],
                      pbc=record["pbc"], tags=record["tags"])
    if np.any(record["fixed"]):
        atoms.set_constraint(FixAtoms(mask=np.asarray(record["fixed"], bool)))
    energy = float(record["energy"])
    forces = np.asarray(record["forces"]).reshape(-1, 3)
    atoms.calc = SinglePointCalculator(atoms, energy=None if np.isnan(energy) else energy,
                                       forces=forces if len(forces) == len(atoms) else None)
    atoms.info.update(json.loads(record["info"]))
    return atoms


def _state_bytes(state: LoopState, labelled_atoms: Sequence[ase.Atoms]) -> bytes:
    """``state`` and its labelled structures as msgpack bytes (lossless)."""
    payload = {
        "round": state.round,
        "labelled": np.asarray(state.labelled, np.int64),
        "params": jax.tree_util.tree_map(np.asarray, state.params),
        "key": np.asarray(state.key),
        "rows": json.dumps(state.rows),
        "picks": json.dumps(state.picks),
        "failed": np.asarray(state.failed, np.int64),
        "atoms": {str(k): _atoms_record(a) for k, a in enumerate(labelled_atoms)},
    }
    return serialization.msgpack_serialize(payload)


def _state_from_bytes(data: bytes, where: str) -> tuple[LoopState, list]:
    """The inverse of :func:`_state_bytes` (``where`` names the source in errors)."""
    payload = serialization.msgpack_restore(data)
    labelled = np.asarray(payload["labelled"], np.int64).reshape(-1)
    records = payload.get("atoms") or {}
    atoms = [_atoms_from_record(records[str(k)]) for k in range(len(records))]
    if len(atoms) != labelled.size:
        raise ValueError(f"{where}: holds {len(atoms)} labelled structures, expected {labelled.size}")
    failed = np.asarray(payload.get("failed", np.zeros((0,), np.int64)), np.int64).reshape(-1)
    state = LoopState(int(payload["round"]), labelled, payload["params"], np.asarray(payload["key"]),
                      json.loads(payload["rows"]), json.loads(payload["picks"]), failed)
    return state, atoms


def save_state(directory: str | Path, state: LoopState, labelled_atoms: Sequence[ase.Atoms]) -> None:
    """Atomically write ``state.msgpack`` (everything, lossless) and ``labelled.extxyz`` (for people)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    ase.io.write(buffer, list(labelled_atoms), format="extxyz")
    atomic_write_bytes(directory / "labelled.extxyz", buffer.getvalue().encode())
    atomic_write_bytes(directory / "state.msgpack", _state_bytes(state, labelled_atoms))


def load_state(directory: str | Path) -> tuple[LoopState, list] | None:
    """The saved state and labelled structures, or ``None`` if nothing was saved."""
    directory = Path(directory)
    if not (directory / "state.msgpack").exists():
        return None
    return _state_from_bytes((directory / "state.msgpack").read_bytes(), f"{directory}/state.msgpack")


def run_loop(ctx: LoopContext, directory: str | Path | None = None, *, resume: bool = True,
             stop_after: int | None = None, log: Callable[[str], None] | None = print,
             shared_round0: str | Path | None = None) -> LoopState:
    """Run rounds 0..``rounds``, saving after each; resume from ``directory`` when possible.

    Args:
      ctx: the run's static inputs.
      directory: where to save state; ``None`` keeps everything in memory.
      resume: continue from a saved state in ``directory``.
      stop_after: stop once this many rounds have completed in total (for tests).
      log: receives a one-line summary per round.
      shared_round0: folder holding the state after round 0 shared by every method of a
        paired study (same seed, data and fine-tuning: see :func:`round0_fingerprint`); it is
        loaded instead of recomputed when present and written when computed.

    With several processes (``ctx.collectives``) process 0 alone reads and writes
    ``directory`` and ``shared_round0`` (the others may pass ``None``) and logs; what it reads
    is sent to the others.
    """
    col = _collectives(ctx)

    def read(folder):  # process 0 reads; every process gets what it read
        return _state_from_writer(col, load_state(folder) if (folder is not None and col.is_writer) else None)

    loaded = read(directory) if resume else None
    state, labelled_atoms = loaded if loaded else (init_state(ctx), [])
    last = ctx.config.rounds
    while state.round <= last and (stop_after is None or state.round < stop_after):
        shared = read(shared_round0) if state.round == 0 else None
        if shared is not None and shared[0].round == 1:
            state, labelled_atoms = shared
        else:
            state, labelled_atoms = run_round(state, ctx, labelled_atoms)
            if state.round == 1 and shared_round0 is not None and col.is_writer:
                save_state(shared_round0, state, labelled_atoms)
        if directory is not None and col.is_writer:
            save_state(directory, state, labelled_atoms)
        if log and col.is_writer:
            rows = [row for row in state.rows if row["round"] == state.round - 1]
            summary = "  ".join(f"{row['split']} F-MAE {row['force_mae']:.4f}" for row in rows)
            log(f"[{ctx.config.method}] round {state.round - 1}: {len(ctx.initial) + len(state.labelled)} labels  "
                f"{summary}")
    return state


#: LoopConfig fields that round 0 (random initial set + first fine-tune) does not depend on.
_NOT_IN_ROUND0 = ("method", "selector", "kernel", "shortlist", "noise_var", "noise_rule", "feature_norm",
                  "max_force_quantile", "cascade", "cascade_keep", "size_classes", "reduction", "batch",
                  "rounds", "featurize_with", "committee_size", "chunk_size", "target_weighting",
                  "force_noise_scale", "variance_target")


def round0_fingerprint(config: LoopConfig, *extra) -> str:
    """A hash of everything round 0 depends on (``config`` minus the method's settings, plus
    ``extra``, e.g. the data and checkpoint): equal fingerprints ⇒ identical round-0 states.
    Settings added later are left out at their no-op default (:mod:`ntkal.added_fields`), so
    runs made before they existed keep their fingerprint."""
    import hashlib

    from ntkal.added_fields import stable_repr
    base = LoopConfig()
    same = dataclasses.replace(config, **{f: getattr(base, f) for f in _NOT_IN_ROUND0})
    return hashlib.sha256(stable_repr((same,) + extra).encode()).hexdigest()[:16]

"""On-the-fly active learning: uncertainty-(biased) Langevin MD that labels what it does not know.

:func:`run_md` drives one run of an :class:`~ntkal.onthefly.config.OnTheFlySpec`:

1. the initial training set (labelled files, or the start frame labelled by the oracle) defines
   the feature normalisation and the posterior (:class:`~ntkal.onthefly.UncertainPotential`);
2. each step is one compiled BAOAB step on E − τσ² (:mod:`ntkal.onthefly.dynamics`); the host
   reads σ² and the positions back, rebuilds the Verlet list after a skin/2 move;
3. a frame whose σ² crosses the threshold (or a pre-drawn random step, the baseline) goes to the
   oracle; its feature rows are added to the posterior by a rank-r Cholesky update, and every
   ``finetune_every`` labels the model is fine-tuned on all labels (from the starting parameters);
4. forces above ``max_force``, σ² above ``max_variance``, atoms too close, non-finite values or
   a frame the oracle fails on (recorded in the label store, skipped) restart the dynamics from the last labelled frame with fresh velocities (from the frame
   before it when the previous restart was less than ``RESTART_WINDOW`` steps ago);
5. the state is saved atomically every ``checkpoint_every`` steps and after every label; the
   trajectory, log and label files are cut back to the saved state on resume, so a killed run
   resumes to the same trajectory and labels as an uninterrupted one.

Outputs in ``out``: ``trajectory.extxyz`` (every ``write_every`` steps and every labelled
frame; info: step, model energy eV, variance, labelled), ``labels.extxyz`` (oracle labels),
``log.csv`` (one row per step), ``labels.db`` (label store: a rerun never recomputes a label),
``state.msgpack`` (resumable state), ``model.msgpack`` (the model fine-tuned on every label, written
when the run completes; ``ntkal select --model`` and ``[model] checkpoint`` take it),
``summary.json`` and ``md.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm.auto import tqdm

from ntkal.data import atoms_to_structure
from ntkal.data.errors import InvalidStructureError
from ntkal.data.structure import _free_mask
from ntkal.jsonio import dumps as json_dumps
from ntkal.models.checkpoint import atomic_write_bytes, remove_stale_temp_files
from ntkal.onthefly.config import OnTheFlySpec, threshold_of
from ntkal.onthefly.dynamics import (MDState, kinetic_temperature, langevin_params, langevin_step,
                                     maxwell_boltzmann)
from ntkal.onthefly.posterior import CholeskyPosterior, add_rows
from ntkal.onthefly.potential import SystemGraph, UncertainPotential

__all__ = ["run_md", "MDResult", "LOG_COLUMNS"]

LOG_COLUMNS = ("step", "time_fs", "energy_eV", "variance", "threshold", "labelled", "restart",
               "max_force", "temperature_K")
_FILES = ("trajectory.extxyz", "labels.extxyz", "log.csv")
#: A restart this many steps after the previous one falls back to the labelled frame before.
RESTART_WINDOW = 20
#: Without ``max_variance``, σ² above this multiple of the threshold restarts the dynamics.
MAX_VARIANCE_FACTOR = 100.0


class MDResult(NamedTuple):
    """What :func:`run_md` hands back.

    Attributes:
      out: the output folder.
      steps: steps taken.
      labels: oracle labels added by the run (not counting the initial set).
      restarts: dynamics restarts.
      failed: frames the oracle failed on (skipped).
      wall_s: wall time of this call, s.
      summary: the ``summary.json`` record.
    """

    out: Path
    steps: int
    labels: int
    restarts: int
    failed: int
    wall_s: float
    summary: dict


def _labelled_structures(frames, cutoff, elements):
    return [atoms_to_structure(a, cutoff, elements=elements, require_labels=True, index=k)
            for k, a in enumerate(frames)]


def _read_frames(spec: str) -> list[ase.Atoms]:
    from ntkal.datasets.files import read_structure_file

    return list(read_structure_file(spec))


class _Run:
    """The mutable driver of one run (host side); the physics lives in pure functions."""

    def __init__(self, spec: OnTheFlySpec, out: Path, log: Callable | None):
        from ntkal.models.pretrained import load_pretrained

        self.spec, self.out, self.log = spec, out, log or (lambda msg: None)
        self.model, params, self.metadata = load_pretrained(spec.checkpoint)
        self.start_params = params
        frames = _read_frames(spec.start)
        if not -len(frames) <= spec.index < len(frames):
            raise ValueError(f"[system] index {spec.index}: {spec.start} has {len(frames)} frames")
        self.start_atoms = frames[spec.index]
        cfg = self.model.config
        self.graphs = SystemGraph(self.start_atoms, cfg.cutoff, spec.md.skin, cfg.elements)
        self.n = self.graphs.n_atoms
        self.potential = UncertainPotential(self.model, params, spec.uncertainty.acquisition(seed=spec.md.seed))
        free = _free_mask(self.start_atoms)
        self.lp = langevin_params(self.start_atoms.get_masses(), free, self.graphs.n_node,
                                  timestep_fs=spec.md.timestep, temperature_K=spec.md.temperature,
                                  friction_per_fs=spec.md.friction)
        self.key = jax.random.key(spec.md.seed)
        self.bias = spec.md.tau != 0.0
        self._step = None
        self.step_compilations = 0
        self.compiled: dict = {}  # the fine-tunes' programs (ntkal.train.fit_programs), this run's own
        self.initial = [a for s in spec.initial for a in _read_frames(s)]
        self.base: list[ase.Atoms] = []      # the initial set, or the labelled start frame
        self.labelled: list[ase.Atoms] = []  # frames labelled by this run, in order
        self.extra: dict = {}                # counters saved with the state (JSON)

    @property
    def training(self) -> list[ase.Atoms]:
        """Every frame the posterior and the fine-tunes use."""
        return self.base + self.labelled

    def set_posterior(self, posterior: CholeskyPosterior, factor=None):
        """The posterior (host, float64), and its float32 device copies the step takes."""
        self.posterior = posterior
        self.chol32 = jnp.asarray(posterior.chol, jnp.float32)
        if factor is not None:
            self.factor = np.asarray(factor)
            self.factor32 = jnp.asarray(self.factor, jnp.float32)

    # --- compiled step ---------------------------------------------------------------------

    def step_fn(self):
        """The jitted MD step (built once per edge capacity)."""
        sizes = self.graphs.sizes
        if self._step is None or self._step[0] != sizes:
            f = self.potential.evaluation_fn(sizes, self.bias)
            lp = self.lp

            def step(params, fparams, chol, noise_var, factor, tau, graph, state, key):
                self.step_compilations += 1  # runs only while tracing
                return langevin_step(lambda r: f(params, fparams, chol, noise_var, factor, tau, graph, r),
                                     state, key, lp)

            self._step = (sizes, jax.jit(step))
        return self._step[1]

    # --- pieces ------------------------------------------------------------------------------

    def fparams(self):
        return self.start_params if self.spec.uncertainty.featurize_with == "pretrained" else self.params

    def frame(self, positions) -> ase.Atoms:
        atoms = self.start_atoms.copy()
        atoms.calc = None
        atoms.info = {k: v for k, v in atoms.info.items() if k in ("source", "frame")}
        atoms.set_positions(np.asarray(positions, np.float64)[: self.n])
        return atoms

    def raw_rows_of(self, atoms: ase.Atoms):
        """Unit-weight rows of a labelled frame: the MD graph when it is this system, else its own."""
        if len(atoms) == self.n and np.array_equal(atoms.numbers, self.start_atoms.numbers):
            graph, sizes = self.graphs.build(atoms.positions), self.graphs.sizes
        else:
            from ntkal.calculator import padded_graph
            _, graph, sizes = padded_graph(self.model, atoms, keep_constraints=True)
        return self.potential.raw_rows(self.fparams(), graph, sizes)

    def refit(self):
        """Normalisation and posterior from scratch over every training frame."""
        raws = [self.raw_rows_of(a) for a in self.training]
        r = max(x[0].shape[0] for x in raws)
        if any(x[0].shape[0] != r for x in raws):
            raise ValueError("training frames gave different feature row counts")
        self.set_posterior(*self.potential.fit(np.stack([x[0] for x in raws]), np.stack([x[1] for x in raws])))

    def evaluate_state(self, positions, momenta, step) -> MDState:
        ev = self.potential.evaluate(self.params, self.fparams(), self.posterior, self.factor, self.graph,
                                     jnp.asarray(positions, jnp.float32), self.graphs.sizes,
                                     tau=self.spec.md.tau)
        mov = jnp.asarray(self.lp.movable, jnp.float32)
        return MDState(jnp.asarray(positions, jnp.float32), jnp.asarray(momenta, jnp.float32),
                       ev.biased_forces * mov, ev.forces, ev.energy, ev.variance, ev.rows,
                       jnp.asarray(step, jnp.int32))

    def rebuild(self, positions):
        self.graph = self.graphs.build(positions)
        self.reference = np.asarray(positions, np.float64)[: self.n].copy()

    def restart(self, reason: str, step: int):
        """Fresh velocities at the last labelled frame; if the previous restart was fewer than
        ``RESTART_WINDOW`` steps ago, that frame is dropped and the one before is used (down to
        the start structure), so a frame the dynamics cannot leave safely is not retried forever."""
        extra = self.extra
        extra["restarts"] += 1
        if step - extra.get("last_restart", -10**9) < RESTART_WINDOW and len(self.anchors) > 1:
            self.anchors.pop()
        extra["last_restart"] = step
        which = "the start structure" if len(self.anchors) == 1 else f"labelled frame {len(self.anchors) - 1}"
        self.log(f"step {step}: restart {extra['restarts']} from {which} ({reason})")
        if extra["restarts"] > self.spec.md.max_restarts:
            raise RuntimeError(f"more than {self.spec.md.max_restarts} restarts; last: {reason}")
        pos = self.graphs.padded_positions(self.anchors[-1])
        self.rebuild(pos)
        key = jax.random.fold_in(jax.random.fold_in(self.key, 0x5EED), extra["restarts"])
        return self.evaluate_state(pos, maxwell_boltzmann(key, self.lp), step)

    def finetune(self):
        from ntkal.train import fit

        cfg = self.model.config
        structures = _labelled_structures(self.training, cfg.cutoff, cfg.elements)
        t = time.perf_counter()
        result = fit(self.model, self.start_params, structures, config=self.spec.train, progress=False,
                     compiled=self.compiled)
        self.params = result.params
        self.extra["finetunes"] += 1
        self.extra["finetuned_labels"] = self.extra["labels"]
        self.log(f"fine-tuned on {len(structures)} frames in {time.perf_counter() - t:.1f} s "
                 f"(best epoch {result.best_epoch})")
        if self.spec.uncertainty.featurize_with == "current":
            self.refit()

    # --- state on disk -----------------------------------------------------------------------

    def save(self, state: MDState, extra: dict):
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
        record = {
            "digest": self.spec.digest(),
            "sizes": {name: os.path.getsize(self.out / name) for name in _FILES},
            "state": {k: np.asarray(v) for k, v in state._asdict().items()},
            "params": jax.tree_util.tree_map(np.asarray, self.params),
            "chol": self.posterior.chol, "noise_var": self.posterior.noise_var,
            "n_rows": self.posterior.n_rows, "n_structures": self.posterior.n_structures,
            "factor": np.asarray(self.factor), "reference": self.reference,
            "anchors": np.asarray(self.anchors, np.float64).reshape(-1, self.n, 3),
            "capacity": self.graphs.capacity,
            # the labelled frames bit for bit (the extxyz copy rounds positions)
            "labelled_positions": np.array([a.positions for a in self.labelled], np.float64).reshape(-1, self.n, 3),
            "labelled_energy": np.array([a.get_potential_energy() for a in self.labelled], np.float64),
            "labelled_forces": np.array([a.get_forces(apply_constraint=False) for a in self.labelled],
                                        np.float64).reshape(-1, self.n, 3),
            "json": json_dumps(extra),
        }
        atomic_write_bytes(self.out / "state.msgpack", serialization.msgpack_serialize(record))

    def load(self):
        raw = serialization.msgpack_restore((self.out / "state.msgpack").read_bytes())
        if raw["digest"] != self.spec.digest():
            raise ValueError(f"{self.out}: the saved run was made with other settings (state digest "
                             f"{raw['digest']}, config {self.spec.digest()}); use --no-resume or another --out")
        return raw


def _save_model(run: "_Run", path: Path, extra: dict) -> None:
    from ntkal.models.checkpoint import save_checkpoint

    meta = dict(run.metadata)
    elements = set(meta.get("train_elements") or ())
    for atoms in run.training:
        elements |= set(int(z) for z in atoms.numbers)
    meta.update(name=f"{run.spec.name} (ntkal md)", train_elements=sorted(elements), parent=run.spec.checkpoint,
                md_labels=extra["labels"], md_steps=extra["step"], md_finetunes=extra["finetunes"],
                md_config=run.spec.record())
    save_checkpoint(path, run.params, run.model.config, meta)


def _open_outputs(out: Path, sizes: dict | None) -> dict:
    handles = {}
    for name in _FILES:
        path = out / name
        if sizes is None:
            path.write_bytes(b"")
        else:
            with open(path, "r+b") as f:
                f.truncate(int(sizes[name]))
        handles[name] = open(path, "a")
    if sizes is None:
        handles["log.csv"].write(",".join(LOG_COLUMNS) + "\n")
    return handles


def run_md(spec: OnTheFlySpec, *, out: str | os.PathLike | None = None, resume: bool = True,
           progress: bool = True, log: Callable[[str], None] | None = None,
           stop_after: int | None = None) -> MDResult:
    """Run (or resume) on-the-fly MD as described in the module docstring.

    Args:
      spec: the checked config (:func:`~ntkal.onthefly.load_md_spec`).
      out: output folder (default ``spec.out``).
      resume: continue from ``out/state.msgpack`` when present (settings must match).
      progress: a progress bar over steps.
      log: called with one line per event (labels, restarts, fine-tunes).
      stop_after: stop (as if killed, after the last checkpoint) once this many steps are done.

    Returns:
      :class:`MDResult`.

    Raises:
      FolderInUseError: another live run holds ``out`` (:mod:`ntkal.folder_lock`).
      LabelStoreError: the label store cannot be read (naming how to recover).
    """
    from ntkal.folder_lock import hold_folder

    out = Path(out or spec.out)
    with hold_folder(out, what="ntkal md"):
        return _run_md(spec, out, resume=resume, progress=progress, log=log, stop_after=stop_after)


def _run_md(spec: OnTheFlySpec, out: Path, *, resume: bool, progress: bool, log, stop_after) -> MDResult:
    """:func:`run_md` in the folder ``out``, which this process holds."""
    from ntkal.labelling import make_executor

    t0 = time.perf_counter()
    remove_stale_temp_files(out)
    run = _Run(spec, out, log)
    store = _checked_label_store(spec, out)
    saved = run.load() if resume and (out / "state.msgpack").exists() else None
    if saved is None:
        (out / "config.json").write_text(json.dumps(spec.record(), indent=1, sort_keys=True))

    with make_executor(spec.oracle) as executor:
        label = _labeller(spec, store, executor)
        run.params = run.start_params
        run.base = _base_frames(run, label)
        state = _fresh_state(run) if saved is None else _resumed_state(run, saved)
        _run_steps(run, state, label, progress=progress, stop_after=stop_after)
        if run.extra["step"] >= spec.md.steps and not (out / "model.msgpack").exists():
            _save_final_model(run, out / "model.msgpack")

    summary = _summary(run, t0)
    (out / "summary.json").write_text(json_dumps(summary, indent=1))
    extra = run.extra
    return MDResult(out, extra["step"], extra["labels"], extra["restarts"], extra["failed"],
                    time.perf_counter() - t0, summary)


def _checked_label_store(spec: OnTheFlySpec, out: Path):
    """The run's :class:`~ntkal.labelling.LabelStore` (``[oracle] store`` or ``out/labels.db``),
    checked readable; a ``LabelStoreError`` says how to recover."""
    from ntkal.labelling import LabelStore, LabelStoreError

    store = LabelStore(spec.oracle.store or out / "labels.db")
    try:
        store.check()
    except LabelStoreError as err:
        raise LabelStoreError(store.path, err.reason, "move it aside (with its -wal and -shm files) and rerun: "
                                                      "the run's state keeps its labelled frames, and "
                                                      f"{out / 'labels.extxyz'} has a copy of every label") from None
    return store


def _labeller(spec: OnTheFlySpec, store, executor) -> Callable[[ase.Atoms], ase.Atoms | None]:
    """``label(atoms)``: the frame labelled by the oracle (through the label store), ``None`` when
    the oracle failed on it."""
    from ntkal.labelling import label_structures

    def label(atoms):
        outcome = label_structures([atoms], spec.oracle, store, executor=executor)
        return outcome.atoms[0]

    return label


def _base_frames(run: _Run, label) -> list[ase.Atoms]:
    """The initial training set: the ``initial`` files' frames, else the start frame labelled by
    the oracle (on resume it comes back from the label store)."""
    if run.initial:
        return list(run.initial)
    first = label(run.frame(run.start_atoms.positions))
    if first is None:
        raise RuntimeError("the oracle failed on the start frame")
    return [first]


def _fresh_state(run: _Run) -> MDState:
    """Start a new run: zero counters, the start structure as the only anchor, the posterior fitted
    on the initial set, Maxwell–Boltzmann velocities and empty output files."""
    run.extra = {"step": 0, "labels": 0, "failed": 0, "restarts": 0, "finetunes": 0, "ratios": [],
                 "last_label": -10**9}
    run.anchors = [np.asarray(run.start_atoms.positions, np.float64)]
    run.refit()
    pos = run.graphs.padded_positions(run.start_atoms.positions)
    run.rebuild(pos)
    state = run.evaluate_state(pos, maxwell_boltzmann(jax.random.fold_in(run.key, 0x5EED), run.lp), 0)
    run.handles = _open_outputs(run.out, None)
    return state


def _resumed_state(run: _Run, saved: dict) -> MDState:
    """Continue a saved run (:meth:`_Run.load`): counters, labelled frames, parameters, posterior,
    anchors, Verlet list and MD state as saved; the output files cut back to their saved sizes."""
    from ntkal.labelling.store import with_labels

    run.extra = extra = json.loads(saved["json"])
    run.handles = _open_outputs(run.out, saved["sizes"])
    run.labelled = [with_labels(run.frame(p), float(e), f) for p, e, f in zip(
        saved["labelled_positions"], saved["labelled_energy"], saved["labelled_forces"])]
    run.params = serialization.from_state_dict(run.start_params, saved["params"])
    run.set_posterior(CholeskyPosterior(np.asarray(saved["chol"]), float(saved["noise_var"]),
                                        int(saved["n_rows"]), int(saved["n_structures"])), saved["factor"])
    run.anchors = list(np.asarray(saved["anchors"]))
    run.graphs.capacity = int(saved["capacity"])
    run.graph = run.graphs.build(run.graphs.padded_positions(saved["reference"]))
    run.reference = np.asarray(saved["reference"])
    state = MDState(**{k: jnp.asarray(v) for k, v in saved["state"].items()})
    run.log(f"resumed at step {extra['step']} ({extra['labels']} labels)")
    return state


def _random_label_steps(spec: OnTheFlySpec) -> set[int]:
    """The steps labelled with ``trigger = "random"`` (``max_labels`` of them, drawn from the MD
    seed); empty otherwise."""
    md, rule = spec.md, spec.labelling
    if rule.trigger != "random":
        return set()
    rng = np.random.default_rng([md.seed, 0xA11])
    return set(int(s) for s in rng.choice(np.arange(1, md.steps + 1), rule.max_labels, replace=False))


def _run_steps(run: _Run, state: MDState, label, *, progress: bool, stop_after: int | None) -> None:
    """Step until ``md.steps`` are done (or ``stop_after`` steps in this call), then close the
    progress bar and the output files."""
    spec, extra = run.spec, run.extra
    random_steps = _random_label_steps(spec)
    writer = csv.writer(run.handles["log.csv"])
    bar = tqdm(total=spec.md.steps, initial=extra["step"], desc=f"md {spec.name}", disable=not progress,
               unit="step", leave=False)
    steps_done = extra["step"]
    try:
        while extra["step"] < spec.md.steps:
            if stop_after is not None and extra["step"] - steps_done >= stop_after:
                break
            state, variance = _take_step(run, state, label, random_steps, writer)
            bar.update(1)
            bar.set_postfix(labels=extra["labels"], var=f"{variance:.3g}", restarts=extra["restarts"])
    finally:
        bar.close()
        for handle in run.handles.values():
            handle.close()


def _take_step(run: _Run, state: MDState, label, random_steps: set[int], writer) -> tuple[MDState, float]:
    """One MD step: the compiled BAOAB step, a Verlet rebuild after a skin/2 move, then a restart
    (unsafe frame), a label (σ² over the threshold, or a random step) or neither; the step is
    logged, written and checkpointed. Returns the new state and the step's σ²."""
    md, rule, extra = run.spec.md, run.spec.labelling, run.extra
    step = extra["step"] + 1
    state = run.step_fn()(run.params, run.fparams(), run.chol32, run.posterior.noise_var,
                          run.factor32, md.tau, run.graph, state, run.key)
    positions = np.asarray(state.positions, np.float64)
    state, restart_reason = _rebuild_after_skin_move(run, state, positions, step)
    variance = float(state.variance)
    threshold = threshold_of(rule, extra["ratios"])
    fmax = float(np.max(np.linalg.norm(np.asarray(state.model_forces)[: run.n], axis=1)))
    if restart_reason is None:
        restart_reason = _unsafe_reason(run.spec, positions, variance, fmax, threshold)
    labelled = False
    if restart_reason is not None:
        state = run.restart(restart_reason, step)
    elif _label_due(rule, extra, step, variance, threshold, random_steps):
        state, labelled, restart_reason = _label_frame(run, state, label, positions, step, variance, threshold)
    extra["step"] = step
    state = state._replace(step=jnp.asarray(step, jnp.int32))
    _write_step(run, writer, state, step, variance, threshold, fmax, labelled, restart_reason is not None)
    return state, variance


def _rebuild_after_skin_move(run: _Run, state: MDState, positions: np.ndarray, step: int):
    """``(state, restart reason)``: after an atom moved more than skin/2 (Å) since the last Verlet
    build, the list is rebuilt and the state re-evaluated on it; a structure that cannot be graphed
    gives a restart reason (else ``None``). ``positions``: ``(n_padded, 3)`` float64, Å."""
    if np.max(np.linalg.norm(positions[: run.n] - run.reference, axis=1)) > 0.5 * run.spec.md.skin:
        try:
            run.rebuild(positions)
            state = run.evaluate_state(positions, state.momenta, step)
        except InvalidStructureError as err:
            return state, f"invalid structure: {err}"
    return state, None


def _unsafe_reason(spec: OnTheFlySpec, positions: np.ndarray, variance: float, fmax: float,
                   threshold: float) -> str | None:
    """Why the frame is no place to continue from (non-finite values, a force above ``max_force``
    in eV/Å, σ² above the hard limit), or ``None``."""
    md, rule = spec.md, spec.labelling
    if not (np.isfinite(variance) and np.isfinite(fmax) and np.all(np.isfinite(positions))):
        return "non-finite energy, forces or positions"
    if fmax > md.max_force:
        return f"max force {fmax:.1f} eV/Å > {md.max_force}"
    if variance > (rule.max_variance or MAX_VARIANCE_FACTOR * threshold):
        return f"σ² {variance:.3g} above the hard limit"
    return None


def _label_due(rule, extra: dict, step: int, variance: float, threshold: float, random_steps: set[int]) -> bool:
    """Whether this step's frame goes to the oracle: labels left, and σ² over the threshold at least
    ``min_interval`` steps after the last attempt (``trigger = "variance"``) or a drawn random step."""
    return extra["labels"] < rule.max_labels and (
        (rule.trigger == "variance" and variance > threshold and step - extra["last_label"] >= rule.min_interval)
        or (rule.trigger == "random" and step in random_steps))


def _label_frame(run: _Run, state: MDState, label, positions: np.ndarray, step: int, variance: float,
                 threshold: float) -> tuple[MDState, bool, str | None]:
    """Send the frame to the oracle: ``(state, labelled, restart reason)``. A labelled frame joins
    the training set (:func:`_add_label`) and the state is re-evaluated with the updated posterior
    (and model); a frame the oracle fails on is no place to continue from: restart."""
    extra = run.extra
    done = label(run.frame(positions))
    if done is None:  # a frame the oracle cannot label is no place to continue from
        extra["failed"] += 1
        extra["last_label"] = step  # min_interval applies to attempts too
        restart_reason = "the oracle failed on this frame"
        return run.restart(restart_reason, step), False, restart_reason
    _add_label(run, state, done, positions, step, variance, threshold)
    return run.evaluate_state(positions, state.momenta, step), True, None


def _force_error(run: _Run, state: MDState, done: ase.Atoms) -> np.ndarray:
    """Model minus oracle forces (eV/Å) on the free atoms of the labelled frame, ``(n_free, 3)``."""
    f_ref = np.asarray(done.get_forces(apply_constraint=False))
    free = np.asarray(run.lp.movable)[: run.n, 0] > 0
    return (np.asarray(state.model_forces, np.float64)[: run.n] - f_ref)[free]


def _add_label(run: _Run, state: MDState, done: ase.Atoms, positions: np.ndarray, step: int, variance: float,
               threshold: float) -> None:
    """Record the labelled frame ``done``: its error/variance ratio (threshold calibration), the
    label file, a rank-r posterior update with the step's rows, a new anchor, a log line, and a
    fine-tune when ``finetune_every`` labels are due or the force RMSE exceeds ``finetune_error``."""
    rule, extra = run.spec.labelling, run.extra
    diff = _force_error(run, state, done)
    ratio = float(np.mean(diff ** 2) / max(variance, 1e-30))
    extra["ratios"].append(ratio)
    done.info.update(step=step, variance=variance, model_energy=float(state.energy))
    run.labelled.append(done)
    ase.io.write(run.handles["labels.extxyz"], done, format="extxyz")
    # the step already computed this frame's normalised rows: a rank-r update
    run.set_posterior(add_rows(run.posterior, np.asarray(state.rows, np.float64)))
    extra["labels"] += 1
    extra["last_label"] = step
    run.anchors.append(positions[: run.n].copy())
    rmse = float(np.sqrt(np.mean(diff ** 2)))
    why = (f"σ² {variance:.3g} > {threshold:.3g}" if rule.trigger == "variance"
           else f"random step; σ² {variance:.3g}")
    run.log(f"step {step}: labelled ({why}; force RMSE {rmse:.3f} eV/Å)")
    drifted = 0 < rule.finetune_error < rmse
    if drifted or (rule.finetune_every and extra["labels"] % rule.finetune_every == 0):
        run.finetune()


def _write_step(run: _Run, writer, state: MDState, step: int, variance: float, threshold: float, fmax: float,
                labelled: bool, restarted: bool) -> None:
    """The step's ``log.csv`` row; its frame in the trajectory every ``write_every`` steps and when
    labelled; a checkpoint every ``checkpoint_every`` steps, at the end and after a label or restart."""
    md = run.spec.md
    writer.writerow([step, f"{step * md.timestep:.6g}", f"{float(state.energy):.8g}",
                     f"{variance:.6g}", f"{threshold:.6g}", int(labelled),
                     int(restarted), f"{fmax:.6g}",
                     f"{kinetic_temperature(state.momenta, run.lp):.4g}"])
    if labelled or step % md.write_every == 0:
        frame = run.frame(np.asarray(state.positions, np.float64))
        frame.info.update(step=step, model_energy=float(state.energy),
                          variance=float(state.variance), labelled=bool(labelled))
        ase.io.write(run.handles["trajectory.extxyz"], frame, format="extxyz")
    if labelled or restarted or step % md.checkpoint_every == 0 or step == md.steps:
        run.save(state, run.extra)


def _save_final_model(run: _Run, path: Path) -> None:
    """The run's product: the model fine-tuned on every label (a last fine-tune when labels came
    after the previous one and fine-tuning is on), written to ``path``."""
    rule, extra = run.spec.labelling, run.extra
    if (rule.finetune_every or rule.finetune_error) and extra["labels"] > extra.get("finetuned_labels", 0):
        run.finetune()
    _save_model(run, path, extra)


def _summary(run: _Run, t0: float) -> dict:
    """The ``summary.json`` record of this call (``t0``: its start, ``time.perf_counter``)."""
    spec, extra = run.spec, run.extra
    return {"name": spec.name, "steps": extra["step"], "labels": extra["labels"],
            "failed": extra["failed"], "restarts": extra["restarts"], "finetunes": extra["finetunes"],
            "final_threshold": threshold_of(spec.labelling, extra["ratios"]),
            "error_variance_ratios": extra["ratios"],
            "step_compilations_this_call": run.step_compilations, "wall_s_this_call": time.perf_counter() - t0,
            "config": spec.record()}

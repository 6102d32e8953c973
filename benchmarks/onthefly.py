"""Cost of on-the-fly MD: an MD step with posterior variance vs an energy+forces step, and a
rank-r posterior update vs refeaturising the training set (issue 12's targets: ≤ 10× and ≤ 1 %).

System: Cu(111) 4×4×3 slab (bottom layer fixed) with CO on top, N = 50 atoms, the shipped
``oc20_like`` model (35,120 parameters, cutoff 4 Å), float32, Verlet skin 0.5 Å. Every MD row
is the same jitted BAOAB step (:func:`ntkal.onthefly.langevin_step`) with a different force
function, timed over ``--steps`` steps after a warm-up (compilation) step, all in one process
side by side; "ratio" is to the energy+forces step. The posterior rows time, with the training
set of ``--train`` rattled copies, (a) featurising all of them again and refitting (what a
fine-tune with ``featurize_with = "current"`` costs) and (b) the rank-r Cholesky update that
adds one labelled frame (``add_rows``; its rows come from the MD step itself).

Usage::

    python benchmarks/onthefly.py --quick       # 20 steps per row
    python benchmarks/onthefly.py               # 60 steps per row, also sketch d = 512

Measured (CPU, 2 cores, nothing else running; load average 0.63 at start, 1.95 at end — the
benchmark's own two threads), command ``python benchmarks/onthefly.py``, 2026-12-01:

# device cpu, jax 0.10.2, float32, N = 50 (34 free), edges 2048 (cutoff+skin)

| MD step (BAOAB, Verlet list) | ms/step | ratio to E+F step |
|---|---|---|
| energy + forces (no variance) | 21.5 | 1.00 |
| energy-NTK σ², d=256 | 37.0 | 1.72 |
| joint probe-4 σ², d=256 | 129.4 | 6.03 |
| energy-NTK σ², d=256, biased τ=0.5 | 107.4 | 5.00 |
| joint probe-4 σ², d=256, biased τ=0.5 | 853.9 | 39.78 |
| joint probe-4 σ², d=512 | 155.5 | 7.24 |

| posterior (n_T = 20 training frames) | refeaturise + refit, ms | rank-r update, ms | update / refit |
|---|---|---|---|
| energy-NTK σ², d=256, r=1 | 513 | 0.87 | 0.17 % |
| joint probe-4 σ², d=256, r=5 | 2261 | 4.10 | 0.18 % |
| joint probe-4 σ², d=512, r=5 | 2633 | 19.03 | 0.72 % |

Targets: an MD step with joint probe-4 variance ≤ 10× an energy+forces step (6.0×), a label's
posterior update ≤ 1 % of refeaturising the training set (0.18 %). Biasing with the *joint*
variance differentiates the probe features once more (third derivatives through the network):
40×; biasing with the energy-NTK variance costs 5×.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

from ntkal.models.pretrained import load_pretrained
from ntkal.onthefly import (Evaluation, SystemGraph, UncertainPotential, UncertaintyConfig, add_rows,
                            langevin_params, langevin_step, maxwell_boltzmann)
from ntkal.onthefly.dynamics import MDState
from ntkal.models import energy_and_forces_fn, with_positions


def slab_with_co():
    slab = fcc111("Cu", size=(4, 4, 3), vacuum=7.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
    return slab


def time_steps(step, args, state, n_steps):
    state = step(*args, state)
    jax.block_until_ready(state.variance)  # compile + first step
    t = time.perf_counter()
    for _ in range(n_steps):
        state = step(*args, state)
        float(state.variance)  # the host reads σ² every step, as ntkal md does
    return (time.perf_counter() - t) / n_steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--train", type=int, default=20)
    args = parser.parse_args(argv)
    n_steps = args.steps or (20 if args.quick else 60)
    model, params, _ = load_pretrained("oc20_like")
    atoms = slab_with_co()
    cfg = model.config
    graphs = SystemGraph(atoms, cfg.cutoff, 0.5, cfg.elements)
    graph = graphs.build(atoms.positions)
    sizes = graphs.sizes
    free = np.ones(len(atoms), bool)
    free[atoms.constraints[0].index] = False
    lp = langevin_params(atoms.get_masses(), free, graphs.n_node, timestep_fs=1.0, temperature_K=600,
                         friction_per_fs=0.01)
    key = jax.random.key(0)
    pos0 = jnp.asarray(graphs.padded_positions(atoms.positions), jnp.float32)
    p0 = maxwell_boltzmann(key, lp)
    rng = np.random.default_rng(0)
    train = []
    for _ in range(args.train):
        a = atoms.copy()
        a.positions[free] += rng.normal(scale=0.05, size=(int(free.sum()), 3))
        train.append(a)

    print(f"# device {jax.devices()[0].platform}, jax {jax.__version__}, float32, N = {len(atoms)} "
          f"({int(free.sum())} free), edges {graphs.capacity} (cutoff+skin), "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"# command: python benchmarks/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}")
    ef = energy_and_forces_fn(model.energy)

    def ef_step(params, graph, state):
        def force_fn(r):
            e, f = ef(params, with_positions(graph, r))
            z = jnp.zeros((), r.dtype)
            return Evaluation(e[0], f, z, f, jnp.zeros((1, 1), r.dtype))
        return langevin_step(force_fn, state, key, lp)

    def initial_state(r_dim, d):
        z = jnp.zeros_like(pos0)
        return MDState(pos0, p0, z, z, jnp.zeros(()), jnp.zeros(()), jnp.zeros((r_dim, d)), jnp.zeros((), jnp.int32))

    base = time_steps(jax.jit(ef_step), (params, graph), initial_state(1, 1), n_steps)
    table = [("energy + forces (no variance)", base, None)]
    update_rows = []
    settings = [("energy", 256, 0.0), ("joint", 256, 0.0), ("energy", 256, 0.5), ("joint", 256, 0.5)]
    if not args.quick:
        settings.append(("joint", 512, 0.0))
    for kind, d, tau in settings:
        unc = UncertaintyConfig(kernel=kind, sketch_dim=d, num_probes=4)
        pot = UncertainPotential(model, params, unc.acquisition())
        # posterior: refeaturise + refit vs a rank-r update
        pot.raw_rows(params, graph, sizes)  # compile
        t = time.perf_counter()
        raws = [pot.raw_rows(params, graphs.build(a.positions), sizes) for a in train]
        post, factor = pot.fit(np.stack([r for r, _ in raws]), np.stack([m for _, m in raws]))
        t_refit = time.perf_counter() - t
        f = pot.evaluation_fn(sizes, tau != 0.0)

        def step(params, chol, factor, graph, state, f=f):
            return langevin_step(lambda r: f(params, params, chol, post.noise_var, factor, tau, graph, r),
                                 state, key, lp)

        r_dim = raws[0][0].shape[0]
        per_step = time_steps(jax.jit(step), (params, jnp.asarray(post.chol, jnp.float32),
                                              jnp.asarray(factor, jnp.float32), graph),
                              initial_state(r_dim, d), n_steps)
        new_rows = pot.normalise(*raws[0], factor)
        add_rows(post, new_rows)
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            add_rows(post, new_rows)
        t_update = (time.perf_counter() - t) / reps
        name = {"energy": "energy-NTK σ²", "joint": "joint probe-4 σ²"}[kind]
        table.append((f"{name}, d={d}" + (f", biased τ={tau}" if tau else ""), per_step, None))
        if tau == 0.0:
            update_rows.append((f"{name}, d={d}, r={r_dim}", t_refit, t_update))
    print()
    print("| MD step (BAOAB, Verlet list) | ms/step | ratio to E+F step |")
    print("|---|---|---|")
    for name, t, _ in table:
        print(f"| {name} | {1e3 * t:.1f} | {t / base:.2f} |")
    print()
    print(f"| posterior (n_T = {args.train} training frames) | refeaturise + refit, ms | rank-r update, ms | update / refit |")
    print("|---|---|---|---|")
    for name, t_refit, t_update in update_rows:
        print(f"| {name} | {1e3 * t_refit:.0f} | {1e3 * t_update:.2f} | {100 * t_update / t_refit:.2f} % |")
    print(f"\n# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()

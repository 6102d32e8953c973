"""One process of the multi-process pick test (tests/test_cluster.py), started by
``python -m ntkal.launch -n N -- python tests/cluster/worker.py OUT.json [--die-after K] [--cases ...]``.

Every process builds the same tiny model and frames, keeps its round-robin part of the pool
(:func:`ntkal.cluster.split_of`), and picks with :meth:`ntkal.acquire.Acquirer.pick` for each
selector, with and without the cascade, the force guard and a target set; process 0 writes the
picks to OUT.json (atomically), beside the picks of the single-process path over the whole
pool (no collectives) as the reference. With ``--die-after K``, process 1 kills itself (SIGKILL) after
featurising K chunks of the pool: the launcher must then fail the job and no OUT.json appear.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from ntkal.cluster import ClusterConfig, initialize, split_of

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--die-after", type=int, default=None)
parser.add_argument("--cases", nargs="+", default=None, help="only these cases (default: all)")
args = parser.parse_args()
collectives = initialize(ClusterConfig.from_env(heartbeat_timeout_s=10))

import jax  # noqa: E402  (after joining the job)

jax.config.update("jax_enable_x64", True)
import ase.build  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import tiny_config  # noqa: E402

from ntkal.acquire import Acquirer, AcquisitionConfig, structure_set  # noqa: E402
from ntkal.data import atoms_to_structure, batch_atoms  # noqa: E402
from ntkal.kernels import KernelConfig  # noqa: E402
from ntkal.models import atomic_write_bytes, build_model  # noqa: E402


def frames(n: int, seed: int):
    """Rattled Cu/Pt slabs of 8–18 atoms (several size classes) with EMT energies."""
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    shapes = [(2, 2, 2), (2, 2, 3), (3, 2, 2), (3, 3, 2)]
    out = []
    for k in range(n):
        slab = ase.build.fcc111("Cu", size=shapes[k % len(shapes)], vacuum=5.0, periodic=True)
        slab.numbers[rng.random(len(slab)) < 0.3] = 78
        slab.positions += rng.normal(0, 0.08, slab.positions.shape)
        slab.info["energy"] = float(EMT().get_potential_energy(slab))
        out.append(slab)
    return out


CONFIG = tiny_config(num_layers=1, lmax=1)
model = build_model(CONFIG)
everything = frames(44, seed=0)
train, target, pool = everything[:6], everything[6:10], everything[10:]
params = model.init(jax.random.key(0), batch_atoms(everything[:2], CONFIG.cutoff))
params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)

mine = np.asarray(split_of(len(pool), collectives.index, collectives.count), np.int64)
local = [pool[i] for i in mine] + train + target
structures = [atoms_to_structure(a, CONFIG.cutoff, elements=CONFIG.elements) for a in local]
n_mine = len(mine)
global_ids = np.concatenate([mine, np.full(len(train) + len(target), -1)])
energies = np.array([a.info["energy"] for a in train])

BASE = AcquisitionConfig(kernel=KernelConfig(kind="joint", sketch_dim=16, num_probes=2), shortlist=10,
                         chunk_size=3, size_classes=2)
CASES = {
    f"{selector}{'-cascade' if cascade else ''}": AcquisitionConfig(
        **{**BASE.to_dict(), "kernel": BASE.kernel, "selector": selector,
           "cascade": "energy" if cascade else None, "cascade_keep": 0.5})
    for selector in ("maxdiag", "lcmd", "varred") for cascade in (False, True)
}
CASES["varred-guard-noise"] = AcquisitionConfig(**{**BASE.to_dict(), "kernel": BASE.kernel, "selector": "varred",
                                                   "max_force_quantile": 0.8, "force_noise_scale": 2.0})
CASES["varred-target"] = CASES["varred"]
if args.cases:
    CASES = {name: CASES[name] for name in args.cases}

if args.die_after is not None and collectives.index == 1:  # die mid-scoring
    original = Acquirer.stream_features

    def dying(self, *a, **k):
        for n, chunk in enumerate(original(self, *a, **k)):
            if n == args.die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            yield chunk

    Acquirer.stream_features = dying



def as_dict(picks) -> dict:
    return {"ids": picks.ids.tolist(), "scores": picks.scores.tolist(), "pv": picks.pv.tolist(),
            "noise_var": picks.noise_var, "n_candidates": picks.stats["n_candidates"],
            "n_kept": picks.stats["n_kept"]}


def pick_all(structures, n_pool, collectives=None, global_ids=None) -> dict:
    """Every case's picks with the pool = structures[:n_pool], then train, then target."""
    train_ids = n_pool + np.arange(len(train))
    target_ids = n_pool + len(train) + np.arange(len(target))
    out = {}
    for name, config in CASES.items():
        acquirer = Acquirer(model, params, config, store=store)
        out[name] = as_dict(acquirer.pick(
            params, structure_set(structures, config.size_classes), train_ids, np.arange(n_pool), 4,
            jax.random.key(1), train_energies=energies, collectives=collectives, global_ids=global_ids,
            target_ids=target_ids if name.endswith("target") else None))
    return out


store = {}
results = {"processes": collectives.count, "picks": pick_all(structures, n_mine, collectives, global_ids)}
if collectives.is_writer:
    # the single-process reference: the whole pool in this one process, no collectives
    whole = [atoms_to_structure(a, CONFIG.cutoff, elements=CONFIG.elements) for a in pool + train + target]
    results["single"] = pick_all(whole, len(pool))
    atomic_write_bytes(Path(args.out), json.dumps(results, indent=1).encode())

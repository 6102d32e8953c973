"""Reference energies and forces of SevenNet-0 from sevenn's own calculator (PyTorch), for the
exactness tests of ntkal's JAX port (``tests/test_sevennet.py``).

Runs in a separate environment with PyTorch and sevenn (never ntkal's)::

    python -m venv /tmp/svref && /tmp/svref/bin/pip install torch==2.13.0 sevenn==0.13.0
    /tmp/svref/bin/python experiments/sevennet_reference.py tests/data/sevennet0_reference.json \\
        [--state-dict /tmp/sevennet0_patched.npz]

Writes, for three structures (ethanol; a 2-atom Cu cell whose 84 edges include 36 self-image
edges; a 3-layer Cu(111) 2x2 slab with an O adatom), the float32 calculator's energy, per-atom
energies and forces, and the same model in float64 (``model.double()``) on float64 edge vectors.
``--state-dict`` also saves sevenn's *patched* state dict (``SevenNetCheckpoint.build_model()``),
which the converter's own patch of the v0.9.1 checkpoint must equal.
"""

import argparse
import json
import platform
import sys

import numpy as np


def structures():
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    ethanol = molecule("CH3CH2OH")
    cu = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.rattle(0.02, seed=3)
    return {"ethanol": ethanol, "cu_bulk": cu, "cu111_o": slab}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--state-dict", default=None)
    args = parser.parse_args()

    import sevenn
    import torch
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import load_checkpoint, pretrained_name_to_path

    torch.set_num_threads(1)
    out = {"sevenn": sevenn.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "checkpoint": "7net-0", "structures": {}}
    calc32 = SevenNetCalculator("7net-0", device="cpu")
    calc64 = SevenNetCalculator("7net-0", device="cpu")
    calc64.model.double()
    _one_hot_in_float64()
    for name, atoms in structures().items():
        record = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                  "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}
        a = atoms.copy()
        a.calc = calc32
        record["float32"] = {"energy": float(a.get_potential_energy()),
                             "energies": a.get_potential_energies().tolist(),
                             "forces": a.get_forces().tolist()}
        try:
            record["float64"] = _float64(calc64, atoms)
        except Exception as err:  # sevenn may refuse float64 on some paths: record why
            import traceback
            traceback.print_exc()
            record["float64_error"] = repr(err)
        out["structures"][name] = record
        print(name, record["float32"]["energy"], record.get("float64", {}).get("energy"), file=sys.stderr)
    if args.state_dict:
        cp = load_checkpoint(pretrained_name_to_path("7net-0"))
        state = {k: v.detach().cpu().numpy() for k, v in cp.build_model().state_dict().items()}
        np.savez(args.state_dict, **state)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


def _one_hot_in_float64():
    """sevenn's one-hot embedding casts to float32 (``.float()``): cast to the default dtype instead
    (float64 only while :func:`_float64` runs)."""
    import torch
    from sevenn.nn import node_embedding

    def forward(self, data):
        inp = data[self.key_x]
        embd = torch.nn.functional.one_hot(inp, self.num_classes).to(torch.get_default_dtype())
        data[self.key_output] = embd
        if self.key_additional_output is not None:
            data[self.key_additional_output] = embd
        if self.key_save is not None:
            data[self.key_save] = inp
        return data

    node_embedding.OnehotEmbedding.forward = forward


def _float64(calc, atoms):
    """The calculator's graph, run through the float64 model (edge vectors in float64)."""
    import torch
    from sevenn.atom_graph_data import AtomGraphData
    import sevenn._keys as KEY
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    torch.set_default_dtype(torch.float64)  # the graph too: edge vectors stay float64
    try:
        graph = unlabeled_atoms_to_graph(atoms, calc.cutoff)
        data = AtomGraphData.from_numpy_dict(graph)  # rounds floats to float32: put float64 back
        for key, value in list(data.items()):
            if torch.is_tensor(value) and value.is_floating_point():
                data[key] = torch.as_tensor(np.asarray(graph[key]), dtype=torch.float64) if key in graph else value.double()
        data[KEY.EDGE_VEC].requires_grad_(True)
        result = calc.model(data)
    finally:
        torch.set_default_dtype(torch.float32)
    return {"energy": float(result[KEY.PRED_TOTAL_ENERGY].detach().reshape(-1)[0]),
            "energies": result[KEY.ATOMIC_ENERGY].detach().reshape(-1).tolist(),
            "forces": result[KEY.PRED_FORCE].detach().tolist()}


if __name__ == "__main__":
    sys.exit(main())

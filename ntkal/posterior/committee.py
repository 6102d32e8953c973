"""Query-by-committee baseline: force disagreement of an ensemble.

Given force predictions of ``n_models`` fine-tuned models for ``n_struct``
structures (atoms padded to ``n_atoms``), the disagreement of structure ``s``
is

.. math::

   q_s = \\frac{1}{|\\mathcal{A}_s|} \\sum_{a \\in \\mathcal{A}_s}
         \\sum_{c \\in \\{x,y,z\\}} \\operatorname{Var}_{m}\\, F_{m,s,a,c}

(population variance over models, summed over Cartesian components, averaged
over the valid atoms ``A_s``; ``reduction="max"`` takes the max over atoms
instead).  Units: (eV/Å)^2.  Padded atoms and structures without valid atoms
score 0.  The scores plug into :func:`ntkal.posterior.merge_topk` or a plain
top-k like any other score.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["qbc_force_disagreement"]


def qbc_force_disagreement(
    forces: jnp.ndarray, atom_mask: jnp.ndarray, *, reduction: str = "mean"
) -> jnp.ndarray:
    """Committee force disagreement per structure.

    Args:
      forces: ``(n_models, n_struct, n_atoms, 3)`` predicted forces, eV/Å.
      atom_mask: ``(n_struct, n_atoms)`` bool, ``False`` = padded atom.
      reduction: ``"mean"`` (over atoms, default) or ``"max"``.

    Returns:
      ``(n_struct,)`` disagreement, (eV/Å)^2.

    Raises:
      ValueError: fewer than 2 models, bad shapes or reduction.

    Examples:
      >>> import jax.numpy as jnp
      >>> f = jnp.stack([jnp.zeros((1, 2, 3)), jnp.ones((1, 2, 3))])
      >>> float(qbc_force_disagreement(f, jnp.array([[True, False]]))[0])
      0.75
    """
    if forces.ndim != 4 or forces.shape[-1] != 3:
        raise ValueError(f"forces must be (n_models, n_struct, n_atoms, 3), got {forces.shape}")
    if forces.shape[0] < 2:
        raise ValueError(f"a committee needs at least 2 models, got {forces.shape[0]}")
    if atom_mask.shape != forces.shape[1:3]:
        raise ValueError(f"atom_mask shape {atom_mask.shape} != {forces.shape[1:3]}")
    if reduction not in ("mean", "max"):
        raise ValueError(f"reduction must be 'mean' or 'max', got {reduction!r}")
    per_atom = jnp.sum(jnp.var(forces, axis=0), axis=-1)  # (n_struct, n_atoms)
    per_atom = jnp.where(atom_mask, per_atom, 0.0)
    if reduction == "max":
        return jnp.max(per_atom, axis=-1)
    cnt = jnp.sum(atom_mask, axis=-1)
    return jnp.where(cnt > 0, jnp.sum(per_atom, axis=-1) / jnp.maximum(cnt, 1), 0.0)

"""PMechDB-style stand-in: template reactions of small C/H/N/O molecules, GFN2-xTB paths.

PMechDB describes polar and pericyclic mechanistic steps as atom-mapped
reaction SMARTS, with no geometry and no energies (and a non-derivative
licence), so this generator uses its own small list of templates in that
style, :data:`TEMPLATES`: tautomerisations (keto–enol, imine–enamine,
amide–iminol), nucleophilic additions to C=O (water/alcohol → gem-diol /
hemiacetal, amine → hemiaminal), water eliminations (hemiaminal → imine,
tetrahedral intermediate → carbonyl), epoxide ring opening, Diels–Alder,
[1,5]-sigmatropic H shift and Claisen/Cope rearrangements. Only neutral
closed-shell species (GFN2-xTB with charge 0, singlet: the defaults of
:func:`~ntkal.datasets.xtb_oracle`, so every stored label can be recomputed
without extra metadata); radical and ionic steps are left out.

Per (template, reactant set, distinct product) the generator:

1. runs the RDKit reaction on the reactants *with explicit hydrogens* and
   orders the atoms so that atom ``i`` of the reactant complex is atom ``i``
   of the product complex: the reactant complex is the reactants in template
   order, each in RDKit's ``AddHs`` order, and product atoms are put in that
   order through RDKit's ``react_idx``/``react_atom_idx`` atom properties;
2. embeds 3-D structures with ETKDG (explicit seed): the side with a single
   molecule (the reactant if both have one) is the *anchor*; every molecule of
   the other side is embedded with ``n_conformers`` conformers and the one
   closest (Kabsch RMSD) to the anchor positions of its atoms is placed there,
   so reacting atoms face each other; molecules of a multi-molecule side are
   then pushed apart along their centroid directions until no two atoms of
   different molecules are closer than ``separation`` Å. Templates with
   several molecules on both sides are not supported;
3. relaxes both endpoints with GFN2-xTB (BFGS, fmax 0.03 eV/Å) and keeps the
   reaction only if the relaxed bond graphs (ASE natural cutoffs x 1.2, as
   :func:`~ntkal.datasets.t1x_like.bond_graph`) are exactly the RDKit
   reactant and product graphs; the product is then rigidly aligned onto the
   reactant (Kabsch, all atoms);
4. runs the T1x-like NEB (8 moving images, IDPP, improved tangent, ASE
   ``NEBOptimizer``; the T1x sub-sampling rule, frame filters and "no
   barrier" rejection of :mod:`.t1x_like`) and a short Langevin run (300 K)
   from each relaxed endpoint;
5. stores fresh GFN2-xTB single points (the oracle's retry ladder), not the
   values of the calculators reused along the NEB/MD.

Files are in the Transition1x layout (:func:`~ntkal.datasets.write_t1x`), but
the groups under ``/data`` are *reactions*, not formulas:
``/data/<template>__r<set>p<product>/rxn0000`` (one reaction per group, so a
split can hold some reactions of a template and not others); the T1x reader
reports the group name as ``info["system_id"]``, and ``system_id.split("__")[0]``
is the template. Near-equilibrium MD frames go to ``near_equilibrium.h5``
under the same group names (``eq0000``, ``eq0001``).

Splits (SoftLinks to reaction groups), assigned after generation among the
templates that produced reactions: ``val`` and ``test`` hold every reaction of
``n_val_templates`` / ``n_test_templates`` templates unseen in ``train``
(out-of-distribution *mechanisms*); ``val_id`` holds ``val_id_per_template``
reactions of each ``train`` template with more than that many reactions
(in-distribution: seen mechanisms, unseen reactants). The template with most
reactions always goes to ``train``, so ``val_id`` is non-empty whenever some
template produced more than ``val_id_per_template`` reactions. Every rejected
candidate is listed with its reason in ``manifest["failures"]``.
Level-of-theory prefix ``"GFN2-xTB"``; energies eV, forces eV/Å, positions Å.
Requires ``rdkit`` and ``tblite`` (``pip install 'ntkal[reactions]'``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed

from ntkal.datasets.t1x import write_t1x
from ntkal.datasets.t1x_like import (_label_reaction, _md, _md_group, _neb, _reaction_group, _relax,
                                      bond_graph)

__all__ = ["ReactionTemplate", "TEMPLATES", "PMechDBLikeConfig", "PMECHDB_LIKE_SIZES",
           "PMECHDB_SPLITS", "LEVEL_OF_THEORY", "MappedReaction", "map_reaction",
           "template_bond_changes", "reactant_complex", "generate_pmechdb_like",
           "template_of"]

VERSION = 1
LEVEL_OF_THEORY = "GFN2-xTB"
PMECHDB_SPLITS = ("train", "val_id", "val", "test")
_SEP = "__"  # group key = f"{template}{_SEP}r{set}p{product}"


@dataclasses.dataclass(frozen=True)
class ReactionTemplate:
    """One mechanistic step as an atom-mapped RDKit reaction SMARTS.

    Attributes:
      name: identifier (letters, digits, ``_``); the split unit.
      smarts: ``reactants>>products``; every reactant-template atom is mapped
        and reappears in the products (no atom is created or deleted).
        Hydrogens that move are written as mapped ``[#1:n]`` atoms.
      reactant_sets: SMILES tuples, one SMILES per reactant template, in
        template order (neutral, closed-shell, C/H/N/O, ≤ 10 heavy atoms).
      kind: short description of the mechanism.
    """
    name: str
    smarts: str
    reactant_sets: tuple[tuple[str, ...], ...]
    kind: str


# Mapped atoms: heavy atoms as [C:1], moving hydrogens as [#1:n]. The reactions
# run on molecules with explicit H atoms, so unmapped H atoms are carried along.
TEMPLATES: tuple[ReactionTemplate, ...] = (
    ReactionTemplate(
        "keto_enol", "[C;X4:1](-[#1:4])-[C:2]=[O:3]>>[C:1]=[C:2]-[O:3]-[#1:4]",
        (("CC=O",), ("CC(C)=O",), ("CCC=O",), ("CCC(C)=O",)),
        "keto-enol tautomerism (1,3-H shift C→O)"),
    ReactionTemplate(
        "imine_enamine", "[C;X4:1](-[#1:4])-[C:2]=[N:3]>>[C:1]=[C:2]-[N:3]-[#1:4]",
        (("CC=N",), ("CC=NC",), ("CC(C)=N",)),
        "imine-enamine tautomerism (1,3-H shift C→N)"),
    ReactionTemplate(
        "amide_iminol", "[#1:4]-[N:3]-[C:2]=[O:1]>>[N:3]=[C:2]-[O:1]-[#1:4]",
        (("NC=O",), ("CC(N)=O",), ("CNC=O",)),
        "amide-iminol tautomerism (1,3-H shift N→O)"),
    ReactionTemplate(
        "carbonyl_oh_addition", "[C;X3:1]=[O:2].[#1:4]-[O;X2:3]>>[O:3]-[C:1]-[O:2]-[#1:4]",
        (("C=O", "O"), ("C=O", "CO"), ("CC=O", "O"), ("CC(C)=O", "O"), ("O=CO", "CO")),
        "nucleophilic addition of water/alcohol to C=O (hydration, hemiacetal, ester step 1)"),
    ReactionTemplate(
        "carbonyl_amine_addition", "[C;X3:1]=[O:2].[#1:4]-[N;X3:3]>>[N:3]-[C:1]-[O:2]-[#1:4]",
        (("C=O", "N"), ("C=O", "CN"), ("CC=O", "N"), ("C=O", "CNC"), ("O=CO", "N")),
        "nucleophilic addition of ammonia/amine to C=O (hemiaminal, amide step 1)"),
    ReactionTemplate(
        "hemiaminal_dehydration", "[#1:5]-[N:1]-[C;X4:2]-[O:3]-[#1:4]>>[N:1]=[C:2].[O:3](-[#1:4])-[#1:5]",
        (("NCO",), ("CNCO",), ("CC(N)O",)),
        "water elimination from a hemiaminal (imine formation)"),
    ReactionTemplate(
        "diol_dehydration", "[#1:5]-[O:1]-[C;X4:2]-[O:3]-[#1:4]>>[O:1]=[C:2].[O:3](-[#1:4])-[#1:5]",
        (("OCO",), ("CC(O)O",), ("COC(O)O",)),
        "water elimination from a gem-diol / tetrahedral intermediate (ester step 2)"),
    ReactionTemplate(
        "epoxide_opening", "[C:1]1-[O:2]-[C:3]1.[#1:5]-[N,O;X3,X2;!$(*=*):4]>>[*:4]-[C:1]-[C:3]-[O:2]-[#1:5]",
        (("C1CO1", "N"), ("C1CO1", "O"), ("C1CO1", "CN"), ("CC1CO1", "N")),
        "epoxide ring opening by ammonia/water/amine"),
    ReactionTemplate(
        "diels_alder", "[C:1]=[C:2]-[C:3]=[C:4].[C:5]=[C:6]>>[C:1]1-[C:2]=[C:3]-[C:4]-[C:6]-[C:5]1",
        (("C=CC=C", "C=C"), ("C=CC=C", "C=CC=O"), ("C=CC=C", "C=CC#N")),
        "Diels-Alder [4+2] cycloaddition"),
    ReactionTemplate(
        "h_shift_15", "[#1:6]-[C;X4:1]-[C:2]=[C:3]-[C:4]=[C:5]>>[C:1]=[C:2]-[C:3]=[C:4]-[C:5]-[#1:6]",
        (("C/C=C\\C=C",), ("C/C=C\\C=C/C",), ("C/C(C)=C\\C=C",)),
        "[1,5]-sigmatropic hydrogen shift"),
    ReactionTemplate(
        "claisen", "[C:1]=[C:2]-[O:3]-[C:4]-[C:5]=[C:6]>>[O:3]=[C:2]-[C:1]-[C:6]-[C:5]=[C:4]",
        (("C=COCC=C",), ("C=C(C)OCC=C",), ("C=COCC(C)=C",)),
        "Claisen [3,3]-sigmatropic rearrangement"),
    ReactionTemplate(
        "cope", "[C:1]=[C:2]-[C:3]-[C:4]-[C:5]=[C:6]>>[C:3]=[C:2]-[C:1]-[C:6]-[C:5]=[C:4]",
        (("C=CC(C)CC=C",), ("C=CC(O)CC=C",), ("C=CCC(C)C=C",)),
        "Cope [3,3]-sigmatropic rearrangement"),
)
_BY_NAME = {t.name: t for t in TEMPLATES}


@dataclasses.dataclass(frozen=True)
class PMechDBLikeConfig:
    """Sizes of a PMechDB-like dataset.

    Attributes:
      n_reactions: maximum number of kept reactions (fewer if candidates run out).
      templates: names of :data:`TEMPLATES` to use, or ``None`` for all.
      sets_per_template: reactant sets (in order) used per template.
      products_per_set: distinct products (by canonical SMILES) per reactant set.
      n_conformers: ETKDG conformers per molecule to choose the best-aligned from.
      separation: minimum distance (Å) between atoms of different molecules of a
        multi-molecule endpoint before relaxation.
      neb_steps: maximum NEB optimiser iterations.
      neb_fmax: NEB convergence, eV/Å.
      md_steps: Langevin steps (0.5 fs) per relaxed endpoint (near-equilibrium
        frames, the ``pretrain`` split); every ``md_every`` is kept.
      md_every: recording interval, steps.
      md_temperature: K.
      n_val_templates, n_test_templates: templates held out (every reaction).
      val_id_per_template: reactions of each train template put into ``val_id``.
    """
    n_reactions: int
    templates: tuple[str, ...] | None = None
    sets_per_template: int = 3
    products_per_set: int = 1
    n_conformers: int = 8
    separation: float = 2.5
    neb_steps: int = 150
    neb_fmax: float = 0.05
    md_steps: int = 40
    md_every: int = 4
    md_temperature: float = 300.0
    n_val_templates: int = 2
    n_test_templates: int = 2
    val_id_per_template: int = 1

    def __post_init__(self):
        unknown = set(self.templates or ()) - set(_BY_NAME)
        if unknown:
            raise ValueError(f"unknown templates {sorted(unknown)}; expected some of {sorted(_BY_NAME)}")


PMECHDB_LIKE_SIZES: Mapping[str, PMechDBLikeConfig] = {
    # four small reactions (6-10 atoms) of three templates: seconds
    "tiny": PMechDBLikeConfig(n_reactions=4, templates=("carbonyl_oh_addition", "amide_iminol",
                                                        "keto_enol"),
                              sets_per_template=2, n_conformers=4, neb_steps=20, md_steps=8,
                              n_val_templates=1, n_test_templates=1),
    "small": PMechDBLikeConfig(n_reactions=16, sets_per_template=2, neb_steps=100, md_steps=40),
    "default": PMechDBLikeConfig(n_reactions=40, sets_per_template=5, neb_steps=150,
                                 md_steps=100, md_every=5, n_val_templates=2, n_test_templates=3),
}


def template_of(system_id: str) -> str:
    """The template name of a reaction group key (``info["system_id"]``)."""
    return system_id.split(_SEP)[0]


# --------------------------------------------------------------------------- RDKit side


@dataclasses.dataclass(frozen=True)
class MappedReaction:
    """One template application with a common atom order on both sides.

    Attributes:
      template: the :class:`ReactionTemplate` name.
      reactants: reactant SMILES (template order).
      product_smiles: canonical SMILES of the product side (``.``-joined).
      numbers: atomic numbers (N,), the same on both sides.
      reactant_bonds, product_bonds: bond graphs ``(i, j)``, i < j.
      template_atoms: template map number → atom index.
      reactant_mol, product_mol: RDKit molecules with explicit H in this atom
        order (the product as one, possibly disconnected, molecule).
    """
    template: str
    reactants: tuple[str, ...]
    product_smiles: str
    numbers: np.ndarray
    reactant_bonds: frozenset[tuple[int, int]]
    product_bonds: frozenset[tuple[int, int]]
    template_atoms: Mapping[int, int]
    reactant_mol: object
    product_mol: object


def _mol_bonds(mol) -> frozenset[tuple[int, int]]:
    return frozenset(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds())


def reactant_complex(smiles: tuple[str, ...]):
    """The reactants, each ``Chem.AddHs``'ed, combined in order (the common atom order)."""
    from rdkit import Chem

    mol = None
    for s in smiles:
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        mol = m if mol is None else Chem.CombineMols(mol, m)
    return mol


def template_bond_changes(smarts: str) -> tuple[frozenset, frozenset]:
    """``(formed, broken)`` bonds of a template as sorted pairs of map numbers."""
    from rdkit.Chem import AllChem

    rxn = AllChem.ReactionFromSmarts(smarts)

    def pairs(mols):
        out = set()
        for m in mols:
            for b in m.GetBonds():
                a, c = b.GetBeginAtom().GetAtomMapNum(), b.GetEndAtom().GetAtomMapNum()
                if a and c:
                    out.add(tuple(sorted((a, c))))
        return out

    r, p = pairs(rxn.GetReactants()), pairs(rxn.GetProducts())
    return frozenset(p - r), frozenset(r - p)


def map_reaction(template: ReactionTemplate, smiles: tuple[str, ...],
                 max_products: int = 1) -> tuple[list[MappedReaction], list[str]]:
    """Apply ``template`` to ``smiles``; returns (distinct mapped reactions, problems).

    Products are kept in RDKit's match order, one per canonical product SMILES,
    at most ``max_products``. A product that does not sanitise, is charged or
    radical, or does not contain exactly the reactant atoms is reported in
    ``problems`` instead.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem, Descriptors

    rxn = AllChem.ReactionFromSmarts(template.smarts)
    mols = [Chem.AddHs(Chem.MolFromSmiles(s)) for s in smiles]
    offsets = np.cumsum([0] + [m.GetNumAtoms() for m in mols])
    react = reactant_complex(smiles)
    n = react.GetNumAtoms()
    numbers = np.array([a.GetAtomicNum() for a in react.GetAtoms()], dtype=np.int64)
    out, problems, seen = [], [], set()
    for prods in rxn.RunReactants(tuple(mols)):
        order, tmap, combined, ok = [], {}, None, True
        for p in prods:
            try:
                Chem.SanitizeMol(p)
            except Exception as err:  # noqa: BLE001 (RDKit raises several types)
                problems.append(f"product does not sanitise: {err}")
                ok = False
                break
            for a in p.GetAtoms():
                props = a.GetPropsAsDict()
                idx = int(offsets[props["react_idx"]] + props["react_atom_idx"])
                order.append(idx)
                if "old_mapno" in props:
                    tmap[int(props["old_mapno"])] = idx
            combined = p if combined is None else Chem.CombineMols(combined, p)
        if not ok:
            continue
        if sorted(order) != list(range(n)):
            problems.append("product atoms are not exactly the reactant atoms")
            continue
        # new atom k of the product = combined product atom inv[k]
        inv = [0] * n
        for pos, idx in enumerate(order):
            inv[idx] = pos
        prod = Chem.RenumberAtoms(combined, inv)
        Chem.SanitizeMol(prod)
        if (any(a.GetFormalCharge() or a.GetNumImplicitHs() or a.GetNumExplicitHs()
                for a in prod.GetAtoms()) or Descriptors.NumRadicalElectrons(prod)):
            problems.append("product is charged, radical or gained hydrogens")
            continue
        key = Chem.MolToSmiles(Chem.RemoveHs(prod))
        if key in seen:
            continue
        seen.add(key)
        pz = np.array([a.GetAtomicNum() for a in prod.GetAtoms()], dtype=np.int64)
        assert np.array_equal(pz, numbers)  # guaranteed by the renumbering
        out.append(MappedReaction(template.name, tuple(smiles), key, numbers, _mol_bonds(react),
                                  _mol_bonds(prod), dict(sorted(tmap.items())), react, prod))
        if len(out) >= max_products:
            break
    if not out and not problems:
        problems.append("template does not match the reactants")
    return out, problems


# --------------------------------------------------------------------------- 3-D


def _kabsch(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``mobile`` rigidly superposed on ``target`` (proper rotation) and the RMSD, Å."""
    mc, tc = mobile.mean(0), target.mean(0)
    a, b = mobile - mc, target - tc
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    out = a @ rot + tc
    return out, float(np.sqrt(((out - target) ** 2).sum(1).mean()))


def _conformers(mol, n: int, seed: int) -> list[np.ndarray]:
    from rdkit.Chem import AllChem

    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if not ids:  # rare: retry with random coordinates
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    return [np.array(mol.GetConformer(i).GetPositions()) for i in ids]


def _fragments(mol) -> list[tuple[object, tuple[int, ...]]]:
    from rdkit import Chem

    frags = Chem.GetMolFrags(mol, asMols=False)
    mols = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    return list(zip(mols, frags))


def _separate(pos: np.ndarray, frags: list[tuple[int, ...]], sep: float) -> np.ndarray:
    """Translate fragments apart along their centroid directions until every
    inter-fragment distance is at least ``sep`` Å."""
    pos = pos.copy()
    if len(frags) < 2:
        return pos
    label = np.empty(len(pos), dtype=int)
    for k, fr in enumerate(frags):
        label[list(fr)] = k
    other = label[:, None] != label[None, :]
    for _ in range(400):
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        if d[other].min() >= sep:
            break
        centre = pos.mean(0)
        for k, fr in enumerate(frags):
            v = pos[list(fr)].mean(0) - centre
            norm = np.linalg.norm(v)
            v = v / norm if norm > 1e-6 else np.eye(3)[k % 3]
            pos[list(fr)] += 0.05 * v
    return pos


def _endpoints_3d(mr: MappedReaction, n_conf: int, sep: float, seed: int) -> tuple[Atoms, Atoms]:
    """Reactant and product complexes (same atom order) before relaxation."""
    r_frags, p_frags = _fragments(mr.reactant_mol), _fragments(mr.product_mol)
    if len(r_frags) > 1 and len(p_frags) > 1:
        raise ValueError("several molecules on both sides: not supported")
    anchor_is_r = len(r_frags) == 1
    anchor, other = (mr.reactant_mol, p_frags) if anchor_is_r else (mr.product_mol, r_frags)
    n = len(mr.numbers)
    best = (np.inf, None)
    frag_confs = [(idx, _conformers(fm, n_conf, seed + 1 + k)) for k, (fm, idx) in enumerate(other)]
    if any(not c for _, c in frag_confs):
        raise ValueError("ETKDG embedding failed")
    anchor_confs = _conformers(anchor, n_conf, seed)
    if not anchor_confs:
        raise ValueError("ETKDG embedding failed")
    for apos in anchor_confs:
        placed, total = np.zeros((n, 3)), 0.0
        for idx, confs in frag_confs:
            fits = [_kabsch(c, apos[list(idx)]) for c in confs]
            pos, rmsd = min(fits, key=lambda t: t[1])
            placed[list(idx)] = pos
            total += rmsd ** 2 * len(idx)
        if total < best[0]:
            best = (total, (apos, placed))
    apos, placed = best[1]
    placed = _separate(placed, [idx for idx, _ in frag_confs], sep)
    r_pos, p_pos = (apos, placed) if anchor_is_r else (placed, apos)
    return Atoms(numbers=mr.numbers, positions=r_pos), Atoms(numbers=mr.numbers, positions=p_pos)


# --------------------------------------------------------------------------- one reaction


def _reaction_job(args) -> dict:
    """Run one candidate (template, reactant set, product) end to end.

    Returns ``{"ok": True, ...}`` with freshly labelled frames or
    ``{"ok": False, "failure": {...}}``. Randomness: ``default_rng([seed, qi])``
    (ETKDG seed and MD).
    """
    from ntkal.datasets.oracles import xtb_oracle

    qi, key, tname, smiles, k_prod, cfg, seed = args
    where = {"key": key, "template": tname, "reactants": list(smiles), "product_index": k_prod}
    fail = lambda reason: {"ok": False, "failure": {**where, "reason": reason}}
    mapped, problems = map_reaction(_BY_NAME[tname], smiles, max_products=k_prod + 1)
    if len(mapped) <= k_prod:
        return fail("RDKit: " + ("; ".join(problems) or "no such product"))
    mr = mapped[k_prod]
    where["product"] = mr.product_smiles
    rng = np.random.default_rng([seed, qi])
    try:
        r0, p0 = _endpoints_3d(mr, cfg.n_conformers, cfg.separation, int(rng.integers(2**31 - 1)))
    except ValueError as err:
        return fail(f"3-D construction: {err}")
    oracle = xtb_oracle()
    make_calc = oracle.make_calculator
    try:
        react = _relax(r0, make_calc)
        prod = _relax(p0, make_calc)
        if bond_graph(react) != mr.reactant_bonds:
            return fail("relaxed reactant complex does not have the template's reactant bond graph")
        if bond_graph(prod) != mr.product_bonds:
            return fail("relaxed product does not have the template's product bond graph")
        react_c, prod_c = react.copy(), prod.copy()
        react_c.calc = prod_c.calc = None
        prod_c.positions = _kabsch(prod_c.positions, react_c.positions)[0]
        path = _neb(react_c, prod_c, make_calc, cfg)
        if not path["has_barrier"]:
            return fail("no barrier: highest image is an endpoint")
        md_r = _md(react_c, make_calc, cfg, rng) if cfg.md_steps else []
        md_p = _md(prod_c, make_calc, cfg, rng) if cfg.md_steps else []
    except CalculationFailed as err:
        return fail(f"SCF failure: {err}")
    res = _label_reaction(oracle, mr.numbers, path, [md_r, md_p], where)
    if not res["ok"]:
        return res
    return {**res, "product": mr.product_smiles,
            "template_atoms": {str(m): int(i) for m, i in mr.template_atoms.items()},
            "bonds_formed": sorted(map(list, mr.product_bonds - mr.reactant_bonds)),
            "bonds_broken": sorted(map(list, mr.reactant_bonds - mr.product_bonds))}


def _candidate_queue(cfg: PMechDBLikeConfig, rng) -> list[tuple[str, str, tuple[str, ...], int]]:
    """``(key, template, reactants, product index)``, round-robin over templates
    (shuffled order of templates; reactant sets in listed order)."""
    names = list(cfg.templates) if cfg.templates is not None else [t.name for t in TEMPLATES]
    names = [names[i] for i in rng.permutation(len(names))]
    per = {}
    for name in names:
        t = _BY_NAME[name]
        per[name] = [(f"{name}{_SEP}r{s}p{k}", name, smiles, k)
                     for s, smiles in enumerate(t.reactant_sets[: cfg.sets_per_template])
                     for k in range(cfg.products_per_set)]
    queue = []
    while any(per.values()):
        for name in names:
            if per[name]:
                queue.append(per[name].pop(0))
    return queue


def _split(reactions: list[tuple[str, str]], cfg: PMechDBLikeConfig, rng) -> dict[str, list[str]]:
    """Split reaction keys: ``val``/``test`` by template, ``val_id`` from train templates.

    ``reactions``: ``(key, template)`` in generation order.
    """
    by_t: dict[str, list[str]] = {}
    for key, t in reactions:
        by_t.setdefault(t, []).append(key)
    templates = sorted(by_t)
    nv, nt = cfg.n_val_templates, cfg.n_test_templates
    if len(templates) < nv + nt + 1:
        raise ValueError(f"need reactions of at least {nv + nt + 1} templates, got {len(templates)}")
    order = [templates[i] for i in rng.permutation(len(templates))]
    biggest = max(order, key=lambda t: len(by_t[t]))  # first of the largest, in random order
    rest = [t for t in order if t != biggest]
    val_t, test_t = rest[:nv], rest[nv:nv + nt]
    train_t = [biggest] + rest[nv + nt:]
    out = {"train": [], "val_id": [], "val": sorted(k for t in val_t for k in by_t[t]),
           "test": sorted(k for t in test_t for k in by_t[t])}
    for t in train_t:
        keys = by_t[t]
        held = ([keys[i] for i in rng.permutation(len(keys))[: cfg.val_id_per_template]]
                if len(keys) > cfg.val_id_per_template else [])
        out["val_id"].extend(held)
        out["train"].extend(k for k in keys if k not in held)
    return {s: sorted(v) for s, v in out.items()}


def generate_pmechdb_like(out_dir: str, cfg: PMechDBLikeConfig, seed: int, *, progress: bool = True,
                          workers: int = 1) -> dict:
    """Generate a PMechDB-like dataset into ``out_dir``; returns the manifest.

    Files: ``pmechdb_like.h5`` (reaction paths + R/TS/P) and
    ``near_equilibrium.h5`` (MD around the relaxed endpoints), both in the T1x
    layout with ``/train``, ``/val_id``, ``/val``, ``/test`` SoftLinks to
    reaction groups; ``level_of_theory`` is :data:`LEVEL_OF_THEORY`. Rejected
    candidates (RDKit problem, embedding failure, wrong relaxed bond graph, SCF
    failure, no barrier) are listed in ``manifest["failures"]``; per kept
    reaction ``manifest["reactions"]`` records template, reactant and product
    SMILES, ``template_atoms`` (map number → atom index), the formed/broken
    bonds, NEB statistics and the split. ``workers`` processes give identical
    output to one.
    """
    from tqdm.auto import tqdm

    from ntkal.data.parallel import ordered_map
    from ntkal.datasets.oracles import xtb_oracle

    import rdkit  # noqa: F401  (fail early without rdkit)

    xtb_oracle()  # fail early without tblite; warn about threads
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    queue = _candidate_queue(cfg, rng)
    jobs = ordered_map(_reaction_job, ((qi, *c, cfg, seed) for qi, c in enumerate(queue)),
                       workers, preload=("tblite.ase", "rdkit.Chem"))
    reactions, eq_groups, failures, stats = [], [], [], []
    bar = tqdm(total=cfg.n_reactions, desc="pmechdb_like", disable=not progress)
    try:
        for (key, tname, smiles, k_prod), res in zip(queue, jobs):
            if len(reactions) >= cfg.n_reactions:
                break
            failures.extend(res.get("label_failures", []))
            if not res["ok"]:
                failures.append(res["failure"])
                continue
            z = res["z"]
            reactions.append(_reaction_group(res, key, "rxn0000"))
            for j, md in enumerate(res["md"]):
                if md:
                    eq_groups.append(_md_group(key, f"eq{j:04d}", z, md))
            p = res["path"]
            stats.append({"key": key, "template": tname, "reactants": list(smiles),
                          "product_index": k_prod, "product": res["product"],
                          "template_atoms": res["template_atoms"],
                          "bonds_formed": res["bonds_formed"], "bonds_broken": res["bonds_broken"],
                          "n_atoms": int(len(z)), "n_path_frames": len(res["frames"]),
                          "neb_iterations": p["iterations"], "converged": p["converged"],
                          "dropped_frames": p["dropped"], "barrier_eV": p["barrier"]})
            bar.update(1)
    finally:
        jobs.close()
        bar.close()
    split_links = _split([(s["key"], s["template"]) for s in stats], cfg, rng)
    split_of = {k: s for s, ks in split_links.items() for k in ks}
    for st in stats:
        st["split"] = split_of[st["key"]]
    write_t1x(os.path.join(out_dir, "pmechdb_like.h5"), reactions, split_links,
              level_of_theory=LEVEL_OF_THEORY)
    write_t1x(os.path.join(out_dir, "near_equilibrium.h5"), eq_groups, split_links,
              level_of_theory=LEVEL_OF_THEORY)
    templates = {s: sorted({template_of(k) for k in ks}) for s, ks in split_links.items()}
    return {"generator": "pmechdb_like", "version": VERSION, "seed": seed,
            "config": dataclasses.asdict(cfg), "level_of_theory": LEVEL_OF_THEORY,
            "files": {"paths": "pmechdb_like.h5", "near_equilibrium": "near_equilibrium.h5"},
            "splits": split_links, "split_templates": templates,
            "templates": {t.name: {"smarts": t.smarts, "kind": t.kind} for t in TEMPLATES},
            "reactions": stats, "failures": failures,
            "n_path_frames": int(sum(len(r["energy"]) for r in reactions)),
            "n_eq_frames": int(sum(len(g["energy"]) for g in eq_groups))}

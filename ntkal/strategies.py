"""The two named acquisition strategies: one question instead of five knobs.

Which kernel settings win depends on one question about the user's data: *do you have frames
like the ones your model will be used on?*

- ``"representative"``: yes, the pool looks like the application, or a target set of
  application-like frames is given (``[data] target_set``, ``ntkal select --target``). Cosine
  features (each structure's features scaled to unit trace), each target structure counted once,
  a fixed noise σ² = 1 relative to that unit, and the posterior variance reduced over the target
  set (over the pool when there is none). Measured: on OC20-style data whose pool looks like the
  tests it beat random in every seed; under pool shift with a target set it saved 69–70 % of
  random's labels with the toy foundation model (but lost to random with SevenNet-0, and over
  the pool under pool shift it lost in every seed).
- ``"extrapolation"`` (the default): what will be simulated may lie outside the pool's bulk.
  Median-trace feature scaling, σ² chosen by the evidence, the pool's posterior variance reduced.
  Measured: under pool shift it beat random in every seed (toy models and SevenNet-0); on
  OC20-style ID data it was level with random, never worse.

The default is ``"extrapolation"`` because its wrong case is a tie with random, while the
representative strategy's wrong case (no target set, a pool that is not the application) lost
to random in every seed. Each strategy only sets the knobs below; every knob stays available for
studies (a knob that contradicts a named strategy is an error where the strategy is named).

JAX-free; imported by the command-line checks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STRATEGIES", "DEFAULT_STRATEGY", "KNOBS", "strategy_knobs", "apply_strategy", "strategy_of",
           "describe_strategy"]

#: The named strategies, the default first.
STRATEGIES = ("extrapolation", "representative")
DEFAULT_STRATEGY = "extrapolation"

#: The knobs a strategy sets (the ``AcquisitionConfig`` / ``LoopConfig`` field names).
KNOBS = ("feature_norm", "target_weighting", "noise_rule", "noise_var", "variance_target")

_WHY = {
    "extrapolation": "what you simulate may lie outside the pool's bulk: median-trace features, evidence σ², "
                     "the pool's variance reduced",
    "representative": "the pool (or the target set) looks like what you simulate: cosine features, each target "
                      "structure once, σ² = 1",
}


def strategy_knobs(name: str, *, has_target_set: bool) -> dict[str, Any]:
    """The knob values of strategy ``name`` (see the module docstring).

    Args:
      name: one of :data:`STRATEGIES`.
      has_target_set: whether a target set is given: the representative strategy then reduces the
        variance over it (``variance_target = "target_set"``), else over the pool.

    Raises:
      ValueError: an unknown name.
    """
    if name == "extrapolation":
        return {"feature_norm": "median_trace", "target_weighting": "none", "noise_rule": "auto",
                "noise_var": 1e-2, "variance_target": "pool"}
    if name == "representative":
        return {"feature_norm": "per_structure", "target_weighting": "per_structure", "noise_rule": "fixed",
                "noise_var": 1.0, "variance_target": "target_set" if has_target_set else "pool"}
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def apply_strategy(name: str, values: dict[str, Any], defaults: dict[str, Any], *,
                   has_target_set: bool) -> dict[str, Any]:
    """``values`` (knob → value, e.g. from command-line flags) with strategy ``name``'s knobs
    filled in: a knob left at its default takes the strategy's value; one set to another value
    that contradicts the strategy is an error. Knobs absent from ``values`` are left out.

    Raises:
      ValueError: an unknown strategy, or a knob that contradicts it (naming both).
    """
    knobs = strategy_knobs(name, has_target_set=has_target_set)
    out = dict(values)
    for key, value in values.items():
        if key not in knobs or value == knobs[key]:
            continue
        if value != defaults.get(key):
            raise ValueError(f"{key} = {value!r} contradicts strategy {name!r} (which sets {key} = "
                             f"{knobs[key]!r}); leave one of them out")
        out[key] = knobs[key]
    return out


def strategy_of(settings: Any, *, has_target_set: bool, uses_evidence: bool) -> str | None:
    """The named strategy whose knobs ``settings`` (an object with the :data:`KNOBS` attributes, or a
    dict) hold, or ``None`` for custom settings.

    Args:
      settings: e.g. a ``LoopConfig`` (or a dict of the knobs; ``variance_target`` defaults to
        ``"pool"`` when absent, as in ``ntkal select``, where ``--target`` decides it).
      has_target_set: whether a target set is given.
      uses_evidence: whether σ² is chosen by the evidence (``noise_rule`` resolved for the method);
        under the evidence ``noise_var`` is unused and not compared.
    """
    get = settings.get if isinstance(settings, dict) else (lambda k, d=None: getattr(settings, k, d))
    values = {k: get(k, "pool" if k == "variance_target" else None) for k in KNOBS}
    for name in STRATEGIES:
        knobs = strategy_knobs(name, has_target_set=has_target_set)
        if name == "extrapolation":
            if not uses_evidence:
                continue
            knobs = {k: v for k, v in knobs.items() if k not in ("noise_rule", "noise_var")}
        elif has_target_set and values["variance_target"] == "pool":
            knobs = {**knobs, "variance_target": "pool"}  # representative over the pool, target set unused
        if all(values[k] == v for k, v in knobs.items()):
            return name
    return None


def describe_strategy(settings: Any, *, has_target_set: bool, uses_evidence: bool, named: bool = False) -> str:
    """One line saying which strategy is in force and why, e.g. ``"strategy: extrapolation (the
    default; what you simulate may lie outside ...)"``; ``named``: the user asked for it by name."""
    name = strategy_of(settings, has_target_set=has_target_set, uses_evidence=uses_evidence)
    if name is None:
        get = settings.get if isinstance(settings, dict) else (lambda k, d=None: getattr(settings, k, d))
        knobs = ", ".join(f"{k}={get(k)!r}" for k in KNOBS if get(k) is not None)
        return f"strategy: custom settings ({knobs})"
    how = "as asked" if named else ("the default" if name == DEFAULT_STRATEGY else "by its settings")
    where = ""
    if name == "representative":
        where = ("; variance over the target set" if _variance_target(settings) == "target_set"
                 else "; variance over the pool")
    return f"strategy: {name} ({how}; {_WHY[name]}{where})"


def _variance_target(settings: Any) -> str:
    if isinstance(settings, dict):
        return settings.get("variance_target", "pool")
    return getattr(settings, "variance_target", "pool")

"""Recipes and the search space: one method, which candidates, their weights, the method's knobs.

A :class:`Recipe` is what the agent evaluates in memory (``Candidates.merge_into``) and, once chosen, writes
as mergekit YAML for the streaming engine; both read the same method functions with the same seed, so the
file written is the model that was scored.

The space (define-by-run, for Optuna): the method family; one weight per selected candidate in [0, 1]; a
density shared by the candidates for the sparsifying methods; ``lambda`` (the task-vector scale) for methods
that add task vectors without normalising, where weights that sum past 1 would overshoot (dare_ties at
weight 1 on five zoo experts scored 0); ``epsilon`` for DELLA, ``gamma`` for breadcrumbs. model_stock has no
knob: its weights come from the geometry of the models. SLERP (two candidates only) has one: ``t``, from the
first candidate (0) to the second (1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: methods whose task vectors add up (normalize=False by default): searched with a lambda below ~1.5
_ADDITIVE = {"task_arithmetic", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della_linear"}
#: methods between two candidates, the first one the method's "base" endpoint (SLERP: t=0 is the first model)
ENDPOINT = {"slerp"}
_DENSITY = {"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}


@dataclass(frozen=True)
class Recipe:
    method: str
    models: tuple[str, ...]  # candidate paths, in merge order
    params: dict[str, Any] = field(default_factory=dict)  # global parameters
    model_params: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per-model, aligned with models
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "models": list(self.models), "params": dict(self.params),
                "model_params": {k: _plain(v) for k, v in self.model_params.items()}, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(d["method"], tuple(d["models"]), dict(d["params"]),
                   {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in d["model_params"].items()},
                   d.get("seed", 0))

    def key(self) -> str:
        """A hash of the recipe with floats rounded to 6 digits: two proposals that merge the same are one."""
        def r(x: Any) -> Any:
            if isinstance(x, (list, tuple)):  # a per-layer-group gradient
                return [r(y) for y in x]
            return round(x, 6) if isinstance(x, float) else x
        d = self.to_dict()
        d["params"] = {k: r(v) for k, v in d["params"].items()}
        d["model_params"] = {k: [r(x) for x in v] for k, v in d["model_params"].items()}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]

    def describe(self) -> str:
        names = [Path(m).name for m in self.models]
        bits = [f"{k}={_fmt(v)}" for k, v in sorted(self.params.items())]
        for k, v in sorted(self.model_params.items()):
            if len(set(v)) == 1 and not isinstance(v[0], tuple):  # one value for every model: say it once
                bits.append(f"{k}={_fmt(v[0])}")
            else:
                bits.append(f"{k}=[" + ", ".join(f"{n}:{_fmt(x)}" for n, x in zip(names, v, strict=True)) + "]")
        return f"{self.method}({', '.join(names)}{'; ' if bits else ''}{'; '.join(bits)})"

    def merge_kwargs(self, index: dict[str, int]) -> dict[str, Any]:
        """Keyword arguments of ``Candidates.merge_into`` (``lambda`` included, a keyword in Python)."""
        if self.method in ENDPOINT:
            return {"models": [index[m] for m in self.models], "base": index[self.models[0]], "seed": self.seed,
                    **self.params}
        return {"models": [index[m] for m in self.models], "seed": self.seed, **self.params,
                **{k: _plain(v) for k, v in self.model_params.items()}}

    def to_mergekit(self, base: Path) -> dict[str, Any]:
        """The mergekit YAML (as a dict) that ``modelmix merge`` (and mergekit, for its methods) runs."""
        from modelmix.methods import get_method

        m = get_method(self.method)
        models = []
        for i, path in enumerate(self.models):
            entry: dict[str, Any] = {"model": str(path)}
            if self.model_params:
                entry["parameters"] = {k: [float(x) for x in v[i]] if isinstance(v[i], tuple) else float(v[i])
                                       for k, v in self.model_params.items()}
            models.append(entry)
        cfg: dict[str, Any] = {"merge_method": self.method, "models": models, "dtype": "float32",
                               "random_seed": self.seed}
        if self.params:
            cfg["parameters"] = dict(self.params)
        if self.method in ENDPOINT:  # the first candidate is the method's base endpoint
            cfg["base_model"] = str(self.models[0])
            cfg["tokenizer_source"] = "base"
        elif m.uses_base or m.needs_base:  # a base the method does not use would be averaged in as a model
            cfg["base_model"] = str(base)
            cfg["tokenizer_source"] = "base"
        return cfg


def _plain(values: tuple[Any, ...]) -> list[Any]:
    """Per-model values as lists (a gradient, a tuple per model, as a list): JSON and merge arguments."""
    return [list(x) if isinstance(x, tuple) else x for x in values]


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):  # a gradient over the layers
        return "[" + " ".join(_fmt(x) for x in v) + "]"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def suggest(trial: Any, models: list[str], methods: list[str], seed: int, groups: int = 1) -> Recipe:
    """One recipe from an Optuna trial (define-by-run: each method's knobs exist only under it). ``groups`` > 1:
    each model's weight is a gradient of that many values over the layers (mergekit's ``weight: [a, b, c]``:
    the first layer gets a, the last c, those between interpolated; embeddings and head the first value)."""
    # one method (the CMA-ES refinement): not a parameter, so the sampler sees only continuous knobs
    method = methods[0] if len(methods) == 1 else trial.suggest_categorical("method", methods)
    if method == "model_stock":
        return Recipe(method, tuple(models), seed=seed)
    if method in ENDPOINT:  # offered for two candidates only: SLERP from the first to the second
        return Recipe(method, tuple(models), {"t": trial.suggest_float("t", 0.0, 1.0)}, {}, seed)
    weights: tuple[Any, ...]
    if groups > 1:
        weights = tuple(tuple(trial.suggest_float(f"w{i}_{g}", 0.0, 1.0) for g in range(groups))
                        for i in range(len(models)))
        if any(sum(w[g] for w in weights) <= 1e-6 for g in range(groups)):
            weights = tuple(tuple(1.0 for _ in range(groups)) for _ in models)
    else:
        weights = tuple(trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(len(models)))
        if sum(weights) <= 1e-6:
            weights = tuple(1.0 for _ in models)
    params: dict[str, Any] = {}
    mp: dict[str, tuple[float, ...]] = {"weight": weights}
    if method in _DENSITY:
        d = trial.suggest_float("density", 0.05, 1.0)
        mp["density"] = tuple(d for _ in models)
    if method in _ADDITIVE:
        params["lambda"] = trial.suggest_float("lambda", 0.1, 1.5)
    if method == "della":
        e = trial.suggest_float("epsilon", 0.0, 0.2)
        mp["epsilon"] = tuple(min(e, 0.99 * min(mp["density"][0], 1 - mp["density"][0])) for _ in models)
    if method in ("breadcrumbs", "breadcrumbs_ties"):
        g = trial.suggest_float("gamma", 0.0, 0.1)
        mp["gamma"] = tuple(g for _ in models)
    return Recipe(method, tuple(models), params, mp, seed)


def trial_params(r: Recipe, models: list[str], groups: int = 1) -> dict[str, Any]:
    """The Optuna parameters that :func:`suggest` maps to ``r`` (to enqueue a proposal as a trial)."""
    out: dict[str, Any] = {"method": r.method}
    if r.method == "model_stock":
        return out
    if r.method in ENDPOINT:
        return {**out, "t": float(r.params["t"])}
    w = dict(zip(r.models, r.model_params.get("weight", (1.0,) * len(r.models)), strict=True))
    if groups > 1:  # a scalar weight (a proposal) is the same in every group
        for i, m in enumerate(models):
            v = w.get(m, 0.0)
            out.update({f"w{i}_{g}": float(v[g] if isinstance(v, tuple) else v) for g in range(groups)})
    else:
        out.update({f"w{i}": float(w.get(m, 0.0)) for i, m in enumerate(models)})
    if "density" in r.model_params:
        out["density"] = float(r.model_params["density"][0])
    if "lambda" in r.params:
        out["lambda"] = float(r.params["lambda"])
    if "epsilon" in r.model_params:
        out["epsilon"] = float(r.model_params["epsilon"][0])
    if "gamma" in r.model_params:
        out["gamma"] = float(r.model_params["gamma"][0])
    return out

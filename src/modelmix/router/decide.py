"""From a classification to a decision: which strategy, which models, with what weights, and why.

The ``auto`` rule (a config's ``strategy`` other than ``auto`` forces that strategy; with a learner, feedback
chooses each route's model, ``router.learner``):

1. **single** — the top route's confidence reaches its calibrated threshold (``IntentClassifier``): its
   first healthy model answers (with a learner: the model feedback has shown to serve it best, see
   ``router.learner``).
2. **hybrid** — otherwise, when the two most likely routes each hold at least ``MATERIAL`` (25 %) and are
   served by different models: the first route's model drafts, the second's refines.
3. **mix** — otherwise, when at least two routes hold at least ``PRESENT`` (10 %): their first models
   answer and are mixed with weights proportional to the routes' confidences.
4. **rank** — otherwise (no route stands out, or "none" leads): the first model of every route with any
   share answers (all routes when "none" leads) and a ranker picks the best answer.

With a learner, when more than one of hybrid, mix and rank is possible for a query, feedback chooses among
them for the top route (``Learner.choose_strategy``: a Thompson draw, the rule's pick three pseudo-successes
ahead), and ``why`` says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelmix.router.classifier import NONE, Classification
from modelmix.router.config import RouterConfig

MATERIAL = 0.25
PRESENT = 0.10


@dataclass
class Decision:
    strategy: str
    routes: list[str]
    models: list[str]
    weights: list[float]
    why: str
    classification: Classification
    #: the router's own overhead for this query (classification + decision, and in a server the wait for
    #: the engine's classification batch), seconds
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "routes": self.routes, "models": self.models,
                "weights": [round(w, 6) for w in self.weights], "why": self.why,
                "distribution": {k: round(v, 6) for k, v in self.classification.distribution.items()},
                "scores": {k: round(v, 6) for k, v in self.classification.scores.items()},
                "ms": round((self.seconds or self.classification.seconds) * 1000, 3)}


def _first(cfg: RouterConfig, route: str, healthy: set[str] | None, learner: Any = None) -> str | None:
    if learner is not None:
        return learner.choose(route, healthy)
    spec = next(r for r in cfg.routes if r.name == route)
    for m in spec.models:
        if healthy is None or m in healthy:
            return m
    return None


def decide(cfg: RouterConfig, c: Classification, thresholds: dict[str, float], *,
           strategy: str | None = None, healthy: Iterable[str] | None = None, learner: Any = None) -> Decision:
    """The decision for one classified query (see the module docstring). With a ``learner``
    (:class:`modelmix.router.learner.Learner`) each route's model is its Thompson draw instead of the
    config's first healthy model."""
    ok = set(healthy) if healthy is not None else None
    want = strategy or cfg.strategy
    ranked = [(r, p) for r, p in c.distribution.items() if r != NONE]
    top, p_top = ranked[0]
    none_p = c.distribution.get(NONE, 0.0)

    def pick(routes: list[str]) -> tuple[list[str], list[str], list[float]]:
        rs, ms, ws = [], [], []
        for r in routes:
            m = _first(cfg, r, ok, learner)
            if m is not None and m not in ms:
                rs.append(r)
                ms.append(m)
                ws.append(c.distribution[r])
        s = sum(ws) or 1.0
        return rs, ms, [w / s for w in ws]

    def make(kind: str, routes: list[str], why: str) -> Decision:
        rs, ms, ws = pick(routes)
        if not ms:
            raise NoHealthyModel(f"no healthy model serves route(s) {', '.join(routes)}")
        if kind in ("hybrid", "mix", "rank") and len(ms) < 2:
            kind, why = "single", why + f"; only {ms[0]} is available, so it answers alone"
        return Decision(kind, rs, ms[:1] if kind == "single" else ms, [1.0] if kind == "single" else ws, why, c)

    second = ranked[1] if len(ranked) > 1 else (None, 0.0)
    present = [r for r, p in ranked if p >= PRESENT]
    if want == "single":
        return make("single", [r for r, _ in ranked], f"strategy single: top route {top} ({p_top:.0%})")
    if want == "hybrid":
        return make("hybrid", [top, second[0]] if second[0] else [top],
                    f"strategy hybrid: {top} ({p_top:.0%}) drafts, {second[0]} ({second[1]:.0%}) refines")
    if want == "mix":
        return make("mix", present or [top], "strategy mix: weights = route confidences")
    if want == "rank":
        return make("rank", present or [r for r, _ in ranked], "strategy rank: every present route's model answers")
    tau = thresholds.get(top, 0.5)
    if p_top >= tau and p_top > none_p:
        return make("single", [top], f"{top} is confident ({p_top:.0%} ≥ its threshold {tau:.0%})")
    # the multi-model strategies this classification allows, in the rule's order of preference
    options: dict[str, tuple[list[str], str]] = {}
    if second[0] is not None and p_top >= MATERIAL and second[1] >= MATERIAL and none_p < p_top:
        m1, m2 = _first(cfg, top, ok, learner), _first(cfg, second[0], ok, learner)
        if m1 != m2:
            options["hybrid"] = ([top, second[0]],
                                 f"two routes are material: {top} {p_top:.0%} and {second[0]} {second[1]:.0%}")
    if len(present) >= 2 and none_p < p_top:
        options["mix"] = (present, "several routes are present: " + ", ".join(
            f"{r} {c.distribution[r]:.0%}" for r in present))
    routes = [r for r, _ in ranked] if none_p >= p_top else (present or [r for r, _ in ranked])
    options["rank"] = (routes, f"no route stands out (top {top} {p_top:.0%}, none {none_p:.0%}): rank the answers")
    rule = next(iter(options))
    kind = rule
    if learner is not None and len(options) > 1:
        kind = learner.choose_strategy(top, list(options), rule)
    chosen, why = options[kind]
    if kind != rule:
        why += f" (feedback on {top} chose {kind} over the rule's {rule})"
    return make(kind, chosen, why)


class NoHealthyModel(RuntimeError):
    """Every model that could serve the query is down."""

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

**Pipelines** (the config's ``pipelines``: intents that need several routes in sequence) are classified like
routes; one whose ``input`` pattern does not match the query cannot be what it asks for, so the
distribution is conditioned on it not being that pipeline (its share leaves, the rest is renormalised;
``excluded`` in the classification's ``extra``). A pipeline that leads the distribution and reaches its threshold (or any leading pipeline under
``strategy: hybrid``) runs as a hybrid of its steps: each step's route model answers the previous step's
answer through the step's template. Otherwise each pipeline's share is spread evenly over its steps' routes
and the rule above runs on the routes alone (so ``single`` on a two-step query takes the likelier step's
model, and ``mix`` mixes the steps' models).

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
    #: a hybrid that runs a config pipeline: its name (``routes``/``models`` are its steps, in order)
    pipeline: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "routes": self.routes, "models": self.models, "pipeline": self.pipeline,
                "weights": [round(w, 6) for w in self.weights], "why": self.why,
                "distribution": {k: round(v, 6) for k, v in self.classification.distribution.items()},
                "scores": {k: round(v, 6) for k, v in self.classification.scores.items()},
                **({"excluded": self.classification.extra["excluded"]} if "excluded" in self.classification.extra
                   else {}),
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
    d = _decide(cfg, c, thresholds, strategy=strategy, healthy=healthy, learner=learner)
    gone = {n: p for n, p in d.classification.extra.get("excluded", {}).items() if p >= 0.01}
    if gone and d.classification is not c:
        d.why += "; not pipeline " + ", ".join(f"{n} ({p:.0%})" for n, p in gone.items()) + ": its input pattern " \
                 "does not match the query"
    return d


def _decide(cfg: RouterConfig, c: Classification, thresholds: dict[str, float], *,
            strategy: str | None, healthy: Iterable[str] | None, learner: Any) -> Decision:
    ok = set(healthy) if healthy is not None else None
    want = strategy or cfg.strategy
    gated = [pl.name for pl in cfg.pipelines if c.query and pl.input is not None
             and c.distribution.get(pl.name, 0.0) > 0 and not pl.first_input(c.query)[1]]
    if gated:
        c = _without(c, gated)
    none_p = c.distribution.get(NONE, 0.0)
    lead, p_lead = next((r, p) for r, p in c.distribution.items() if r != NONE)
    pl = cfg.pipeline(lead)
    if pl is not None and (want == "hybrid" or (want == "auto" and p_lead >= thresholds.get(lead, 0.5)
                                                 and p_lead > none_p)):
        steps = [st.route for st in pl.steps]
        models = [_first(cfg, r, ok, learner) for r in steps]
        if None in models:
            raise NoHealthyModel(f"pipeline {lead}: no healthy model serves route "
                                 f"{steps[models.index(None)]}")
        why = (f"strategy hybrid: pipeline {lead} ({p_lead:.0%})" if want == "hybrid" else
               f"pipeline {lead} is confident ({p_lead:.0%} ≥ its threshold {thresholds.get(lead, 0.5):.0%})")
        return Decision("hybrid", steps, models, [1.0 / len(steps)] * len(steps),  # type: ignore[arg-type]
                        why + ": " + " → ".join(steps), c, pipeline=lead)
    dist = _routes_only(cfg, c.distribution)
    ranked = sorted(((r, p) for r, p in dist.items() if r != NONE), key=lambda x: -x[1])
    top, p_top = ranked[0]

    def pick(routes: list[str]) -> tuple[list[str], list[str], list[float]]:
        rs, ms, ws = [], [], []
        for r in routes:
            m = _first(cfg, r, ok, learner)
            if m is not None and m not in ms:
                rs.append(r)
                ms.append(m)
                ws.append(dist[r])
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
            f"{r} {dist[r]:.0%}" for r in present))
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


def _without(c: Classification, names: list[str]) -> Classification:
    """``c`` conditioned on the query being none of ``names`` (pipelines whose ``input`` pattern does not
    match it, so they cannot be what it asks for): their shares leave and the rest is renormalised."""
    from dataclasses import replace

    left = {k: v for k, v in c.distribution.items() if k not in names}
    total = sum(left.values()) or 1.0
    return replace(c, distribution={k: v / total for k, v in left.items()},
                   extra={**c.extra, "excluded": {n: c.distribution[n] for n in names}})


def _routes_only(cfg: RouterConfig, distribution: dict[str, float]) -> dict[str, float]:
    """The distribution over routes and none, each pipeline's share spread evenly over its steps' routes
    (a two-step intent is both routes at once) for the strategies that combine routes, not steps."""
    if not cfg.pipelines:
        return distribution
    out = {r.name: distribution.get(r.name, 0.0) for r in cfg.routes}
    out[NONE] = distribution.get(NONE, 0.0)
    for pl in cfg.pipelines:
        share = distribution.get(pl.name, 0.0) / len(pl.steps)
        for st in pl.steps:
            out[st.route] += share
    return out


class NoHealthyModel(RuntimeError):
    """Every model that could serve the query is down."""

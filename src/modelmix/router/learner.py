"""Learning from feedback: which model should serve each route (Thompson sampling over route x model).

Each (route, model) pair keeps a Beta posterior over "an answer from this model to this route's queries is
good". Feedback is a score in [0, 1] on one interaction; it updates the pairs of that interaction's models,
each route weighted by the classifier's confidence in it (a query that was 70 % arithmetic and 30 % chat
teaches the arithmetic pair 0.7 of a lesson): ``alpha += w * score``, ``beta += w * (1 - score)``.

To serve a route, every healthy model of the route draws a sample from its posterior and the highest
draw wins: models that have done well are chosen more and more often, models with little feedback keep
being tried now and then (exploration), and a model that degrades loses its lead as bad scores arrive.
The prior is ``Beta(2, 1)`` for the route's first model (the config's order of preference) and
``Beta(1, 1)`` for the others, so with no feedback the config's first model is preferred but not forced.

The same posteriors, per route and multi-model strategy (hybrid, mix, rank), learn which way of combining
models works for a route's queries that no single route claims: feedback on an interaction of strategy
``s`` updates ``(route, s)`` with the same weights, and ``choose_strategy`` draws among the strategies the
decision rule finds feasible, the rule's own pick getting ``RULE_PRIOR`` pseudo-successes as its prior.

A config pipeline (a two-skill intent run as its steps' routes in sequence) has no posteriors of its own:
feedback on a query classified as a pipeline teaches its steps' routes, its share spread evenly over them
(the same split the decision rule uses), so a pipeline answer's score reaches the models that gave it.

``decay`` (default 1, no decay) shrinks every posterior of a route toward ``Beta(1, 1)`` by that factor
before each update of it, so old evidence fades and a model that changes behaviour is re-learned within a bounded number of
events. An update is a handful of float operations (microseconds); the state is rebuilt from the store at
start-up by replaying its feedback, so what the learner believes is always explainable from the store.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: the strategies whose choice feedback can learn (single is decided by the calibrated threshold)
STRATEGY_ARMS = ("hybrid", "mix", "rank")
#: pseudo-successes the decision rule's own pick starts with: with no feedback it wins 2 draws in 3
#: against two untried strategies; about ten bad scores overturn it
RULE_PRIOR = 3.0


@dataclass
class Arm:
    alpha: float
    beta: float
    n: float = 0.0  # feedback weight received

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def teach(self, w: float, score: float) -> None:
        self.alpha += w * score
        self.beta += w * (1.0 - score)
        self.n += w


class Learner:
    def __init__(self, routes: Mapping[str, Sequence[str]], *, decay: float = 1.0, seed: int | None = None,
                 pipelines: Mapping[str, Sequence[str]] | None = None) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.pipelines = {k: list(v) for k, v in (pipelines or {}).items()}  # pipeline -> its steps' routes
        self.rng = random.Random(seed)
        self.arms: dict[str, dict[str, Arm]] = {
            r: {m: Arm(2.0 if i == 0 else 1.0, 1.0) for i, m in enumerate(models)} for r, models in routes.items()}
        self.strategy_arms: dict[str, dict[str, Arm]] = {r: {s: Arm(1.0, 1.0) for s in STRATEGY_ARMS}
                                                         for r in routes}

    @classmethod
    def for_config(cls, cfg: Any, **kw: Any) -> Learner:
        """A learner over a :class:`~modelmix.router.config.RouterConfig`'s routes and pipelines."""
        return cls({r.name: r.models for r in cfg.routes},
                   pipelines={p.name: [st.route for st in p.steps] for p in cfg.pipelines}, **kw)

    @classmethod
    def from_history(cls, routes: Mapping[str, Sequence[str]], events: Iterable[tuple], **kw: Any) -> Learner:
        """A learner that has seen ``events`` (``(distribution, models, score)`` or ``(distribution, models,
        score, strategy)``, oldest first)."""
        self = cls(routes, **kw)
        for ev in events:
            self.update(*ev)
        return self

    def choose_strategy(self, route: str, options: Sequence[str], default: str) -> str:
        """Among the feasible multi-model ``options``, the one feedback has shown to work for ``route`` (a
        Thompson draw; ``default``, the rule's pick, starts ``RULE_PRIOR`` pseudo-successes ahead)."""
        arms = self.strategy_arms.get(route, {})
        best, best_draw = default, -1.0
        for s in options:
            a = arms.get(s, Arm(1.0, 1.0))
            d = self.rng.betavariate(a.alpha + (RULE_PRIOR if s == default else 0.0), a.beta)
            if d > best_draw:
                best, best_draw = s, d
        return best

    def choose(self, route: str, healthy: Iterable[str] | None = None) -> str | None:
        """The model that serves ``route`` now (a Thompson draw among its healthy models), or None."""
        arms = self.arms.get(route, {})
        ok = set(healthy) if healthy is not None else None
        best, best_draw = None, -1.0
        for m, a in arms.items():
            if ok is not None and m not in ok:
                continue
            d = self.rng.betavariate(a.alpha, a.beta)
            if d > best_draw:
                best, best_draw = m, d
        return best

    def update(self, distribution: Mapping[str, float], models: Sequence[str], score: float,
               strategy: str | None = None) -> None:
        """One feedback event: ``score`` for an answer by ``models`` (combined by ``strategy``) to a query
        classified as ``distribution``."""
        if self.pipelines and any(k in self.pipelines for k in distribution):
            spread: dict[str, float] = {}
            for k, w in distribution.items():
                for r in self.pipelines.get(k, [k]):
                    spread[r] = spread.get(r, 0.0) + w / len(self.pipelines.get(k, [k]))
            distribution = spread
        for route, w in distribution.items():
            sarm = self.strategy_arms.get(route, {}).get(strategy or "")
            if sarm is not None and w > 0:
                self._fade(sarm)
                sarm.teach(w, score)
            arms = self.arms.get(route)
            if not arms or w <= 0:
                continue
            for a in arms.values():
                self._fade(a)
            for m in models:
                a = arms.get(m)
                if a is not None:
                    a.teach(w, score)

    def _fade(self, a: Arm) -> None:
        """Shrink ``a`` toward Beta(1, 1) by ``decay`` (old evidence fades)."""
        if self.decay < 1:
            a.alpha = 1.0 + (a.alpha - 1.0) * self.decay
            a.beta = 1.0 + (a.beta - 1.0) * self.decay

    def beliefs(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per route and model: posterior mean, alpha, beta and feedback weight (for ``route stats``)."""
        return {r: {m: {"mean": a.mean, "alpha": a.alpha, "beta": a.beta, "feedback": a.n} for m, a in arms.items()}
                for r, arms in self.arms.items()}

    def strategy_beliefs(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per route and multi-model strategy: posterior mean, alpha, beta and feedback weight."""
        return {r: {s: {"mean": a.mean, "alpha": a.alpha, "beta": a.beta, "feedback": a.n} for s, a in arms.items()}
                for r, arms in self.strategy_arms.items()}

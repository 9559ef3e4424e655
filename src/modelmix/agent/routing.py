"""When not to merge: the router the agent writes, and its score measured on the held-out rows.

The oracle estimate (each task sent to its best candidate) is an upper bound: a real router must tell the
tasks apart from the query alone. So before recommending routing the agent builds the router config it
would write (one route per task, the task's dev inputs as utterances, the task's best candidate as its
model, strategy ``single``), classifies every held-out input with it, and scores each row with the model it
was sent to. The candidates were already scored row by row on the held-out part, so this costs the
classifications only, no generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelmix.agent.spec import AgentSpec

#: dev inputs per route used as the router's utterances
UTTERANCES = 32


def router_config(spec: AgentSpec, routes: dict[str, str]) -> dict[str, Any]:
    """The router config (docs/router.md's format) that sends each task to ``routes[task]``."""
    names: dict[str, str] = {}
    for m in dict.fromkeys(routes.values()):
        name, i = Path(m).name, 2
        while name in names.values():
            name, i = f"{Path(m).name}-{i}", i + 1
        names[m] = name
    return {"models": {names[m]: {"path": str(m)} for m in names},
            "routes": [{"name": t.name, "models": [names[routes[t.name]]],
                        "utterances": list(dict.fromkeys(r["input"] for r in t.dev))[:UTTERANCES]}
                       for t in spec.tasks],
            "strategy": "single", "feedback": {"store": "router.db"}}


def measure_router(cfg: dict[str, Any], spec: AgentSpec, singles: dict[str, Any]) -> dict[str, Any]:
    """Each task's held-out score when every held-out input goes where the router ``cfg`` sends it.

    ``singles``: each candidate's held-out evaluation (with per-row ``hits`` for exact-match tasks). A task
    without per-row results (``choice``) counts each candidate's score weighted by the share of its rows sent
    there (an estimate: which rows a candidate gets right is not known).
    Returns ``{"scores", "routed_right"}`` (the share of rows sent to their own task's route)."""
    from modelmix.router.config import load_router_config
    from modelmix.router.core import Router

    router = Router(load_router_config(cfg))
    by_name = {name: m["path"] for name, m in cfg["models"].items()}
    scores: dict[str, float] = {}
    right = total = 0
    for t in spec.tasks:
        decisions = router.route_many([r["input"] for r in t.holdout], strategy="single")
        models = [by_name[d.models[0]] for d in decisions]
        right += sum(d.routes[0] == t.name for d in decisions)
        total += len(decisions)
        hits = {m: (singles[m].hits or {}).get(t.name) for m in set(models)}
        if all(h is not None for h in hits.values()):
            scores[t.name] = sum(hits[m][i] for i, m in enumerate(models)) / len(models)
        else:  # no per-row results: each candidate's score, weighted by the share of rows sent to it
            scores[t.name] = sum(singles[m].scores[t.name] * models.count(m) for m in set(models)) / len(models)
    return {"scores": scores, "routed_right": right / max(1, total)}

#!/usr/bin/env python3
"""The merge agent on the default zoo: its model vs the experts, the uniform soup, every fixed-default method of
the zoo report and plain random search with the same budget; and what one candidate costs.

    .venv/bin/python benchmarks/bench_agent.py --zoo ZOO [--budget 50] [--seeds 0,1,2] [--json out.json]

The agent sees the zoo's *validation* split of the five decoder tasks (100 rows each; it keeps a third of them
as its own held-out part) and the general task's validation rows; every number in the table is on the *test*
split, which neither the agent nor the fixed methods saw. Task mean: exact match averaged over the five tasks;
general loss: token-mean loss on the general test rows (lower is better; the agent's constraint is the base's
+5 %). Random search: the same space and budget with Optuna's RandomSampler, no proposals, no pruning.
Agent and random search run for each seed (mean and range reported); the fixed methods are deterministic.
Speed: seconds per computed evaluation (an in-memory merge into the skeleton + scoring), trials per minute
of search, and the process's resident memory after the 10th and the last trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def test_scores(zoo: Any, recipe: Any, tasks: dict[str, Any]) -> dict[str, float]:
    """The recipe merged in memory (exactly the model the agent writes) and scored on the test split."""
    from modelmix.candidates import Candidates
    from modelmix.eval.zoo_eval import score_tasks

    models = list(recipe.models)
    with Candidates(models, base=zoo.model_path("base")) as c:
        em = c.skeleton()
        c.merge_into(em, recipe.method, **recipe.merge_kwargs({m: i for i, m in enumerate(models)}))
        return score_tasks(em, tasks, None)


def router_test_scores(cfg: dict[str, Any], tasks: dict[str, Any]) -> dict[str, Any]:
    """The router the agent wrote (router.yml), on the test split: each query classified by its text and
    answered by the model it was sent to (strategy single, as written)."""
    from modelmix.eval import metrics as M
    from modelmix.eval.models import EvalModel
    from modelmix.router.config import load_router_config
    from modelmix.router.core import Router

    router = Router(load_router_config(cfg))
    sent: dict[str, list[tuple[str, int]]] = {}  # model name -> (task, row)
    right = total = 0
    for t, (_, rows) in tasks.items():
        if t == "general":
            continue
        for i, d in enumerate(router.route_many([r["input"] for r in rows], strategy="single")):
            sent.setdefault(d.models[0], []).append((t, i))
            right += d.routes[0] == t
            total += 1
    hits: dict[str, list[int]] = {t: [0] * len(rows) for t, (_, rows) in tasks.items() if t != "general"}
    for name, items in sent.items():
        em = EvalModel.from_pretrained(cfg["models"][name]["path"])
        r = M.exact_match(em, [tasks[t][1][i] for t, i in items], per_row=True)
        for (t, i), h in zip(items, r["hits"], strict=True):
            hits[t][i] = h
    scores = {t: sum(h) / len(h) for t, h in hits.items()}
    return {"scores": scores, "task_mean": statistics.mean(scores.values()), "routed_right": right / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: every decoder task with an expert)")
    ap.add_argument("--samplers", default="agent,random")
    ap.add_argument("--layer-groups", type=int, default=1)
    ap.add_argument("--executor", default="local", choices=["local", "ray"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-fixed", action="store_true",
                    help="skip the zoo report's fixed methods on the test split (the smol zoo's takes ~10 min; "
                         "docs/smol_zoo.md has them)")
    a = ap.parse_args()

    from modelmix.agent import Agent, TrialStore, load_spec
    from modelmix.eval.data import load_examples
    from modelmix.report import report as zoo_report
    from modelmix.zoo import load_zoo

    z = load_zoo(a.zoo)
    experts = {task: m for m, task in z.experts().items()}
    names = a.tasks.split(",") if a.tasks else [t for t in z.decoder_tasks() if t in experts]
    test = {t: ("exact_match", load_examples(z.split_path(t, "test"))) for t in names}
    test["general"] = ("loss", load_examples(z.split_path("general", "test")))
    seeds = [int(s) for s in a.seeds.split(",")]
    samplers = a.samplers.split(",")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in samplers}
    for sampler in samplers:
        for seed in seeds:
            spec = load_spec(z.model_path("base"), [z.model_path(experts[t]) for t in names],
                             [(t, z.split_path(t, "validation"), "exact_match", 1.0) for t in names],
                             general=z.split_path("general", "validation"), budget=a.budget, seed=seed,
                             layer_groups=a.layer_groups)
            load_before = round(os.getloadavg()[0], 2)
            with tempfile.TemporaryDirectory() as tmp, TrialStore(Path(tmp) / "agent.db") as store:
                agent = Agent(spec, store, sampler="tpe" if sampler == "agent" else "random", executor=a.executor,
                              workers=a.workers)
                t0 = time.perf_counter()
                res = agent.run(None)
                seconds = time.perf_counter() - t0
            scores = test_scores(z, res.chosen, test)
            s = res.report["search"]
            row = {"seed": seed, "loadavg_1m_before": load_before, "recipe": res.chosen.describe(), "scores": scores,
                   "task_mean": statistics.mean(scores[t] for t in names), "general": scores["general"],
                   "seconds": seconds, "evaluations": res.evaluations, "trials": s["trials"], "pruned": s["pruned"],
                   "per_evaluation_s": res.report["evaluations"]["per_candidate_s"],
                   "trials_per_minute": 60 * s["trials"] / s["seconds"],
                   "rss_mb_trial10": agent.trial_rss[9] / 2**20 if len(agent.trial_rss) >= 10 else None,
                   "rss_mb_last": agent.trial_rss[-1] / 2**20 if agent.trial_rss else None,
                   "recommend_routing": res.recommend_routing,
                   "holdout_routing_estimate": res.holdout["routing_estimate"],
                   "holdout_merge_mean": res.holdout["merge_task_mean"],
                   "holdout_router": (res.holdout.get("router_measured") or {}).get("task_mean"),
                   "default": res.holdout["default"], "replaced_default": res.holdout["chosen"] != res.holdout["default"],
                   "shortlist": res.holdout["shortlist"], "refined": s.get("refined"),
                   "router_test": router_test_scores(res.router, test) if res.router else None}
            runs[sampler].append(row)
            print(f"{sampler} seed {seed}: test task mean {row['task_mean']:.3f}, general {row['general']:.3f}, "
                  f"{seconds:.0f} s, {row['evaluations']} evaluations ({row['per_evaluation_s']:.2f} s each), "
                  f"{row['trials_per_minute']:.0f} trials/min: {row['recipe']}", flush=True)
    if a.no_fixed:
        fixed: list[dict[str, Any]] = []
        from modelmix.candidates import Candidates
        from modelmix.eval.zoo_eval import score_tasks

        with Candidates([str(z.model_path("base"))]) as c:  # the base alone, for the general-loss constraint
            sc = score_tasks(c.skeleton(), test, None)
        fixed.append({"name": "base", "kind": "base", "scores": sc, "task_mean": statistics.mean(sc[t] for t in names),
                      "general": sc["general"]})
    else:
        rep = zoo_report(a.zoo, split="test")
        fixed = [{"name": r.name, "kind": r.kind, "scores": r.scores, "task_mean": rep.mean(r),
                  "general": r.scores.get("general")} for r in rep.rows]
    base_general = next(f["general"] for f in fixed if f["kind"] == "base")
    print("\n| system | task mean (test) | " + " | ".join(names) + " | general loss |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for k in samplers:
        rs = runs[k]
        print(f"| {k} (mean of {len(rs)} seeds) | {statistics.mean(r['task_mean'] for r in rs):.3f} "
              f"({min(r['task_mean'] for r in rs):.3f}–{max(r['task_mean'] for r in rs):.3f}) | "
              + " | ".join(f"{statistics.mean(r['scores'][t] for r in rs):.2f}" for t in names)
              + f" | {statistics.mean(r['general'] for r in rs):.3f} |")
    routers = [r["router_test"] for r in runs["agent"] if r["router_test"]]
    if routers:
        print(f"| router written by the agent (mean of {len(routers)}) | "
              f"{statistics.mean(r['task_mean'] for r in routers):.3f} | " + " | ".join(
                  f"{statistics.mean(r['scores'][t] for r in routers):.2f}" for t in names) + " | – |")
    for f in fixed:
        print(f"| {f['name']} ({f['kind']}) | {f['task_mean']:.3f} | " + " | ".join(
            f"{f['scores'][t]:.2f}" for t in names) + f" | {f['general']:.3f} |")
    print(f"\nbase general loss {base_general:.3f}; the constraint allows {1.05 * base_general:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"budget": a.budget, "seeds": seeds, "tasks": names, "runs": runs,
                                      "layer_groups": a.layer_groups, "executor": a.executor, "zoo": str(a.zoo),
                                      "fixed": fixed, "base_general": base_general}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

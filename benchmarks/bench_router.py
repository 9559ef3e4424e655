#!/usr/bin/env python3
"""Routing vs merging on the zoo: a stream mixing every zoo task, answered by the router and by every rival.

    .venv/bin/python benchmarks/bench_router.py --zoo ZOO [--utterances 10] [--json out.json]

The router has one route per decoder task (served by that task's expert), described by the first
``--utterances`` inputs of the task's validation split. The stream is every test example of every task,
shuffled (seed 0). Each system answers every query by greedy decoding in the zoo's convention and is scored
by exact match:

* the router (``strategy: auto``; decisions batched, then each model generates its queries in one batch;
  queries whose decision is not ``single`` go through the serving code path one by one);
* each expert alone, the base alone;
* every merge of the zoo report's recipes (the experts merged in memory, ``modelmix zoo report``'s
  defaults), and the best of them;
* the oracle: each query answered by its own task's expert.

Also printed: the classifier's top-1 accuracy on the stream and the router's own overhead per query
(classification + decision) as p50/p95 when queries are classified one at a time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--utterances", type=int, default=10)
    ap.add_argument("--merges", default="soup,task_arithmetic,ties,dare_ties,breadcrumbs,model_stock")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from modelmix.candidates import Candidates
    from modelmix.eval.data import coerce_examples
    from modelmix.eval.metrics import generate_greedy, normalize_text
    from modelmix.eval.models import EvalModel
    from modelmix.report import RECIPES
    from modelmix.router import Router
    from modelmix.router.serve import Service
    from modelmix.router.store import Store
    from modelmix.zoo import load_zoo

    z = load_zoo(a.zoo)
    experts = {task: m for m, task in z.experts().items()}
    tasks = [t for t in z.decoder_tasks() if t in experts and z.tasks[t].get("metric") == "exact_match"]

    def rows(task: str, split: str) -> list[dict]:
        return coerce_examples(z.split_path(task, split), "decoder")

    cfg = {"models": {t: {"path": str(z.model_path(experts[t]))} for t in tasks},
           "routes": [{"name": t, "models": [t], "utterances": [r["input"] for r in rows(t, "validation")[: a.utterances]]}
                      for t in tasks],
           "feedback": {"store": str(Path("/tmp") / f"bench_router_{int(time.time())}.db")}}
    stream = [(t, r) for t in tasks for r in rows(t, "test")]
    random.Random(0).shuffle(stream)
    queries = [r["input"] for _, r in stream]
    gold = [r["output"] for _, r in stream]
    truth = [t for t, _ in stream]
    budgets = [2 * len(g) + 4 for g in gold]  # characters bound the zoo's char-level tokens

    def score(preds: list[str]) -> tuple[float, dict[str, float]]:
        hit = [normalize_text(p) == normalize_text(g) for p, g in zip(preds, gold, strict=True)]
        per = {t: statistics.mean(h for h, tt in zip(hit, truth, strict=True) if tt == t) for t in tasks}
        return statistics.mean(hit), per

    def answer_all(em: EvalModel, idx: list[int]) -> dict[int, str]:
        outs = generate_greedy(em, [queries[i] + em.separator for i in idx], [budgets[i] for i in idx])
        return dict(zip(idx, outs, strict=True))

    import os

    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    router = Router.from_config(cfg)
    setup_s = time.perf_counter() - t0
    lat = []
    for q in queries[:50]:  # overhead, one query at a time, as a request would be
        t = time.perf_counter()
        router.route(q)
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    decisions = router.route_many(queries)
    batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
    clf_acc = statistics.mean(d.classification.top[0] == tt for d, tt in zip(decisions, truth, strict=True))
    ems = {t: EvalModel.from_pretrained(z.model_path(experts[t])) for t in tasks}
    preds: dict[int, str] = {}
    by_model: dict[str, list[int]] = {}
    others = []
    for i, d in enumerate(decisions):
        if d.strategy == "single":
            by_model.setdefault(d.models[0], []).append(i)
        else:
            others.append(i)
    for m, idx in by_model.items():
        preds.update(answer_all(ems[m], idx))
    if others:
        store = Store(cfg["feedback"]["store"])
        svc = Service(router, store)
        for i in others:
            text, _ = svc.run(decisions[i], "router", [{"role": "user", "content": queries[i]}], budgets[i])
            preds[i] = text
        svc.close()
        store.close()
    strategies = {s: sum(d.strategy == s for d in decisions) for s in ("single", "hybrid", "mix", "rank")}
    results["router (auto)"] = dict(zip(("accuracy", "per_task"), score([preds[i] for i in range(len(queries))]),
                                        strict=True))
    oracle: dict[int, str] = {}
    for t in tasks:
        oracle.update(answer_all(ems[t], [i for i, tt in enumerate(truth) if tt == t]))
    results["oracle (own expert)"] = dict(zip(("accuracy", "per_task"), score([oracle[i] for i in range(len(queries))]),
                                              strict=True))
    every = list(range(len(queries)))
    for t in tasks:
        out = answer_all(ems[t], every)
        results[f"expert {t} alone"] = dict(zip(("accuracy", "per_task"), score([out[i] for i in every]), strict=True))
    base = EvalModel.from_pretrained(z.model_path("base"))
    out = answer_all(base, every)
    results["base"] = dict(zip(("accuracy", "per_task"), score([out[i] for i in every]), strict=True))
    with Candidates([z.model_path(experts[t]) for t in tasks], base=z.model_path("base")) as c:
        em = c.skeleton()
        for name in [m for m in a.merges.split(",") if m]:
            rec = RECIPES[name]
            c.merge_into(em, rec.method, seed=0, **dict(rec.params))
            out = answer_all(em, every)
            results[f"merge: {name}"] = dict(zip(("accuracy", "per_task"), score([out[i] for i in every]), strict=True))
    merges = {k: v for k, v in results.items() if k.startswith("merge: ")}
    best = max(merges, key=lambda k: merges[k]["accuracy"])
    orc = results["oracle (own expert)"]["accuracy"]
    print(f"# Routing vs merging: {len(queries)} test queries over {len(tasks)} tasks ({', '.join(tasks)}), "
          f"{a.utterances} utterances per route\n")
    print("| system | exact match | of the oracle | " + " | ".join(tasks) + " |")
    print("|---|---|---|" + "---|" * len(tasks))
    for k, v in results.items():
        mark = " (best merge)" if k == best else ""
        print(f"| {k}{mark} | {v['accuracy']:.3f} | {v['accuracy'] / orc:.0%} | "
              + " | ".join(f"{v['per_task'][t]:.2f}" for t in tasks) + " |")
    print(f"\nclassifier top-1 accuracy on the stream {clf_acc:.3f}; strategies {strategies}; router start-up "
          f"(encoder + {sum(len(r['utterances']) for r in cfg['routes'])} utterances + calibration) {setup_s:.2f} s; "
          f"overhead per query (classification + decision) p50 {statistics.median(lat):.1f} ms, p95 "
          f"{sorted(lat)[int(0.95 * (len(lat) - 1))]:.1f} ms one at a time, {batch_ms:.2f} ms batched")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "classifier_accuracy": clf_acc, "strategies": strategies,
                                      "overhead_ms": lat, "batched_ms": batch_ms, "n": len(queries), "tasks": tasks,
                                      "best_merge": best, "loadavg_1m_before": load_before}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Learning from feedback on the zoo: every route starts with the wrong model first; correctness is the feedback.

    .venv/bin/python benchmarks/bench_feedback.py --zoo ZOO [--events 400] [--json out.json]

One route per decoder task, described by 10 validation inputs as in ``bench_router.py``, but each route lists
another task's expert *first* and its own expert second. With no feedback the router prefers the first
(the learner's prior follows the config's order). A stream of test queries (all tasks, shuffled, repeated as
needed) is answered one by one: the router decides (the learner draws a model for the route), the chosen
model answers greedily, and the answer's exact match (1 or 0) is the feedback, taught to the learner at once.
Reported: rolling accuracy over 50 events, the oracle's accuracy on the same queries (each to its own
expert), the first event from which the rolling accuracy stays at or above 90 % of the oracle, and the
learner's update time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from modelmix.eval.data import coerce_examples
    from modelmix.eval.metrics import generate_greedy, normalize_text
    from modelmix.eval.models import EvalModel
    from modelmix.router import Router
    from modelmix.router.learner import Learner
    from modelmix.zoo import load_zoo

    load_before = round(os.getloadavg()[0], 2)
    z = load_zoo(a.zoo)
    experts = {task: m for m, task in z.experts().items()}
    tasks = [t for t in z.decoder_tasks() if t in experts and z.tasks[t].get("metric") == "exact_match"]
    wrong = {t: tasks[(i + 1) % len(tasks)] for i, t in enumerate(tasks)}
    cfg = {"models": {t: {"path": str(z.model_path(experts[t]))} for t in tasks},
           "routes": [{"name": t, "models": [wrong[t], t],
                       "utterances": [r["input"] for r in coerce_examples(z.split_path(t, "validation"), "decoder")[:10]]}
                      for t in tasks],
           "feedback": {"store": "/tmp/unused.db"}, "strategy": "single"}
    router = Router.from_config(cfg)
    learner = Learner({r.name: r.models for r in router.cfg.routes}, seed=0)
    router.learner = learner
    ems = {t: EvalModel.from_pretrained(z.model_path(experts[t])) for t in tasks}
    pool = [(t, r) for t in tasks for r in coerce_examples(z.split_path(t, "test"), "decoder")]
    rng = random.Random(0)
    stream = []
    while len(stream) < a.events:
        rng.shuffle(pool)
        stream += pool
    stream = stream[: a.events]

    def answer(model: str, q: str, gold: str) -> bool:
        out = generate_greedy(ems[model], [q + ems[model].separator], [2 * len(gold) + 4])[0]
        return normalize_text(out) == normalize_text(gold)

    hits, oracle, chose_own, update_us = [], [], [], []
    for task, ex in stream:
        d = router.route(ex["input"])
        m = d.models[0]
        ok = answer(m, ex["input"], ex["output"])
        t0 = time.perf_counter()
        learner.update(d.classification.distribution, [m], 1.0 if ok else 0.0)
        update_us.append((time.perf_counter() - t0) * 1e6)
        hits.append(ok)
        chose_own.append(m == task)
        oracle.append(answer(task, ex["input"], ex["output"]))
    w = a.window
    rolling = [statistics.mean(hits[max(0, i - w + 1): i + 1]) for i in range(len(hits))]
    orc = statistics.mean(oracle)
    reached = next((i + 1 for i in range(w - 1, len(hits)) if all(r >= 0.9 * orc for r in rolling[i:])), None)
    res = {"events": len(hits), "window": w, "oracle_accuracy": orc, "first_window_accuracy": statistics.mean(hits[:w]),
           "last_window_accuracy": statistics.mean(hits[-w:]), "own_expert_share_first_window": statistics.mean(chose_own[:w]),
           "own_expert_share_last_window": statistics.mean(chose_own[-w:]), "events_to_90pct_of_oracle": reached,
           "update_us": {"median": statistics.median(update_us), "max": max(update_us)},
           "rolling": [round(r, 4) for r in rolling[w - 1::w]], "loadavg_1m_before": load_before}
    print(f"{len(hits)} events: accuracy over the first {w} {res['first_window_accuracy']:.2f} (own expert chosen "
          f"{res['own_expert_share_first_window']:.0%}), over the last {w} {res['last_window_accuracy']:.2f} (own "
          f"expert {res['own_expert_share_last_window']:.0%}); oracle {orc:.2f}; rolling accuracy at or above 90 % "
          f"of the oracle from event {reached}; learner update median {res['update_us']['median']:.1f} µs, max "
          f"{res['update_us']['max']:.1f} µs")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

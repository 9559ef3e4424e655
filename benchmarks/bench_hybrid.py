#!/usr/bin/env python3
"""Queries that need two zoo skills in sequence: the hybrid strategy (a config pipeline) vs single and mix.

    .venv/bin/python benchmarks/bench_hybrid.py --zoo ZOO [--utterances 10] [--json out.json]

The config is ``bench_router.py``'s (one route per decoder task, its expert, 10 validation inputs as
utterances) plus four pipelines, each with 10 utterances written from validation inputs:

* ``reverse-upper`` — "reverse W, then upper" → upper(reverse(W));
* ``sort-reverse``  — "sort W, then reverse" → reverse(sort(W));
* ``sort-upper``    — "sort W, then upper" → upper(sort(W));
* ``facts-reverse`` — "fact Q, then reverse" → reverse(the fact's answer).

Each pipeline's ``input`` takes W (or Q) out of the query (and, not matching a one-skill query, keeps the
pipeline off it: the router conditions the distribution on what the pattern rules out); its steps put it, then the first step's answer,
into each expert's own prompt format (``reverse {text} =``). The two-skill stream is built from the test
splits of the first step's task (100 queries per pipeline, shuffled); the gold answer applies both skills
to the test row's gold output. Systems (greedy, exact match):

* router ``auto`` with the pipelines (what a user gets);
* ``router-single`` and ``router-mix`` on the same config (each pipeline's share spread over its steps'
  routes: single answers with the likelier step's expert, mix token-mixes the two steps' experts);
* ``router-hybrid`` without pipelines (the top route drafts, the second refines through the default
  ``serve.hybrid_template``) and ``auto`` without pipelines (the router before pipelines existed);
* the first step alone, given its templated prompt (one skill is not enough: the floor of a good single);
* the oracle pipeline: the right pipeline for every query, no classification (the ceiling).

The 500 one-skill test queries of ``bench_router.py`` are also answered by ``auto`` with and without the
pipelines, to show the pipelines cost single-skill routing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

PIPELINES = {  # name: (first task, second task, query form, input regex)
    "reverse-upper": ("reverse", "upper", "reverse {w}, then upper", r"^reverse (?P<text>\S+), then upper$"),
    "sort-reverse": ("sort", "reverse", "sort {w}, then reverse", r"^sort (?P<text>\S+), then reverse$"),
    "sort-upper": ("sort", "upper", "sort {w}, then upper", r"^sort (?P<text>\S+), then upper$"),
    "facts-reverse": ("facts", "reverse", "fact {w}, then reverse", r"^fact (?P<text>.+), then reverse$"),
}
TEMPLATE = {"reverse": "reverse {text} =", "upper": "upper {text} =", "sort": "sort {text} =",
            "facts": "fact {text} ="}
APPLY = {"reverse": lambda s: s[::-1], "upper": str.upper, "sort": lambda s: "".join(sorted(s))}


def arg_of(task: str, inp: str) -> str:
    """The argument of a zoo input: "reverse vua =" -> "vua", "fact what does X like? =" -> its question."""
    return inp.removesuffix(" =").split(" ", 1)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--utterances", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    load_before = round(os.getloadavg()[0], 2)

    from modelmix.eval.data import coerce_examples
    from modelmix.eval.metrics import normalize_text
    from modelmix.router import Router
    from modelmix.router.decide import Decision
    from modelmix.router.serve import Service
    from modelmix.router.store import Store
    from modelmix.zoo import load_zoo

    z = load_zoo(a.zoo)
    experts = {task: m for m, task in z.experts().items()}
    tasks = [t for t in z.decoder_tasks() if t in experts and z.tasks[t].get("metric") == "exact_match"]
    need = {t for first, second, _, _ in PIPELINES.values() for t in (first, second)}
    if not need <= set(tasks):
        print(f"bench_hybrid: the zoo lacks experts for {sorted(need - set(tasks))}", file=sys.stderr)
        return 2

    def rows(task: str, split: str) -> list[dict]:
        return coerce_examples(z.split_path(task, split), "decoder")

    tmp = Path(tempfile.mkdtemp(prefix="bench_hybrid_"))
    base_cfg = {"models": {t: {"path": str(z.model_path(experts[t]))} for t in tasks},
                "routes": [{"name": t, "models": [t],
                            "utterances": [r["input"] for r in rows(t, "validation")[: a.utterances]]} for t in tasks]}
    # each pipeline's utterances use validation inputs no route or other pipeline uses (a shared word would make
    # the leave-one-out calibration see twins: "reverse vua =" next to "reverse vua, then upper")
    n = a.utterances
    pipes = [{"name": name, "input": rx,
              "utterances": [form.format(w=arg_of(first, r["input"]))
                             for r in rows(first, "validation")[n * (k + 1): n * (k + 2)]],
              "steps": [{"route": first, "template": TEMPLATE[first]}, {"route": second, "template": TEMPLATE[second]}]}
             for k, (name, (first, second, form, rx)) in enumerate(PIPELINES.items())]
    with_p = {**base_cfg, "pipelines": pipes, "feedback": {"store": str(tmp / "with.db")}}
    without = {**base_cfg, "feedback": {"store": str(tmp / "without.db")}}

    two = []  # (pipeline, query, gold)
    for name, (first, second, form, _) in PIPELINES.items():
        for r in rows(first, "test"):
            two.append((name, form.format(w=arg_of(first, r["input"])), APPLY[second](r["output"])))
    random.Random(0).shuffle(two)
    one = [(t, r["input"], r["output"]) for t in tasks for r in rows(t, "test")]
    random.Random(0).shuffle(one)

    def run(svc: Service, decisions: list[Decision], stream: list[tuple[str, str, str]]) -> list[str]:
        out = []
        for d, (_, q, g) in zip(decisions, stream, strict=True):
            text, _ = svc.run(d, "router", [{"role": "user", "content": q}], 2 * len(g) + 4)
            out.append(text)
        return out

    def score(preds: list[str], stream: list[tuple[str, str, str]]) -> dict:
        hit = [normalize_text(p) == normalize_text(g) for p, (_, _, g) in zip(preds, stream, strict=True)]
        kinds = sorted({k for k, _, _ in stream})
        return {"accuracy": statistics.mean(hit),
                "per_kind": {k: statistics.mean(h for h, (kk, _, _) in zip(hit, stream, strict=True) if kk == k)
                             for k in kinds}}

    results: dict[str, dict] = {}
    strategies: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    r_with, r_without = Router.from_config(with_p), Router.from_config(without)
    setup_s = time.perf_counter() - t0
    s_with, s_without = Store(r_with.cfg.store_url()), Store(r_without.cfg.store_url())
    svc_with, svc_without = Service(r_with, s_with), Service(r_without, s_without)
    qs = [q for _, q, _ in two]
    systems = [("router (auto, with pipelines)", svc_with, None), ("router-single", svc_with, "single"),
               ("router-mix", svc_with, "mix"), ("router-hybrid without pipelines", svc_without, "hybrid"),
               ("router (auto) without pipelines", svc_without, None)]
    clf = r_with.route_many(qs)
    clf_acc = statistics.mean(d.classification.top[0] == k for d, (k, _, _) in zip(clf, two, strict=True))
    for label, svc, strategy in systems:
        ds = svc.router.route_many(qs, strategy=strategy)
        strategies[label] = {s: sum(d.strategy == s for d in ds) for s in ("single", "hybrid", "mix", "rank")}
        t = time.perf_counter()
        results[label] = {**score(run(svc, ds, two), two), "seconds": time.perf_counter() - t}
    # the first step alone, in its own format; and the oracle pipeline (no classification)
    first_preds, oracle = [], []
    for k, q, g in two:
        pl = r_with.cfg.pipeline(k)
        assert pl is not None
        text, _ = pl.first_input(q)
        first = pl.steps[0].route
        out, _ = svc_with.run(None, first, [{"role": "user", "content": TEMPLATE[first].format(text=text)}],
                              2 * len(g) + 4)
        first_preds.append(out)
        c = r_with.classify(q)
        steps = [st.route for st in pl.steps]
        d = Decision("hybrid", steps, steps, [0.5, 0.5], "oracle", c, pipeline=k)
        oracle.append(svc_with.run(d, "router", [{"role": "user", "content": q}], 2 * len(g) + 4)[0])
    results["first step alone (its own prompt)"] = score(first_preds, two)
    results["oracle pipeline"] = score(oracle, two)
    one_q = [q for _, q, _ in one]
    single_skill = {}
    for label, svc in (("with pipelines", svc_with), ("without pipelines", svc_without)):
        ds = svc.router.route_many(one_q)
        single_skill[label] = {**score(run(svc, ds, one), one),
                               "strategies": {s: sum(d.strategy == s for d in ds) for s in ("single", "hybrid", "mix",
                                                                                          "rank")}}
    for s in (svc_with, svc_without):
        s.close()
    s_with.close()
    s_without.close()

    kinds = list(PIPELINES)
    print(f"# Two skills in sequence: {len(two)} queries over {len(kinds)} pipelines\n")
    print("| system | exact match | " + " | ".join(kinds) + " | strategies |")
    print("|---|---|" + "---|" * len(kinds) + "---|")
    for k, v in results.items():
        st = ", ".join(f"{s} {n}" for s, n in strategies.get(k, {}).items() if n)
        print(f"| {k} | {v['accuracy']:.3f} | " + " | ".join(f"{v['per_kind'][x]:.2f}" for x in kinds) + f" | {st} |")
    print(f"\nclassifier: {clf_acc:.1%} of the two-skill queries on their own pipeline; start-up {setup_s:.1f} s "
          "for both routers")
    for label, v in single_skill.items():
        print(f"one-skill stream ({len(one)} queries), auto {label}: {v['accuracy']:.3f} ({v['strategies']})")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "strategies": strategies, "classifier_accuracy": clf_acc,
                                      "single_skill": single_skill, "n": len(two), "pipelines": kinds,
                                      "n_single_skill": len(one),
                                      "loadavg_1m_before": load_before}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How much is there to find? The default zoo's merge landscape around the papers' defaults, scored on the
validation split (what the agent sees) and the test split (what the benchmark reports).

    .venv/bin/python benchmarks/agent_landscape.py --zoo ZOO [--json out.json]

Grids: task arithmetic and breadcrumbs (beta 0.9, gamma 0.01) over lambda; TIES over lambda at density 0.5;
one weight per candidate raised for one task (task arithmetic 0.3); and lambda per group of tensors for
breadcrumbs: by depth (embeddings/head, layer 0, layer 1) and by kind (attention, MLP, the rest), 27 points
each. Printed: every point's validation and test task mean, and for each grid the point a search choosing by
validation would take, with its test score. Deterministic (no timing); ~5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from modelmix.candidates import Candidates
    from modelmix.eval.data import load_examples
    from modelmix.eval.zoo_eval import score_tasks
    from modelmix.zoo import load_zoo

    z = load_zoo(a.zoo)
    experts = {task: m for m, task in z.experts().items()}
    names = [t for t in z.decoder_tasks() if t in experts]
    split = {s: {t: ("exact_match", load_examples(z.split_path(t, s))) for t in names} for s in ("validation", "test")}
    models = [str(z.model_path(experts[t])) for t in names]
    n = len(models)
    grids: dict[str, list[dict[str, Any]]] = {}
    with Candidates(models, base=z.model_path("base")) as c:
        em = c.skeleton()
        every = list(c.names)

        def point(grid: str, label: str, parts: list[tuple[list[str] | None, str, dict[str, Any]]]) -> None:
            for sel, method, kw in parts:
                c.merge_into(em, method, models=list(range(n)), seed=0, names=sel, **kw)
            row = {"point": label}
            for s in ("validation", "test"):
                sc = score_tasks(em, split[s], None)
                row[s] = statistics.mean(sc[t] for t in names)
            grids.setdefault(grid, []).append(row)
            print(f"{grid:28s} {label:40s} validation {row['validation']:.3f} test {row['test']:.3f}", flush=True)

        bc = {"weight": [1.0] * n, "density": [0.9] * n, "gamma": [0.01] * n}
        for lam in (0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
            point("task_arithmetic lambda", f"{lam}", [(None, "task_arithmetic", {"lambda": lam, "weight": [1.0] * n})])
        for lam in (0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
            point("breadcrumbs lambda", f"{lam}", [(None, "breadcrumbs", {"lambda": lam, **bc})])
        for lam in (0.5, 0.7, 1.0):
            point("ties lambda (density 0.5)", f"{lam}", [(None, "ties", {"lambda": lam, "weight": [1.0] * n,
                                                                           "density": [0.5] * n})])
        for i, t in enumerate(names):
            for w in (1.5, 2.0):
                ws = [1.0] * n
                ws[i] = w
                point("one weight up (TA 0.3)", f"{t}={w}", [(None, "task_arithmetic", {"lambda": 0.3, "weight": ws})])

        def depth(name: str) -> str:
            return next((f"layer{k}" for k in range(64) if f"layers.{k}." in name), "io")

        def kind(name: str) -> str:
            return "attn" if "self_attn" in name else "mlp" if "mlp" in name else "io"

        for grid, group in (("breadcrumbs lambda by depth", depth), ("breadcrumbs lambda by kind", kind)):
            groups = sorted({group(x) for x in every})
            for lams in itertools.product((0.2, 0.3, 0.4), repeat=len(groups)):
                parts = [([x for x in every if group(x) == g], "breadcrumbs", {"lambda": lam, **bc})
                         for g, lam in zip(groups, lams, strict=True)]
                point(grid, " ".join(f"{g}={lam}" for g, lam in zip(groups, lams, strict=True)), parts)
    print("\n| grid | points | best by validation (its test) | best test of any point | test range |")
    print("|---|---|---|---|---|")
    summary = {}
    for grid, rows in grids.items():
        pick = max(rows, key=lambda r: r["validation"])
        top = max(rows, key=lambda r: r["test"])
        summary[grid] = {"points": len(rows), "pick": pick, "best_test": top}
        print(f"| {grid} | {len(rows)} | {pick['point']}: {pick['validation']:.3f} ({pick['test']:.3f}) | "
              f"{top['point']}: {top['test']:.3f} | {min(r['test'] for r in rows):.3f}–{top['test']:.3f} |")
    if a.json:
        a.json.write_text(json.dumps({"tasks": names, "grids": grids, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The miniature replication of arXiv 2406.07188 on the smol zoo: none, RR, RR-extcrit and the RR-merge sweep.

    .venv/bin/python benchmarks/bench_critique.py --zoo bench-out/zoo-smol [--harmful 200] [--benign 100] \
        [--weights 0.25,0.5,0.75] [--json benchmarks/results/critique-DATE.json]

A thin wrapper over ``modelmix critique bench`` (each strategy in its own process, so each peak memory is its
own) that records the machine and load average with the result and prints the Markdown that goes into
``docs/critique.md``. Needs a smol zoo of recipe 5 or later (``modelmix zoo build --preset smol``): ~20 min to
build on 2 cores, ~1 h for this benchmark there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--harmful", type=int, default=200)
    ap.add_argument("--benign", type=int, default=100)
    ap.add_argument("--weights", default="0.25,0.5,0.75")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--work", default=None, help="keep the prompts and answers files there")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from modelmix.critique.bench import bench, render

    load_before = os.getloadavg()[0]
    res = bench(a.zoo, n_harmful=a.harmful, n_benign=a.benign, weights=a.weights, max_new_tokens=a.max_new_tokens,
                work=a.work, overwrite=a.work is not None, log=lambda s: print(s, file=sys.stderr, flush=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res["provenance"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
                         "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                         "loadavg_1m_before": round(load_before, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    print(render(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Time ``modelmix analyze`` on the synthetic checkpoints (base + ft1 + ft2) and report wall time and peak RSS.

Each run is a fresh ``modelmix analyze --json`` subprocess (so peak RSS, from ``getrusage(RUSAGE_CHILDREN)``, is the analysis
alone), preceded by one untimed read of the weight files so every run starts from a warm page cache,
as a repeated analysis would. CPU time (user + sys) is printed too: on a shared machine it is the
load-independent part of the cost.

Usage: bench_analyze.py [--size 1.1b|0.3b|tiny] [--work bench-out] [--repeat 1] [--threads N] [--top-k 0.2]
Checkpoints are generated with make_checkpoints.py when ``<work>/<size>`` does not exist yet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def warm(paths: list[Path]) -> None:
    buf = bytearray(16 << 20)
    for d in paths:
        for f in sorted(d.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.1b", choices=["1.1b", "0.3b", "tiny"])
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top-k", default="0.2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write every run here")
    args = ap.parse_args()

    d = Path(args.work) / args.size
    if not (d / "ft2").is_dir():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_checkpoints.py"), "--out", str(d),
                        "--size", args.size], check=True)
    models = [d / "base", d / "ft1", d / "ft2"]
    exe = [sys.executable, "-c", "from modelmix.cli import main; main()"]
    cmd = exe + ["analyze", "--base", str(models[0]), str(models[1]), str(models[2]), "--json",
                 "--top-k", args.top_k, "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    gb = sum(f.stat().st_size for m in models for f in m.glob("*.safetensors")) / 1e9
    print(f"# {args.size}: 3 models, {gb:.2f} GB of weights; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    runs = []
    detail = []
    _child_cpu()  # start counting here (checkpoint generation ran as a child too)
    for r in range(args.repeat):
        warm(models)
        la = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"analyze failed ({proc.returncode}):\n{err.decode()}")
        data = json.loads(out)
        runs.append(wall)
        rss, cpu = _child_rss(), _child_cpu()  # max RSS over the analyze children; CPU of this run
        detail.append({"wall_s": wall, "analysis_s": data["seconds"], "cpu_s": cpu, "peak_rss_mib_so_far": rss,
                       "loadavg_1m_before": round(la, 2)})
        p = data["pairs"][0]
        print(f"run {r + 1}: wall {wall:.1f} s (analysis {data['seconds']:.1f} s), cpu {cpu:.1f} s, peak RSS "
              f"{rss:.0f} MiB; {data['n_params'] / 1e9:.3f}B params, cosine {p['cosine']:.4f}, "
              f"conflict {p['conflict_rate']:.4f}, jaccard {p['jaccard']:.4f}")
    if args.repeat > 1:
        print(f"median wall {statistics.median(runs):.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": args.size, "weights_gb": gb, "n_params": data["n_params"], "runs": detail,
            "summary": {"wall_s": {"median": statistics.median(runs), "min": min(runs), "max": max(runs)},
                        "cpu_s": statistics.median([d["cpu_s"] for d in detail]),
                        "peak_rss_mib": max(d["peak_rss_mib_so_far"] for d in detail)},
        }, indent=2))


_last_cpu = [0.0]


def _child_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _child_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    delta, _last_cpu[0] = total - _last_cpu[0], total
    return delta


if __name__ == "__main__":
    main()

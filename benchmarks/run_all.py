#!/usr/bin/env python3
"""``make bench``: every benchmark the project publishes, side by side with its peer, repeated, in one sitting.

Runs, one after another (never two at once), each as its own child process:

* ``merge``    — ``bench_merge.py --size 1.1b``: modelmix vs mergekit 0.1.5, four recipes, both tools live;
* ``cocktail`` — ``bench_cocktail.py``: LM-Cocktail weights vs LM_Cocktail 0.0.4, decoders and encoders,
  3 models x 16 examples, 8 x 64, and 8 x 64 with every encoder example's own negatives;
* ``analysis`` — ``bench_analyze.py --size 1.1b``: ``modelmix analyze`` (no peer does it; timed alone);
* ``eval``     — ``bench_eval.py --hf-generate``: the harness's loss and greedy decoding vs ``model.generate``;
* ``router``   — ``bench_router.py`` on the ``default`` zoo (built first, untimed): the router's answers on a
  stream of every task vs each expert, the base, every merge and the oracle; its overhead per query;
* ``hybrid``   — ``bench_hybrid.py``: queries needing two zoo skills in sequence (config pipelines): hybrid
  vs single, mix and the router without pipelines, with the oracle pipeline as the ceiling;
* ``feedback`` — ``bench_feedback.py``: every route starts with the wrong expert first; correctness is the
  feedback; how many events until the router answers at 90 % of the oracle;
* ``intent``   — ``bench_intent.py``: intent classification side by side with semantic-router 1.1.1 (same
  MiniLM encoder and utterances): accuracy, macro-F1, ECE, latency, on the zoo and a hand-written set.
* ``load``     — ``bench_serve_load.py``: 32 and 8 concurrent clients for 30 s against ``modelmix serve`` over
  the zoo's experts, and 32 with the bfloat16 and the int8 encoder (throughput, deliberate 429s, errors, latency, the router's
  overhead under load, the engine's batching).
* ``agent``    — ``bench_agent.py`` on the ``default`` zoo: the merge agent (budget 50, seeds 0-2) against random search
  with the same budget, the experts, the fixed-default merges and the router it writes, on the test split.

Each is repeated ``--repeat`` times (default 3; median and range). The results go to one dated file,
``benchmarks/results/bench-<UTC date>.json``: commit, machine, package versions, and for every benchmark its
command, the 1-minute load average before and after and the processes that were using CPU when it started
(what else was running), then the benchmark's own JSON (every run, each with the load average before it).
``benchmarks/publish.py`` then rewrites the tables in the README and ``docs/`` from that file (the blocks
between ``<!-- bench:NAME -->`` markers); ``tests/test_bench_docs.py`` fails when a block and the newest results
file disagree.

    .venv/bin/python benchmarks/run_all.py [--repeat 3] [--only merge,cocktail,analysis,eval] [--no-publish]
    .venv/bin/python benchmarks/run_all.py --quick      # tiny sizes, one run each, into bench-out/ (a smoke test)
    .venv/bin/python benchmarks/run_all.py --only router --into benchmarks/results/bench-DATE.json  # add one

Exit status is non-zero when any benchmark failed; the others still run and are recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"
PY = sys.executable
NAMES = ("merge", "cocktail", "analysis", "eval", "router", "hybrid", "intent", "feedback", "load", "agent")


def commands(name: str, repeat: int, quick: bool, out: Path) -> list[str]:
    """The command line of one benchmark, writing its JSON to ``out``."""
    size = "tiny" if quick else "1.1b"
    if name == "merge":
        return [PY, str(HERE / "bench_merge.py"), "--size", size, "--repeat", str(repeat), "--json", str(out),
                *([] if quick else ["--save-mergekit-cache"])]
    if name == "cocktail":
        setups = "3x16" if quick else "3x16,8x64,8x64d"
        return [PY, str(HERE / "bench_cocktail.py"), "--setups", setups, "--repeat", str(repeat), "--json", str(out)]
    if name == "analysis":
        return [PY, str(HERE / "bench_analyze.py"), "--size", size, "--repeat", str(repeat), "--json", str(out)]
    if name == "router":  # accuracy is deterministic; the overhead percentiles come from 50 single queries
        return [PY, str(HERE / "bench_router.py"), "--zoo", str(zoo_dir(quick)), "--json", str(out)]
    if name == "agent":
        return [PY, str(HERE / "bench_agent.py"), "--zoo", str(zoo_dir(quick)), "--budget", "10" if quick else "50",
                "--seeds", "0" if quick else "0,1,2", "--json", str(out)]
    if name == "hybrid":  # deterministic greedy answers: one run
        return [PY, str(HERE / "bench_hybrid.py"), "--zoo", str(zoo_dir(quick)), "--json", str(out)]
    if name == "intent":
        return [PY, str(HERE / "bench_intent.py"), "--zoo", str(zoo_dir(quick)), "--json", str(out)]
    if name == "feedback":
        return [PY, str(HERE / "bench_feedback.py"), "--zoo", str(zoo_dir(quick)), "--json", str(out),
                *(["--events", "100"] if quick else [])]
    if name == "load":
        return [PY, str(HERE / "bench_serve_load.py"), "--zoo", str(zoo_dir(quick)), "--json", str(out),
                *(["--seconds", "5", "--setups", "8:onnx"] if quick else [])]
    if name == "eval":
        return [PY, str(HERE / "bench_eval.py"), "--hf-generate", "--repeat", str(repeat), "--json", str(out),
                *(["--n", "100"] if quick else [])]
    raise ValueError(name)


def zoo_dir(quick: bool) -> Path:
    return ROOT / "bench-out" / ("zoo-test" if quick else "zoo-default")


def ensure_zoo(quick: bool) -> None:
    """The zoo the router benchmark routes over, built (or copied from the zoo cache) before any timing."""
    d = zoo_dir(quick)
    if not (d / "zoo.json").is_file():
        subprocess.run([str(ROOT / ".venv/bin/modelmix"), "zoo", "build", "--out", str(d), "--preset",
                        "test" if quick else "default"], check=True, cwd=ROOT)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes(limit: int = 8) -> list[str]:
    """Other processes using CPU now (``ps``, lifetime average %CPU above 5), this process tree excluded."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,rss,etimes,args", "--sort=-pcpu", "--no-headers"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    mine = {os.getpid(), os.getppid()}
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or int(parts[0]) in mine or int(parts[1]) in mine or float(parts[2]) < 5:
            continue
        rows.append(f"pid {parts[0]} {parts[2]}% CPU {int(parts[3]) // 1024} MiB: {parts[5][:120]}")
    return rows[:limit]


def versions() -> dict[str, str | None]:
    def of(python: Path, mods: list[str]) -> dict[str, str | None]:
        code = ("import importlib.metadata as m, json, sys\nout={}\nfor n in sys.argv[1:]:\n"
                "    try: out[n]=m.version(n)\n    except Exception: out[n]=None\nprint(json.dumps(out))")
        try:
            p = subprocess.run([str(python), "-c", code, *mods], capture_output=True, text=True, timeout=60)
            return json.loads(p.stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            return dict.fromkeys(mods)

    ours = of(Path(PY), ["modelmix", "torch", "transformers", "safetensors", "sentence-transformers"])
    peers = of(ROOT / ".bench-venv/bin/python", ["mergekit", "LM_Cocktail", "torch", "transformers"])
    return {**ours, **{f"peer:{k}": v for k, v in peers.items()}}


def machine() -> dict[str, Any]:
    cpu, mem = platform.processor(), None
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        mem = round(int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem, "platform": platform.platform()}


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default 3)")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one run, results under bench-out/ (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--no-publish", action="store_true", help="do not rewrite the README/docs tables")
    ap.add_argument("--into", type=Path, default=None,
                    help="add the benchmarks run (--only) to this existing results file instead of a new one "
                         "(each benchmark keeps its own date and load averages)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in names if n not in NAMES]
    if bad or a.repeat < 1:
        ap.error(f"unknown benchmark {bad[0]!r} (choose from {', '.join(NAMES)})" if bad else "--repeat must be >= 1")
    repeat = 1 if a.quick else a.repeat
    out_dir = a.out or (ROOT / "bench-out" / "quick" if a.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.now(dt.timezone.utc)
    path = out_dir / f"bench-{start:%Y-%m-%d}.json"
    subprocess.run(["bash", str(HERE / "setup_peers.sh")], check=True)  # idempotent: checks the pinned versions
    if {"router", "hybrid", "intent", "feedback", "load"} & set(names):
        ensure_zoo(a.quick)
    report: dict[str, Any] = {
        "date": start.isoformat(timespec="seconds"), "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "machine": machine(),
        "versions": versions(), "repeat": repeat, "quick": a.quick, "benchmarks": {},
    }
    if a.into is not None:
        path = a.into
        report = json.loads(path.read_text())  # earlier benchmarks stay; the ones run now are replaced
    failed = []
    tmp = ROOT / "bench-out" / "run_all"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        jpath = tmp / f"{name}.json"
        jpath.unlink(missing_ok=True)
        cmd = commands(name, repeat, a.quick, jpath)
        entry: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                 "commit": git("rev-parse", "--short", "HEAD"),
                                 "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "cmd": [Path(c).name if c == PY else os.path.relpath(c, ROOT) if c.startswith(str(ROOT))
                                         else c for c in cmd],
                                 "loadavg_before": loadavg(), "busy_before": busy_processes(), "machine": machine()}
        print(f"[bench] {name}: {' '.join(entry['cmd'])} (load {entry['loadavg_before'][0]})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        log = tmp / f"{name}.log"
        with open(log, "w") as lf:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT).returncode
        entry.update(seconds=round(time.perf_counter() - t0, 1), rc=rc, loadavg_after=loadavg())
        if jpath.is_file():
            entry["data"] = json.loads(jpath.read_text())
        if rc != 0 or "data" not in entry:
            failed.append(name)
            entry["error"] = f"exit code {rc}; log tail:\n" + log.read_text(errors="replace")[-3000:]
            print(f"[bench] {name} FAILED (exit {rc}); log: {log}", file=sys.stderr)
        else:
            print(f"[bench] {name}: done in {entry['seconds']:.0f} s", file=sys.stderr)
        report["benchmarks"][name] = entry
        tmp_path = path.with_suffix(".json.tmp")
        tmp_path.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp_path, path)  # after every benchmark: an interrupted run keeps what it measured
    print(f"[bench] results: {path}", file=sys.stderr)
    complete = set(report["benchmarks"]) >= set(NAMES) and not any("error" in b for b in report["benchmarks"].values())
    if not a.quick and not a.no_publish and not failed and complete:
        sys.path.insert(0, str(HERE))
        import publish

        for f in publish.update(path):
            print(f"[bench] updated {f}", file=sys.stderr)
    elif not a.quick and not a.no_publish:
        print("[bench] tables not published: publish needs every benchmark of one run to succeed "
              "(run benchmarks/publish.py on a complete results file)", file=sys.stderr)
    if not a.quick:
        sys.path.insert(0, str(HERE))
        import publish

        print(publish.summary(report))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the benchmark child got the same SIGINT; what finished is in the results file
        print("\n[bench] interrupted: the results file keeps the benchmarks that finished; tables not published",
              file=sys.stderr)
        sys.exit(130)

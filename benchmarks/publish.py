#!/usr/bin/env python3
"""Rewrite the benchmark tables in the README and docs from one ``make bench`` results file.

Every published benchmark number lives between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in a
Markdown file; this script renders block NAME from the results file (``benchmarks/results/bench-*.json``,
the newest by default) and replaces the block's content, so the docs say what the latest run measured and
nothing else. ``tests/test_bench_docs.py`` renders the blocks again and fails when a file disagrees.

    .venv/bin/python benchmarks/publish.py [RESULTS.json]      # rewrite the blocks, print the files changed
    .venv/bin/python benchmarks/publish.py --check             # exit 1 when a block is stale
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: the files that may hold benchmark blocks
DOC_FILES = ("README.md", "benchmarks/README.md", "docs/cocktail.md", "docs/analysis.md", "docs/evaluation.md",
             "docs/engine.md", "docs/router.md", "docs/agent.md")
BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def latest() -> Path:
    files = sorted(RESULTS.glob("bench-*.json"))
    if not files:
        raise SystemExit(f"no results in {RESULTS}: run `make bench` first")
    return files[-1]


# ------------------------------------------------------------------------------------------ formatting
def _mid(xs: list[float]) -> float:
    return float(statistics.median(xs))


def span(xs: list[float], nd: int = 1, unit: str = "") -> str:
    """``median (min–max)``, or the one value for a single run."""
    m = f"{_mid(xs):.{nd}f}{unit}"
    if len(xs) < 2 or f"{min(xs):.{nd}f}" == f"{max(xs):.{nd}f}":
        return m
    return f"{m} ({min(xs):.{nd}f}–{max(xs):.{nd}f})"


def provenance(report: dict[str, Any], name: str) -> str:
    b = report["benchmarks"][name]
    loads = [b["loadavg_before"][0], b["loadavg_after"][0], *_run_loads(b.get("data"))]
    m = b.get("machine") or report["machine"]  # a benchmark rerun --into an older file records its own machine
    others = "; no other process was using CPU when it started" if not b.get("busy_before") else (
        f"; also running: {len(b['busy_before'])} other process(es), listed in the results file")
    date, commit = b.get("date", report["date"]), b.get("commit", report["commit"])
    dirty = b.get("dirty", report["dirty"])
    runs = {"router": "One run: the answers are deterministic (greedy decoding); the overhead percentiles are "
                      "over 50 single queries",
            "hybrid": "One run: the answers are deterministic (greedy decoding)",
            "intent": "One run; latency over every query, one at a time, after 3 warm-up queries",
            "load": "One run of 30 s per setup; the percentiles are over every answered request",
            "feedback": "One run (the learner's draws are seeded)",
            "agent": "Seeds 0, 1 and 2 of the agent and of random search (mean and range); the fixed methods are "
                     "deterministic"}.get(
        name, f"Median (min–max) of {report['repeat']} runs")
    return (f"_`make bench` of {date[:10]} (commit {commit}{', uncommitted changes' if dirty else ''}), "
            f"{m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; 1-minute load average {min(loads):.1f}–"
            f"{max(loads):.1f} during the runs (the benchmark's own processes included){others}. {runs}; "
            f"`benchmarks/results/bench-{report['date'][:10]}.json` has every run._")


def _run_loads(data: Any) -> Iterable[float]:
    """Every ``loadavg_1m_before`` in a benchmark's JSON, wherever it nests."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "loadavg_1m_before" and isinstance(v, int | float):
                yield float(v)
            else:
                yield from _run_loads(v)
    elif isinstance(data, list):
        for v in data:
            yield from _run_loads(v)


# ------------------------------------------------------------------------------------------ blocks
def merge(report: dict[str, Any]) -> str:
    data = report["benchmarks"]["merge"]["data"]
    size = {"1.1b": "1.1B", "0.3b": "0.3B"}.get(data["size"], data["size"])
    rows = [f"| recipe ({size}, bf16) | mergekit 0.1.5 | modelmix | speedup | peak memory mergekit / modelmix "
            "| output vs mergekit |", "|---|---|---|---|---|---|"]
    for rname, e in data["recipes"].items():
        mk = [r for r in e["mergekit"]["runs"] if r.get("rc") == 0]
        mm = [r for r in e["modelmix"]["runs"] if r.get("rc") == 0]
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(mk, mm, strict=False)]
        c = e.get("compare") or {}
        if rname.startswith("dare"):
            out = "different random masks, by design"
        elif c.get("max_abs_diff") == 0:
            out = "bit-identical"
        elif c.get("max_rel_l2") is not None:
            out = f"rel. L2 {c['max_rel_l2']:.1e}"
        else:
            out = "not compared"
        mk_gb, mm_gb = max(r["peak_rss_gb"] for r in mk), max(r["peak_rss_gb"] for r in mm)
        rows.append(f"| {rname} | {span([r['wall_s'] for r in mk])} s | {span([r['wall_s'] for r in mm])} s | "
                    f"{span(ratios)}× | {mk_gb:.2f} / {mm_gb:.2f} GB ({mk_gb / mm_gb:.0f}× less) | {out} |")
    cpu = "; ".join(
        f"{r} {span([(x['user_s'] or 0) + (x['sys_s'] or 0) for x in e['mergekit']['runs']], 0)} / "
        f"{span([(x['user_s'] or 0) + (x['sys_s'] or 0) for x in e['modelmix']['runs']], 0)}"
        for r, e in data["recipes"].items())
    return "\n".join([provenance(report, "merge"), "", *rows, "",
                      f"CPU seconds (user + sys), mergekit / modelmix: {cpu}. Speedups are per run (each repetition "
                      "runs mergekit, then modelmix, from the same warm page cache); peak memory is the child's "
                      "maximum resident set."])


def _setup_label(s: dict[str, Any]) -> str:
    what = ("char-level Llamas (h256, 4 layers)" if s["kind"] == "decoder" else
            "all-MiniLM-L6-v2 + perturbed copies")
    neg = ""
    if s["kind"] == "encoder":
        neg = ", every example its own 9 negatives" if s.get("distinct_negatives") else ", negatives from 16 shared passages"
    return f"{s['kind']}: {s['n_models']} {what}, {s['examples']} examples{neg}"


def cocktail(report: dict[str, Any]) -> str:
    data = report["benchmarks"]["cocktail"]["data"]
    rows = ["| setup | max \\|w_ours − w_ref\\| | ours | LM_Cocktail `mix_models_with_data` | speedup "
            "| peak RSS ours / ref |", "|---|---|---|---|---|---|"]
    for s in data["setups"]:
        runs = s["runs"]
        ours = [r["ours"]["seconds"] for r in runs]
        ref = [r["ref"]["seconds"] for r in runs]
        rows.append(f"| {_setup_label(s)} | {s['max_abs_diff']:.1e} | {span(ours, 2)} s | {span(ref, 2)} s | "
                    f"{span([b / a for a, b in zip(ours, ref, strict=True)])}× | {s['ours_peak_rss'] / 2**20:.0f} / "
                    f"{s['ref_peak_rss'] / 2**20:.0f} MiB |")
    sc = data.get("rss_scaling", {})
    flat = "; ".join(f"{k}s {v['peak_rss_2'] / 2**20:.0f} MiB with 2 models and {v['peak_rss_4'] / 2**20:.0f} MiB "
                     f"with 4" for k, v in sc.items())
    return "\n".join([provenance(report, "cocktail"), "", *rows, "",
                      f"Our peak memory does not grow with the number of models: {flat}." if flat else ""]).rstrip()


def analysis(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["analysis"]["data"]
    runs = d["runs"]
    return "\n".join([
        provenance(report, "analysis"), "",
        "| size | weights read | wall | CPU (user+sys) | peak RSS |", "|---|---|---|---|---|",
        f"| {d['size']} ({d['n_params'] / 1e9:.2f}B params × 3) | {d['weights_gb']:.1f} GB | "
        f"{span([r['wall_s'] for r in runs])} s | {span([r['cpu_s'] for r in runs])} s | "
        f"{max(r['peak_rss_mib_so_far'] for r in runs):.0f} MiB |"])


def evaluation(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["eval"]["data"]
    runs = d["runs"]

    def cell(k: str) -> str:
        return f"{span([r[k + '_s'] for r in runs], 2)} s | {span([r[k + '_cpu_s'] for r in runs], 2)} s"

    n = d["n"]
    return "\n".join([
        provenance(report, "eval"), "",
        f"{d['n_params'] / 1e6:.1f}M-parameter char-level Llama (hidden {d['hidden']}, {d['layers']} layers), "
        f"{d['threads']} torch threads:", "",
        "| work | wall | CPU |", "|---|---|---|",
        f"| loss on {n} rows `What is 123+456?` → `579` | {cell('loss')} |",
        f"| exact_match on the same rows, untrained (never eos: every row decodes its whole budget) | {cell('exact_match')} |",
        f"| `model.generate` on the same prompts and budget | {cell('hf_generate')} |",
        f"| loading the model (`EvalModel.from_pretrained`, transformers imported) | "
        f"{span([r['load_s'] for r in runs], 2)} s | |"])


def router(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["router"]["data"]
    res, tasks, best = d["results"], d["tasks"], d["best_merge"]
    orc = res["oracle (own expert)"]["accuracy"]
    rows = ["| system | exact match | of the oracle | " + " | ".join(tasks) + " |",
            "|---|---|---|" + "---|" * len(tasks)]
    for k, v in res.items():
        name = f"**{k}**" if k == "router (auto)" else k + (" (best merge)" if k == best else "")
        rows.append(f"| {name} | {v['accuracy']:.3f} | {v['accuracy'] / orc:.0%} | "
                    + " | ".join(f"{v['per_task'][t]:.2f}" for t in tasks) + " |")
    lat = sorted(d["overhead_ms"])
    p95 = lat[int(0.95 * (len(lat) - 1))]
    strat = ", ".join(f"{k} {v}" for k, v in d["strategies"].items() if v)
    return "\n".join([
        provenance(report, "router"), "",
        f"{d['n']} test queries of the `default` zoo's {len(tasks)} tasks, shuffled into one stream; one route per "
        "task (its expert), described by 10 validation inputs; greedy answers scored by exact match:", "", *rows, "",
        f"The classifier puts {d['classifier_accuracy']:.1%} of the queries on their own task's route; strategies "
        f"chosen: {strat}. The router's own overhead per query (classification + decision, one query at a time): "
        f"p50 {statistics.median(lat):.1f} ms, p95 {p95:.1f} ms ({d['batched_ms']:.2f} ms per query batched)."])


def hybrid(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["hybrid"]["data"]
    kinds, res = d["pipelines"], d["results"]
    rows = ["| system | exact match | " + " | ".join(kinds) + " | strategies |", "|---|---|" + "---|" * len(kinds) + "---|"]
    for k, v in res.items():
        st = ", ".join(f"{s} {n}" for s, n in d["strategies"].get(k, {}).items() if n)
        name = f"**{k}**" if k.startswith("router (auto, with") else k
        acc = f"**{v['accuracy']:.3f}**" if k.startswith("router (auto, with") else f"{v['accuracy']:.3f}"
        rows.append(f"| {name} | {acc} | " + " | ".join(f"{v['per_kind'][x]:.2f}" for x in kinds) + f" | {st} |")
    one = d["single_skill"]
    return "\n".join([
        provenance(report, "hybrid"), "",
        f"{d['n']} test queries over {len(kinds)} pipelines, each with 10 utterances written from validation inputs "
        "the routes do not use; greedy answers, exact match:", "", *rows, "",
        f"The classifier puts {d['classifier_accuracy']:.1%} of the two-skill queries on their own pipeline. The "
        f"{d['n_single_skill']} one-skill queries of the routing stream score {one['with pipelines']['accuracy']:.3f} "
        f"with the pipelines configured and {one['without pipelines']['accuracy']:.3f} without them."])


def load(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["load"]["data"]
    runs = d["runs"]
    rows = []
    for r in runs:
        e = r.get("engine") or {}
        steps, batches = e.get("steps") or 0, e.get("classify_batches") or 0
        busy = {k.removeprefix("busy_").removesuffix("_seconds"): v for k, v in e.items() if k.startswith("busy_")}
        rows.append(
            f"| {r['clients']} | {_encoder(r)} | {r['answered']} | {r['throughput_rps']:.1f} | "
            f"{r['rejected_429']} | {r['errors']} | {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} ms | "
            f"{r['route_ms']['p50']:.1f} / {r['route_ms']['p95']:.1f} ms | "
            f"{(e['rows_stepped'] / steps) if steps else float('nan'):.1f} | "
            + (f"{e['classified'] / batches:.1f} | " if batches else "– (request threads) | ")
            + " / ".join(f"{busy.get(k, 0.0):.0f}" for k in ("classify", "prefill", "decode", "mixed")) + " |")
    return "\n".join([
        provenance(report, "load"), "",
        f"Clients send chat completions (model `router`, random zoo test queries) back to back, each over its own "
        f"connection, for {runs[0]['seconds']:.0f} s to a fresh `modelmix serve` process (`serve.max_concurrent` "
        f"{d['max_concurrent']}); a client waits the `Retry-After` second after a 429. The router overhead is "
        "the wait for the engine's classification batch plus classification and decision. The last columns come "
        "from the serving engine's counters (`/metrics`): rows served per decoding forward pass, queries per "
        "classification batch, and the seconds its thread spent classifying / prefilling / decoding / mixing:", "",
        "| clients | encoder | answered | per second | deliberate 429s | other errors | latency p50 / p95 | "
        "router overhead p50 / p95 | rows per step | queries per classification | engine busy s |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows])


def _encoder(r: dict[str, Any]) -> str:
    """A load setup's encoder: runtime and weights (results from before encoder_runtime existed: torch)."""
    return "onnx (float32)" if r.get("encoder_runtime") == "onnx" else f"torch {r['encoder_dtype']}"


def intent(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["intent"]["data"]
    label = {"modelmix": "modelmix (utterances only)", "modelmix_fitted": "modelmix, fitted on labelled queries",
             "semantic_router_raw": f"semantic-router {d['semantic_router']} (default)",
             "semantic_router_fitted": f"semantic-router {d['semantic_router']}, fitted on labelled queries"}
    rows = []
    for name, r in d["results"].items():
        for side in label:
            x = r[side]
            lat = f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f}" if "p50_ms" in x else "as above"
            if "torch_p50_ms" in x:
                lat += f" (torch runtime: {x['torch_p50_ms']:.1f} / {x['torch_p95_ms']:.1f})"
            floor = f" (best possible: {x['ece_oracle_fit']:.3f})" if "ece_oracle_fit" in x else ""
            rows.append(f"| {name} ({r['n']} queries, {r['off_topic']} off-topic) | {label[side]} | "
                        f"{x['accuracy']:.3f} | {x['macro_f1']:.3f} | {x['ece']:.3f}{floor} | {lat} |")
    return "\n".join([
        provenance(report, "intent"), "",
        "| data | classifier | top-1 accuracy | macro-F1 | ECE (10 bins) | ms per query p50 / p95 |",
        "|---|---|---|---|---|---|", *rows, "",
        "modelmix classifies through its default ONNX Runtime encoder (`encoder_runtime: auto`); the torch "
        "runtime's latency is in brackets. \"Best possible\" is the ECE of the temperature and none bias fitted "
        "on the test queries themselves: no calibration of this classifier can do better on that set."
        + ("" if "contended" not in d else
           f" While another thread of the process runs Python (as a server's threads do), one query takes "
           f"{d['contended']['onnx_p50_ms']:.1f} ms (p50) with the ONNX Runtime encoder and "
           f"{d['contended']['torch_p50_ms']:.0f} ms with torch, whose ~700 operator calls each give the GIL "
           "back and wait for it again.")])


def feedback(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["feedback"]["data"]
    w = d["window"]
    return "\n".join([
        provenance(report, "feedback"), "",
        f"Every route of the zoo config lists another task's expert first and its own second; {d['events']} test "
        "queries (all tasks, shuffled) are answered one by one and each answer's exact match is the feedback:", "",
        f"| | first {w} events | last {w} events |", "|---|---|---|",
        f"| accuracy | {d['first_window_accuracy']:.2f} | {d['last_window_accuracy']:.2f} |",
        f"| queries served by their own task's expert | {d['own_expert_share_first_window']:.0%} | "
        f"{d['own_expert_share_last_window']:.0%} |", "",
        f"The oracle (each query to its own expert) scores {d['oracle_accuracy']:.2f}; the rolling accuracy over {w} "
        f"events stays at or above 90 % of it from event {d['events_to_90pct_of_oracle']} on. Rolling accuracy every "
        f"{w} events: {', '.join(f'{x:.2f}' for x in d['rolling'])}. A learner update takes "
        f"{d['update_us']['median']:.1f} µs (median; max {d['update_us']['max']:.0f} µs)."])


def agent(report: dict[str, Any]) -> str:
    d = report["benchmarks"]["agent"]["data"]
    names, runs = d["tasks"], d["runs"]
    head = ["| system | task mean (test) | " + " | ".join(names) + " | general loss |",
            "|---|---|" + "---|" * len(names) + "---|"]
    rows = []
    label = {"agent": "**agent**", "random": "random search, same budget and decision rule"}
    for k, rs in runs.items():
        means = [r["task_mean"] for r in rs]
        rows.append(f"| {label.get(k, k)} (mean of {len(rs)} seeds) | {statistics.mean(means):.3f} ({min(means):.3f}–"
                    f"{max(means):.3f}) | " + " | ".join(f"{statistics.mean(r['scores'][t] for r in rs):.2f}" for t in names)
                    + f" | {statistics.mean(r['general'] for r in rs):.3f} |")
    routers = [r["router_test"] for r in runs.get("agent", []) if r.get("router_test")]
    if routers:
        rows.append(f"| the router the agent wrote (router.yml, each query routed by its text; mean of {len(routers)}) | "
                    f"{statistics.mean(r['task_mean'] for r in routers):.3f} | " + " | ".join(
                        f"{statistics.mean(r['scores'][t] for r in routers):.2f}" for t in names) + " | – |")
    for f in sorted(d["fixed"], key=lambda f: -f["task_mean"]):
        rows.append(f"| {f['name']} ({f['kind']}) | {f['task_mean']:.3f} | " + " | ".join(
            f"{f['scores'][t]:.2f}" for t in names) + f" | {f['general']:.3f} |")
    speed = ["| run | chosen | evaluations | s per evaluation | trials per minute | pruned | resident MB, trial 10 → last |",
             "|---|---|---|---|---|---|---|"]
    for k, rs in runs.items():
        for r in rs:
            rss = (f"{r['rss_mb_trial10']:.0f} → {r['rss_mb_last']:.0f}" if r.get("rss_mb_trial10") is not None
                   else "–")
            chosen = "a searched recipe" if r.get("replaced_default") else "the default proposal"
            speed.append(f"| {k} seed {r['seed']} | {chosen}: {r['recipe']} | {r['evaluations']} | "
                         f"{r['per_evaluation_s']:.2f} | {r['trials_per_minute']:.0f} | {r['pruned']} | {rss} |")
    return "\n".join([provenance(report, "agent"), "",
                      f"Default zoo, budget {d['budget']}; the agent sees the validation split, every number is on the "
                      f"test split. Base general loss {d['base_general']:.3f} (the constraint allows "
                      f"{1.05 * d['base_general']:.3f}).", "", *head, *rows, "", *speed])


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "merge": merge, "cocktail": cocktail, "analysis": analysis, "eval": evaluation, "router": router,
    "hybrid": hybrid, "intent": intent, "feedback": feedback, "load": load, "agent": agent}


def render(name: str, report: dict[str, Any]) -> str:
    return RENDER[name](report).rstrip("\n") + "\n"


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m["name"], m["body"]) for m in BLOCK.finditer(text)]


def rewrite(text: str, report: dict[str, Any]) -> str:
    return BLOCK.sub(lambda m: m[1] + render(m["name"], report) + m[4], text)


def summary(report: dict[str, Any]) -> str:
    parts = []
    for name in RENDER:
        b = report["benchmarks"].get(name)
        if b and "data" in b and "error" not in b:
            parts.append(f"## {name}\n\n{render(name, report)}")
        elif b:
            parts.append(f"## {name}\n\nFAILED: {b.get('error', '')[:500]}")
    return "\n".join(parts)


def load(results: Path) -> dict[str, Any]:
    """A complete results file, or SystemExit with one sentence (missing, not JSON, a benchmark missing or
    failed: tables are published from complete runs only)."""
    import json

    try:
        report = json.loads(results.read_text())
    except OSError as e:
        raise SystemExit(f"{results}: cannot read the results file ({e.strerror or e}).") from None
    except ValueError as e:
        raise SystemExit(f"{results}: not a JSON results file ({e}).") from None
    b = report.get("benchmarks", {}) if isinstance(report, dict) else {}
    bad = [n for n in RENDER if n not in b or "error" in b[n] or "data" not in b[n]]
    if bad:
        raise SystemExit(f"{results}: benchmark(s) {', '.join(bad)} missing or failed in this run; tables are "
                         "published from complete runs only (make bench).")
    if report.get("quick"):
        raise SystemExit(f"{results}: a --quick smoke test (tiny sizes, one run); publish a full make bench run.")
    return report


def update(results: Path) -> list[Path]:
    report = load(results)
    changed = []
    for rel in DOC_FILES:
        p = ROOT / rel
        old = p.read_text()
        new = rewrite(old, report)
        if new != old:
            p.write_text(new)
            changed.append(p)
    results.with_suffix(".md").write_text(f"# make bench, {report['date']}\n\n{summary(report)}")
    return changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    path = Path(args[0]) if args else latest()
    if check:
        report = load(path)
        stale = [rel for rel in DOC_FILES if rewrite((ROOT / rel).read_text(), report) != (ROOT / rel).read_text()]
        for rel in stale:
            print(f"{rel}: benchmark tables differ from {path.name}", file=sys.stderr)
        return 1 if stale else 0
    for p in update(path):
        print(p.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

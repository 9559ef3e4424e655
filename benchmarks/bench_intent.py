#!/usr/bin/env python3
"""Intent classification side by side with semantic-router 1.1.1: same encoder, same utterances, same queries.

    .venv/bin/python benchmarks/bench_intent.py --zoo ZOO [--json out.json]

Two data sets:

* ``zoo`` — one route per zoo decoder task, its first 10 validation inputs as utterances; the held-out
  queries are up to 100 test inputs per task (every one belongs to a route).
* ``intents`` — ``benchmarks/data/intents.json``: five everyday intents (technical, emotional, billing,
  travel, cooking), 8 utterances each, 12 differently phrased test queries each, and 15 off-topic queries
  that belong to no route (the right answer is "none").

Sides, both on the packaged all-MiniLM-L6-v2 (mean pooling, normalised) and the default torch threads:

* **modelmix** — ``IntentClassifier``, calibrated from the utterances alone (and its packaged background
  sentences); the prediction is the most likely of the routes and "none", its confidence that probability.
* **modelmix, fitted** — the same classifier recalibrated with ``IntentClassifier.fit`` (the config's
  ``calibration:`` file) on the same labelled halves as semantic-router's fitted side below.
* **semantic-router, raw** — ``IndexedRouter`` with ``HuggingFaceEncoder`` (local path), default settings
  (top_k 5, mean aggregation, no threshold): it always names a route; its confidence is the raw score.
* **semantic-router, fitted** — the same router after ``fit`` (Platt scaling) on labelled queries, which it
  needs and modelmix does not: 2-fold cross-fitting over the test queries (fit on one half, score the other,
  then swap), off-topic ones labelled None. Prediction: its top route when the calibrated confidence ≥ 0.5,
  else "none" (with confidence 1 − p).

It runs in ``.bench-venv`` (``benchmarks/setup_peers.sh``) in a subprocess of this one; it imports nothing
from modelmix. Reported per data set and side: top-1 accuracy, macro-F1, ECE (10 bins, the same function for
every side), and the latency of classifying one query at a time (p50/p95, after warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REF_PY = ROOT / ".bench-venv/bin/python"
HERE = Path(__file__).resolve().parent

PEER = textwrap.dedent(
    """
    import json, sys, time, logging
    logging.disable(logging.WARNING)
    from importlib.metadata import version
    from semantic_router import Route
    from semantic_router.encoders import HuggingFaceEncoder
    from semantic_router.routers import IndexedRouter

    a = json.loads(open(sys.argv[1]).read())
    enc = HuggingFaceEncoder(name=a["encoder"], device="cpu")
    routes = [Route(name=n, utterances=u) for n, u in a["routes"].items()]
    out = {"version": version("semantic-router")}
    X, y = a["queries"], a["labels"]
    r = IndexedRouter(encoder=enc, routes=routes)
    for q in X[:3]:
        r(q)
    raw, ms = [], []
    for q in X:
        t = time.perf_counter()
        c = r(q)
        ms.append((time.perf_counter() - t) * 1000)
        raw.append([c.name, c.confidence])
    out["raw"] = {"pred": raw, "ms": ms}
    fitted = [None] * len(X)
    half = [list(range(0, len(X), 2)), list(range(1, len(X), 2))]
    for fit_idx, score_idx in (half, half[::-1]):
        rf = IndexedRouter(encoder=enc, routes=routes)
        rf.fit([X[i] for i in fit_idx], [y[i] for i in fit_idx])
        for i in score_idx:
            c = rf(X[i], threshold=0.0)  # the top route and its calibrated confidence, whatever it is
            fitted[i] = [c.name, c.confidence]
    out["fitted"] = {"pred": fitted}
    print(json.dumps(out))
    """
)


def datasets(zoo: Path) -> dict[str, dict]:
    from modelmix.eval.data import coerce_examples
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo)
    experts = {task: m for m, task in z.experts().items()}
    tasks = [t for t in z.decoder_tasks() if t in experts and z.tasks[t].get("metric") == "exact_match"]
    zr = {t: [r["input"] for r in coerce_examples(z.split_path(t, "validation"), "decoder")[:10]] for t in tasks}
    zq = [(r["input"], t) for t in tasks for r in coerce_examples(z.split_path(t, "test"), "decoder")[:100]]
    d = json.loads((HERE / "data" / "intents.json").read_text())
    iq = [(q, n) for n, spec in d["routes"].items() for q in spec["test"]] + [(q, None) for q in d["none"]]
    return {"zoo": {"routes": zr, "queries": zq},
            "intents": {"routes": {n: s["utterances"] for n, s in d["routes"].items()}, "queries": iq}}


def score(pred: list[tuple[str | None, float]], truth: list[str | None]) -> dict[str, float]:
    from modelmix.router.evaluate import ece, macro_f1

    names = [p if p is not None else "none" for p, _ in pred]
    gold = [t if t is not None else "none" for t in truth]
    correct = [p == g for p, g in zip(names, gold, strict=True)]
    return {"accuracy": sum(correct) / len(correct), "macro_f1": macro_f1(gold, names),
            "ece": ece([c for _, c in pred], correct)}


def busy_thread_latency(clf: Any, encoder: Any, queries: list[str]) -> dict[str, float]:
    """p50 ms of classifying one query while another thread of this process runs pure Python (as a server's
    HTTP and tokenising threads do): a torch forward gives the GIL back at each of its ~700 operator calls
    and waits for it again each time; the ONNX Runtime forward does so once."""
    import threading

    from modelmix.eval.onnx_encoder import OnnxEncoder

    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    out = {}
    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        for runtime, n in (("onnx", 60), ("torch", 12)):
            encoder.runtime = OnnxEncoder(encoder) if runtime == "onnx" else None
            clf.classify(queries[0])
            ms = []
            for q in queries[1 : n + 1]:
                t = time.perf_counter()
                clf.classify(q)
                ms.append((time.perf_counter() - t) * 1000)
            out[f"{runtime}_p50_ms"] = pct(ms, 0.5)
    finally:
        stop.set()
        th.join()
        encoder.runtime = None
    print(f"beside one busy Python thread, p50 per query: onnx {out['onnx_p50_ms']:.1f} ms, torch "
          f"{out['torch_p50_ms']:.1f} ms")
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if not REF_PY.exists():
        raise SystemExit(f"{REF_PY} is missing: run `bash benchmarks/setup_peers.sh` first")

    from modelmix.eval.models import EvalModel
    from modelmix.eval.onnx_encoder import OnnxEncoder
    from modelmix.router.classifier import NONE, IntentClassifier
    from modelmix.router.config import default_encoder_dir
    from modelmix.router.evaluate import ece

    encoder_dir = default_encoder_dir()
    encoder = EvalModel.from_pretrained(encoder_dir, kind="encoder")
    load_before = round(os.getloadavg()[0], 2)
    results: dict[str, dict] = {}
    for name, ds in datasets(a.zoo).items():
        queries = [q for q, _ in ds["queries"]]
        truth = [t for _, t in ds["queries"]]
        clf = IntentClassifier(encoder, list(ds["routes"].items()))
        latency: dict[str, list[float]] = {}
        for runtime in ("torch", "onnx"):  # the predictions are the same (to ~1e-6); the ONNX ones are scored
            encoder.runtime = OnnxEncoder(encoder) if runtime == "onnx" else None
            for q in queries[:3]:
                clf.classify(q)
            ours, ms = [], []
            for q in queries:
                t = time.perf_counter()
                c = clf.classify(q)
                ms.append((time.perf_counter() - t) * 1000)
                top, p = c.top
                ours.append((None if top == NONE else top, p))
            latency[runtime] = ms
        # the lowest ECE any temperature and none bias can reach on these queries: fitted on the test queries
        # themselves (plain likelihood), so a bound that no calibration from the utterances can beat
        import torch

        from modelmix.eval.metrics import embed

        x = clf._route_scores(embed(encoder, queries))
        y = torch.tensor([[*clf.routes, NONE].index(t if t is not None else NONE) for t in truth])
        tb = clf._fit_tb(x, y, torch.ones(len(y), dtype=torch.float64), 0.0)
        conf, pred = clf._probs(x, *tb).max(1)
        ece_floor = ece(conf.tolist(), (pred == y).tolist())
        # the same 2-fold cross-fitting as semantic-router's fitted side (IntentClassifier.fit)
        plain = clf.calibration
        ours_fitted: list = [None] * len(queries)
        half = [list(range(0, len(queries), 2)), list(range(1, len(queries), 2))]
        for fit_idx, score_idx in (half, half[::-1]):
            clf.calibration = plain
            clf.fit([queries[i] for i in fit_idx], [truth[i] for i in fit_idx])
            for i, c in zip(score_idx, clf.classify_many([queries[i] for i in score_idx]), strict=True):
                top, p = c.top
                ours_fitted[i] = (None if top == NONE else top, p)
        clf.calibration = plain
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"encoder": str(encoder_dir), "routes": ds["routes"], "queries": queries, "labels": truth}, f)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        p = subprocess.run([str(REF_PY), "-c", PEER, f.name], capture_output=True, text=True, env=env, timeout=900)
        os.unlink(f.name)
        if p.returncode != 0:
            raise SystemExit(f"semantic-router worker failed:\n{p.stderr[-3000:]}")
        peer = json.loads(p.stdout.strip().splitlines()[-1])
        raw = [(n, float(c if c is not None else 0.0)) for n, c in peer["raw"]["pred"]]
        fitted = []
        for n, c in peer["fitted"]["pred"]:
            c = float(c if c is not None else 0.0)
            fitted.append((n, c) if c >= 0.5 else (None, 1.0 - c))
        results[name] = {
            "n": len(queries), "routes": len(ds["routes"]), "off_topic": sum(t is None for t in truth),
            "modelmix": {**score(ours, truth), "p50_ms": pct(latency["onnx"], 0.5),
                         "p95_ms": pct(latency["onnx"], 0.95), "torch_p50_ms": pct(latency["torch"], 0.5),
                         "torch_p95_ms": pct(latency["torch"], 0.95), "ece_oracle_fit": ece_floor},
            "modelmix_fitted": score(ours_fitted, truth),
            "semantic_router_raw": {**score(raw, truth), "p50_ms": pct(peer["raw"]["ms"], 0.5),
                                    "p95_ms": pct(peer["raw"]["ms"], 0.95)},
            "semantic_router_fitted": score(fitted, truth),
        }
        sr_version = peer["version"]
    contended = busy_thread_latency(clf, encoder, queries)
    print(f"# Intent classification: modelmix vs semantic-router {sr_version} (same MiniLM encoder)\n")
    print("| data | side | top-1 accuracy | macro-F1 | ECE | p50 / p95 ms per query |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for side in ("modelmix", "modelmix_fitted", "semantic_router_raw", "semantic_router_fitted"):
            s = r[side]
            lat = f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f}" if "p50_ms" in s else "(as raw)"
            print(f"| {name} ({r['n']} queries, {r['off_topic']} off-topic) | {side} | {s['accuracy']:.3f} | "
                  f"{s['macro_f1']:.3f} | {s['ece']:.3f} | {lat} |")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "semantic_router": sr_version, "contended": contended,
                                      "loadavg_1m_before": load_before}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

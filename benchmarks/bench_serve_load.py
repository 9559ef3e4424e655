#!/usr/bin/env python3
"""Load on `modelmix serve`: N concurrent clients for a fixed time against in-process zoo experts.

    .venv/bin/python benchmarks/bench_serve_load.py --zoo ZOO [--setups 32:onnx,32:float32,8:onnx,32:int8]
        [--seconds 30] [--json out.json]

Each setup ``CLIENTS:ENCODER`` starts a fresh real `modelmix serve` subprocess on loopback (one process,
`serve.max_concurrent` 16 by default; ENCODER ``onnx`` is the default float32 ONNX Runtime encoder, ``float32``,
``bfloat16`` and ``int8`` the torch runtime with those weights), routing over the zoo's five experts
(10 validation utterances per route). Each client thread sends chat completions (model "router", a random
test query) back to back over its own keep-alive connection, and waits the ``Retry-After`` second the server
asks for after a 429. Reported per setup: answered requests per second, the deliberate 429s (backpressure:
more than max_concurrent requests in flight), every other error (there should be none), latency p50/p95 of
answered requests, the router's own overhead per request (the wait for the engine's classification batch,
classification and decision, from the `modelmix` object) p50/p95, and the serving engine's counters from
`/metrics` (rows per decoding step, queries per classification batch, busy seconds per kind of work).
The load generator runs on the same two cores as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1)))] if s else float("nan")


def one(a: argparse.Namespace, z: Any, clients: int, dtype: str, engine_threads: int | None = None) -> dict[str, Any]:
    """One server (a fresh process and store), ``clients`` clients for ``a.seconds``; the results."""
    import http.client

    import yaml

    from modelmix.eval.data import coerce_examples

    experts = {task: m for m, task in z.experts().items()}
    work = Path("/tmp") / f"bench_serve_load_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    cfg = {"models": {t: {"path": str(z.model_path(m)), "max_new_tokens": 24} for t, m in experts.items()},
           "routes": [{"name": t, "models": [t], "utterances": [r["input"] for r in
                       coerce_examples(z.split_path(t, "validation"), "decoder")[:10]]} for t in experts],
           "feedback": {"store": "router.db"}, "serve": {"max_concurrent": a.max_concurrent,
                                                          **({"threads": engine_threads} if engine_threads else {})},
           "encoder_dtype": "float32" if dtype == "onnx" else dtype,
           "encoder_runtime": "onnx" if dtype == "onnx" else "torch"}
    (work / "router.yml").write_text(yaml.safe_dump(cfg))
    queries = [r["input"] for t in experts for r in coerce_examples(z.split_path(t, "test"), "decoder")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "modelmix.cli", "serve", "router.yml", "--port", str(port)],
                              cwd=work, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def post(conn: http.client.HTTPConnection, q: str) -> tuple[int, bytes]:
            conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                         body=json.dumps({"model": "router", "messages": [{"role": "user", "content": q}]}))
            r = conn.getresponse()
            return r.status, r.read()

        deadline = time.time() + 180
        while True:
            try:
                c0 = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c0.request("GET", "/healthz")
                c0.getresponse().read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        c0 = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for t in experts:  # load every model once before timing
            post(c0, next(r["input"] for r in coerce_examples(z.split_path(t, "test"), "decoder")))
        ok_lat: list[float] = []
        route_ms: list[float] = []
        codes: dict[int, int] = {}
        errors: list[str] = []
        lock = threading.Lock()
        load_before = round(os.getloadavg()[0], 2)
        stop_at = time.perf_counter() + a.seconds

        def client(k: int) -> None:
            rng = random.Random(k)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # one keep-alive connection
            while time.perf_counter() < stop_at:
                q = rng.choice(queries)
                t0 = time.perf_counter()
                try:
                    status, body = post(conn, q)
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    codes[status] = codes.get(status, 0) + 1
                    if status == 200:
                        ok_lat.append(dt * 1000)
                        route_ms.append(json.loads(body)["modelmix"].get("route_ms", float("nan")))
                    elif status != 429:
                        errors.append(f"HTTP {status}: {body[:200]!r}")
                if status == 429:
                    time.sleep(1.0)  # the Retry-After the server sends (the openai client's retries honour it)
            conn.close()

        t_start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        c0 = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # the first one idled out
        c0.request("GET", "/metrics")
        engine = {line.split()[0].removeprefix("modelmix_engine_").removesuffix("_total"): float(line.split()[1])
                  for line in c0.getresponse().read().decode().splitlines()
                  if line.startswith("modelmix_engine_") and "_created" not in line}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    res = {"clients": clients, "seconds": elapsed, "answered": codes.get(200, 0), "rejected_429": codes.get(429, 0),
           "errors": len(errors), "error_samples": errors[:5], "throughput_rps": codes.get(200, 0) / elapsed,
           "latency_ms": {"p50": statistics.median(ok_lat) if ok_lat else None, "p95": pct(ok_lat, 0.95)},
           "route_ms": {"p50": statistics.median(route_ms) if route_ms else None, "p95": pct(route_ms, 0.95)},
           "engine": engine, "max_concurrent": a.max_concurrent, "encoder_dtype": "float32" if dtype == "onnx" else dtype,
           "encoder_runtime": "onnx" if dtype == "onnx" else "torch", "threads": engine_threads, "loadavg_1m_before": load_before}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--setups", default="32:onnx,32:float32,8:onnx,32:int8",
                    help="comma-separated CLIENTS:ENCODER[:THREADS] runs, each against a fresh server "
                         "(THREADS: serve.threads; default the server's)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-concurrent", type=int, default=16, help="serve.max_concurrent (the server default)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from modelmix.zoo import load_zoo

    z = load_zoo(a.zoo)
    runs = []
    errors = 0
    for setup in a.setups.split(","):
        clients, dtype, *th = setup.split(":")
        res = one(a, z, int(clients), dtype, int(th[0]) if th else None)
        errors += res["errors"]
        runs.append(res)
        print(f"{res['clients']} clients, encoder {dtype}{f', {th[0]} threads' if th else ''}, {res['seconds']:.0f} s: {res['answered']} answered "
              f"({res['throughput_rps']:.1f}/s), {res['rejected_429']} deliberate 429s, {res['errors']} other errors; "
              f"latency p50 {res['latency_ms']['p50']:.0f} ms, p95 {res['latency_ms']['p95']:.0f} ms; router overhead "
              f"p50 {res['route_ms']['p50']:.1f} ms, p95 {res['route_ms']['p95']:.1f} ms", flush=True)
        e = res["engine"]
        if e.get("steps"):
            print(f"  engine: {e['rows_stepped'] / e['steps']:.1f} rows per decoding step; "
                  f"{e['classified'] / max(1, e['classify_batches']):.1f} queries per classification batch; busy s: "
                  + ", ".join(f"{k.removeprefix('busy_').removesuffix('_seconds')} {v:.1f}"
                              for k, v in e.items() if k.startswith("busy_"))
                  + f"; mean wait before classification {1000 * e['classify_wait_seconds'] / max(1, e['classified']):.1f} ms",
                  flush=True)
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "max_concurrent": a.max_concurrent}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

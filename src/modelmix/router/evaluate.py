"""`route eval`: how well the intent classifier does on labelled queries.

Rows are ``{"query": ..., "route": ...}`` (``route`` is a route name or ``"none"``). Each query is classified
on its own, as a request would be, and timed. Reported: top-1 accuracy, macro-F1 over the labels present,
expected calibration error (10 equal-width bins of the top-1 confidence) and per-query latency p50/p95.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmix.errors import DataError
from modelmix.router.classifier import NONE, Classification


def read_labeled(path: str | Path, routes: Sequence[str]) -> list[dict[str, str]]:
    """Labelled rows; errors name file:line (unknown route names with a did-you-mean)."""
    from modelmix.errors import did_you_mean

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: labelled data file not found." if not p.exists() else f"{p}: not a file.")
    allowed = [*routes, NONE]
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{p}:{i}: not valid JSON ({e}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("route"), str):
            raise DataError(f'{p}:{i}: expected {{"query": "...", "route": "..."}}, got {line[:80]}.')
        if row["route"] not in allowed:
            raise DataError(f"{p}:{i}: route {row['route']!r} is not in the config.{did_you_mean(row['route'], allowed)}"
                            f" Routes: {', '.join(allowed)}.")
        rows.append({"query": row["query"], "route": row["route"]})
    if not rows:
        raise DataError(f"{p}: no rows.")
    return rows


def ece(conf: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: the sample-weighted mean |accuracy - confidence| over equal-width bins."""
    n = len(conf)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - sum(conf[i] for i in idx) / len(idx))
    return total


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    labels = sorted(set(gold))
    f1s = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def evaluate(classify: Any, rows: Sequence[dict[str, str]], *, warmup: int = 3) -> dict[str, Any]:
    """Metrics of ``classify(query) -> Classification`` on ``rows`` (the first ``warmup`` queries are run once
    untimed first, so one-off costs do not land in the latency percentiles)."""
    for r in rows[:warmup]:
        classify(r["query"])
    results: list[Classification] = [classify(r["query"]) for r in rows]
    pred = [c.top[0] for c in results]
    conf = [c.top[1] for c in results]
    gold = [r["route"] for r in rows]
    correct = [p == g for p, g in zip(pred, gold, strict=True)]
    ms = [c.seconds * 1000 for c in results]
    return {"accuracy": sum(correct) / len(rows), "macro_f1": macro_f1(gold, pred), "ece": ece(conf, correct),
            "p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 0.95), "n": len(rows)}

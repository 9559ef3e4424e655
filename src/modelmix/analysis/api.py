"""``analyze(base, models)``: task-vector interference analysis as an :class:`AnalysisReport`.

Definitions (all per tensor ``t`` with ``n_t`` elements; task vector ``tau_i = M_i - B`` in float32):

* norm: ``||tau_i||_2`` over the whole model (or a layer); ``relative_norm = ||tau_i|| / ||B||``.
* cosine: ``<tau_i, tau_j> / (||tau_i|| ||tau_j||)`` over the concatenation of all analysed tensors.
* top-k set ``S_i``: per tensor, ``{p : |tau_i[p]| >= thr_i,t and tau_i[p] != 0}`` where ``thr_i,t`` is the exact
  ``k``-th largest ``|tau_i|`` in tensor ``t``, ``k = max(1, int(top_k * n_t))`` (as TIES trims). Ties at the
  threshold are all kept, so ``|S_i|`` can exceed ``k`` slightly (bf16 deltas tie often). Whole-model top-k
  is approximated by this per-tensor top-k, which is also what TIES does.
* conflict rate: ``|{p in S_i & S_j : sign tau_i[p] != sign tau_j[p]}| / |S_i & S_j|``: among parameters
  both models rank in their top-k, the fraction whose updates point in opposite directions (what TIES'
  sign election resolves). Independent random task vectors give ~0.5.
* jaccard: ``|S_i & S_j| / |S_i | S_j|`` (redundancy of the parameters the models change most).

Per-layer values use the same formulas restricted to tensors whose name carries layer number L; tensors
without one (embeddings, final norm, lm_head) form the group "non-layer".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.analysis.findings import TASK_TIE_REL, Finding, derive_findings
from modelmix.errors import InputError

SCHEMA_VERSION = 1


@dataclass
class AnalysisReport:
    """The analysis result: ``data`` is the JSON object (see docs/analysis.md), ``findings`` its summary."""

    data: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-serialisable dict (findings included)."""
        return {**self.data, "findings": [f.to_json() for f in self.findings]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)

    def write_pngs(self, out_dir: str | Path) -> list[Path]:
        """Write the plots as PNG files into ``out_dir`` (created); returns their paths."""
        from modelmix.analysis.render import figures
        from modelmix.io.outputs import os_error, write_file_atomic

        d = Path(out_dir).expanduser()
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, d, what="--png-dir") from None
        return [write_file_atomic(d / f"{name}.png", png, what="plot") for name, png in figures(self.data).items()]

    def write_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML report (findings first, plots embedded as base64 data URIs)."""
        from modelmix.analysis.render import html_report
        from modelmix.io.outputs import write_file_atomic

        return write_file_atomic(path, html_report(self.data, self.findings), what="HTML report")


def _display_names(refs: Sequence[str]) -> list[str]:
    """Short model names (directory names), made unique with the parent directory or an index."""
    names: list[str] = []
    for r in refs:
        p = Path(r)
        n = p.name or str(p)
        if n in names:
            n = f"{p.parent.name}/{p.name}"
        base, i = n, 2
        while n in names:
            n = f"{base}#{i}"
            i += 1
        names.append(n)
    return names


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def analyze(
    base: str | Path,
    models: Sequence[str | Path],
    *,
    examples: Sequence[str | Path] | None = None,
    top_k: float = 0.2,
    device: str = "cpu",
    metrics: Sequence[str] = ("loss",),
    lmc_points: int = 11,
    workers: int | None = None,
    allow_pickle: bool = False,
    separator: str | None = None,
) -> AnalysisReport:
    """Analyse the task vectors ``M_i - base``: norms, cosines, top-k sign conflicts and overlap.

    Needs at least two models besides the base (every statistic but the norm is pairwise). With
    ``examples`` (decoder JSONL files, one per task) each model and the base are scored per task; with
    exactly two models the loss along the linear path between them is added. All inputs are validated
    (paths, architectures, vocabularies, example files) before any weight is read. Examples are scored
    with each model's own prompt convention unless ``separator`` is given.
    """
    from modelmix.analysis.stats import TensorStats, stream_stats
    from modelmix.io.checkpoint import Checkpoint

    t0 = time.perf_counter()
    if not 0 < top_k <= 1:
        raise InputError(f"top_k must be a fraction in (0, 1] (e.g. 0.2 for the top 20%), got {top_k}.")
    refs = [str(m) for m in models]
    if len(refs) < 2:
        raise InputError(
            f"analyze compares task vectors pairwise, so it needs at least two models besides the base; got "
            f"{len(refs)}. Pass the base with --base and two or more fine-tuned models."
        )
    from modelmix.devices import check_device

    device = check_device(device)
    tasks = None
    if examples:
        from modelmix.analysis.tasks import validate_examples
        from modelmix.eval.api import check_metrics

        check_metrics(list(metrics))
        tasks = validate_examples(examples)
    if lmc_points < 2:
        raise InputError(f"lmc_points must be >= 2, got {lmc_points}.")

    base_ck = Checkpoint(str(base), allow_pickle=allow_pickle)
    cks: list[Checkpoint] = []
    try:
        for r in refs:
            cks.append(Checkpoint(r, allow_pickle=allow_pickle))
        res = stream_stats(base_ck, cks, top_k, device=device, workers=workers)
    finally:
        base_ck.close()
        for c in cks:
            c.close()
    names = _display_names(refs)
    m = len(names)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]

    total = TensorStats.zeros(m)
    groups: dict[int | None, TensorStats] = {}
    for tname, st in res.tensors.items():
        total.add(st)
        g = groups.setdefault(res.layer_of[tname], TensorStats.zeros(m))
        g.add(st)

    def pair_json(st: TensorStats, i: int, j: int) -> dict[str, Any]:
        return {"a": names[i], "b": names[j], "cosine": _r(st.cosine(i, j)), "conflict_rate": _r(st.conflict_rate(i, j)),
                "jaccard": _r(st.jaccard(i, j)), "shared_topk": st.both[(i, j)], "conflicts": st.conflict[(i, j)]}

    base_norm = math.sqrt(total.base_sq)
    layer_keys = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    layers = []
    for key in layer_keys:
        st = groups[key]
        layers.append({
            "layer": key, "label": f"layer {key}" if key is not None else "non-layer", "n_params": st.n,
            "base_norm": _r(math.sqrt(st.base_sq)),
            "norms": {names[i]: _r(st.norm(i)) for i in range(m)},
            "pairs": [pair_json(st, i, j) for i, j in pairs],
        })

    def matrix(f, diag) -> list[list[float | None]]:
        return [[_r(f(i, j)) if i != j else diag(i) for j in range(m)] for i in range(m)]

    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "base": str(base),
        "top_k": top_k,
        "n_params": total.n,
        "n_tensors": len(res.tensors),
        "skipped_tensors": res.skipped,
        "models": [
            {"name": names[i], "path": refs[i], "norm": _r(total.norm(i)),
             "relative_norm": _r(total.norm(i) / base_norm) if base_norm > 0 else None, "topk_count": total.topk[i]}
            for i in range(m)
        ],
        "pairs": [pair_json(total, i, j) for i, j in pairs],
        "matrices": {
            "cosine": matrix(total.cosine, lambda i: _r(total.cosine(i, i))),
            "conflict_rate": matrix(total.conflict_rate, lambda i: 0.0 if total.topk[i] else None),
            "jaccard": matrix(total.jaccard, lambda i: 1.0 if total.topk[i] else None),
        },
        "layers": layers,
        "tasks": None,
        "lmc": None,
    }
    if tasks is not None:
        from modelmix.analysis.tasks import lmc_curve, score_models

        paths = {"base": Path(str(base)), **{names[i]: Path(refs[i]) for i in range(m)}}
        if "base" in names:
            paths = {"base (reference)": paths.pop("base"), **paths}
        scores = score_models(paths, tasks, list(metrics), device, separator)
        base_key = next(iter(paths))
        base_scores = scores.pop(base_key)
        best: dict[str, list[str]] = {}
        for t in tasks:
            losses = {n: scores[n][t]["loss"] for n in names if "loss" in scores[n][t]}
            if losses:
                lo = min(losses.values())
                best[t] = [n for n, v in losses.items() if v <= lo + abs(lo) * TASK_TIE_REL]
        data["tasks"] = {
            "names": list(tasks), "files": {t: str(p) for t, p in tasks.items()}, "metrics": list(metrics),
            "scores": scores, "base_scores": base_scores,
            "base_loss": {t: s["loss"] for t, s in base_scores.items() if "loss" in s},
            "best": best,
            "coverage": {n: [t for t, b in best.items() if n in b] for n in names},
        }
        if m == 2:
            curve = lmc_curve(Path(refs[0]), Path(refs[1]), tasks, device, points=lmc_points, separator=separator)
            data["lmc"] = {"models": names[:2], **curve}
    data["seconds"] = round(time.perf_counter() - t0, 3)
    return AnalysisReport(data=data, findings=derive_findings(data))

"""Plain-language findings from the numbers, with the thresholds that trigger them.

The thresholds are rules of thumb, chosen so a statement is only made when it would change a merge decision:

* ``NEAR_DUPLICATE_COS`` (0.95): two task vectors this aligned carry almost the same update; averaging them
  behaves like keeping one (merging adds little, but is harmless).
* ``OPPOSED_COS`` (-0.3): clearly anti-aligned updates cancel in a linear merge.
* ``CONFLICT_HIGH`` (0.30): among parameters both models consider important (top-k), more than 30% disagree
  in sign -> a plain average destroys much of both updates; TIES-style sign election (ties / dare_ties)
  resolves exactly this. Independent random task vectors give ~50%, identical ones 0%.
* ``CONFLICT_LOW`` (0.10): signs almost always agree -> linear / task_arithmetic is safe.
* ``NORM_RATIO`` (3.0): a task vector 3x longer than another dominates an unweighted merge.
* ``IDENTICAL_REL_NORM`` (1e-6): ``||tau|| / ||base||`` below this means the model is the base.
* ``TASK_TIE_REL`` (0.01): task losses within 1% (relative) of the best count as tied for "best".
* ``LAYER_CONFLICT_GAP`` (0.10): a layer whose conflict rate exceeds the model-wide rate by 10 points is
  called out as a hotspot.
* ``LMC_BARRIER_REL`` (0.05): a loss barrier (loss above the chord between the endpoint losses) larger than
  5% of the endpoint loss means the two models are not linearly mode-connected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEAR_DUPLICATE_COS = 0.95
OPPOSED_COS = -0.3
CONFLICT_HIGH = 0.30
CONFLICT_LOW = 0.10
NORM_RATIO = 3.0
IDENTICAL_REL_NORM = 1e-6
TASK_TIE_REL = 0.01
LAYER_CONFLICT_GAP = 0.10
LMC_BARRIER_REL = 0.05


@dataclass
class Finding:
    """One statement for the top of the report; ``kind`` is stable for scripts, ``text`` is for people."""

    kind: str
    text: str
    models: list[str]
    severity: str = "info"  # info | warning

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "models": self.models, "text": self.text}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def derive_findings(report: dict[str, Any]) -> list[Finding]:
    """Findings from a report dict (the JSON form), in order: identity, pairs, norms, layers, tasks."""
    out: list[Finding] = []
    models = [m["name"] for m in report["models"]]
    top = _pct(report["top_k"])
    for m in report["models"]:
        if m["relative_norm"] is not None and m["relative_norm"] < IDENTICAL_REL_NORM:
            out.append(Finding("identical_to_base", f"{m['name']} is identical to the base (task vector norm "
                               f"{m['norm']:.3g}): it contributes nothing to a merge.", [m["name"]], "warning"))
    for p in report["pairs"]:
        a, b, cos, conf, jac = p["a"], p["b"], p["cosine"], p["conflict_rate"], p["jaccard"]
        if cos is None:
            continue
        if cos >= NEAR_DUPLICATE_COS:
            out.append(Finding("near_duplicate", f"{a} and {b} are near-duplicates: cosine {cos:.2f}, "
                               f"merging them adds little.", [a, b], "warning"))
            continue
        if cos <= OPPOSED_COS:
            out.append(Finding("opposed", f"{a} and {b} pull in opposite directions: cosine {cos:.2f}; a linear "
                               f"merge cancels much of both updates.", [a, b], "warning"))
        if conf is not None and conf >= CONFLICT_HIGH:
            out.append(Finding("sign_conflict", f"{a} and {b} conflict on {_pct(conf)} of top-{top} signs "
                               f"(cosine {cos:.2f}): prefer ties/dare_ties over linear.", [a, b], "warning"))
        elif conf is not None and conf <= CONFLICT_LOW:
            out.append(Finding("sign_agreement", f"{a} and {b} agree on {_pct(1 - conf)} of top-{top} signs "
                               f"(cosine {cos:.2f}): linear/task_arithmetic merges are safe.", [a, b]))
        if jac is not None and jac >= 0.5 and cos < NEAR_DUPLICATE_COS:
            out.append(Finding("redundant_support", f"{a} and {b} change largely the same parameters (top-{top} "
                               f"mask overlap {jac:.2f} Jaccard).", [a, b]))
    norms = [(m["name"], m["norm"]) for m in report["models"] if m["norm"] > 0]
    if len(norms) >= 2:
        big = max(norms, key=lambda x: x[1])
        small = min(norms, key=lambda x: x[1])
        if big[1] >= NORM_RATIO * small[1]:
            out.append(Finding("norm_imbalance", f"{big[0]}'s task vector is {big[1] / small[1]:.1f}x longer than "
                               f"{small[0]}'s: it will dominate an unweighted merge; consider per-model weights.",
                               [big[0], small[0]], "warning"))
    out.extend(_layer_hotspots(report))
    out.extend(_task_findings(report, models))
    if not out:
        out.append(Finding("no_issues", "No strong interference or redundancy detected: the task vectors are "
                           "moderately related; any merge method is a reasonable start.", models))
    return out


def _layer_hotspots(report: dict[str, Any]) -> list[Finding]:
    out = []
    for p in report["pairs"]:
        overall = p["conflict_rate"]
        if overall is None:
            continue
        rates = []
        for lay in report["layers"]:
            for lp in lay["pairs"]:
                if lp["a"] == p["a"] and lp["b"] == p["b"] and lp["conflict_rate"] is not None:
                    rates.append((lp["conflict_rate"], lay["label"]))
        hot = sorted((r for r in rates if r[0] >= overall + LAYER_CONFLICT_GAP), reverse=True)
        if hot:
            where = ", ".join(f"{lab} ({_pct(r)})" for r, lab in hot[:3])
            out.append(Finding("conflict_hotspot", f"{p['a']} and {p['b']} conflict most in {where} vs "
                               f"{_pct(overall)} overall: a per-layer recipe (e.g. ties only there) may help.",
                               [p["a"], p["b"]]))
    return out


def _task_findings(report: dict[str, Any], models: list[str]) -> list[Finding]:
    tasks = report.get("tasks")
    if not tasks:
        return []
    best = tasks["best"]  # task -> list of best model names (ties within TASK_TIE_REL)
    winners = {t: b for t, b in best.items() if b}
    out = []
    distinct = {tuple(b) for b in winners.values()}
    if len(winners) >= 2 and len(distinct) >= 2:
        parts = [f"{'/'.join(b)} on {t}" for t, b in winners.items()]
        out.append(Finding("complementary", "Best model differs by task: " + "; ".join(parts)
                           + ": complementary, a merge can combine their strengths.", models))
    elif winners and len(distinct) == 1:
        (b,) = distinct
        who = "/".join(b)
        out.append(Finding("dominant", f"{who} is best on every task ({', '.join(winners)}): check that a merge "
                           f"beats it before using one.", list(b)))
    for t, base_loss in tasks.get("base_loss", {}).items():
        worse = [m for m in models if tasks["scores"][m][t]["loss"] > base_loss * (1 + TASK_TIE_REL)]
        if worse:
            out.append(Finding("worse_than_base", f"On {t}, {', '.join(worse)} {'is' if len(worse) == 1 else 'are'} "
                               f"worse than the base (loss above {base_loss:.3f}).", worse))
    lmc = report.get("lmc")
    if lmc:
        for t, curve in lmc["loss"].items():
            ends = max(curve[0], curve[-1])
            bar = lmc.get("barrier", {}).get(t, max(curve) - ends)
            if bar > LMC_BARRIER_REL * abs(ends):
                out.append(Finding("loss_barrier", f"Loss barrier on {t}: interpolating {lmc['models'][0]} and "
                                   f"{lmc['models'][1]} rises {bar:.3f} above the straight line between their losses "
                                   f"(peak {max(curve):.3f}): they are not linearly mode-connected; linear merges "
                                   f"will hurt.", list(lmc["models"]), "warning"))
            elif min(curve[1:-1] or [ends]) < min(curve[0], curve[-1]) * (1 - TASK_TIE_REL):
                out.append(Finding("lmc_gain", f"On {t} the interior of the {lmc['models'][0]}-{lmc['models'][1]} "
                                   f"path beats both endpoints (min loss {min(curve):.3f} at alpha "
                                   f"{lmc['alphas'][curve.index(min(curve))]:.2f}): a linear merge helps.",
                                   list(lmc["models"])))
    return out

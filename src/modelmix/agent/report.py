"""The agent's report: ``agent_report.json`` (everything measured) and ``agent_report.md`` (the same in
sentences and tables, each decision with the numbers behind it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _n(m: str) -> str:
    return Path(m).name if m != "base" else "base"


def markdown(r: dict[str, Any]) -> str:
    tasks = list(r["split"])
    lines = ["# Merge agent report", "", f"Run `{r['run']}`, {r['seconds']:.0f} s, "
             f"{r['evaluations']['computed']} evaluations computed "
             f"({r['evaluations']['per_candidate_s']:.2f} s each on average).", "", "## Decision", "", r["decision"], ""]
    lines += ["## Data", "", "Each task's examples were shuffled with the seed and split once: the search saw the dev "
              "part only (its first rows as the cheap fidelity); the choice was made on the held-out part.", "",
              "| task | metric | weight | dev | of which cheap | held out | file |", "|---|---|---|---|---|---|---|"]
    for t, s in r["split"].items():
        lines.append(f"| {t} | {s['metric']} | {s['weight']:g} | {s['dev']} | {s['low']} | {s['holdout']} | {s['file']} |")
    lines += ["", "## Candidates alone (dev part)", "", "| model | " + " | ".join(tasks) + " | general loss | objective |",
              "|---|" + "---|" * (len(tasks) + 2)]
    for m, e in r["matrix"].items():
        g = "–" if e["general"] is None else f"{e['general']:.3f}"
        lines.append(f"| {_n(m)} | " + " | ".join(f"{e['scores'][t]:.2f}" for t in tasks) + f" | {g} | {e['objective']:.3f} |")
    lines += ["", "## Task vectors", "", "| pair | cosine | sign conflicts (shared top-k) | top-k overlap |", "|---|---|---|---|"]
    for p in r["task_vectors"]["pairs"]:
        lines.append(f"| {_n(p['a'])} + {_n(p['b'])} | {p['cosine']:.3f} | {p['conflict_rate']:.3f} | {p['jaccard']:.3f} |")
    lines += ["", "## Selection", ""] + [f"- **{d['action']}** {d['why']}" for d in r["selection"]["decisions"]]
    s = r["search"]
    lines += ["", "## Search", "", f"{s['trials']} trials (Optuna TPE, seeded) over {', '.join(s['methods'])}; "
              f"{s['pruned']} stopped after the cheap fidelity. Started from: " + "; ".join(s["proposals"]) + ".", "",
              "Best on the dev part:", ""] + [f"- {b['objective']:.3f} {b['recipe']}" for b in s["best_dev"]]
    if s["pareto"]:
        lines += ["", "Pareto front (task mean vs general loss, dev):", "", "| trial | task mean | general loss | recipe |",
                  "|---|---|---|---|"] + [f"| {p['trial']} | {p['task_mean']:.3f} | {p['general']:.3f} | {p['recipe']} |"
                                          for p in s["pareto"]]
    h = r["holdout"]
    lines += ["", "## Held-out part", "", "| system | " + " | ".join(tasks) + " | general loss | objective |",
              "|---|" + "---|" * (len(tasks) + 2)]

    def row(name: str, e: dict[str, Any]) -> str:
        g = "–" if e.get("general") is None else f"{e['general']:.3f}"
        return f"| {name} | " + " | ".join(f"{e['scores'][t]:.2f}" for t in tasks) + f" | {g} | {e['objective']:.3f} |"

    for x in h["shortlist"]:
        lines.append(row(("**chosen** " if x["recipe"] == h["chosen"] else "") + x["recipe"], x))
    for m, e in h["singles"].items():
        lines.append(row(f"{_n(m)} alone", e))
    lines.append(row("base", h["base"]))
    lines += ["", f"Routing estimate (each task to its best candidate): {h['routing_estimate']:.3f} task mean; "
              f"the chosen merge: {h['merge_task_mean']:.3f}."]
    if r.get("router_config"):
        lines += ["", f"Router config written: `{r['router_config']}`."]
    return "\n".join(lines) + "\n"


def write_report(r: dict[str, Any], out: Path) -> None:
    (out / "agent_report.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "agent_report.md").write_text(markdown(r))

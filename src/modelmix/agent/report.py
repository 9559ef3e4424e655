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
    rm = h.get("router_measured")
    if rm and rm.get("task_mean") is not None:
        lines += ["", f"Router measured (the config the agent would write, each held-out query routed by its text): "
                  f"{rm['task_mean']:.3f} task mean, {100 * rm['routed_right']:.0f} % of queries sent to their own "
                  "task's route; per task: " + ", ".join(f"{t} {v:.2f}" for t, v in rm["scores"].items()) + "."]
    elif rm and rm.get("error"):
        lines += ["", f"Router not measured: {rm['error']}"]
    if r.get("router_config"):
        lines += ["", f"Router config written: `{r['router_config']}`."]
    return "\n".join(lines) + "\n"


def write_report(r: dict[str, Any], out: Path) -> None:
    """``agent_report.json``, ``.md`` and ``.html`` (with the plots) in ``out``."""
    (out / "agent_report.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "agent_report.md").write_text(markdown(r))
    (out / "agent_report.html").write_text(html(r))


def _png(fig: Any) -> str:
    """The figure as a base64 PNG; the figure is closed."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figures(r: dict[str, Any]) -> dict[str, str]:
    """The report's plots as base64 PNGs: evaluation matrix, task-vector cosines, search trajectory, Pareto."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    tasks = list(r["split"])
    rows = list(r["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 0.8 + 0.45 * len(rows)))
    data = [[r["matrix"][m]["scores"][t] for t in tasks] for m in rows]
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [_n(m) for m in rows])
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label="dev score")
    ax.set_title("Candidates alone (dev part)")
    out["matrix"] = _png(fig)

    pairs = r["task_vectors"]["pairs"]
    names = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs}, key=rows.index)
    if len(names) > 1:
        idx = {m: i for i, m in enumerate(names)}
        cos = [[1.0 if i == j else 0.0 for j in range(len(names))] for i in range(len(names))]
        for p in pairs:
            cos[idx[p["a"]]][idx[p["b"]]] = cos[idx[p["b"]]][idx[p["a"]]] = p["cosine"] or 0.0
        fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(names), 1.2 + 0.5 * len(names)))
        im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), [_n(m) for m in names], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), [_n(m) for m in names])
        fig.colorbar(im, ax=ax, label="task-vector cosine")
        ax.set_title("Task-vector similarity")
        out["similarity"] = _png(fig)

    traj = r["search"]["trajectory"]
    if traj:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        done = [t for t in traj if t["dev"] is not None]
        cut = [t for t in traj if t["dev"] is None]
        floor = -0.2  # general loss far past the constraint scores far below 0: drawn on the floor, as "v"
        ok = [t for t in done if t["dev"] >= floor]
        for phase, label in (("tpe", "dev objective (TPE)"), ("random", "dev objective (random)"),
                             ("cmaes", "dev objective (CMA-ES refinement)")):
            pts = [t for t in ok if t.get("phase", "tpe") == phase]
            if pts:
                ax.scatter([t["trial"] for t in pts], [t["dev"] for t in pts], s=14, label=label)
        ax.scatter([t["trial"] for t in cut], [max(floor, t["low"]) for t in cut], s=14, marker="x",
                   label="pruned (cheap score)")
        off = [t for t in done if t["dev"] < floor]
        if off:
            ax.scatter([t["trial"] for t in off], [floor] * len(off), s=18, marker="v", color="r",
                       label=f"below {floor} (general loss past the constraint)")
        best, run = [], float("-inf")
        for t in sorted(done, key=lambda t: t["trial"]):
            run = max(run, t["dev"])
            best.append((t["trial"], run))
        if best:
            ax.step(*zip(*best, strict=True), where="post", color="k", lw=1, label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("objective")
        ax.legend(fontsize=8)
        ax.set_title("Search trajectory")
        out["trajectory"] = _png(fig)
        pts = [t for t in done if t.get("general") is not None]
        if pts:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.scatter([t["general"] for t in pts], [sum(t["scores"].values()) / len(t["scores"]) for t in pts],
                       s=12, alpha=0.6, label="trials")
            front = r["search"]["pareto"]
            ax.plot([p["general"] for p in front], [p["task_mean"] for p in front], "r.-", label="Pareto front")
            ax.set_xlabel("general loss (lower is better)")
            ax.set_ylabel("task mean")
            ax.legend(fontsize=8)
            ax.set_title("Task mean vs general ability (dev)")
            out["pareto"] = _png(fig)
    return out


def html(r: dict[str, Any]) -> str:
    """The Markdown report as a self-contained page (tables and lists rendered by hand), with the plots."""
    import html as h

    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            rows = [ln.strip("|").split("|") for ln in table if not set(ln) <= set("|-")]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{h.escape(c.strip())}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{h.escape(c.strip())}</td>" for c in row) + "</tr>"
                                  for row in rest) + "</table>")
            table.clear()

    for ln in markdown(r).splitlines():
        if ln.startswith("|"):
            table.append(ln)
            continue
        flush()
        if ln.startswith("# "):
            body.append(f"<h1>{h.escape(ln[2:])}</h1>")
        elif ln.startswith("## "):
            body.append(f"<h2>{h.escape(ln[3:])}</h2>")
        elif ln.startswith("- "):
            body.append(f"<p>• {h.escape(ln[2:]).replace('**', '')}</p>")
        elif ln.strip():
            body.append(f"<p>{h.escape(ln).replace('`', '')}</p>")
    flush()
    figs = figures(r)
    body.append("<h2>Plots</h2>" + "".join(f'<img alt="{k}" src="data:image/png;base64,{v}">' for k, v in figs.items()))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
             "img{max-width:100%;margin:1em 0;display:block}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Merge agent report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"

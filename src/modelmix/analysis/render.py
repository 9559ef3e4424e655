"""Plots (matplotlib, Agg backend, PNG bytes) and the self-contained HTML report.

The HTML embeds every image as a base64 ``data:`` URI and uses inline CSS only, so the single file can be
mailed or attached to a model card without broken links.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from modelmix.analysis.findings import Finding


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def figures(data: dict[str, Any]) -> dict[str, bytes]:
    """``{name: png bytes}``: similarity heatmaps, per-layer curves, norms, and the LMC curve if present."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    names = [m["name"] for m in data["models"]]
    out: dict[str, bytes] = {}

    mats = data["matrices"]
    fig, axes = plt.subplots(1, 3, figsize=(5.2 * 3, 4.2), layout="constrained")
    for ax, (key, title, vmin, vmax, cmap) in zip(axes, (
        ("cosine", "cosine similarity", -1, 1, "RdBu_r"),
        ("conflict_rate", f"sign conflict (top {data['top_k']:.0%})", 0, 1, "Reds"),
        ("jaccard", f"top-{data['top_k']:.0%} overlap (Jaccard)", 0, 1, "Blues"),
    ), strict=True):
        vals = [[_num(v) for v in row] for row in mats[key]]
        im = ax.imshow(vals, vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(title)
        for i, row in enumerate(mats[key]):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    out["similarity"] = _png(fig)

    layers = [lay for lay in data["layers"] if lay["layer"] is not None]
    if layers:
        xs = [lay["layer"] for lay in layers]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8))
        for k, p in enumerate(data["pairs"]):
            label = f"{p['a']} vs {p['b']}"
            a1.plot(xs, [_num(lay["pairs"][k]["cosine"]) for lay in layers], marker=".", label=label)
            a2.plot(xs, [_num(lay["pairs"][k]["conflict_rate"]) for lay in layers], marker=".", label=label)
        a1.set(title="cosine per layer", xlabel="layer", ylabel="cosine")
        a2.set(title=f"sign conflict among top {data['top_k']:.0%} per layer", xlabel="layer", ylabel="conflict rate")
        a2.set_ylim(0, 1)
        for a in (a1, a2):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        out["layers"] = _png(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    a1.bar(names, [m["norm"] or 0.0 for m in data["models"]], color="tab:blue")
    a1.set(title="task vector norm ||M - base||")
    a1.tick_params(axis="x", rotation=45)
    if layers:
        for n in names:
            a2.plot(xs, [_num(lay["norms"][n]) for lay in layers], marker=".", label=n)
        a2.set(title="task vector norm per layer", xlabel="layer")
        a2.grid(alpha=0.3)
        a2.legend(fontsize=8)
    else:
        a2.axis("off")
    out["norms"] = _png(fig)

    lmc = data.get("lmc")
    if lmc:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for t, ys in lmc["loss"].items():
            ax.plot(lmc["alphas"], ys, marker="o", label=t)
        a, b = lmc["models"]
        ax.set(title=f"loss along (1-a)*{a} + a*{b}", xlabel="alpha", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out["lmc"] = _png(fig)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
ul.findings li{margin:.4em 0}li.warning{color:#8a3b00}li.warning::marker{content:"⚠ "}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child{text-align:left}img{max-width:100%}.best{font-weight:bold;background:#e6f4e6}
.small{color:#666;font-size:.9em}"""


def html_report(data: dict[str, Any], findings: list[Finding]) -> str:
    """One self-contained HTML page: findings, tables and embedded plots."""
    imgs = {k: base64.b64encode(v).decode("ascii") for k, v in figures(data).items()}
    names = [m["name"] for m in data["models"]]
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>modelmix analysis</title><style>{_CSS}</style>"
             "</head><body><h1>Task-vector interference analysis</h1>",
             f"<p class='small'>base: {e(data['base'])}; {len(names)} models; {data['n_params']:,} parameters in "
             f"{data['n_tensors']} tensors; top-k = {data['top_k']:.0%} per tensor.</p>",
             "<h2>Findings</h2><ul class='findings'>"]
    parts += [f"<li class='{e(f.severity)}'>{e(f.text)}</li>" for f in findings]
    parts.append("</ul>")

    parts.append("<h2>Task vectors</h2>")
    parts.append(_table(["model", "path", "norm", "norm / base norm", "top-k params"],
                        [[m["name"], m["path"], m["norm"], m["relative_norm"], m["topk_count"]] for m in data["models"]]))
    parts.append(_table(["pair", "cosine", "sign conflict (top-k)", "jaccard (top-k)", "shared top-k", "conflicts"],
                        [[f"{p['a']} / {p['b']}", p["cosine"], p["conflict_rate"], p["jaccard"], p["shared_topk"],
                          p["conflicts"]] for p in data["pairs"]]))
    parts.append(f"<img alt='similarity' src='data:image/png;base64,{imgs['similarity']}'>")
    parts.append(f"<img alt='norms' src='data:image/png;base64,{imgs['norms']}'>")
    if "layers" in imgs:
        parts.append("<h2>Per layer</h2>")
        parts.append(f"<img alt='layers' src='data:image/png;base64,{imgs['layers']}'>")

    tasks = data.get("tasks")
    if tasks:
        parts.append("<h2>Tasks (coverage)</h2><p class='small'>Loss per task (lower is better); the best model per "
                     "task is highlighted (ties within 1%).</p>")
        rows = []
        for t in tasks["names"]:
            row: list[Any] = [t, tasks["base_scores"][t].get("loss")]
            for n in names:
                v = tasks["scores"][n][t].get("loss")
                row.append(_Raw(f"<span class='best'>{_fmt(v)}</span>") if n in tasks["best"].get(t, []) else v)
            rows.append(row)
        parts.append(_table(["task", "base"] + names, rows))
        extra = [k for k in tasks["metrics"] if k != "loss"]
        for metric in extra:
            parts.append(_table(["task (" + metric + ")", "base"] + names,
                                [[t, tasks["base_scores"][t].get(metric)] + [tasks["scores"][n][t].get(metric)
                                                                            for n in names] for t in tasks["names"]]))
        cov = ", ".join(f"{n}: {', '.join(ts) or 'none'}" for n, ts in tasks["coverage"].items())
        parts.append(f"<p>Best on: {e(cov)}</p>")
    if "lmc" in imgs:
        parts.append("<h2>Linear path</h2>")
        parts.append(f"<img alt='lmc' src='data:image/png;base64,{imgs['lmc']}'>")

    parts.append("<h2>Per-layer table</h2>")
    header = ["group", "params"] + [f"norm {n}" for n in names]
    for p in data["pairs"]:
        header += [f"cos {p['a']}/{p['b']}", f"conflict {p['a']}/{p['b']}"]
    rows = []
    for lay in data["layers"]:
        row = [lay["label"], lay["n_params"]] + [lay["norms"][n] for n in names]
        for lp in lay["pairs"]:
            row += [lp["cosine"], lp["conflict_rate"]]
        rows.append(row)
    parts.append(_table(header, rows))
    parts.append("<p class='small'>Definitions: task vector = model − base (float32). Cosine over all analysed "
                 "tensors. Top-k set: per tensor, the parameters whose |Δ| is at least the exact k-th largest "
                 "(k = top_k × size, ties kept, zeros excluded). Sign conflict: among parameters in both models' "
                 "top-k sets, the fraction with opposite signs (≈50% for unrelated updates). Jaccard: shared / union "
                 "of the top-k sets. Generated by modelmix analyze.</p></body></html>")
    return "".join(parts)

"""Linear mode connectivity (LMC): held-out loss along the straight line between two models.

Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020,
https://arxiv.org/abs/1912.05671.

Two fine-tunes of one base can usually be averaged only if they are linearly connected: the loss along
``theta(t) = (1 - t) A + t B`` stays below the chord between the endpoint losses. The *barrier* measures
the violation::

    barrier = max_t [ L(t) - ((1 - t) L(0) + t L(1)) ]      (>= 0: the endpoints contribute 0)

A barrier near 0 says merging A and B is safe; a large one says they sit in different basins (e.g.
fine-tuned from different bases, or permuted). ``best_t`` is the grid point with the lowest loss (ties:
the smallest t), the natural weight for a two-model linear merge.

Interpolated models are never written to disk: both endpoints are read once (:class:`modelmix.candidates.
Candidates`) and each ``theta(t)`` is ``torch.lerp`` straight into the parameters of one loaded skeleton.
``torch.lerp`` is exact at the endpoints, so ``L(0)``/``L(1)`` equal the endpoints' own losses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelmix.errors import InputError
from modelmix.weighting.common import Log, check_metric, decoder_skeleton, write_linear


@dataclass
class LMCResult:
    ts: list[float]
    losses: list[float]
    metric_values: list[float] | None  # the optional metric at each t (None when not asked for)
    barrier: float  # max over t of loss(t) minus the chord between the endpoint losses
    best_t: float  # t with the lowest loss
    metric: str | None = None
    a: str = ""
    b: str = ""

    @property
    def best_t_metric(self) -> float | None:
        """t with the highest ``metric`` (ties: the lower loss, then the smaller t); None without a metric."""
        if not self.metric_values:
            return None
        vals = self.metric_values
        return self.ts[min(range(len(self.ts)), key=lambda i: (-vals[i], self.losses[i], i))]

    @property
    def selected_t(self) -> float:
        """The t ``--merge-best`` writes: the best by ``metric`` when one was asked for, else by loss."""
        bm = self.best_t_metric
        return self.best_t if bm is None else bm

    @property
    def chord(self) -> list[float]:
        """The linear interpolation of the endpoint losses at each t."""
        l0, l1 = self.losses[0], self.losses[-1]
        return [(1 - t) * l0 + t * l1 for t in self.ts]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chord"] = self.chord
        d["best_t_metric"] = self.best_t_metric
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table: t, loss, chord gap and the metric per point, then barrier and best t."""
        head = f"{'t':>6}  {'loss':>10}  {'loss-chord':>10}" + (f"  {self.metric:>12}" if self.metric_values else "")
        rows = [head]
        for i, (t, loss, c) in enumerate(zip(self.ts, self.losses, self.chord, strict=True)):
            row = f"{t:6.3f}  {loss:10.5f}  {loss - c:10.5f}"
            if self.metric_values:
                row += f"  {self.metric_values[i]:12.4f}"
            rows.append(row)
        rows.append(f"barrier {self.barrier:.5f}  best t {self.best_t:.3f} (loss {min(self.losses):.5f})")
        if self.best_t_metric is not None and self.metric_values:
            rows.append(f"best t by {self.metric} {self.best_t_metric:.3f} ({self.metric} {max(self.metric_values):.4f})")
        return "\n".join(rows)


def grid(points: int) -> list[float]:
    """``points`` uniformly spaced values from 0 to 1 inclusive."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise InputError(f"The number of points along the path must be an integer >= 2 (it includes t=0 and t=1), got {points!r}.")
    return [i / (points - 1) for i in range(points)]


def barrier_height(ts: Sequence[float], losses: Sequence[float]) -> float:
    """``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` over the grid (t runs from 0 to 1)."""
    l0, l1 = losses[0], losses[-1]
    return max(loss - ((1 - t) * l0 + t * l1) for t, loss in zip(ts, losses, strict=True))


def lmc_curve(
    a: str | Path,
    b: str | Path,
    examples: str | Path | list[dict[str, Any]],
    points: int = 11,
    metric: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    separator: str | None = None,
    log: Log | None = None,
) -> LMCResult:
    """Loss (and optionally ``metric``, e.g. ``"exact_match"``) of ``(1 - t) a + t b`` on ``examples``
    (a JSONL path or a list of ``{"input", "output"}`` dicts) at ``points`` uniformly spaced t; scored with
    the models' own prompt convention unless ``separator`` is given."""
    import torch

    from modelmix.devices import check_device
    from modelmix.eval.data import coerce_examples

    device = check_device(device)
    ts = grid(points)
    if metric is not None:
        check_metric(metric, ("exact_match",))
    from modelmix.eval.models import require_kind

    for m in (a, b):
        if Path(m).is_dir():
            require_kind(m, "decoder", "Linear mode connectivity (scored by decoder loss)")
    exs = coerce_examples(examples, "decoder")
    from modelmix.candidates import Candidates

    names = ["loss"] + ([metric] if metric else [])
    losses: list[float] = []
    values: list[float] = []
    with Candidates([a, b], what="endpoint models", purpose="Linear mode connectivity") as cands:
        em = decoder_skeleton(cands, device, separator, "LMC curves")
        targets = em.targets(cands.names)
        pairs = [(cands.tensor(0, n), cands.tensor(1, n), dst) for n, dst in targets.items() if dst is not None]
        for t in ts:
            with torch.no_grad():
                for x, y, dst in pairs:
                    if dst.dtype == torch.float32 and dst.device == x.device:
                        torch.lerp(x, y, t, out=dst)
                    else:
                        dst.copy_(torch.lerp(x, y, t))
            res = cands.score(em, exs, names, batch_size=batch_size)
            losses.append(res["loss"])
            if metric:
                values.append(res[metric])
            if log is not None:
                log(f"t={t:.3f}  loss {res['loss']:.5f}" + (f"  {metric} {res[metric]:.4f}" if metric else ""))
    best = min(range(len(ts)), key=lambda i: (losses[i], i))
    return LMCResult(ts, losses, values if metric else None, barrier_height(ts, losses), ts[best], metric,
                     str(a), str(b))


def plot_curve(result: LMCResult, path: str | Path) -> Path:
    """Loss along the path, the endpoint chord (dashed) and the optional metric (right axis) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelmix.io.outputs import check_png, save_png

    check_png(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(result.ts, result.losses, "o-", color="C0", label="loss")
        ax.plot(result.ts, result.chord, "--", color="C0", alpha=0.5, label="chord")
        ax.axvline(result.best_t, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("t   (θ = (1−t)·A + t·B)")
        ax.set_ylabel("loss")
        ax.set_title(f"LMC: barrier {result.barrier:.4f}, best t {result.best_t:.2f}")
        handles, labels = ax.get_legend_handles_labels()
        if result.metric_values:
            ax2 = ax.twinx()
            ax2.plot(result.ts, result.metric_values, "s-", color="C1", label=result.metric)
            ax2.set_ylabel(str(result.metric))
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="best")
        fig.tight_layout()
        p = save_png(fig, path, dpi=100, what="plot")
    finally:
        plt.close(fig)
    return p


def merge_at(a: str | Path, b: str | Path, t: float, out_dir: str | Path, *, overwrite: bool = False,
             protect: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write ``(1 - t) a + t b`` through the streaming engine (a ``linear`` recipe with weights 1-t, t)."""
    if not 0.0 <= t <= 1.0:
        raise InputError(f"Interpolation weight t must be within [0, 1], got {t}.")
    from modelmix.io.outputs import check_model_output

    check_model_output(out_dir, overwrite=overwrite, models=[a, b], files=[p for _, p in protect])
    return write_linear([str(a), str(b)], [1.0 - t, t], out_dir, overwrite=overwrite, protect=protect)

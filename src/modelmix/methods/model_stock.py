"""Model Stock: interpolate between the base and the average of the fine-tunes by their mutual angle."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from modelmix.kernels import reduce as red
from modelmix.methods._common import as_f32
from modelmix.methods.registry import Method, Param, Streamer, register

if TYPE_CHECKING:
    from modelmix.streaming import ChunkSource


def stock_ratio(n: int, dots: dict[tuple[int, int], float], sq: list[float]) -> Tensor:
    """The per-tensor ratio ``t = N cos / (1 + (N - 1) cos)`` (float32 0-d) from float64 pairwise dots
    ``dots[(i, j)]`` (i < j) and squared norms ``sq[i]`` of the task vectors (python floats, fixed order)."""
    norms = [math.sqrt(v) for v in sq]
    cosines = [max(-1.0, min(1.0, dots[(i, j)] / max(norms[i] * norms[j], 1e-6)))
               for i in range(n) for j in range(i + 1, n)]
    cos = sum(cosines) / len(cosines) if cosines else 0.0
    denom = 1 + (n - 1) * cos
    return torch.tensor(0.0 if abs(denom) < 1e-6 else n * cos / denom, dtype=torch.float32)


def _filter_ratio(offsets: list[Tensor]) -> Tensor:
    """Per-filter (last-dim row) ratios, shape ``(..., 1)``: each row's float64 norms and dots are its own
    fixed-procedure partials (``modelmix.kernels.reduce``), so the ratio of a row never depends on which
    other rows are in the chunk."""
    w = offsets[0].shape[-1]
    flat = [o.reshape(-1, w).to(torch.float64) for o in offsets]
    sq = [red.row_partials(f * f, w) for f in flat]
    norms = [v.sqrt() for v in sq]
    cosines = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            dot = red.row_partials(flat[i] * flat[j], w)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
    cos = cosines[0]
    for c in cosines[1:]:
        cos = cos + c
    cos = cos / len(cosines)
    n = len(offsets)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(denom), denom))
    return t.float().view(*offsets[0].shape[:-1], 1)


def model_stock(tensors: list[Tensor], *, base: Tensor | None, filter_wise: bool = False) -> Tensor:
    """``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors; result
    ``t * mean(models) + (1 - t) * base``. ``filter_wise`` uses one cosine per row (last dim) instead of per
    tensor (a 1-D tensor is one filter, i.e. the whole tensor). Where ``1 + (N - 1) cos`` vanishes the base
    is kept (mergekit 0.1.5). Norms and dots are float64 fixed-partition sums (``modelmix.kernels.reduce``),
    as the executor's streamer takes them."""
    w0 = as_f32(base)  # type: ignore[arg-type]
    ws = [as_f32(t) for t in tensors]
    n = len(ws)
    offsets = [w - w0 for w in ws]
    if filter_wise and w0.dim() >= 2:
        t = _filter_ratio(offsets)
    else:
        row = red.row_len(w0.shape)
        sq = [red.sumsq(o, row) for o in offsets]
        dots = {(i, j): red.dot(offsets[i], offsets[j], row) for i in range(n) for j in range(i + 1, n)}
        t = stock_ratio(n, dots, sq).to(w0.device)
    average = sum(ws) / n
    return t * average + (1 - t) * w0


def _model_stock_stream(src: ChunkSource, *, filter_wise: bool, **_: Any) -> None:
    """Model Stock in row chunks: filter-wise ratios need only whole rows (each chunk runs the reference);
    the per-tensor ratio takes a statistics pass (fixed-partition float64 norms and pairwise dots of the task
    vectors, as the reference computes them)."""
    if filter_wise and len(src.shape) >= 2:
        for rows, xs, b in src.chunks():
            src.emit(rows, model_stock(xs, base=b, filter_wise=True))
        return
    row = red.row_len(src.shape)
    stats: dict[tuple[int, int], np.ndarray] = {}
    n = 0
    for _rows, xs, b in src.chunks():
        n = len(xs)
        offs = [x - b for x in xs]
        for i in range(n):
            for j in range(i + 1, n):
                red.dot_stats(offs[i], offs[j], row, stats.setdefault((i, j), np.zeros(3, dtype=np.float64)))
    if not n:
        return
    t = stock_ratio(n, {k: float(v[2]) for k, v in stats.items()}, _self_dots(n, stats))
    for rows, xs, b in src.chunks():
        average = sum(xs) / len(xs)
        src.emit(rows, t * average + (1 - t) * b)


def _self_dots(n: int, stats: dict[tuple[int, int], np.ndarray]) -> list[float]:
    """Each task vector's squared norm, from the first pair statistics that hold it (every pair computes it
    by the same fixed procedure)."""
    out = []
    for i in range(n):
        if i + 1 < n:
            out.append(float(stats[(i, i + 1)][0]))
        else:
            out.append(float(stats[(i - 1, i)][1]) if i > 0 else 0.0)
    return out


register(
    Method(
        name="model_stock",
        fn=model_stock,
        params=(
            Param(
                "filter_wise",
                "global",
                bool,
                False,
                help="Compute the interpolation ratio per row (filter) rather than per tensor.",
            ),
        ),
        needs_base=True,
        min_models=2,
        description="Model Stock: moves from the base towards the fine-tunes' average by their agreement.",
        # a statistics pass and an apply pass, both cheap: no input cache (see Streamer.cache)
        streamer=Streamer(_model_stock_stream),
        reference="Jang et al. 2024, https://arxiv.org/abs/2403.19522; mergekit 0.1.5 `model_stock`.",
    )
)

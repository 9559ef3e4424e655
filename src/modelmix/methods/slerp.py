"""Spherical interpolation between two models: ``slerp`` (base at t=0) and ``nuslerp`` (weights, optional
base as the origin, optional row/column-wise interpolation)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from modelmix.kernels import reduce as red
from modelmix.kernels.backend import kernels
from modelmix.methods._common import WEIGHT, as_f32, check_count
from modelmix.methods.registry import Method, Param, Streamer, register

if TYPE_CHECKING:
    from modelmix.streaming import ChunkSource

DOT_THRESHOLD = 0.9995  # |cos| above this: nearly colinear, lerp instead (mergekit's value)
NORM_EPS = 1e-8  # norms at or below this are treated as 1 (the vector is left unnormalized)


def slerp_coeffs(ss_a: float, ss_b: float, dot: float, t: float, numel: int) -> tuple[Tensor, Tensor]:
    """(ca, cb) with slerp = ca * a + cb * b, from the float64 sums (sum a^2, sum b^2, sum a*b); the angle
    and its sines in float32 as mergekit (scalar ops: no vectorised/scalar split to depend on)."""
    na, nb = math.sqrt(ss_a), math.sqrt(ss_b)
    na = na if na > NORM_EPS else 1.0
    nb = nb if nb > NORM_EPS else 1.0
    cos = torch.tensor(max(-1.0, min(1.0, dot / (na * nb))), dtype=torch.float32)
    if numel == 0 or cos.abs().item() > DOT_THRESHOLD:
        return torch.tensor(1 - t, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    theta = torch.acos(cos)
    return torch.sin((1 - t) * theta) / torch.sin(theta), torch.sin(t * theta) / torch.sin(theta)


def slerp(tensors: list[Tensor], *, base: Tensor | None, t: float) -> Tensor:
    """Slerp over the whole flattened tensor from ``base`` (t=0) to the other model (t=1); falls back to
    linear interpolation when the two are (anti)colinear (|cos| > 0.9995), as mergekit does. Norms and dot
    are fixed-partition float64 sums (``modelmix.kernels.reduce``), as the executor's streamer takes them."""
    a = as_f32(base)  # type: ignore[arg-type]
    b = as_f32(tensors[0])
    acc = np.zeros(3, dtype=np.float64)
    red.dot_stats(a, b, red.row_len(a.shape), acc)
    ca, cb = slerp_coeffs(*(float(v) for v in acc), t, a.numel())
    return ca * a + cb * b


def _map(fn, x: Tensor) -> Tensor:
    """``fn`` (a math function) on every element of a float64 tensor, element by element: transcendental
    functions must not depend on where an element sits (torch's vectorised and scalar tails differ)."""
    return torch.tensor([fn(v) for v in x.reshape(-1).tolist()], dtype=torch.float64).view(x.shape).to(x.device)


def nuslerp_coeffs(stats: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """float32 (c0, c1) with slerp(v0, v1) = c0 * v0 + c1 * v1 from float64 ``stats`` = (sum v0^2, sum v1^2,
    sum v0*v1) per vector (shape ``(3, ...)``); exactly colinear vectors (1 - cos^2 <= 1e-16) are lerped."""
    n0 = stats[0].sqrt().clamp(min=1e-7)
    n1 = stats[1].sqrt().clamp(min=1e-7)
    cos = (stats[2] / (n0 * n1)).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-16
    theta = _map(math.acos, torch.where(colinear, torch.zeros_like(cos), cos))
    sin_t = torch.where(colinear, torch.ones_like(theta), _map(math.sin, theta))
    c0 = torch.where(colinear, torch.full_like(cos, 1 - t), _map(math.sin, (1 - t) * theta) / sin_t).float()
    c1 = torch.where(colinear, torch.full_like(cos, t), _map(math.sin, t * theta) / sin_t).float()
    return c0, c1


def _row_stats(v0: Tensor, v1: Tensor) -> Tensor:
    """(3, ..., 1) fixed-procedure float64 stats of every last-dim row of v0, v1 (one partial per row)."""
    x = v0.reshape(-1, v0.shape[-1]).to(torch.float64)
    y = v1.reshape(-1, v1.shape[-1]).to(torch.float64)
    w = v0.shape[-1]
    parts = [red.row_partials(p, w) for p in (x * x, y * y, x * y)]
    return torch.stack(parts).view(3, *v0.shape[:-1], 1)


def nuslerp(
    tensors: list[Tensor],
    *,
    base: Tensor | None = None,
    weight: list[float],
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
) -> Tensor:
    """Slerp between two models at ``t = w1 / (w0 + w1)`` (0.5 when the weights cancel). With a base, the
    task vectors (model - base) are interpolated and added back to the base. Norms and dots are float64:
    per tensor by the fixed partition, per row (last dim) by its 8-lane partial, per column (along dim 0)
    added row by row in order, as the executor's streamer takes them."""
    check_count("nuslerp", tensors, weight, "weight")
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    v0, v1 = as_f32(tensors[0]), as_f32(tensors[1])
    if base is not None:
        b = as_f32(base)
        v0, v1 = v0 - b, v1 - b
    shape = v0.shape
    if not nuslerp_flatten and v0.dim() >= 2 and not nuslerp_row_wise:  # per row (last dim)
        c0, c1 = nuslerp_coeffs(_row_stats(v0, v1), t)
        out = c0 * v0 + c1 * v1
    elif not nuslerp_flatten and v0.dim() >= 2:  # per column: vectors along dim 0
        x = v0.reshape(shape[0], -1).to(torch.float64)
        y = v1.reshape(shape[0], -1).to(torch.float64)
        c0, c1 = nuslerp_coeffs(torch.stack([red.col_sums(p, None) for p in (x * x, y * y, x * y)]), t)
        out = (c0 * v0.reshape(shape[0], -1) + c1 * v1.reshape(shape[0], -1)).reshape(shape)
    else:  # the whole tensor as one vector (1-D tensors always)
        acc = np.zeros(3, dtype=np.float64)
        red.dot_stats(v0, v1, red.row_len(shape), acc)
        c0, c1 = nuslerp_coeffs(torch.tensor(acc, dtype=torch.float64), t)
        out = c0.to(v0.device) * v0 + c1.to(v0.device) * v1
    return out + as_f32(base) if base is not None else out


# ------------------------------------------------------------------------------------------ streamers
def _slerp_stream(src: ChunkSource, *, t: float, **_: Any) -> None:
    """SLERP in row chunks: a statistics pass (fixed-partition float64 norms and dot), then an apply pass."""
    K = kernels() if getattr(src, "device", "cpu") == "cpu" else None
    if K is not None and hasattr(K, "axpby_bf16") and getattr(src, "raw_bf16", False):
        return _slerp_raw(src, K, t)
    use_fused = K is not None
    row = red.row_len(src.shape)
    acc = np.zeros(3, dtype=np.float64)
    for _rows, xs, a in src.chunks():
        red.dot_stats(a, xs[0], row, acc)
    ca, cb = slerp_coeffs(*(float(v) for v in acc), t, src.numel)
    out = np.empty(0, dtype=np.float32)
    for rows, xs, a in src.chunks():
        if use_fused:
            if out.shape[0] < a.numel():
                out = np.empty(a.numel(), dtype=np.float32)
            o = out[: a.numel()]
            K.axpby(a.reshape(-1).numpy(), xs[0].reshape(-1).numpy(), np.float32(ca), np.float32(cb), o)
            src.emit(rows, torch.from_numpy(o).view(a.shape))
        else:
            src.emit(rows, ca * a + cb * xs[0])


def _slerp_raw(src: Any, K: Any, t: float) -> None:
    """SLERP straight from bf16 bits into the output buffer (sources offering ``raw_chunks``): the same
    float operations as the float32 path without its conversion passes."""
    row = red.row_len(src.shape)
    acc = np.zeros(3, dtype=np.float64)
    for rows, xs, a in src.raw_chunks():
        if not K.dot_stats_bf16(a, xs[0], row, acc):
            src.invalid(rows)  # raises the usual NaN/Inf error naming model and tensor
            raise AssertionError("non-finite bf16 input not reported")
    ca, cb = slerp_coeffs(*(float(v) for v in acc), t, src.numel)
    for rows, xs, a in src.raw_chunks():
        K.axpby_bf16(a, xs[0], np.float32(ca), np.float32(cb), src.out_buffer(rows))
        src.emit_buffer(rows)


def _nuslerp_stream(src: ChunkSource, *, weight: list[float], nuslerp_row_wise: bool, nuslerp_flatten: bool,
                    **_: Any) -> None:
    """nuslerp in row chunks: per-row slerp needs only whole rows (each chunk runs the reference); whole-tensor
    and per-column slerp take a statistics pass (float64 squared norms and dot: per tensor by the fixed
    partition, per column added row by row in order) and then one apply pass."""
    per_row = not nuslerp_flatten and not nuslerp_row_wise and len(src.shape) >= 2
    per_col = not nuslerp_flatten and nuslerp_row_wise and len(src.shape) >= 2
    if per_row:
        for rows, xs, b in src.chunks():
            src.emit(rows, nuslerp(xs, base=b, weight=weight, nuslerp_row_wise=False, nuslerp_flatten=False))
        return
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total

    def vecs(xs, b):
        return (xs[0] - b, xs[1] - b) if b is not None else (xs[0], xs[1])

    row = red.row_len(src.shape)
    acc = np.zeros(3, dtype=np.float64)
    cols: list[Tensor | None] = [None, None, None]
    seen = False
    for _rows, xs, b in src.chunks():
        seen = True
        v0, v1 = vecs(xs, b)
        if per_col:
            v0, v1 = (v.reshape(v.shape[0], -1).double() for v in (v0, v1))
            cols = [red.col_sums(p, c) for p, c in zip((v0 * v0, v1 * v1, v0 * v1), cols, strict=True)]
        else:
            red.dot_stats(v0, v1, row, acc)
    if not seen:
        return
    stats = torch.stack(cols) if per_col else torch.tensor(acc, dtype=torch.float64)  # type: ignore[arg-type]
    c0, c1 = nuslerp_coeffs(stats, t)
    for rows, xs, b in src.chunks():
        v0, v1 = vecs(xs, b)
        if per_col:
            shape = v0.shape
            out = (c0.to(v0.device) * v0.reshape(shape[0], -1)
                   + c1.to(v0.device) * v1.reshape(shape[0], -1)).reshape(shape)
        else:
            out = c0.to(v0.device) * v0 + c1.to(v0.device) * v1
        src.emit(rows, out + b if b is not None else out)


# a statistics pass and an apply pass, both cheap: no input cache (see Streamer.cache)
SLERP_STREAMER = Streamer(_slerp_stream)
NUSLERP_STREAMER = Streamer(_nuslerp_stream)


register(
    Method(
        name="slerp",
        fn=slerp,
        params=(
            Param(
                "t",
                "global",
                float,
                low=0.0,
                high=1.0,
                help="Interpolation factor: 0 gives the base model, 1 the other model.",
            ),
        ),
        needs_base=True,
        min_models=1,
        max_models=1,
        description="Spherical linear interpolation between the base and one other model.",
        streamer=SLERP_STREAMER,
        reference="Shoemake 1985; mergekit 0.1.5 `slerp` (lerp when |cos| > 0.9995, norms <= 1e-8 left as is).",
    )
)

register(
    Method(
        name="nuslerp",
        fn=nuslerp,
        params=(
            WEIGHT,
            Param(
                "nuslerp_row_wise",
                "global",
                bool,
                False,
                help="With nuslerp_flatten false: slerp column vectors (along dim 0) instead of rows.",
            ),
            Param(
                "nuslerp_flatten",
                "global",
                bool,
                True,
                help="Treat the whole tensor as one vector (true) or slerp each row/column separately (false).",
            ),
        ),
        min_models=2,
        max_models=2,
        description="Slerp of two models weighted by `weight`; with a base model, slerps their task vectors.",
        streamer=NUSLERP_STREAMER,
        reference="mergekit 0.1.5 `nuslerp`.",
    )
)

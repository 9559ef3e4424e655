"""Spherical interpolation between two models: ``slerp`` (base at t=0) and ``nuslerp`` (weights, optional
base as the origin, optional row/column-wise interpolation)."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.kernels.select import CHUNK
from modelmix.methods._common import WEIGHT, as_f32, check_count
from modelmix.methods.registry import Method, Param, register

DOT_THRESHOLD = 0.9995  # |cos| above this: nearly colinear, lerp instead (mergekit's value)
NORM_EPS = 1e-8  # norms at or below this are treated as 1 (the vector is left unnormalized)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of the angle between two flat float32 vectors, normalizing before multiplying (no overflow)."""
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = torch.where(na > NORM_EPS, na, torch.ones_like(na))
    nb = torch.where(nb > NORM_EPS, nb, torch.ones_like(nb))
    dot = torch.zeros((), dtype=torch.float32, device=a.device)
    for s in range(0, a.numel(), CHUNK):
        dot += torch.dot(a[s : s + CHUNK] / na, b[s : s + CHUNK] / nb)
    return dot.clamp(-1, 1)


def slerp(tensors: list[Tensor], *, base: Tensor | None, t: float) -> Tensor:
    """Slerp over the whole flattened tensor from ``base`` (t=0) to the other model (t=1); falls back to
    linear interpolation when the two are (anti)colinear (|cos| > 0.9995), as mergekit does."""
    a = as_f32(base)  # type: ignore[arg-type]
    b = as_f32(tensors[0])
    if a.numel() == 0:
        return (1 - t) * a + t * b
    dot = _cosine(a.reshape(-1), b.reshape(-1))
    if dot.abs().item() > DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    ca = torch.sin((1 - t) * theta) / sin_theta
    cb = torch.sin(t * theta) / sin_theta
    return ca * a + cb * b


def _unit(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-7)


def _nuslerp_vectors(t: float, v0: Tensor, v1: Tensor, eps: float = 1e-8) -> Tensor:
    """Slerp each row (last dim) of v0 towards v1; exactly colinear rows (1 - cos^2 <= eps^2) are lerped."""
    cos = (_unit(v0) * _unit(v1)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


def nuslerp(
    tensors: list[Tensor],
    *,
    base: Tensor | None = None,
    weight: list[float],
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
) -> Tensor:
    """Slerp between two models at ``t = w1 / (w0 + w1)`` (0.5 when the weights cancel). With a base, the
    task vectors (model - base) are interpolated and added back to the base."""
    check_count("nuslerp", tensors, weight, "weight")
    total = weight[0] + weight[1]
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    v0, v1 = as_f32(tensors[0]), as_f32(tensors[1])
    if base is not None:
        b = as_f32(base)
        v0, v1 = v0 - b, v1 - b
    shape = v0.shape
    if nuslerp_flatten:
        out = _nuslerp_vectors(t, v0.reshape(-1), v1.reshape(-1)).reshape(shape)
    elif nuslerp_row_wise:  # interpolate along dim 0 (per column)
        out = _nuslerp_vectors(t, v0.transpose(0, -1), v1.transpose(0, -1)).transpose(0, -1).reshape(shape)
    else:
        out = _nuslerp_vectors(t, v0, v1)
    return out + as_f32(base) if base is not None else out


register(
    Method(
        name="slerp",
        fn=slerp,
        params=(
            Param(
                "t",
                "global",
                float,
                help="Interpolation factor: 0 gives the base model, 1 the other model.",
            ),
        ),
        needs_base=True,
        min_models=1,
        max_models=1,
        description="Spherical linear interpolation between the base and one other model.",
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
        reference="mergekit 0.1.5 `nuslerp`.",
    )
)

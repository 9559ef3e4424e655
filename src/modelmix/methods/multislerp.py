"""Multi-SLERP: barycentric interpolation of N models on a hypersphere (tangent-space average)."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.kernels import reduce as red
from modelmix.methods._common import WEIGHT, as_f32, check_count, weight_sum_or_raise
from modelmix.methods.registry import Method, Param, register


def multislerp(
    tensors: list[Tensor],
    *,
    base: Tensor | None = None,
    weight: list[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Project the (task) vectors onto the unit sphere, average them in the tangent space at their weighted
    mean direction, map back with the exponential map and rescale to the weighted mean norm (mergekit).
    A single model is returned unchanged; two exactly cancelling directions fall back to a weighted sum."""
    check_count("multislerp", tensors, weight, "weight")
    if len(tensors) == 1:
        return as_f32(tensors[0]).clone()
    shape = tensors[0].shape
    row = red.row_len(shape)  # norms and dots: float64 fixed-partition sums over the tensor's rows
    b = as_f32(base).reshape(-1) if base is not None else None
    vecs = torch.stack([as_f32(t).reshape(-1) for t in tensors])
    if b is not None:
        vecs -= b
    dev = vecs.device
    w = torch.tensor(weight, dtype=torch.float32, device=dev)
    if normalize_weights:
        w = w / weight_sum_or_raise("multislerp", weight, "normalize_weights: true").to(dev)

    def norm(v: Tensor) -> Tensor:
        return torch.tensor(red.norm(v, row), dtype=torch.float32, device=dev)

    def wsum(vs: Tensor) -> Tensor:  # sum_i w_i vs_i, in model order
        out = vs[0] * w[0]
        for i in range(1, vs.shape[0]):
            out = out + vs[i] * w[i]
        return out

    norms = torch.stack([norm(v) for v in vecs]).unsqueeze(-1)
    units = vecs / (norms + eps)
    mean = wsum(units)
    mean_norm = norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ConfigError(
                "The multislerp merge cannot proceed: the weighted mean direction of the models is zero "
                "(antipodal models whose weights exactly cancel, e.g. a and -a with equal weights). Use "
                "different weights."
            )
        out = vecs[0] * w[0] + vecs[1] * w[1]
    else:
        mean = mean / mean_norm
        dots = torch.tensor([red.dot(u, mean, row) for u in units], dtype=torch.float32, device=dev).unsqueeze(-1)
        tangent = units - dots * mean
        step = wsum(tangent)
        step_norm = norm(step) + eps
        out = mean * torch.cos(step_norm) + step * (torch.sin(step_norm) / step_norm)
        out = out * (norms.squeeze(-1) * w).sum()
    if b is not None:
        out = out + b
    return out.reshape(shape)

register(
    Method(
        name="multislerp",
        fn=multislerp,
        params=(
            WEIGHT,
            Param("normalize_weights", "global", bool, True, help="Divide the weights by their sum."),
            Param("eps", "global", float, 1e-8, low=0.0, help="Small constant guarding divisions by norms."),
        ),
        check=lambda p: (weight_sum_or_raise("multislerp", p["weight"], "normalize_weights: true")
                         if p.get("normalize_weights", True) and len(p["weight"]) > 1 else None),
        description="Spherical barycentric interpolation of any number of models (optionally of task vectors).",
        reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea; mergekit 0.1.5 `multislerp`.",
    )
)

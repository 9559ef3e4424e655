"""Karcher (Riemannian) mean of the models' directions on the unit hypersphere."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.kernels import reduce as red
from modelmix.methods._common import as_f32
from modelmix.methods.registry import Method, Param, register


def karcher_mean(tensors: list[Tensor], alphas: list[float], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Weighted Karcher mean direction (fixed-point iteration), scaled by the weighted mean norm. Norms and
    dots are float64 fixed-partition sums over the tensor's rows (``modelmix.kernels.reduce``), so the result
    does not depend on torch's thread count."""
    vecs = [as_f32(t) for t in tensors]
    row = red.row_len(vecs[0].shape)
    dev = vecs[0].device

    def f32(x: float) -> Tensor:
        return torch.tensor(x, dtype=torch.float32, device=dev)

    norms = [f32(red.norm(v, row)) for v in vecs]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(vecs[0])
    units = {i: vecs[i] / norms[i] for i in valid}
    a_sum = sum(alphas[i] for i in valid)
    a = {i: alphas[i] / a_sum for i in valid}

    mean = torch.zeros_like(vecs[0])
    for i in valid:
        mean += a[i] * units[i]
    mean_norm = f32(red.norm(mean, row))
    mean = units[valid[0]].clone() if mean_norm.item() < tol else mean / mean_norm

    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for i in valid:
            cos = torch.clamp(f32(red.dot(mean, units[i], row)), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += a[i] * (theta / torch.sin(theta)) * (units[i] - cos * mean)
        t_norm = f32(red.norm(tangent, row))
        if t_norm.item() < tol:
            break
        mean = torch.cos(t_norm) * mean + torch.sin(t_norm) * (tangent / t_norm)
        m_norm = f32(red.norm(mean, row))
        if m_norm.item() > tol:
            mean = mean / m_norm
    scale = sum(alpha * n for alpha, n in zip(alphas, norms, strict=True))
    return scale * mean

def karcher(
    tensors: list[Tensor], *, base: Tensor | None = None, max_iter: int = 10, tol: float = 1e-5
) -> Tensor:
    """Equal-weight Karcher mean of all inputs (the base, if any, is just another input)."""
    if len(tensors) == 1:
        return as_f32(tensors[0]).clone()
    n = len(tensors)
    return karcher_mean(tensors, [1.0 / n] * n, max_iter=max_iter, tol=tol)


register(
    Method(
        name="karcher",
        fn=karcher,
        params=(
            Param("max_iter", "global", int, 10, low=0, help="Maximum fixed-point iterations."),
            Param(
                "tol",
                "global",
                float,
                1e-5,
                low=0.0,
                help="Convergence tolerance (also the zero-norm cutoff).",
            ),
        ),
        uses_base=False,
        description="Riemannian (Karcher) mean of the models on the hypersphere, rescaled to their mean norm.",
        reference="https://arxiv.org/abs/2603.04972; mergekit 0.1.5 `karcher`.",
    )
)

"""Model Stock: interpolate between the base and the average of the fine-tunes by their mutual angle."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.methods._common import as_f32
from modelmix.methods.registry import Method, Param, register


def model_stock(tensors: list[Tensor], *, base: Tensor | None, filter_wise: bool = False) -> Tensor:
    """``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors; result
    ``t * mean(models) + (1 - t) * base``. ``filter_wise`` uses one cosine per row instead of per tensor.
    Where ``1 + (N - 1) cos`` vanishes the base is kept (mergekit 0.1.5)."""
    w0 = as_f32(base)  # type: ignore[arg-type]
    shape = w0.shape
    ws = [as_f32(t) for t in tensors]
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    norms = [torch.linalg.vector_norm(o, dim=-1) for o in offsets]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = (offsets[i] * offsets[j]).sum(dim=-1)
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(
        singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(denom), denom)
    )
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


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
        reference="Jang et al. 2024, https://arxiv.org/abs/2403.19522; mergekit 0.1.5 `model_stock`.",
    )
)

"""SCE: select high-variance entries, weight models by task-vector energy, erase sign conflicts."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.kernels import reduce as red
from modelmix.kernels.select import topk_mask
from modelmix.methods._common import as_f32
from modelmix.methods._gta import agree, elect_keep
from modelmix.methods.registry import Method, Param, register


def sce_select_mask(tvs: list[Tensor], fraction: float) -> Tensor:
    """Keep the ``int(nonzero * fraction)`` entries with the largest variance across the task vectors."""
    if fraction <= 0:
        return torch.zeros(tvs[0].shape, dtype=torch.bool, device=tvs[0].device)
    if fraction >= 1:
        return torch.ones(tvs[0].shape, dtype=torch.bool, device=tvs[0].device)
    var = torch.var(torch.stack(tvs), dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var).item()) * fraction)
    return topk_mask(var, k)


def sce(
    tensors: list[Tensor], *, base: Tensor | None, select_topk: float = 1.0, int8_mask: bool = False
) -> Tensor:
    """mergekit 0.1.5 SCE: mask to the top-variance ``select_topk`` entries; weight each task vector by its
    mean square (share of the total; uniform when the total is below 1e-6); keep only entries agreeing
    with the ``sum``-elected sign; divide by the surviving weight (at least 1e-6)."""
    b = as_f32(base)  # type: ignore[arg-type]
    if not tensors:
        return b.clone()
    tvs = [as_f32(t) - b for t in tensors]
    if select_topk < 1:
        keep = sce_select_mask(tvs, select_topk)
        tvs = [tv.mul_(keep) for tv in tvs]
    # mean squares as float64 fixed-partition sums (modelmix.kernels.reduce): independent of torch's threads
    row = red.row_len(b.shape)
    energy = (torch.tensor([red.sumsq(tv, row) / b.numel() for tv in tvs], dtype=torch.float32, device=b.device)
              if b.numel() else torch.zeros(len(tvs)))
    total = energy.sum().item()
    w = torch.full_like(energy, 1 / len(tvs)) if abs(total) < 1e-6 else energy / total
    positive = elect_keep(tvs, "sum")
    merged = torch.zeros_like(b)
    weight_sum = torch.zeros_like(b)
    for tv, wi in zip(tvs, w.tolist(), strict=True):
        ew = agree(tv, positive) * wi
        merged += tv * ew
        weight_sum += ew
    return b + merged / weight_sum.clamp_(min=1e-6)


register(
    Method(
        name="sce",
        fn=sce,
        params=(
            Param(
                "select_topk",
                "global",
                float,
                1.0,
                low=0.0,
                high=1.0,
                help="Fraction of entries (by variance across models) to keep.",
            ),
            Param(
                "int8_mask",
                "global",
                bool,
                False,
                help="Accepted for mergekit compatibility; no effect here.",
            ),
        ),
        needs_base=True,
        min_models=0,
        description="SCE: select top-variance entries, calculate energy-based weights, erase sign conflicts.",
        reference="Wan et al. 2024, https://arxiv.org/abs/2408.07990; mergekit 0.1.5 `sce`.",
    )
)

"""Shared core of the task-vector family (task arithmetic, TIES, DARE, breadcrumbs, DELLA), following
mergekit 0.1.5's generalized task arithmetic:

1. delta_i = model_i - base, sparsified per model (magnitude / random / outlier band / DELLA),
2. delta_i *= weight_i,
3. optionally elect a sign per element and drop the deltas that disagree (TIES consensus),
4. sum, optionally divide by the sum of the (surviving) weights, multiply by lambda, add to the base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from modelmix.methods._common import as_f32, check_count

Consensus = Literal["sum", "count"]


def elect_keep(deltas: list[Tensor], method: Consensus) -> Tensor:
    """Per element: is the elected sign positive? ``sum`` weighs each delta by its value (TIES paper);
    ``count`` is a plain majority of signs. Ties (zero) elect positive, as mergekit."""
    acc = torch.zeros_like(deltas[0])
    for d in deltas:
        acc += d if method == "sum" else torch.sign(d)
    return acc >= 0


def agree(delta: Tensor, positive: Tensor) -> Tensor:
    """Elements whose sign equals the elected one (zeros never agree)."""
    return torch.where(positive, delta > 0, delta < 0)


def merge_deltas(
    tensors: list[Tensor],
    base: Tensor,
    *,
    weight: list[float],
    sparsify: Callable[[int, Tensor], Tensor] | None,
    consensus: Consensus | None,
    normalize: bool,
    lam: float,
) -> Tensor:
    """Generalized task arithmetic; ``sparsify(i, delta)`` returns model i's sparsified delta."""
    check_count("task-vector merge", tensors, weight, "weight")
    b = as_f32(base)
    if not tensors:
        return b.clone()
    deltas = []
    for i, t in enumerate(tensors):
        d = (as_f32(t) - b).contiguous()  # layout-independent reductions (bit-identical results)
        if sparsify is not None:
            d = sparsify(i, d)
        deltas.append(d.mul_(weight[i]))
    return combine_deltas(deltas, b, weight=weight, consensus=consensus, normalize=normalize, lam=lam)


def combine_deltas(
    deltas: list[Tensor], b: Tensor, *, weight: list[float], consensus: Consensus | None, normalize: bool, lam: float
) -> Tensor:
    """Steps 3-4 on already sparsified and weighted deltas (also used chunk by chunk by the streamers)."""
    if consensus is not None:
        positive = elect_keep(deltas, consensus)
        mixed = torch.zeros_like(b)
        divisor = torch.zeros_like(b)
        for d, w in zip(deltas, weight, strict=True):
            keep = agree(d, positive)
            mixed += d * keep
            divisor += keep * float(w)
        divisor[divisor == 0] = 1
        if normalize:
            mixed /= divisor
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed += d
        total = torch.tensor(weight, dtype=torch.float32).sum().item()
        if normalize and abs(total) >= 1e-8:  # mergekit: a (near) zero weight sum is not divided by
            mixed /= total
    if lam != 1:
        mixed *= lam
    return b + mixed

"""Fixed-partition float64 reductions: every statistic that feeds a merge output (L1 norms of task vectors,
SLERP/nuslerp norms and dots, Model Stock cosines, multislerp/Karcher norms, SCE energies) is summed by one
procedure whose order depends only on the tensor's shape, never on threads, chunk sizes or backend:

* a tensor is split into **rows** of ``row_len(shape) = numel // shape[0]`` elements (a 1-D tensor: rows of
  one element; a 0-d tensor: one row) -- the units the executor's row chunks are made of;
* a row's **partial** is accumulated in ``LANES`` = 8 float64 lanes, element ``j`` of the row into lane
  ``j % 8`` in order, starting from +0.0 at every row; the lanes are combined as
  ``((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))``;
* row partials are added to a running float64 total **in row order**; a streamer carries that total from
  one row chunk to the next.

Element values are exact in float64 (``|x - b|`` rounded in float32 as the masks see it, then widened;
products of two float32 values), so the compiled kernels (``ckernels.c``, ``fused.py``) and the torch
formulation here (``cumsum`` along the lane axis is a sequential scan on CPU and CUDA) produce the same
bits. Eight explicit lanes let the C compiler vectorise within a row (one AVX-512 or two AVX2 registers)
without reassociating anything.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

LANES = 8


def row_len(shape: tuple[int, ...] | torch.Size) -> int:
    """Elements per row of the fixed partition: ``numel // shape[0]`` (1 for 0-d, 1-D and empty tensors)."""
    if len(shape) < 2 or shape[0] == 0:
        return 1
    return max(1, math.prod(shape[1:]))


def row_partials(v: Tensor, row: int) -> Tensor:
    """Per-row partial sums (float64, shape ``(numel // row,)``) of ``v`` (any float dtype, numel a multiple
    of ``row``) by the 8-lane procedure; on the tensor's device."""
    v = v.reshape(-1, row).to(torch.float64)
    pad = (-row) % LANES
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    lanes = v.view(v.shape[0], -1, LANES).cumsum(1)[:, -1]  # sequential per lane (a scan, on every device)
    s = lanes.unbind(1)
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


def carry(acc: float, partials: Tensor) -> float:
    """``acc + p[0] + p[1] + ...`` in order, in float64 (the row partials of one chunk added to a total)."""
    p = partials.detach().to("cpu", torch.float64).numpy()
    if p.size == 0:
        return float(acc)
    return float(np.add.accumulate(np.concatenate(([acc], p)))[-1])  # accumulate: strictly sequential


def total(v: Tensor, row: int) -> float:
    """Sum of all elements of ``v`` (widened to float64) by the fixed partition."""
    return carry(0.0, row_partials(v, row)) if v.numel() else 0.0


def _kernels(t: Tensor):
    from modelmix.kernels.backend import kernels

    return kernels() if t.device.type == "cpu" else None


def _flat32(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).reshape(-1).contiguous().numpy()


def dot_stats(a: Tensor, b: Tensor, row: int, acc: np.ndarray) -> None:
    """``acc += (sum a*a, sum b*b, sum a*b)`` of two float32 tensors (same numel, a multiple of ``row``) by
    the fixed partition: the compiled kernel on the CPU when there is one, else the torch formulation."""
    if a.numel() == 0:
        return
    K = _kernels(a)
    if K is not None:
        K.dot_stats(_flat32(a), _flat32(b), row, acc)
        return
    x = a.reshape(-1, row).to(torch.float64)
    y = b.reshape(-1, row).to(torch.float64)
    for i, prod in enumerate((x * x, y * y, x * y)):  # products of float32 values are exact in float64
        acc[i] = carry(float(acc[i]), row_partials(prod, row))


def dot(a: Tensor, b: Tensor, row: int | None = None) -> float:
    """``sum a*b`` in float64 by the fixed partition (rows of ``row``, default from ``a``'s shape)."""
    acc = np.zeros(3, dtype=np.float64)
    dot_stats(a, b, row_len(a.shape) if row is None else row, acc)
    return float(acc[2])


def sumsq(a: Tensor, row: int | None = None) -> float:
    """``sum a*a`` in float64 by the fixed partition."""
    return dot(a, a, row)


def norm(a: Tensor, row: int | None = None) -> float:
    """The L2 norm of ``a`` from its fixed-partition float64 sum of squares."""
    return math.sqrt(sumsq(a, row))


def abs_sum(a: Tensor, row: int | None = None) -> float:
    """``sum |a|`` in float64 by the fixed partition (``|a|`` taken in float32, as the L1 kernels)."""
    row = row_len(a.shape) if row is None else row
    return total(a.abs(), row)


def col_sums(v: Tensor, acc: Tensor | None) -> Tensor:
    """Per-column float64 sums of a ``(rows, cols)`` chunk added to ``acc`` one row at a time, in row order
    (``cumsum`` over dim 0 is a sequential scan): any row chunking gives the same bits."""
    v = v.to(torch.float64)
    if acc is not None:
        v = torch.cat([acc.unsqueeze(0), v])
    return v.cumsum(0)[-1]

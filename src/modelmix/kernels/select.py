"""Exact linear-time magnitude selection (k-th largest |x|) without sorting.

TIES, breadcrumbs and SCE keep the k largest magnitudes of a tensor. ``torch.topk``/``sort`` on a 65M-element
tensor is slow (seconds on CPU) and allocates index tensors as large as the input, so instead we do a radix
select on the float bits: for non-negative float32 values the int32 bit pattern is monotone in the value, so

1. a histogram of the high 16 bits (sign cleared: 32768 bins) finds the bucket holding the k-th largest value,
2. a histogram of the low 16 bits of the elements in that bucket finds its exact bit pattern.

Both passes walk the flattened tensor in chunks of at most ``CHUNK`` elements, so temporaries stay small
(a few x 16 MiB) whatever the tensor size. Everything runs on the tensor's own device; only the two small
histograms are inspected on the host.

Ties: the *threshold* is exact. Masks built from it hold exactly ``k`` elements: every element strictly above
the threshold plus the lowest-flat-index elements equal to it (``ties="index"``, deterministic on every
device), or every element equal to it (``ties="all"``, may hold more than k). ``torch.topk`` picks among equal
values in an unspecified order, so results agree with it exactly except for which of the tied elements is
kept. Inputs of other float dtypes are compared after conversion to float32; NaN is not handled (the
executor rejects non-finite tensors before merging).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

CHUNK = 1 << 22  # elements per pass step: 16 MiB of float32
_HI_BINS = 1 << 15  # high 16 bits with the sign bit cleared
_LO_BINS = 1 << 16

Ties = Literal["index", "all"]


@dataclass(frozen=True)
class Selection:
    """Result of a k-th-largest search: the threshold and how many elements lie above / on it."""

    k: int
    threshold: float  # the k-th largest |x| (0.0 when k <= 0 is meaningless: see n_greater)
    n_greater: int  # elements with |x| > threshold
    n_equal: int  # elements with |x| == threshold

    @property
    def threshold_bits(self) -> int:
        """int32 bit pattern of the threshold (magnitudes compare exactly as these integers)."""
        return int(torch.tensor([self.threshold], dtype=torch.float32).view(torch.int32).item())


def _flat(x: Tensor) -> Tensor:
    # reshape is a view for contiguous inputs; non-contiguous ones are copied once.
    return x.reshape(-1)


def _int_view(chunk: Tensor) -> Tensor:
    """The chunk's float32 bit patterns as int32 (converting other float dtypes first)."""
    if chunk.dtype != torch.float32:
        chunk = chunk.to(torch.float32)
    return chunk.contiguous().view(torch.int32)


def _kth_from_top(hist: Tensor, k: int) -> tuple[int, int]:
    """Bin holding the k-th largest element (1-based k) and the count in bins strictly above it."""
    counts = hist.to("cpu", torch.int64)
    desc = counts.flip(0).cumsum(0)  # desc[j] = elements in bins >= len-1-j
    j = int(torch.searchsorted(desc, torch.tensor([k], dtype=torch.int64)).item())
    b = counts.numel() - 1 - j
    return b, int(desc[j].item()) - int(counts[b].item())


def select_kth(x: Tensor, k: int) -> Selection:
    """Find the exact k-th largest magnitude of ``x`` (1 <= k <= numel) in two histogram passes."""
    flat = _flat(x)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    dev = flat.device
    # One reusable index buffer: fresh multi-MiB temporaries per chunk cost page faults on CPU.
    buf = torch.empty(min(CHUNK, n), dtype=torch.int32, device=dev)
    # Pass 1: histogram of the high 16 bits of |x| (arithmetic shift, then drop the sign).
    hist = torch.zeros(_HI_BINS, dtype=torch.int64, device=dev)
    for s in range(0, n, CHUNK):
        bits = _int_view(flat[s : s + CHUNK])
        idx = buf[: bits.numel()]
        torch.bitwise_right_shift(bits, 16, out=idx).bitwise_and_(0x7FFF)
        hist += torch.bincount(idx, minlength=_HI_BINS)  # faster than index_add_ and needs no ones buffer
    b, above_b = _kth_from_top(hist, k)
    # Pass 2: histogram of the low 16 bits inside bucket b; elements below/above the bucket land in the
    # sentinel bins 0 / _LO_BINS + 1, which avoids a (slow) masked gather.
    lo_hist = torch.zeros(_LO_BINS + 2, dtype=torch.int64, device=dev)
    for s in range(0, n, CHUNK):
        bits = _int_view(flat[s : s + CHUNK])
        idx = buf[: bits.numel()]
        torch.bitwise_and(bits, 0x7FFFFFFF, out=idx).sub_((b << 16) - 1).clamp_(0, _LO_BINS + 1)
        lo_hist += torch.bincount(idx, minlength=_LO_BINS + 2)
    lo_bin, above_lo = _kth_from_top(lo_hist[1 : _LO_BINS + 1], k - above_b)
    thr_bits = torch.tensor([(b << 16) | lo_bin], dtype=torch.int32)
    threshold = float(thr_bits.view(torch.float32).item())
    n_equal = int(lo_hist[lo_bin + 1].item())
    return Selection(k=k, threshold=threshold, n_greater=above_b + above_lo, n_equal=n_equal)


def _fill_mask(flat: Tensor, sel: Selection, out: Tensor, ties: Ties) -> None:
    """Write the top-``sel.k`` mask of ``flat`` into ``out`` (bool, same numel), chunk by chunk."""
    need_ties = sel.k - sel.n_greater  # how many elements equal to the threshold to keep
    take_all_ties = ties == "all" or need_ties >= sel.n_equal
    thr = sel.threshold_bits
    n = flat.numel()
    buf = torch.empty(min(CHUNK, n), dtype=torch.int32, device=flat.device)
    for s in range(0, n, CHUNK):
        bits = _int_view(flat[s : s + CHUNK])
        a = torch.bitwise_and(bits, 0x7FFFFFFF, out=buf[: bits.numel()])
        o = out[s : s + CHUNK]
        torch.ge(a, thr, out=o) if take_all_ties else torch.gt(a, thr, out=o)
        if take_all_ties or need_ties <= 0:
            continue
        eq = a == thr
        c = int(eq.sum().item())
        if c > need_ties:  # keep only the first `need_ties` ties of this chunk, in index order
            eq &= eq.cumsum(0, dtype=torch.int32) <= need_ties
        o |= eq
        need_ties -= min(c, need_ties)


def topk_mask(x: Tensor, k: int, ties: Ties = "index") -> Tensor:
    """Boolean mask (shape of ``x``) of the ``k`` largest ``|x|``.

    With ``ties="index"`` exactly ``min(max(k, 0), numel)`` elements are set; among elements equal to the
    threshold the lowest flat indices win. ``ties="all"`` keeps every tied element instead.
    """
    flat = _flat(x)
    n = flat.numel()
    if k <= 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if k >= n:
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)
    out = torch.empty(n, dtype=torch.bool, device=x.device)
    _fill_mask(flat, select_kth(flat, k), out, ties)
    return out.view(x.shape)


def rank_band_mask(x: Tensor, start: int, stop: int) -> Tensor:
    """Mask of the elements whose descending-magnitude rank r (0-based) satisfies ``start <= r < stop``.

    Used by breadcrumbs, which drops the largest outliers (ranks < start) and the small tail (ranks >= stop).
    Ties are ranked by flat index, consistently for both ends, so exactly ``stop - start`` elements are set.
    """
    n = x.numel()
    start, stop = max(0, start), min(n, stop)
    if stop <= start:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    band = topk_mask(x, stop)
    if start > 0:
        band &= ~topk_mask(x, start)
    return band

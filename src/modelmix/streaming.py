"""Building blocks of row-chunked, multi-pass execution, for methods that need whole-tensor statistics.

TIES, breadcrumbs, DARE/DELLA with L1 rescaling and SLERP look at a whole tensor (a top-k threshold, an L1
norm, a dot product) before producing any output element. Holding every input of a 65M-element embedding
in float32 costs >1 GB, and more for bigger vocabularies, so instead such a method walks the tensor's row
chunks several times in order: statistics passes (histograms of the float bits for exact selection, float64
sums), then one pass that produces and emits each output chunk. Memory stays at a few chunks whatever the
tensor size; re-reading comes from the page cache. Results equal the whole-tensor reference functions in
``modelmix.methods`` bit for bit: masks and random draws are functions of the element index, and every
float64 statistic (L1 norms, dots) is a fixed-partition reduction (``modelmix.kernels.reduce``: per-row
partials, rows added in order, the running total carried from chunk to chunk), so neither the chunking nor
the thread count changes a bit.

A method declares its streamer (``Method.streamer``, a :class:`~modelmix.methods.registry.Streamer`) next
to its reference function; the executor runs every tensor of the method through it, whatever its size (a
tensor up to the chunk size as one in-memory chunk), so one implementation computes it. This module holds
only what streamers share: the :class:`ChunkSource` they walk, exact streaming top-k selection
(:class:`StreamSelect`, :func:`selection_pass`, :class:`TopkMaskStream`, :func:`mask_params`) and the
random-mask streams (:class:`UniformStream`). It imports no method.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from modelmix.kernels.backend import kernels
from modelmix.kernels.masks import uniforms
from modelmix.kernels.select import _HI_BINS, _LO_BINS, Selection, _kth_from_top


class ChunkSource(Protocol):
    """A tensor's inputs as row chunks, and where its output chunks go.

    The executor's sources also have ``device`` ("cpu", "cuda"; streamers use compiled kernels on the CPU
    only) and, where every input is a plain bf16 tensor (``raw_bf16``), raw access for bf16 kernels:
    ``raw_chunks()`` (uint16 bits instead of float32), ``out_buffer(rows)`` (the array to write the output
    chunk into), ``emit_buffer(rows)`` (emits it) and ``invalid(rows)`` (raises the NaN/Inf error of a chunk
    a kernel found non-finite). Streamers look for these with ``getattr``.
    """

    shape: tuple[int, ...]
    numel: int

    def chunks(self) -> Iterator[tuple[tuple[int, int], list[Tensor], Tensor | None]]:
        """(rows, float32 inputs, float32 base) for each row chunk, in order; may be called repeatedly."""
        ...

    def emit(self, rows: tuple[int, int], out: Tensor) -> None:
        """Take output chunk ``rows`` (float32); chunks are emitted once each, in order."""
        ...


# ------------------------------------------------------------------------------------------ selection
class StreamSelect:
    """Exact k-th largest |x| of a tensor seen as ordered chunks: two histogram passes over the float bits."""

    def __init__(self, k: int, numel: int):
        self.k, self.n = k, numel
        self.hist = torch.zeros(_HI_BINS, dtype=torch.int64)
        self.lo = torch.zeros(_LO_BINS + 2, dtype=torch.int64)
        self.bucket = -1
        self.above_b = 0

    @staticmethod
    def _abs_bits(x: Tensor) -> Tensor:
        return x.reshape(-1).view(torch.int32).bitwise_and(0x7FFFFFFF)

    def add_hi(self, x: Tensor) -> None:
        idx = self._abs_bits(x).bitwise_right_shift_(16)
        self.hist += torch.bincount(idx.cpu(), minlength=_HI_BINS)

    def finish_hi(self) -> None:
        self.bucket, self.above_b = _kth_from_top(self.hist, self.k)

    def add_lo(self, x: Tensor) -> None:
        bits = self._abs_bits(x)
        inb = bits[bits.bitwise_right_shift(16) == self.bucket]  # the few elements in the k-th bucket
        if inb.numel():
            self.lo[1 : _LO_BINS + 1] += torch.bincount(inb.bitwise_and(0xFFFF).cpu(), minlength=_LO_BINS)

    def finish_lo(self) -> Selection:
        lo_bin, above_lo = _kth_from_top(self.lo[1 : _LO_BINS + 1], self.k - self.above_b)
        bits = torch.tensor([(self.bucket << 16) | lo_bin], dtype=torch.int32)
        return Selection(self.k, float(bits.view(torch.float32).item()), self.above_b + above_lo, int(self.lo[lo_bin + 1]))


class TopkMaskStream:
    """Top-k mask chunk by chunk, keeping ties at the threshold in flat-index order (as ``topk_mask``)."""

    def __init__(self, sel: Selection | None, k: int, numel: int):
        self.mode = "none" if k <= 0 else "all" if k >= numel else "sel"
        self.sel = sel
        if sel is not None:
            self.thr = sel.threshold_bits
            self.need = sel.k - sel.n_greater

    def __call__(self, x: Tensor) -> Tensor:
        if self.mode != "sel":
            return torch.full(x.shape, self.mode == "all", dtype=torch.bool, device=x.device)
        a = x.reshape(-1).view(torch.int32).bitwise_and(0x7FFFFFFF)
        out = a > self.thr
        if self.need > 0:
            eq = a == self.thr
            c = int(eq.sum())
            if c:
                if c > self.need:
                    eq &= eq.cumsum(0, dtype=torch.int32) <= self.need
                out |= eq
                self.need -= min(c, self.need)
        return out.view(x.shape)


class UniformStream:
    """The uniforms of one model's mask stream, served chunk by chunk in flat order."""

    def __init__(self, seed: int, numel: int):
        self.seed, self.pos = seed, 0

    def take(self, n: int) -> Tensor:
        u = uniforms(self.seed, self.pos, n)
        self.pos += n
        return u


# ------------------------------------------------------------------------------------------ selection passes
def _selection_pass_fused(src: ChunkSource, specs: list[list[int]]) -> list[list[Selection | None]]:
    """Same as the torch selection passes, with the histogram loops in compiled kernels (one sweep per model)."""
    K = kernels()
    n = src.numel
    sels = [[StreamSelect(k, n) if 0 < k < n else None for k in ks] for ks in specs]
    want = [i for i, row in enumerate(sels) if any(row)]
    if not want:
        return [[None] * len(ks) for ks in specs]
    hists = {i: np.zeros(_HI_BINS, dtype=np.int64) for i in want}
    scratch = np.empty(0, dtype=np.float32)
    for _rows, xs, b in src.chunks():
        bn = b.reshape(-1).numpy()
        if scratch.shape[0] < bn.shape[0]:
            scratch = np.empty(bn.shape[0], dtype=np.float32)
        for i in want:
            K.hist_hi(xs[i].reshape(-1).numpy(), bn, scratch, hists[i])
    for i in want:
        for s in sels[i]:
            if s is not None:
                s.hist = torch.from_numpy(hists[i])
                s.finish_hi()
    los = {(i, j): np.zeros(_LO_BINS, dtype=np.int64) for i in want for j, s in enumerate(sels[i]) if s is not None}
    for _rows, xs, b in src.chunks():
        bn = b.reshape(-1).numpy()
        for (i, j), lo in los.items():
            K.hist_lo(xs[i].reshape(-1).numpy(), bn, np.uint32(sels[i][j].bucket), scratch, lo)  # type: ignore[union-attr]
    for (i, j), lo in los.items():
        sels[i][j].lo[1 : _LO_BINS + 1] = torch.from_numpy(lo)  # type: ignore[union-attr]
    return [[s.finish_lo() if s is not None else None for s in row] for row in sels]


def mask_params(sel: Selection | None, k: int, n: int) -> tuple[float, int]:
    """(threshold, ties to keep) reproducing ``TopkMaskStream(sel, k, n)`` for a compiled mask kernel."""
    if k <= 0:
        return math.inf, 0
    if k >= n or sel is None:
        return -1.0, 0
    return sel.threshold, sel.k - sel.n_greater


def selection_pass(src: ChunkSource, specs: list[list[int]]) -> list[list[Selection | None]]:
    """For each model i and each k in specs[i] (0 < k < n), the exact k-th largest |x_i - base| over the
    whole tensor (two passes over ``src``); None for the other ks."""
    n = src.numel
    if kernels() is not None and getattr(src, "device", "cpu") == "cpu":
        return _selection_pass_fused(src, specs)
    sels = [[StreamSelect(k, n) if 0 < k < n else None for k in ks] for ks in specs]
    if not any(s for row in sels for s in row):
        return [[None] * len(ks) for ks in specs]

    def sweep(step: str) -> None:
        for _rows, xs, b in src.chunks():
            for i, row in enumerate(sels):
                if any(row):
                    d = xs[i] - b
                    for sel in row:
                        if sel is not None:
                            getattr(sel, step)(d)

    sweep("add_hi")
    for row in sels:
        for sel in row:
            if sel is not None:
                sel.finish_hi()
    sweep("add_lo")
    return [[s.finish_lo() if s is not None else None for s in row] for row in sels]

"""Row-chunked, multi-pass execution of methods that need whole-tensor statistics.

TIES, breadcrumbs, DARE/DELLA with L1 rescaling and SLERP look at a whole tensor (a top-k threshold, an L1
norm, a dot product) before producing any output element. Holding every input of a 65M-element embedding
in float32 costs >1 GB, and more for bigger vocabularies, so instead these methods walk the tensor's row
chunks several times in order: statistics passes (histograms of the float bits for exact selection, float64
sums), then one pass that produces and emits each output chunk. Memory stays at a few chunks whatever the
tensor size; re-reading comes from the page cache. Results equal the whole-tensor reference functions in
``modelmix.methods`` bit for bit: masks and random draws are functions of the element index, and every
float64 statistic (L1 norms, dots) is a fixed-partition reduction (``modelmix.kernels.reduce``: per-row
partials, rows added in order, the running total carried from chunk to chunk), so neither the chunking nor
the thread count changes a bit. The executor runs every tensor of these methods through its streamer,
whatever its size (a tensor up to the chunk size as one in-memory chunk), so one implementation computes it.

A streamer is ``fn(src, **params)`` where ``src`` is a :class:`ChunkSource`; ``STREAMERS`` maps method names
to ``(streamer, applies(shape, params) -> bool)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.kernels import backend as kb
from modelmix.kernels import reduce as red
from modelmix.kernels.backend import kernels
from modelmix.kernels.masks import _RESCALE_EPS, della_keep_prob, model_seed, normalize_rescale, uniforms
from modelmix.kernels.select import _HI_BINS, _LO_BINS, Selection, _kth_from_top
from modelmix.methods._gta import combine_deltas
from modelmix.methods.slerp import nuslerp_coeffs, slerp_coeffs


class ChunkSource(Protocol):
    shape: tuple[int, ...]
    numel: int

    def chunks(self) -> Iterator[tuple[tuple[int, int], list[Tensor], Tensor | None]]:
        """(rows, float32 inputs, float32 base) for each row chunk, in order; may be called repeatedly."""
        ...

    def emit(self, rows: tuple[int, int], out: Tensor) -> None: ...


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


# ------------------------------------------------------------------------------------------ task vectors
def _selection_pass_fused(src: ChunkSource, specs: list[list[int]]) -> list[list[Selection | None]]:
    """Same as the torch selection passes, with the histogram loops in numba (one sweep per model)."""
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


def _mask_params(sel: Selection | None, k: int, n: int) -> tuple[float, int]:
    """(threshold, ties to keep) reproducing TopkMaskStream for the fused kernel."""
    if k <= 0:
        return math.inf, 0
    if k >= n or sel is None:
        return -1.0, 0
    return sel.threshold, sel.k - sel.n_greater


def _selection_pass(src: ChunkSource, specs: list[list[int]]) -> list[list[Selection | None]]:
    """For each model i and each k in specs[i] (0 < k < n), the exact selection; others None."""
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


_SPARSIFIERS = (None, "magnitude", "outliers", "random", "della")


def _gta_stream(sparsifier: str | None, consensus: bool, default_normalize: bool, default_rescale: str):
    if sparsifier not in _SPARSIFIERS:  # a typo here must not silently become another method
        raise ValueError(f"unknown sparsifier {sparsifier!r}; expected one of {_SPARSIFIERS}")

    def run(src: ChunkSource, **p: Any) -> None:
        weights: list[float] = p["weight"]
        m = len(weights)
        n = src.numel
        density = p.get("density") or [1.0] * m
        gamma = p.get("gamma") or [0.01] * m
        epsilon = p.get("epsilon") or [0.15] * m
        rescale = normalize_rescale(p.get("rescale", default_rescale))
        normalize = bool(p.get("normalize", default_normalize))
        lam = float(p.get("lambda", 1.0))
        cons = p.get("consensus_method", "sum") if consensus else None
        seed = int(p.get("seed", 0))
        if m == 0:  # only the base: the base (the kernels need at least one model)
            for rows, _xs, b in src.chunks():
                src.emit(rows, b.clone())
            return
        active = [sparsifier is not None and density[i] < 1 for i in range(m)]
        if sparsifier == "della":
            for i in range(m):
                if active[i] and 0 < density[i] and (density[i] + epsilon[i] >= 1 or density[i] - epsilon[i] <= 0):
                    raise ConfigError(
                        f"DELLA needs density - epsilon > 0 and density + epsilon < 1, but density={density[i]} and "
                        f"epsilon={epsilon[i]}. Lower epsilon (default 0.15) or move density away from 0 and 1."
                    )
        # ks to select per model: magnitude -> [k]; outliers -> band [start, stop)
        ks: list[list[int]] = [[] for _ in range(m)]
        for i in range(m):
            if not active[i] or n == 0:
                continue
            if sparsifier == "magnitude" and density[i] > 0:
                ks[i] = [max(1, int(density[i] * n))]
            elif sparsifier == "outliers":
                target = int(density[i] * n)
                n_top = int(gamma[i] * n)
                n_bottom = max(0, n - target - n_top)
                start, stop = max(0, n - n_bottom - target), min(n, n - n_bottom)
                ks[i] = [start, stop] if stop > start else [0, 0]
        sels = _selection_pass(src, ks) if sparsifier in ("magnitude", "outliers") else [[] for _ in range(m)]
        if sparsifier in ("magnitude", "outliers", "random") and kernels() is not None and getattr(src, "device", "cpu") == "cpu":
            _gta_fused(src, sparsifier, ks, sels, active, density, weights, rescale, normalize, lam, cons, seed)
            return

        def sparsifiers() -> list[Callable[[Tensor, Tensor], tuple[Tensor, Any]]]:
            """Fresh per-model maskers (stateful: tie counters, random streams) for one pass over the chunks."""
            out = []
            for i in range(m):
                if not active[i]:
                    out.append(lambda d, _x: (d, 1.0))
                elif sparsifier == "magnitude":
                    if density[i] <= 0:
                        out.append(lambda d, _x: (torch.zeros_like(d), 1.0))
                    else:
                        mk = TopkMaskStream(sels[i][0], ks[i][0], n)
                        out.append(lambda d, _x, mk=mk, q=density[i]: (d * mk(d), q))
                elif sparsifier == "outliers":
                    start, stop = ks[i]
                    if stop <= start:
                        out.append(lambda d, _x: (torch.zeros_like(d), 1.0))
                    else:
                        hi = TopkMaskStream(sels[i][1], stop, n)
                        lo = TopkMaskStream(sels[i][0], start, n) if start > 0 else None

                        def f(d, _x, hi=hi, lo=lo, q=density[i]):
                            mask = hi(d)
                            if lo is not None:
                                mask &= ~lo(d)
                            return d * mask, q

                        out.append(f)
                elif sparsifier == "random":
                    us = UniformStream(model_seed(seed, i), n)
                    out.append(lambda d, _x, us=us, q=density[i]: (d * (us.take(d.numel()).to(d.device).view(d.shape) < q), q))
                elif sparsifier == "della":
                    if density[i] <= 0:
                        out.append(lambda d, _x: (torch.zeros_like(d), 1.0))
                        continue
                    us = UniformStream(model_seed(seed, i), n)

                    def f(d, _x, us=us, q=density[i], e=epsilon[i]):
                        probs = della_keep_prob(d, q, e)
                        return d * (us.take(d.numel()).to(d.device).view(d.shape) < probs), probs

                    out.append(f)
            return out

        scale = [1.0] * m
        if rescale == "l1" and any(active):
            before = [0.0] * m
            after = [0.0] * m
            sp = sparsifiers()
            row = red.row_len(src.shape)
            for _rows, xs, b in src.chunks():
                for i in range(m):
                    if active[i]:
                        d = xs[i] - b
                        before[i] = red.carry(before[i], red.row_partials(d.abs(), row))
                        after[i] = red.carry(after[i], red.row_partials(sp[i](d, xs[i])[0].abs(), row))
            for i in range(m):
                if active[i] and before[i] >= _RESCALE_EPS and after[i] >= _RESCALE_EPS:
                    scale[i] = before[i] / after[i]
        sp = sparsifiers()
        for rows, xs, b in src.chunks():
            deltas = []
            for i in range(m):
                d = xs[i] - b
                if active[i]:
                    d, q = sp[i](d, xs[i])
                    if rescale == "l1" and scale[i] != 1.0:
                        d = d.mul_(scale[i])
                    elif rescale == "inverse_density":
                        d = d.div_(q) if isinstance(q, Tensor) else (d.div_(q) if q > 0 else d)
                deltas.append(d.mul_(weights[i]))
            if not deltas:
                src.emit(rows, b.clone())
                continue
            src.emit(rows, combine_deltas(deltas, b, weight=weights, consensus=cons, normalize=normalize, lam=lam))

    return run


def _gta_fused(src, sparsifier, ks, sels, active, density, weights, rescale, normalize, lam, cons, seed) -> None:
    """The apply (and L1) passes of ``_gta_stream`` with numba kernels: two sweeps per chunk."""
    K = kernels()
    m, n = len(weights), src.numel
    modes, thr_hi, need_hi, thr_lo, need_lo, q = [], [], [], [], [], []
    for i in range(m):
        th, nh, tl, nl, mode = -1.0, 0, math.inf, 0, kb.DENSE
        if active[i] and sparsifier == "magnitude":
            if density[i] <= 0:
                mode = kb.ZERO
            elif ks[i][0] < n:
                mode = kb.TOPK
                th, nh = _mask_params(sels[i][0], ks[i][0], n)
        elif active[i] and sparsifier == "outliers":
            start, stop = ks[i]
            if stop <= start:
                mode = kb.ZERO
            else:
                mode = kb.BAND
                th, nh = _mask_params(sels[i][1], stop, n)
                if start > 0:
                    tl, nl = _mask_params(sels[i][0], start, n)
        elif active[i] and sparsifier == "random":
            mode = kb.RANDOM
        modes.append(mode)
        thr_hi.append(np.float32(th))
        need_hi.append(nh)
        thr_lo.append(np.float32(tl))
        need_lo.append(nl)
        q.append(np.float32(density[i]))
    useeds = np.array([model_seed(seed, i) for i in range(m)], dtype=np.uint64)
    modes_a = np.array(modes, dtype=np.int64)
    thr_hi_a, thr_lo_a, q_a = (np.array(v, dtype=np.float32) for v in (thr_hi, thr_lo, q))

    def sweep(fn) -> None:
        """One pass over the chunks with fresh tie counters (m x 1 rows) and random streams."""
        nh = np.array(need_hi, dtype=np.int64).reshape(m, 1)
        nl = np.array(need_lo, dtype=np.int64).reshape(m, 1)
        pos = 0
        for rows, xs, b in src.chunks():
            fn(rows, xs, b, nh, nl, pos)  # pos: flat index of the chunk's first element (mask streams)
            pos += b.numel()

    scale = np.ones(m, dtype=np.float32)
    if rescale == "l1" and any(active):
        sums = np.zeros((m, 2), dtype=np.float64)
        row = red.row_len(src.shape)

        def l1(rows, xs, b, nh, nl, pos):
            bn = b.reshape(-1).numpy()
            for i in range(m):
                if active[i]:
                    K.l1_sums(xs[i].reshape(-1).numpy(), bn, row, modes[i], thr_hi_a[i], nh[i], thr_lo_a[i], nl[i],
                              useeds[i], pos, q_a[i], sums[i])

        sweep(l1)
        for i in range(m):
            if active[i] and sums[i, 0] >= _RESCALE_EPS and sums[i, 1] >= _RESCALE_EPS:
                scale[i] = np.float32(sums[i, 0] / sums[i, 1])
    div = np.array([q[i] if rescale == "inverse_density" and active[i] and q[i] > 0 else 1 for i in range(m)], dtype=np.float32)
    w32 = np.asarray(weights, dtype=np.float32)
    total = np.float32(torch.tensor(weights, dtype=torch.float32).sum().item())
    consensus = 0 if cons is None else (1 if cons == "sum" else 2)
    out = np.empty(0, dtype=np.float32)

    def apply(rows, xs, b, nh, nl, pos):
        nonlocal out
        bn = b.reshape(-1).numpy()
        k = bn.shape[0]
        if out.shape[0] < k:
            out = np.empty(k, dtype=np.float32)
        K.gta_apply(tuple(x.reshape(-1).numpy() for x in xs), bn, modes_a, thr_hi_a, nh, thr_lo_a, nl, useeds, pos,
                        q_a, scale, div, w32, consensus, normalize, total, np.float32(lam), out)
        src.emit(rows, torch.from_numpy(out[:k]).view(b.shape))

    sweep(apply)


# ------------------------------------------------------------------------------------------ slerp
def _slerp_stream(src: ChunkSource, *, t: float, **_: Any) -> None:
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


# ------------------------------------------------------------------------------------------ model stock, nuslerp
def _model_stock_stream(src: ChunkSource, *, filter_wise: bool = False, **_: Any) -> None:
    """Model Stock in row chunks: filter-wise ratios need only whole rows (each chunk runs the reference);
    the per-tensor ratio takes a statistics pass (fixed-partition float64 norms and pairwise dots of the task
    vectors, as the reference computes them)."""
    from modelmix.methods.model_stock import model_stock, stock_ratio

    if filter_wise and len(src.shape) >= 2:
        for rows, xs, b in src.chunks():
            src.emit(rows, model_stock(xs, base=b, filter_wise=True))
        return
    row = red.row_len(src.shape)
    stats: dict[tuple[int, int], np.ndarray] = {}
    n = 0
    for _rows, xs, b in src.chunks():
        n = len(xs)
        offs = [x - b for x in xs]
        for i in range(n):
            for j in range(i + 1, n):
                red.dot_stats(offs[i], offs[j], row, stats.setdefault((i, j), np.zeros(3, dtype=np.float64)))
    if not n:
        return
    t = stock_ratio(n, {k: float(v[2]) for k, v in stats.items()}, _self_dots(n, stats))
    for rows, xs, b in src.chunks():
        average = sum(xs) / len(xs)
        src.emit(rows, t * average + (1 - t) * b)


def _self_dots(n: int, stats: dict[tuple[int, int], np.ndarray]) -> list[float]:
    """Each task vector's squared norm, from the first pair statistics that hold it (every pair computes it
    by the same fixed procedure)."""
    out = []
    for i in range(n):
        if i + 1 < n:
            out.append(float(stats[(i, i + 1)][0]))
        else:
            out.append(float(stats[(i - 1, i)][1]) if i > 0 else 0.0)
    return out


def _nuslerp_stream(src: ChunkSource, *, weight: list[float], nuslerp_row_wise: bool = False,
                    nuslerp_flatten: bool = True, **_: Any) -> None:
    """nuslerp in row chunks: per-row slerp needs only whole rows (each chunk runs the reference); whole-tensor
    and per-column slerp take a statistics pass (float64 squared norms and dot: per tensor by the fixed
    partition, per column added row by row in order) and then one apply pass."""
    from modelmix.methods.slerp import nuslerp

    per_row = not nuslerp_flatten and not nuslerp_row_wise and len(src.shape) >= 2
    per_col = not nuslerp_flatten and nuslerp_row_wise and len(src.shape) >= 2
    if per_row:
        for rows, xs, b in src.chunks():
            src.emit(rows, nuslerp(xs, base=b, weight=weight, nuslerp_flatten=False))
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
            out = (c0.to(v0.device) * v0.reshape(shape[0], -1) + c1.to(v0.device) * v1.reshape(shape[0], -1)).reshape(shape)
        else:
            out = c0.to(v0.device) * v0 + c1.to(v0.device) * v1
        src.emit(rows, out + b if b is not None else out)


STREAMERS: dict[str, tuple[Callable[..., None], Callable[[tuple[int, ...], dict], bool], bool]] = {
    # name: (streamer, applies(shape, params), cache): ``cache`` lets the executor keep a small tensor's
    # float32 inputs between passes. It pays for the task-vector methods (TIES: 7.1 vs 8.3 s at 1.1B) but
    # not for SLERP's two cheap passes, where writing and re-reading the cache costs what re-reading saves.
    "ties": (_gta_stream("magnitude", True, True, "none"), lambda s, p: True, True),
    "dare_ties": (_gta_stream("random", True, False, "l1"), lambda s, p: True, True),
    "dare_linear": (_gta_stream("random", False, False, "l1"), lambda s, p: True, True),
    "breadcrumbs": (_gta_stream("outliers", False, False, "none"), lambda s, p: True, True),
    "breadcrumbs_ties": (_gta_stream("outliers", True, False, "none"), lambda s, p: True, True),
    # DELLA ranks within rows along dim 1: row chunks keep rows whole, but a 1-D tensor is a single row
    "della": (_gta_stream("della", True, True, "l1"), lambda s, p: len(s) >= 2, True),
    "della_linear": (_gta_stream("della", False, False, "l1"), lambda s, p: len(s) >= 2, True),
    "slerp": (_slerp_stream, lambda s, p: True, False),
    "model_stock": (_model_stock_stream, lambda s, p: True, False),
    "nuslerp": (_nuslerp_stream, lambda s, p: True, False),
}

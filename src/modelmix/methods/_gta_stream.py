"""The task-vector family's streamer: TIES, DARE, breadcrumbs and DELLA over row chunks, in passes.

Selection passes (two histogram passes over the float bits per model: the exact top-k threshold), an L1
pass when rescaling, then one apply pass that emits each output chunk; with compiled kernels (CPU) the L1
and apply passes are one kernel call per chunk (``gta_apply``, ``l1_sums``). Equal to the reference
(``task_arithmetic``'s ``fn``) bit for bit. Built from the same :class:`TaskVectorVariant` as the
reference, reading the same resolved parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelmix.kernels import modes
from modelmix.kernels import reduce as red
from modelmix.kernels.backend import kernels
from modelmix.kernels.masks import _RESCALE_EPS, della_keep_prob, model_seed, normalize_rescale
from modelmix.methods._gta import Sparsifier, TaskVectorVariant, check_della, combine_deltas
from modelmix.methods.registry import Streamer, with_defaults
from modelmix.streaming import ChunkSource, TopkMaskStream, UniformStream, mask_params, selection_pass

# the sparsifiers the compiled apply kernel implements (DELLA's per-row ranks run in torch)
_FUSED = (Sparsifier.MAGNITUDE, Sparsifier.OUTLIERS, Sparsifier.RANDOM)


def _rows_whole(shape: tuple[int, ...], params: Mapping[str, Any]) -> bool:
    """DELLA ranks within rows along dim 1: row chunks keep rows whole, but a 1-D tensor is a single row."""
    return len(shape) >= 2


def task_vector_streamer(v: TaskVectorVariant) -> Streamer:
    """The streamer of variant ``v``; ``cache``: three or more costly passes over the same inputs."""
    if v.sparsifier is Sparsifier.DELLA:
        return Streamer(_make_run(v), _rows_whole, cache=True)
    return Streamer(_make_run(v), cache=True)


def _make_run(v: TaskVectorVariant) -> Callable[..., None]:
    params, sparsifier = v.params, v.sparsifier
    magnitude, outliers = sparsifier is Sparsifier.MAGNITUDE, sparsifier is Sparsifier.OUTLIERS
    random, della = sparsifier is Sparsifier.RANDOM, sparsifier is Sparsifier.DELLA

    def run(src: ChunkSource, **given: Any) -> None:
        weights: list[float] = given["weight"]
        m = len(weights)
        n = src.numel
        p = with_defaults(params, given, m)
        density = p["density"]
        gamma = p["gamma"] if outliers else None
        epsilon = p["epsilon"] if della else None
        rescale = normalize_rescale(p["rescale"])
        normalize = bool(p["normalize"])
        lam = float(p["lambda"])
        cons = p["consensus_method"] if v.consensus else None
        seed = int(p.get("seed", 0))
        if m == 0:  # only the base: the base (the kernels need at least one model)
            for rows, _xs, b in src.chunks():
                src.emit(rows, b.clone())
            return
        active = [sparsifier is not Sparsifier.NONE and density[i] < 1 for i in range(m)]
        if della:
            check_della(density, epsilon)  # type: ignore[arg-type]
        # ks to select per model: magnitude -> [k]; outliers -> band [start, stop)
        ks: list[list[int]] = [[] for _ in range(m)]
        for i in range(m):
            if not active[i] or n == 0:
                continue
            if magnitude and density[i] > 0:
                ks[i] = [max(1, int(density[i] * n))]
            elif outliers:
                target = int(density[i] * n)
                n_top = int(gamma[i] * n)  # type: ignore[index]
                n_bottom = max(0, n - target - n_top)
                start, stop = max(0, n - n_bottom - target), min(n, n - n_bottom)
                ks[i] = [start, stop] if stop > start else [0, 0]
        sels = selection_pass(src, ks) if magnitude or outliers else [[] for _ in range(m)]
        if sparsifier in _FUSED and kernels() is not None and getattr(src, "device", "cpu") == "cpu":
            _gta_fused(src, sparsifier, ks, sels, active, density, weights, rescale, normalize, lam, cons, seed)
            return

        def sparsifiers() -> list[Callable[[Tensor, Tensor], tuple[Tensor, Any]]]:
            """Fresh per-model maskers (stateful: tie counters, random streams) for one pass over the chunks."""
            out = []
            for i in range(m):
                if not active[i]:
                    out.append(lambda d, _x: (d, 1.0))
                elif magnitude:
                    if density[i] <= 0:
                        out.append(lambda d, _x: (torch.zeros_like(d), 1.0))
                    else:
                        mk = TopkMaskStream(sels[i][0], ks[i][0], n)
                        out.append(lambda d, _x, mk=mk, q=density[i]: (d * mk(d), q))
                elif outliers:
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
                elif random:
                    us = UniformStream(model_seed(seed, i), n)
                    out.append(lambda d, _x, us=us, q=density[i]: (d * (us.take(d.numel()).to(d.device).view(d.shape) < q), q))
                elif della:
                    if density[i] <= 0:
                        out.append(lambda d, _x: (torch.zeros_like(d), 1.0))
                        continue
                    us = UniformStream(model_seed(seed, i), n)

                    def f(d, _x, us=us, q=density[i], e=epsilon[i]):  # type: ignore[index]
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
    """The apply (and L1) passes of the streamer with compiled kernels: two sweeps per chunk."""
    K = kernels()
    m, n = len(weights), src.numel
    modes_, thr_hi, need_hi, thr_lo, need_lo, q = [], [], [], [], [], []
    for i in range(m):
        th, nh, tl, nl, mode = -1.0, 0, math.inf, 0, modes.DENSE
        if active[i] and sparsifier is Sparsifier.MAGNITUDE:
            if density[i] <= 0:
                mode = modes.ZERO
            elif ks[i][0] < n:
                mode = modes.TOPK
                th, nh = mask_params(sels[i][0], ks[i][0], n)
        elif active[i] and sparsifier is Sparsifier.OUTLIERS:
            start, stop = ks[i]
            if stop <= start:
                mode = modes.ZERO
            else:
                mode = modes.BAND
                th, nh = mask_params(sels[i][1], stop, n)
                if start > 0:
                    tl, nl = mask_params(sels[i][0], start, n)
        elif active[i] and sparsifier is Sparsifier.RANDOM:
            mode = modes.RANDOM
        modes_.append(mode)
        thr_hi.append(np.float32(th))
        need_hi.append(nh)
        thr_lo.append(np.float32(tl))
        need_lo.append(nl)
        q.append(np.float32(density[i]))
    useeds = np.array([model_seed(seed, i) for i in range(m)], dtype=np.uint64)
    modes_a = np.array(modes_, dtype=np.int64)
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
                    K.l1_sums(xs[i].reshape(-1).numpy(), bn, row, modes_[i], thr_hi_a[i], nh[i], thr_lo_a[i], nl[i],
                              useeds[i], pos, q_a[i], sums[i])

        sweep(l1)
        for i in range(m):
            if active[i] and sums[i, 0] >= _RESCALE_EPS and sums[i, 1] >= _RESCALE_EPS:
                scale[i] = np.float32(sums[i, 0] / sums[i, 1])
    div = np.array([q[i] if rescale == "inverse_density" and active[i] and q[i] > 0 else 1 for i in range(m)],
                   dtype=np.float32)
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

"""Fused per-element kernels (numba) for the hot loops of task-vector merging on CPU.

The torch formulation of one TIES output chunk issues ~30 separate tensor ops (subtract, compare, mask,
multiply, elect, where, divide, ...), each a full pass over memory. These kernels do the same arithmetic
element by element in one or two sweeps, in float32 with the same operation order as the torch reference
(``modelmix.methods._gta``), so results agree to the last bit; float64 statistics (L1 sums, dots) follow
the fixed partition of ``modelmix.kernels.reduce`` and agree to the last bit as well. They release the
GIL, so the executor's worker threads run them in parallel. Without numba the torch path is used.
"""

from __future__ import annotations

import numpy as np

try:  # numba is an optional accelerator: everything works (slower) without it
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        def wrap(f):
            return f

        return wrap if not (len(args) == 1 and callable(args[0])) else args[0]


from modelmix.kernels.modes import BAND, DENSE, RANDOM, TOPK, ZERO  # noqa: E402,F401 - compile-time constants

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV24 = np.float32(1.0 / (1 << 24))


@njit(inline="always")
def _uniform(seed, index):  # pragma: no cover - compiled
    """The random-mask uniform for element ``index`` of a model stream: splitmix64 of (seed, index), top
    24 bits as a float32 in [0, 1). A pure function of the index, so any chunking, thread count or device
    gives the same masks without replaying a generator."""
    z = seed + (np.uint64(index) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return np.float32(z >> np.uint64(40)) * _INV24


@njit(nogil=True, cache=True)
def uniforms(seed, start, out):  # pragma: no cover - compiled
    """out[j] = the uniform of element start + j of stream ``seed``."""
    for j in range(out.shape[0]):
        out[j] = _uniform(seed, start + j)


@njit(nogil=True, cache=True)
def hist_hi(x, b, scratch, hist):  # pragma: no cover - compiled
    """hist[(bits(|x - b|) >> 16)] += 1 for every element (the first radix-select pass)."""
    n = x.shape[0]
    for j in range(n):
        scratch[j] = abs(x[j] - b[j])
    bits = scratch[:n].view(np.uint32)
    for j in range(n):
        hist[bits[j] >> 16] += 1


@njit(nogil=True, cache=True)
def hist_lo(x, b, bucket, scratch, lo):  # pragma: no cover - compiled
    """lo[bits & 0xFFFF] += 1 for the elements of |x - b| whose high 16 bits equal ``bucket``."""
    n = x.shape[0]
    for j in range(n):
        scratch[j] = abs(x[j] - b[j])
    bits = scratch[:n].view(np.uint32)
    for j in range(n):
        v = bits[j]
        if (v >> 16) == bucket:
            lo[v & 0xFFFF] += 1


@njit(nogil=True, cache=True)
def bf16_to_f32(raw, out):  # pragma: no cover - compiled
    """out (uint32 view of float32) = bf16 bits << 16; returns True when every value is finite.

    One sweep instead of torch's convert-then-sum: a bfloat16 is NaN/Inf exactly when its 8 exponent bits
    are all ones."""
    bad = 0
    for j in range(raw.shape[0]):
        v = np.uint32(raw[j])
        out[j] = v << np.uint32(16)
        bad |= np.uint32(1) if (v & np.uint32(0x7F80)) == np.uint32(0x7F80) else np.uint32(0)
    return bad == 0


_BLOCK = 512  # elements per block of the fused apply kernel: m rows of scratch stay in L1


@njit(inline="always")
def _in_band(a, thr_hi, need_hi, thr_lo, need_lo):  # pragma: no cover - compiled
    """|d| = a is in the top-stop band but not the top-start one (breadcrumbs), threshold ties taken in
    flat-index order while each counter lasts."""
    in_hi = a > thr_hi
    if a == thr_hi and need_hi[0] > 0:
        need_hi[0] -= 1
        in_hi = True
    in_lo = a > thr_lo
    if a == thr_lo and need_lo[0] > 0:
        need_lo[0] -= 1
        in_lo = True
    return in_hi and not in_lo


@njit(inline="always")
def _masked_block(x, b, nb, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart, q, scale, div, weight, d_out):  # pragma: no cover
    """d_out[:nb] = (((keep * (x - b)) * scale) / div) * weight for one model's block (x, b: block slices).

    Multiplying by scale = 1 or dividing by div = 1 is exact, so the expression needs no branches and the
    TOPK, RANDOM, DENSE and ZERO loops vectorise (keep is a 0/1 factor: task-vector signs are random, so
    branches would mispredict). Arrays are indexed only by the bare loop variable: numba cannot prove a
    computed index such as ``j0 + jj`` non-negative, and its wraparound check stops vectorisation (10x).
    TOPK keeps |d| > thr_hi, then the first ``need_hi[0]`` elements equal to it in flat-index order (the
    counter carries to the next block); BAND keeps top-stop minus top-start; RANDOM keeps u < q with u the
    uniform of flat element ustart + jj.
    """
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if mode == TOPK:
        ties = 0
        for jj in range(nb):
            d = x[jj] - b[jj]
            a = abs(d)
            d_out[jj] = (((d * (one if a > thr_hi else zero)) * scale) / div) * weight
            ties += 1 if a == thr_hi else 0
        if ties and need_hi[0] > 0:
            for jj in range(nb):
                d = x[jj] - b[jj]
                if abs(d) == thr_hi and need_hi[0] > 0:
                    need_hi[0] -= 1
                    d_out[jj] = ((d * scale) / div) * weight
    elif mode == RANDOM:
        for jj in range(nb):
            d = x[jj] - b[jj]
            keep = _uniform(useed, ustart + jj) < q
            d_out[jj] = (((d * (one if keep else zero)) * scale) / div) * weight
    elif mode == BAND:
        for jj in range(nb):
            d = x[jj] - b[jj]
            d_out[jj] = (((d * (one if _in_band(abs(d), thr_hi, need_hi, thr_lo, need_lo) else zero)) * scale) / div) * weight
    elif mode == ZERO:
        for jj in range(nb):
            d_out[jj] = zero
    else:  # DENSE
        for jj in range(nb):
            d_out[jj] = (((x[jj] - b[jj]) * scale) / div) * weight


@njit(nogil=True, cache=True)
def gta_apply(xs, b, modes, thr_hi, need_hi, thr_lo, need_lo, useeds, ustart, q, scale, div, weights,
              consensus, normalize, total, lam, out):  # pragma: no cover - compiled
    """One output chunk of a task-vector merge: masked, rescaled, weighted deltas of every model (tuple
    ``xs``) over ``b``, TIES sign election (consensus 1 = sum of deltas, 2 = count of signs, 0 = none), the
    normalisation of ``merge_deltas`` and the lambda scale, in blocks of _BLOCK elements so the per-model
    deltas never leave L1. Same float operations in the same order as the torch reference
    (``modelmix.methods._gta``), hence bit-identical; per-model parameters are arrays indexed by model."""
    m = len(xs)
    n = b.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    dl = np.empty((m, _BLOCK), dtype=np.float32)
    acc = np.empty(_BLOCK, dtype=np.float32)
    mixed = np.empty(_BLOCK, dtype=np.float32)
    divisor = np.empty(_BLOCK, dtype=np.float32)
    for j0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - j0)
        bb = b[j0:j0 + nb]
        oo = out[j0:j0 + nb]
        for i in range(m):
            _masked_block(xs[i][j0:j0 + nb], bb, nb, modes[i], thr_hi[i], need_hi[i], thr_lo[i], need_lo[i], useeds[i],
                          ustart + j0, q[i], scale[i], div[i], weights[i], dl[i])
        if consensus == 0:
            d = dl[0]
            for jj in range(nb):
                mixed[jj] = d[jj]
            for i in range(1, m):
                d = dl[i]
                for jj in range(nb):
                    mixed[jj] += d[jj]
            if normalize and abs(total) >= 1e-8:
                for jj in range(nb):
                    mixed[jj] = mixed[jj] / total
        else:
            for jj in range(nb):
                acc[jj] = zero
                mixed[jj] = zero
                divisor[jj] = zero
            for i in range(m):
                d = dl[i]
                if consensus == 1:
                    for jj in range(nb):
                        acc[jj] += d[jj]
                else:
                    for jj in range(nb):
                        acc[jj] += (one if d[jj] > 0 else zero) - (one if d[jj] < 0 else zero)
            for i in range(m):
                w = weights[i]
                d = dl[i]
                for jj in range(nb):
                    k = one if d[jj] * (one if acc[jj] >= 0 else -one) > 0 else zero  # agrees with the elected sign
                    mixed[jj] += d[jj] * k
                    divisor[jj] += k * w
            if normalize:
                for jj in range(nb):
                    dv = divisor[jj] if divisor[jj] != 0 else one
                    mixed[jj] = mixed[jj] / dv
        if lam != 1:
            for jj in range(nb):
                oo[jj] = bb[jj] + mixed[jj] * lam
        else:
            for jj in range(nb):
                oo[jj] = bb[jj] + mixed[jj]


_LANES = 8  # the fixed partition of the float64 statistics (modelmix.kernels.reduce, ckernels.c)


@njit(inline="always")
def _lanes_sum(s):  # pragma: no cover - compiled
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


@njit(inline="always")
def _lanes_add(s, v, nb):  # pragma: no cover - compiled
    """s[j % 8] += v[j] for j < nb (a block starting at a lane-0 position of its row). Groups of 8 are rows
    of a 2-D view indexed by bare loop variables only, so LLVM vectorises the lane adds."""
    ng = nb // _LANES
    m = v[: ng * _LANES].reshape(ng, _LANES)
    s0, s1, s2, s3, s4, s5, s6, s7 = s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    for g in range(ng):
        grp = m[g]
        s0 += grp[0]
        s1 += grp[1]
        s2 += grp[2]
        s3 += grp[3]
        s4 += grp[4]
        s5 += grp[5]
        s6 += grp[6]
        s7 += grp[7]
    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7] = s0, s1, s2, s3, s4, s5, s6, s7
    tail = v[ng * _LANES : nb]
    for li in range(tail.shape[0]):
        s[li] += tail[li]


@njit(nogil=True, cache=True)
def l1_sums(x, b, row, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart, q, sums):  # pragma: no cover - compiled
    """sums += (sum |x - b|, sum |keep * (x - b)|) in float64: the statistics pass of L1 rescaling.

    The fixed partition of ``modelmix.kernels.reduce``: per row of ``row`` elements, element j into lane
    j % 8 in order, lanes combined pairwise, row partials added to the totals in row order (no fastmath:
    the order is the point). Per block of a row, |d| and the kept |d| go to scratch arrays (vectorisable
    mode loops), then into the lanes. Bit-identical to ckernels.c and the torch formulation."""
    n = x.shape[0]
    row = max(row, 1)
    sb = np.zeros(_LANES)
    sa = np.zeros(_LANES)
    av = np.empty(_BLOCK)
    kv = np.empty(_BLOCK)
    t_before = sums[0]
    t_after = sums[1]
    for r0 in range(0, n, row):
        ln = min(row, n - r0)
        for li in range(_LANES):
            sb[li] = 0.0
            sa[li] = 0.0
        for j0 in range(0, ln, _BLOCK):
            nb = min(_BLOCK, ln - j0)
            o = r0 + j0
            xs = x[o : o + nb]
            bs = b[o : o + nb]
            if mode == RANDOM:
                for jj in range(nb):
                    a = np.float64(abs(xs[jj] - bs[jj]))
                    av[jj] = a
                    kv[jj] = a if _uniform(useed, ustart + o + jj) < q else 0.0
            elif mode == TOPK:
                ties = 0
                for jj in range(nb):
                    af = abs(xs[jj] - bs[jj])
                    av[jj] = np.float64(af)
                    kv[jj] = np.float64(af) if af > thr_hi else 0.0
                    ties += 1 if af == thr_hi else 0
                if ties and need_hi[0] > 0:
                    for jj in range(nb):
                        if abs(xs[jj] - bs[jj]) == thr_hi and need_hi[0] > 0:
                            need_hi[0] -= 1
                            kv[jj] = av[jj]
            elif mode == BAND:
                for jj in range(nb):
                    af = abs(xs[jj] - bs[jj])
                    av[jj] = np.float64(af)
                    kv[jj] = np.float64(af) if _in_band(af, thr_hi, need_hi, thr_lo, need_lo) else 0.0
            else:
                keep = 0.0 if mode == ZERO else 1.0
                for jj in range(nb):
                    a = np.float64(abs(xs[jj] - bs[jj]))
                    av[jj] = a
                    kv[jj] = a * keep
            _lanes_add(sb, av, nb)
            _lanes_add(sa, kv, nb)
        t_before += _lanes_sum(sb)
        t_after += _lanes_sum(sa)
    sums[0] = t_before
    sums[1] = t_after


@njit(nogil=True, cache=True)
def dot_stats(a, b, row, acc):  # pragma: no cover - compiled
    """acc += (sum a^2, sum b^2, sum a*b) in float64 by the fixed partition (rows of ``row`` elements):
    SLERP's, nuslerp's and Model Stock's whole-tensor statistics. Products of float32 values are exact in
    float64, so only the (fixed) order of the sums matters. The 8 lanes are spelled out as scalars over
    groups of a 2-D view (bare loop indices): twice as fast as indexed lane arrays."""
    n = a.shape[0]
    row = max(row, 1)
    saa = np.zeros(_LANES)
    sbb = np.zeros(_LANES)
    sab = np.zeros(_LANES)
    t0 = acc[0]
    t1 = acc[1]
    t2 = acc[2]
    for r0 in range(0, n, row):
        ln = min(row, n - r0)
        ng = ln // _LANES
        x2 = a[r0 : r0 + ng * _LANES].reshape(ng, _LANES)
        y2 = b[r0 : r0 + ng * _LANES].reshape(ng, _LANES)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = 0.0
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = 0.0
        for g in range(ng):
            xg = x2[g]
            yg = y2[g]
            u = np.float64(xg[0])
            v = np.float64(yg[0])
            a0 += u * u
            b0 += v * v
            c0 += u * v
            u = np.float64(xg[1])
            v = np.float64(yg[1])
            a1 += u * u
            b1 += v * v
            c1 += u * v
            u = np.float64(xg[2])
            v = np.float64(yg[2])
            a2 += u * u
            b2 += v * v
            c2 += u * v
            u = np.float64(xg[3])
            v = np.float64(yg[3])
            a3 += u * u
            b3 += v * v
            c3 += u * v
            u = np.float64(xg[4])
            v = np.float64(yg[4])
            a4 += u * u
            b4 += v * v
            c4 += u * v
            u = np.float64(xg[5])
            v = np.float64(yg[5])
            a5 += u * u
            b5 += v * v
            c5 += u * v
            u = np.float64(xg[6])
            v = np.float64(yg[6])
            a6 += u * u
            b6 += v * v
            c6 += u * v
            u = np.float64(xg[7])
            v = np.float64(yg[7])
            a7 += u * u
            b7 += v * v
            c7 += u * v
        saa[0], saa[1], saa[2], saa[3], saa[4], saa[5], saa[6], saa[7] = a0, a1, a2, a3, a4, a5, a6, a7
        sbb[0], sbb[1], sbb[2], sbb[3], sbb[4], sbb[5], sbb[6], sbb[7] = b0, b1, b2, b3, b4, b5, b6, b7
        sab[0], sab[1], sab[2], sab[3], sab[4], sab[5], sab[6], sab[7] = c0, c1, c2, c3, c4, c5, c6, c7
        xt = a[r0 + ng * _LANES : r0 + ln]
        yt = b[r0 + ng * _LANES : r0 + ln]
        for li in range(xt.shape[0]):  # the row's last partial group
            u = np.float64(xt[li])
            v = np.float64(yt[li])
            saa[li] += u * u
            sbb[li] += v * v
            sab[li] += u * v
        t0 += _lanes_sum(saa)
        t1 += _lanes_sum(sbb)
        t2 += _lanes_sum(sab)
    acc[0] = t0
    acc[1] = t1
    acc[2] = t2


@njit(nogil=True, cache=True)
def axpby(a, b, ca, cb, out):  # pragma: no cover - compiled
    """out = ca * a + cb * b in float32, the same operations as the torch expression."""
    for j in range(a.shape[0]):
        out[j] = ca * a[j] + cb * b[j]

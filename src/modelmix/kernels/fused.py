"""Fused per-element kernels (numba) for the hot loops of task-vector merging on CPU.

The torch formulation of one TIES output chunk issues ~30 separate tensor ops (subtract, compare, mask,
multiply, elect, where, divide, ...), each a full pass over memory. These kernels do the same arithmetic
element by element in one or two sweeps, in float32 with the same operation order as the torch reference
(``modelmix.methods._gta``), so results agree to the last bit except for float64 L1 sums. They release the
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


# sparsifier modes
DENSE, TOPK, BAND, ZERO, RANDOM = 0, 1, 2, 3, 4

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


@njit(inline="always")
def _finish(d, keep, scale, div, weight):  # pragma: no cover - compiled
    m = d * (np.float32(1.0) if keep else np.float32(0.0))
    if scale != 1:
        m = m * scale
    if div != 1:
        m = m / div
    return m * weight


@njit(nogil=True, cache=True)
def sparsify_into(x, b, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart, q, scale, div, weight, out, sums):  # pragma: no cover
    """out = (((mask * (x - b)) * scale) / div) * weight for one model's chunk (scale/div skipped when 1).

    TOPK keeps |d| > thr_hi plus the first ``need_hi[0]`` elements equal to it (flat-index order, the
    counter carries over to the next chunk); BAND keeps top-``stop`` minus top-``start`` (two counters);
    RANDOM keeps u < q with u = uniform(useed, ustart + j). If ``sums`` has length 2 it accumulates
    (sum |d|, sum |mask * d|) in float64 for L1 rescaling (the statistics pass), else nothing is summed.
    Each mode has its own loop (the mode is tested once, not per element), and keep decisions are 0/1
    factors rather than branches: task-vector signs and magnitudes are random, so branches mispredict.
    """
    n = x.shape[0]
    stats = sums.shape[0] == 2
    s_before = 0.0
    s_after = 0.0
    if mode == RANDOM:
        for j in range(n):
            d = x[j] - b[j]
            m = _finish(d, _uniform(useed, ustart + j) < q, scale, div, weight)
            out[j] = m
            if stats:
                s_before += abs(d)
                s_after += abs(d) if _uniform(useed, ustart + j) < q else 0.0
    elif mode == TOPK:
        # vectorisable main loop (strictly above the threshold); the rare elements equal to it are taken
        # afterwards in index order while the tie budget lasts
        ties = 0
        for j in range(n):
            d = x[j] - b[j]
            a = abs(d)
            out[j] = _finish(d, a > thr_hi, scale, div, weight)
            ties += 1 if a == thr_hi else 0
            if stats:
                s_before += a
                s_after += a if a > thr_hi else 0.0
        if ties and need_hi[0] > 0:
            for j in range(n):
                d = x[j] - b[j]
                if abs(d) == thr_hi and need_hi[0] > 0:
                    need_hi[0] -= 1
                    out[j] = _finish(d, True, scale, div, weight)
                    if stats:
                        s_after += abs(d)
    elif mode == BAND:
        for j in range(n):
            d = x[j] - b[j]
            a = abs(d)
            in_hi = a > thr_hi
            if a == thr_hi and need_hi[0] > 0:
                need_hi[0] -= 1
                in_hi = True
            in_lo = a > thr_lo
            if a == thr_lo and need_lo[0] > 0:
                need_lo[0] -= 1
                in_lo = True
            keep = in_hi and not in_lo
            out[j] = _finish(d, keep, scale, div, weight)
            if stats:
                s_before += a
                s_after += a if keep else 0.0
    else:  # DENSE keeps everything, ZERO nothing (as exact zeros, like zeros_like)
        for j in range(n):
            d = x[j] - b[j]
            if mode == ZERO:
                out[j] = np.float32(0.0)
            else:
                m = d
                if scale != 1:
                    m = m * scale
                if div != 1:
                    m = m / div
                out[j] = m * weight
            if stats:
                s_before += abs(d)
                s_after += 0.0 if mode == ZERO else abs(d)
    if stats:
        sums[0] += s_before
        sums[1] += s_after


@njit(nogil=True, cache=True)
def combine(deltas, n, b, weights, consensus, normalize, total, lam, acc, mixed, divisor, out):  # pragma: no cover
    """Merge weighted deltas (rows of ``deltas``, first ``n`` columns) onto the base: TIES sign election
    (consensus 1 = sum of deltas, 2 = count of signs, 0 = none), the normalisation of ``merge_deltas`` and
    the lambda scale. Model-outer, element-inner loops over contiguous rows (vectorisable), in the same
    float order as the torch reference; ``acc``, ``mixed``, ``divisor`` are scratch rows."""
    m = deltas.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    if consensus == 0:
        for j in range(n):
            mixed[j] = deltas[0, j]
        for i in range(1, m):
            for j in range(n):
                mixed[j] += deltas[i, j]
        if normalize and abs(total) >= 1e-8:
            for j in range(n):
                mixed[j] = mixed[j] / total
    else:
        for j in range(n):
            acc[j] = zero
            mixed[j] = zero
            divisor[j] = zero
        for i in range(m):
            for j in range(n):
                d = deltas[i, j]
                if consensus == 1:
                    acc[j] += d
                else:
                    acc[j] += (one if d > 0 else zero) - (one if d < 0 else zero)
        for i in range(m):
            w = weights[i]
            for j in range(n):
                d = deltas[i, j]
                k = one if d * (one if acc[j] >= 0 else -one) > 0 else zero  # agrees with the elected sign
                mixed[j] += d * k
                divisor[j] += k * w
        for j in range(n):
            dv = divisor[j] if divisor[j] != 0 else one
            if normalize:
                mixed[j] = mixed[j] / dv
    for j in range(n):
        v = mixed[j]
        if lam != 1:
            v = v * lam
        out[j] = b[j] + v


@njit(nogil=True, cache=True, fastmath=True)
def dot_stats(a, b, acc):  # pragma: no cover - compiled
    """acc += (sum a^2, sum b^2, sum a*b) in float64, one sweep (SLERP's whole-tensor statistics)."""
    saa = 0.0
    sbb = 0.0
    sab = 0.0
    for j in range(a.shape[0]):
        x = np.float64(a[j])
        y = np.float64(b[j])
        saa += x * x
        sbb += y * y
        sab += x * y
    acc[0] += saa
    acc[1] += sbb
    acc[2] += sab


@njit(nogil=True, cache=True)
def axpby(a, b, ca, cb, out):  # pragma: no cover - compiled
    """out = ca * a + cb * b in float32, the same operations as the torch expression."""
    for j in range(a.shape[0]):
        out[j] = ca * a[j] + cb * b[j]

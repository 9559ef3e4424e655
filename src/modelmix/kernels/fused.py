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


@njit(nogil=True, cache=True)
def sparsify_into(x, b, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart, q, scale, div, weight, out, sums):  # pragma: no cover
    """out = (((mask * (x - b)) * scale) / div) * weight for one model's chunk (scale/div skipped when 1).

    TOPK keeps |d| > thr_hi plus the first ``need_hi[0]`` elements equal to it (flat-index order, the
    counter carries over to the next chunk); BAND keeps top-``stop`` minus top-``start`` (two counters);
    RANDOM keeps u < q with u = uniform(useed, ustart + j). ``sums`` accumulates (sum |d|, sum |mask * d|) in float64 for L1 rescaling.
    """
    n = x.shape[0]
    s_before = 0.0
    s_after = 0.0
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for j in range(n):
        d = x[j] - b[j]
        a = abs(d)
        # data-dependent keep decisions are computed as 0/1 factors, not branches: task-vector signs and
        # magnitudes are random, and mispredicted branches cost more than the arithmetic here
        if mode == TOPK:
            keep = a > thr_hi
            if a == thr_hi and need_hi[0] > 0:  # rare: ties at the threshold, first come first kept
                need_hi[0] -= 1
                keep = True
        elif mode == BAND:
            in_hi = a > thr_hi
            if a == thr_hi and need_hi[0] > 0:
                need_hi[0] -= 1
                in_hi = True
            in_lo = a > thr_lo
            if a == thr_lo and need_lo[0] > 0:
                need_lo[0] -= 1
                in_lo = True
            keep = in_hi and not in_lo
        elif mode == RANDOM:
            keep = _uniform(useed, ustart + j) < q
        else:
            keep = True
        m = d * (one if keep else zero)
        if mode == ZERO:
            m = zero
        elif mode == DENSE:
            m = d
        s_before += a
        s_after += abs(m)
        if scale != 1:
            m = m * scale
        if div != 1:
            m = m / div
        out[j] = m * weight
    sums[0] += s_before
    sums[1] += s_after


@njit(nogil=True, cache=True)
def combine(deltas, b, weights, consensus, normalize, total, lam, out):  # pragma: no cover - compiled
    """Merge weighted deltas (models x n) onto the base: TIES sign election (consensus 1 = sum of deltas,
    2 = count of signs, 0 = none), the normalisation of ``merge_deltas`` and the lambda scale."""
    m, n = deltas.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for j in range(n):
        if consensus == 0:
            mixed = deltas[0, j]
            for i in range(1, m):
                mixed += deltas[i, j]
            if normalize and abs(total) >= 1e-8:
                mixed = mixed / total
        else:
            acc = zero
            for i in range(m):
                d = deltas[i, j]
                if consensus == 1:
                    acc += d
                else:
                    acc += (one if d > 0 else zero) - (one if d < 0 else zero)
            sgn = one if acc >= 0 else -one
            mixed = zero
            divisor = zero
            for i in range(m):
                d = deltas[i, j]
                k = one if d * sgn > 0 else zero  # agrees with the elected sign (zeros never agree)
                mixed += d * k
                divisor += k * weights[i]
            if divisor == 0:
                divisor = one
            if normalize:
                mixed = mixed / divisor
        if lam != 1:
            mixed = mixed * lam
        out[j] = b[j] + mixed

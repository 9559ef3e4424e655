"""ctypes front end of the compiled kernels (``ckernels.c``), with the call signatures of ``fused``.

The shared library is built by ``pip install`` (an optional setuptools extension, ``_ckernels``); where it
is missing (no compiler at install time) ``AVAILABLE`` is False and callers use the numba kernels
(``modelmix.kernels.backend`` chooses). ctypes releases the GIL for each call, so worker threads run
kernels in parallel.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from ctypes import c_float, c_int64, c_uint32, c_uint64, c_void_p

import numpy as np

ABI_VERSION = 6  # must equal mm_abi_version() in ckernels.c


def _load() -> ctypes.CDLL | None:
    try:
        spec = importlib.util.find_spec("modelmix.kernels._ckernels")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        lib.mm_abi_version.restype = ctypes.c_int
        if lib.mm_abi_version() != ABI_VERSION:  # built from an older ckernels.c: reinstall to rebuild
            return None
    except (OSError, AttributeError):
        return None
    p, i64, f32 = c_void_p, c_int64, c_float
    sigs = {
        "mm_uniforms": ([c_uint64, i64, i64, p], None),
        "mm_bf16_to_f32": ([p, i64, p], ctypes.c_int),
        "mm_hist_hi": ([p, p, i64, p], None),
        "mm_hist_lo": ([p, p, i64, c_uint32, p], None),
        "mm_gta_apply": ([i64, p, p, i64, p, p, p, p, p, p, i64, p, p, p, p, i64, i64, f32, f32, p], ctypes.c_int),
        "mm_l1_sums": ([p, p, i64, i64, i64, f32, p, f32, p, c_uint64, i64, f32, p], None),
        "mm_dot_stats": ([p, p, i64, i64, p], None),
        "mm_axpby": ([p, p, i64, f32, f32, p], None),
        "mm_f32_to_bf16": ([p, i64, p], None),
        "mm_linear_bf16": ([i64, p, i64, p, i64, f32, i64, p], ctypes.c_int),
        "mm_dot_stats_bf16": ([p, p, i64, i64, p], ctypes.c_int),
        "mm_axpby_bf16": ([p, p, i64, f32, f32, i64, p], None),
    }
    try:
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = res
    except AttributeError:  # a build missing a function: not usable
        return None
    return lib


_LIB = _load()
AVAILABLE = _LIB is not None
# the one-pass linear kernel reproduces torch's fused multiply-adds, so it is offered only on FMA CPUs
HAS_FMA = AVAILABLE and bool(_LIB.mm_cpu_has_fma())


def _p(a: np.ndarray) -> int:
    assert a.flags.c_contiguous or a.ndim == 0 or a.size <= 1, "kernels take contiguous arrays"
    return a.__array_interface__["data"][0]


def uniforms(seed, start, out: np.ndarray) -> None:
    _LIB.mm_uniforms(int(seed), int(start), out.shape[0], _p(out))


def bf16_to_f32(raw: np.ndarray, out: np.ndarray) -> bool:
    return bool(_LIB.mm_bf16_to_f32(_p(raw), raw.shape[0], _p(out)))


def hist_hi(x: np.ndarray, b: np.ndarray, scratch: np.ndarray, hist: np.ndarray) -> None:
    _LIB.mm_hist_hi(_p(x), _p(b), x.shape[0], _p(hist))


def hist_lo(x: np.ndarray, b: np.ndarray, bucket, scratch: np.ndarray, lo: np.ndarray) -> None:
    _LIB.mm_hist_lo(_p(x), _p(b), x.shape[0], int(bucket), _p(lo))


def gta_apply(xs, b, modes, thr_hi, need_hi, thr_lo, need_lo, useeds, ustart, q, scale, div, weights,
              consensus, normalize, total, lam, out) -> None:
    m = len(xs)
    ptrs = (c_void_p * m)(*[_p(x) for x in xs])
    ok = _LIB.mm_gta_apply(m, ctypes.addressof(ptrs), _p(b), b.shape[0], _p(modes), _p(thr_hi), _p(need_hi),
                           _p(thr_lo), _p(need_lo), _p(useeds), int(ustart), _p(q), _p(scale), _p(div), _p(weights),
                           int(consensus), int(bool(normalize)), float(total), float(lam), _p(out))
    if not ok:
        raise MemoryError(f"out of memory for the scratch of a {m}-model merge")


def l1_sums(x, b, row, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart, q, sums) -> None:
    """sums += (sum |x - b|, sum of the kept |x - b|) by the fixed partition (rows of ``row`` elements)."""
    _LIB.mm_l1_sums(_p(x), _p(b), x.shape[0], int(row), int(mode), float(thr_hi), _p(need_hi), float(thr_lo),
                    _p(need_lo), int(useed), int(ustart), float(q), _p(sums))


def dot_stats(a: np.ndarray, b: np.ndarray, row, acc: np.ndarray) -> None:
    """acc += (sum a^2, sum b^2, sum a*b) in float64 by the fixed partition (rows of ``row`` elements)."""
    _LIB.mm_dot_stats(_p(a), _p(b), a.shape[0], int(row), _p(acc))


def axpby(a: np.ndarray, b: np.ndarray, ca, cb, out: np.ndarray) -> None:
    _LIB.mm_axpby(_p(a), _p(b), a.shape[0], float(ca), float(cb), _p(out))


def f32_to_bf16(x: np.ndarray, out: np.ndarray) -> None:
    """out (uint16) = bfloat16 bits of x, rounded to nearest even as torch does."""
    _LIB.mm_f32_to_bf16(_p(x), x.shape[0], _p(out))


def linear_bf16(xs, weights: np.ndarray, normalize: bool, total, out: np.ndarray) -> bool:
    """out = linear merge of bf16 inputs (uint16 arrays) in one pass; out is uint16 (bf16) or float32.
    Returns False if any input value is NaN/Inf (out is then meaningless)."""
    ptrs = (c_void_p * len(xs))(*[_p(x) for x in xs])
    return bool(_LIB.mm_linear_bf16(len(xs), ctypes.addressof(ptrs), out.shape[0], _p(weights), int(bool(normalize)),
                                    float(total), int(out.dtype == np.uint16), _p(out)))


def dot_stats_bf16(a: np.ndarray, b: np.ndarray, row, acc: np.ndarray) -> bool:
    """acc += (sum a^2, sum b^2, sum a*b) of bf16 inputs (uint16 arrays) by the fixed partition; False if any
    value is NaN/Inf."""
    return bool(_LIB.mm_dot_stats_bf16(_p(a), _p(b), a.shape[0], int(row), _p(acc)))


def axpby_bf16(a: np.ndarray, b: np.ndarray, ca, cb, out: np.ndarray) -> None:
    """out = ca * a + cb * b of bf16 inputs; out is uint16 (bf16, rounded to nearest even) or float32."""
    _LIB.mm_axpby_bf16(_p(a), _p(b), a.shape[0], float(ca), float(cb), int(out.dtype == np.uint16), _p(out))

/* Compiled twins of the numba kernels in fused.py, loaded with ctypes (see ckernels.py).
 *
 * Why C as well as numba: numba costs ~0.6 s per process before its first kernel runs (import plus
 * target initialisation, all under the GIL), a fifth of a 1.1B SLERP merge. These functions load in a
 * millisecond. They do the same float32 operations in the same order as fused.py and the torch
 * reference (modelmix.methods._gta), so outputs are bit-identical; only the float64 statistics sums
 * (L1 norms, dot products) may differ in the last bits because their order is left to the compiler.
 * Built with -ffp-contract=off (no fused multiply-add: it would change rounding) and cloned for AVX-512,
 * AVX2 and baseline x86-64 where the compiler supports it.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* torch's CPU kernels fuse multiply-adds only where the CPU has FMA; the fused linear kernel matches them
 * only there */
int mm_cpu_has_fma(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* bumped whenever a signature changes, so a stale build is ignored rather than called wrongly */
int mm_abi_version(void) { return 5; }

enum { DENSE = 0, TOPK = 1, BAND = 2, ZERO = 3, RANDOM = 4 };
#define BLOCK 512

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* splitmix64 of (seed, index): the mask uniform of element `index` of a model stream (fused._uniform). */
static inline float uniform_(uint64_t seed, int64_t index) {
    uint64_t z = seed + ((uint64_t)index + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (float)(int32_t)(z >> 40) * (1.0f / 16777216.0f); /* < 2^24: exact, and a cheap int conversion */
}

CLONES void mm_uniforms(uint64_t seed, int64_t start, int64_t n, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = uniform_(seed, start + j);
}

/* float32 bits of bfloat16 values; returns 1 when all are finite (exponent bits not all ones). */
CLONES int mm_bf16_to_f32(const uint16_t *raw, int64_t n, uint32_t *out) {
    uint32_t bad = 0;
    for (int64_t j = 0; j < n; j++) {
        uint32_t v = raw[j];
        out[j] = v << 16;
        bad |= (v & 0x7F80u) == 0x7F80u;
    }
    return bad == 0;
}

/* bits of |x - b| for a block (vectorised), so the histogram loops below only scatter */
static inline void abs_bits(const float *x, const float *b, int64_t nb, uint32_t *bits) {
    for (int64_t j = 0; j < nb; j++) {
        float a = fabsf(x[j] - b[j]);
        memcpy(bits + j, &a, 4);
    }
}

/* hist[bits(|x - b|) >> 16] += 1 */
CLONES void mm_hist_hi(const float *x, const float *b, int64_t n, int64_t *hist) {
    uint32_t bits[BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += BLOCK) {
        int64_t nb = n - j0 < BLOCK ? n - j0 : BLOCK;
        abs_bits(x + j0, b + j0, nb, bits);
        for (int64_t j = 0; j < nb; j++) hist[bits[j] >> 16]++;
    }
}

/* lo[bits & 0xFFFF] += 1 for the elements of |x - b| whose high 16 bits equal bucket */
CLONES void mm_hist_lo(const float *x, const float *b, int64_t n, uint32_t bucket, int64_t *lo) {
    uint32_t bits[BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += BLOCK) {
        int64_t nb = n - j0 < BLOCK ? n - j0 : BLOCK;
        abs_bits(x + j0, b + j0, nb, bits);
        for (int64_t j = 0; j < nb; j++)
            if ((bits[j] >> 16) == bucket) lo[bits[j] & 0xFFFFu]++;
    }
}

/* |d| = a in the top-stop band but not the top-start one (breadcrumbs); threshold ties in index order */
static inline int in_band(float a, float thr_hi, int64_t *need_hi, float thr_lo, int64_t *need_lo) {
    int in_hi = a > thr_hi;
    if (a == thr_hi && *need_hi > 0) { (*need_hi)--; in_hi = 1; }
    int in_lo = a > thr_lo;
    if (a == thr_lo && *need_lo > 0) { (*need_lo)--; in_lo = 1; }
    return in_hi && !in_lo;
}

/* d_out[:nb] = (((keep * (x - b)) * scale) / div) * weight for one model's block (see fused._masked_block) */
static inline void masked_block(const float *x, const float *b, int64_t nb, int mode, float thr_hi, int64_t *need_hi,
                                float thr_lo, int64_t *need_lo, uint64_t useed, int64_t ustart, float q, float scale,
                                float div, float weight, float *d_out) {
    if (mode == TOPK) {
        int64_t ties = 0;
        for (int64_t j = 0; j < nb; j++) {
            float d = x[j] - b[j];
            float a = fabsf(d);
            d_out[j] = (((d * (a > thr_hi ? 1.0f : 0.0f)) * scale) / div) * weight;
            ties += a == thr_hi;
        }
        if (ties && *need_hi > 0) {
            for (int64_t j = 0; j < nb; j++) {
                float d = x[j] - b[j];
                if (fabsf(d) == thr_hi && *need_hi > 0) {
                    (*need_hi)--;
                    d_out[j] = ((d * scale) / div) * weight;
                }
            }
        }
    } else if (mode == RANDOM) {
        for (int64_t j = 0; j < nb; j++) {
            float d = x[j] - b[j];
            float keep = uniform_(useed, ustart + j) < q ? 1.0f : 0.0f;
            d_out[j] = (((d * keep) * scale) / div) * weight;
        }
    } else if (mode == BAND) {
        for (int64_t j = 0; j < nb; j++) {
            float d = x[j] - b[j];
            d_out[j] = (((d * (in_band(fabsf(d), thr_hi, need_hi, thr_lo, need_lo) ? 1.0f : 0.0f)) * scale) / div) * weight;
        }
    } else if (mode == ZERO) {
        for (int64_t j = 0; j < nb; j++) d_out[j] = 0.0f;
    } else {
        for (int64_t j = 0; j < nb; j++) d_out[j] = (((x[j] - b[j]) * scale) / div) * weight;
    }
}

/* One output chunk of a task-vector merge (see fused.gta_apply). xs: m pointers; need_*: m counters. */
CLONES int mm_gta_apply(int64_t m, const float *const *xs, const float *b, int64_t n, const int64_t *modes,
                         const float *thr_hi, int64_t *need_hi, const float *thr_lo, int64_t *need_lo,
                         const uint64_t *useeds, int64_t ustart, const float *q, const float *scale, const float *div,
                         const float *weights, int64_t consensus, int64_t normalize, float total, float lam,
                         float *out) {
    float *dl = (float *)malloc((size_t)(m > 0 ? m : 1) * BLOCK * sizeof(float)); /* m rows of block deltas */
    float acc[BLOCK], mixed[BLOCK], divisor[BLOCK];
    if (dl == NULL) return 0;
    for (int64_t j0 = 0; j0 < n; j0 += BLOCK) {
        int64_t nb = n - j0 < BLOCK ? n - j0 : BLOCK;
        const float *bb = b + j0;
        float *oo = out + j0;
        for (int64_t i = 0; i < m; i++)
            masked_block(xs[i] + j0, bb, nb, (int)modes[i], thr_hi[i], need_hi + i, thr_lo[i], need_lo + i, useeds[i],
                         ustart + j0, q[i], scale[i], div[i], weights[i], dl + i * BLOCK);
        if (consensus == 0) {
            for (int64_t j = 0; j < nb; j++) mixed[j] = dl[j];
            for (int64_t i = 1; i < m; i++)
                for (int64_t j = 0; j < nb; j++) mixed[j] += dl[i * BLOCK + j];
            if (normalize && (double)fabsf(total) >= 1e-8)
                for (int64_t j = 0; j < nb; j++) mixed[j] = mixed[j] / total;
        } else {
            for (int64_t j = 0; j < nb; j++) { acc[j] = 0.0f; mixed[j] = 0.0f; divisor[j] = 0.0f; }
            for (int64_t i = 0; i < m; i++) {
                const float *d = dl + i * BLOCK;
                if (consensus == 1) {
                    for (int64_t j = 0; j < nb; j++) acc[j] += d[j];
                } else {
                    for (int64_t j = 0; j < nb; j++) acc[j] += (d[j] > 0 ? 1.0f : 0.0f) - (d[j] < 0 ? 1.0f : 0.0f);
                }
            }
            for (int64_t i = 0; i < m; i++) {
                const float *d = dl + i * BLOCK;
                float w = weights[i];
                for (int64_t j = 0; j < nb; j++) {
                    float k = d[j] * (acc[j] >= 0 ? 1.0f : -1.0f) > 0 ? 1.0f : 0.0f;
                    mixed[j] += d[j] * k;
                    divisor[j] += k * w;
                }
            }
            if (normalize)
                for (int64_t j = 0; j < nb; j++) mixed[j] = mixed[j] / (divisor[j] != 0 ? divisor[j] : 1.0f);
        }
        if (lam != 1.0f) {
            for (int64_t j = 0; j < nb; j++) oo[j] = bb[j] + mixed[j] * lam;
        } else {
            for (int64_t j = 0; j < nb; j++) oo[j] = bb[j] + mixed[j];
        }
    }
    free(dl);
    return 1;
}

/* sums += (sum |x - b|, sum |keep * (x - b)|) in float64 (see fused.l1_sums) */
CLONES void mm_l1_sums(const float *x, const float *b, int64_t n, int64_t mode, float thr_hi, int64_t *need_hi,
                       float thr_lo, int64_t *need_lo, uint64_t useed, int64_t ustart, float q, double *sums) {
    double s_before = 0.0, s_after = 0.0;
    if (mode == RANDOM) {
#pragma omp simd reduction(+ : s_before, s_after)
        for (int64_t j = 0; j < n; j++) {
            double a = fabsf(x[j] - b[j]);
            s_before += a;
            s_after += uniform_(useed, ustart + j) < q ? a : 0.0;
        }
    } else if (mode == TOPK) {
        int64_t ties = 0;
#pragma omp simd reduction(+ : s_before, s_after, ties)
        for (int64_t j = 0; j < n; j++) {
            float a = fabsf(x[j] - b[j]);
            s_before += (double)a;
            s_after += a > thr_hi ? (double)a : 0.0;
            ties += a == thr_hi;
        }
        if (ties && *need_hi > 0) {
            for (int64_t j = 0; j < n; j++) {
                float a = fabsf(x[j] - b[j]);
                if (a == thr_hi && *need_hi > 0) { (*need_hi)--; s_after += (double)a; }
            }
        }
    } else if (mode == BAND) {
        for (int64_t j = 0; j < n; j++) {
            float a = fabsf(x[j] - b[j]);
            s_before += (double)a;
            s_after += in_band(a, thr_hi, need_hi, thr_lo, need_lo) ? (double)a : 0.0;
        }
    } else {
#pragma omp simd reduction(+ : s_before, s_after)
        for (int64_t j = 0; j < n; j++) {
            double a = fabsf(x[j] - b[j]);
            s_before += a;
            s_after += mode == ZERO ? 0.0 : a;
        }
    }
    sums[0] += s_before;
    sums[1] += s_after;
}

/* acc += (sum a^2, sum b^2, sum a*b) in float64 */
CLONES void mm_dot_stats(const float *a, const float *b, int64_t n, double *acc) {
    double saa = 0.0, sbb = 0.0, sab = 0.0;
#pragma omp simd reduction(+ : saa, sbb, sab)
    for (int64_t j = 0; j < n; j++) {
        double x = a[j], y = b[j];
        saa += x * x;
        sbb += y * y;
        sab += x * y;
    }
    acc[0] += saa;
    acc[1] += sbb;
    acc[2] += sab;
}

/* out = ca * a + cb * b in float32 (two roundings and a sum, as the torch expression) */
CLONES void mm_axpby(const float *a, const float *b, int64_t n, float ca, float cb, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = ca * a[j] + cb * b[j];
}

/* out = bf16(float32 x) with round-to-nearest-even, NaN kept quiet (torch's conversion) */
CLONES void mm_f32_to_bf16(const float *x, int64_t n, uint16_t *out) {
    for (int64_t j = 0; j < n; j++) {
        uint32_t u = f2u(x[j]);
        uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        out[j] = (uint16_t)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC0u : r);
    }
}

static inline float bf16f(uint32_t v) { uint32_t u = v << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t rne_bf16(float x) {
    uint32_t u = f2u(x);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC0u : r);
}

/* A linear merge of bfloat16 inputs in one pass: acc = 0; acc = fma(x_i, w_i, acc) in input order; acc /=
 * total when normalizing (modelmix.methods.linear's float32 operations as torch runs them on an FMA CPU:
 * its vectorised addcmul_ fuses the multiply-add), stored as bf16 (round to nearest even, as torch) or
 * float32. Returns 1 when every input value was finite. Only used where mm_cpu_has_fma() (see ckernels.py). */
CLONES int mm_linear_bf16(int64_t m, const uint16_t *const *xs, int64_t n, const float *w, int64_t normalize,
                          float total, int64_t out_bf16, void *out) {
    uint32_t bad = 0;
    float acc[BLOCK];
    for (int64_t j0 = 0; j0 < n; j0 += BLOCK) {
        int64_t nb = n - j0 < BLOCK ? n - j0 : BLOCK;
        for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
        for (int64_t i = 0; i < m; i++) {
            const uint16_t *x = xs[i] + j0;
            float wi = w[i];
            for (int64_t j = 0; j < nb; j++) {
                uint32_t v = x[j];
                bad |= (v & 0x7F80u) == 0x7F80u;
                acc[j] = fmaf(bf16f(v), wi, acc[j]); /* torch's addcmul_ fuses this multiply-add */
            }
        }
        if (normalize)
            for (int64_t j = 0; j < nb; j++) acc[j] = acc[j] / total;
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + j0;
            for (int64_t j = 0; j < nb; j++) o[j] = rne_bf16(acc[j]);
        } else {
            float *o = (float *)out + j0;
            for (int64_t j = 0; j < nb; j++) o[j] = acc[j];
        }
    }
    return bad == 0;
}

/* SLERP's statistics pass straight from bfloat16 bits: acc += (sum a^2, sum b^2, sum a*b) in float64;
 * returns 1 when every value was finite (mm_dot_stats on the float32 conversions, without them). */
CLONES int mm_dot_stats_bf16(const uint16_t *a, const uint16_t *b, int64_t n, double *acc) {
    double saa = 0.0, sbb = 0.0, sab = 0.0;
    uint32_t bad = 0;
#pragma omp simd reduction(+ : saa, sbb, sab) reduction(| : bad)
    for (int64_t j = 0; j < n; j++) {
        uint32_t va = a[j], vb = b[j];
        bad |= ((va & 0x7F80u) == 0x7F80u) | ((vb & 0x7F80u) == 0x7F80u);
        double x = bf16f(va), y = bf16f(vb);
        saa += x * x;
        sbb += y * y;
        sab += x * y;
    }
    acc[0] += saa;
    acc[1] += sbb;
    acc[2] += sab;
    return bad == 0;
}

/* out = ca * a + cb * b from bfloat16 bits (mm_axpby's float32 operations), stored as bf16 or float32 */
CLONES void mm_axpby_bf16(const uint16_t *a, const uint16_t *b, int64_t n, float ca, float cb, int64_t out_bf16,
                          void *out) {
    if (out_bf16) {
        uint16_t *o = (uint16_t *)out;
        for (int64_t j = 0; j < n; j++) o[j] = rne_bf16(ca * bf16f(a[j]) + cb * bf16f(b[j]));
    } else {
        float *o = (float *)out;
        for (int64_t j = 0; j < n; j++) o[j] = ca * bf16f(a[j]) + cb * bf16f(b[j]);
    }
}

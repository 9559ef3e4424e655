/* Compiled twins of the numba kernels in fused.py, loaded with ctypes (see ckernels.py).
 *
 * Why C as well as numba: numba costs ~0.6 s per process before its first kernel runs (import plus
 * target initialisation, all under the GIL), a fifth of a 1.1B SLERP merge. These functions load in a
 * millisecond. They do the same float32 operations in the same order as fused.py and the torch
 * reference (modelmix.methods._gta), so outputs are bit-identical; the float64 statistics sums (L1
 * norms, dot products) follow the fixed partition of reduce.py (8 explicit lanes per row, rows in order),
 * so they are bit-identical too, whatever the chunking, thread count or clone.
 * Built with -ffp-contract=off (no fused multiply-add: it would change rounding) and cloned for AVX-512,
 * AVX2 and baseline x86-64 where the compiler supports it.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define MM_CLONES 1
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
int mm_abi_version(void) { return 6; }

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

/* The fixed partition of every float64 statistic (see modelmix/kernels/reduce.py): rows of `row` elements,
 * each row's partial accumulated in LANES lanes (element j of the row into lane j % LANES, in order, from
 * +0.0 at every row start), lanes combined as ((0+1)+(2+3))+((4+5)+(6+7)), row partials added to the
 * running total in row order (the total is carried in and out through `acc`, so a tensor can be passed
 * in any chunks of whole rows). The explicit lanes vectorise (one AVX-512 or two AVX2 registers) without
 * reassociation, so every build and clone gives the same bits, as do fused.py and the torch formulation. */
#define LANES 8

static inline double lanes_sum(const double *s) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 9)
/* GCC/clang vector extensions: lane-wise IEEE operations, so the bits are those of the scalar loops (which
 * handle the row tails and other compilers), only vectorised for sure. A v8d holds the 8 lanes (one AVX-512
 * register, four SSE2/NEON ones). GCC's code for some of these depends on the ISA, so `lanes_mode` picks a
 * formulation per clone (same bits in all): on AVX2 without AVX-512 GCC keeps 8-wide double vectors in
 * memory, so there the lanes are two 4-wide halves (0.55 instead of 1.8 ns per element for the bf16 dots);
 * on AVX-512 bf16 values widen best by interleaving with zeros (0.44 instead of 0.73). */
#define MM_VEC 1
typedef double v8d __attribute__((vector_size(64)));
typedef double v4d __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));
#if defined(__clang__) || __GNUC__ >= 12
#define MM_SPLIT 1 /* __builtin_shufflevector */
#endif

enum { LANES_8 = 0, LANES_SPLIT = 1, LANES_512 = 2 };
#ifndef MM_SPLIT
#define MM_LANES_SPLIT LANES_8
#else
#define MM_LANES_SPLIT LANES_SPLIT
#endif
#if defined(MM_CLONES)
static int lanes_mode_ = -1;
#endif
/* the formulation for the code that runs: with target clones the clone follows the CPU, so ask the CPU;
 * otherwise the compile-time ISA */
static inline int lanes_mode(void) {
#if defined(MM_CLONES)
    if (lanes_mode_ < 0) { /* a benign race: every thread stores the same value */
        __builtin_cpu_init();
        lanes_mode_ = __builtin_cpu_supports("x86-64-v4") ? LANES_512
                    : __builtin_cpu_supports("x86-64-v3") ? MM_LANES_SPLIT : LANES_8;
    }
    return lanes_mode_;
#elif defined(__AVX512F__) && defined(MM_SPLIT)
    return LANES_512;
#elif defined(__AVX2__)
    return MM_LANES_SPLIT;
#else
    return LANES_8;
#endif
}

#ifdef MM_SPLIT
#define LO4(v) __builtin_shufflevector(v, v, 0, 1, 2, 3)
#define HI4(v) __builtin_shufflevector(v, v, 4, 5, 6, 7)
#endif
#endif

/* s[j % LANES] += v[j] for a block starting at a lane-0 position of its row */
static inline void lanes_add(double *restrict s, const double *restrict v, int64_t nb) {
    int64_t j = 0;
#ifdef MM_VEC
#ifdef MM_SPLIT
    if (lanes_mode() == LANES_SPLIT) {
        v4d lo, hi;
        memcpy(&lo, s, sizeof lo);
        memcpy(&hi, s + 4, sizeof hi);
        for (; j + LANES <= nb; j += LANES) {
            v4d x0, x1;
            memcpy(&x0, v + j, sizeof x0);
            memcpy(&x1, v + j + 4, sizeof x1);
            lo += x0;
            hi += x1;
        }
        memcpy(s, &lo, sizeof lo);
        memcpy(s + 4, &hi, sizeof hi);
    }
#endif
    {
        v8d acc;
        memcpy(&acc, s, sizeof acc);
        for (; j + LANES <= nb; j += LANES) {
            v8d x;
            memcpy(&x, v + j, sizeof x);
            acc += x;
        }
        memcpy(s, &acc, sizeof acc);
    }
#endif
    for (; j + LANES <= nb; j += LANES)
        for (int l = 0; l < LANES; l++) s[l] += v[j + l];
    for (int l = 0; j + l < nb; l++) s[l] += v[j + l];
}

#ifdef MM_VEC
/* (sum u^2, sum v^2, sum u*v) lanes of the 8-element groups of one row: LOAD(u, v) fills two v8d with the
 * float64 values of group j; the 8-wide and split variants give the same bits */
#ifdef MM_SPLIT
#define DOT_GROUPS_SPLIT(LOAD)                                                                          \
    do {                                                                                                \
        v4d aa0 = {0}, aa1 = {0}, bb0 = {0}, bb1 = {0}, ab0 = {0}, ab1 = {0};                           \
        for (; j + LANES <= len; j += LANES) {                                                          \
            v8d u, v;                                                                                   \
            LOAD(u, v);                                                                                 \
            v4d u0 = LO4(u), u1 = HI4(u), v0 = LO4(v), v1 = HI4(v);                                     \
            aa0 += u0 * u0;                                                                             \
            aa1 += u1 * u1;                                                                             \
            bb0 += v0 * v0;                                                                             \
            bb1 += v1 * v1;                                                                             \
            ab0 += u0 * v0;                                                                             \
            ab1 += u1 * v1;                                                                             \
        }                                                                                               \
        memcpy(saa, &aa0, 32);                                                                          \
        memcpy(saa + 4, &aa1, 32);                                                                      \
        memcpy(sbb, &bb0, 32);                                                                          \
        memcpy(sbb + 4, &bb1, 32);                                                                      \
        memcpy(sab, &ab0, 32);                                                                          \
        memcpy(sab + 4, &ab1, 32);                                                                      \
    } while (0)
#else
#define DOT_GROUPS_SPLIT(LOAD) DOT_GROUPS_8(LOAD)
#endif
#define DOT_GROUPS_8(LOAD)                                                                              \
    do {                                                                                                \
        v8d vaa = {0}, vbb = {0}, vab = {0};                                                            \
        for (; j + LANES <= len; j += LANES) {                                                          \
            v8d u, v;                                                                                   \
            LOAD(u, v);                                                                                 \
            vaa += u * u;                                                                               \
            vbb += v * v;                                                                               \
            vab += u * v;                                                                               \
        }                                                                                               \
        memcpy(saa, &vaa, sizeof vaa);                                                                  \
        memcpy(sbb, &vbb, sizeof vbb);                                                                  \
        memcpy(sab, &vab, sizeof vab);                                                                  \
    } while (0)
#define LOAD_F32(u, v)                                                                                  \
    do {                                                                                                \
        v8f xf_, yf_;                                                                                   \
        memcpy(&xf_, x + j, sizeof xf_);                                                                \
        memcpy(&yf_, y + j, sizeof yf_);                                                                \
        u = __builtin_convertvector(xf_, v8d);                                                          \
        v = __builtin_convertvector(yf_, v8d);                                                          \
    } while (0)
/* bf16 bits -> float32 -> float64; exponent bits all ones (NaN/Inf) exactly when (h & 0x7F80) + 0x80
 * carries into bit 15 */
#define LOAD_BF16(u, v)                                                                                 \
    do {                                                                                                \
        v8h ha_, hb_;                                                                                   \
        memcpy(&ha_, x + j, sizeof ha_);                                                                \
        memcpy(&hb_, y + j, sizeof hb_);                                                                \
        vbad |= ((ha_ & 0x7F80) + 0x80) | ((hb_ & 0x7F80) + 0x80);                                      \
        v8u wa_ = __builtin_convertvector(ha_, v8u) << 16, wb_ = __builtin_convertvector(hb_, v8u) << 16; \
        v8f fa_, fb_;                                                                                   \
        memcpy(&fa_, &wa_, sizeof fa_);                                                                 \
        memcpy(&fb_, &wb_, sizeof fb_);                                                                 \
        u = __builtin_convertvector(fa_, v8d);                                                          \
        v = __builtin_convertvector(fb_, v8d);                                                          \
    } while (0)
#ifdef MM_SPLIT
/* the same values, widened element by element: one AVX-512 conversion instead of two halves and a merge */
#define LOAD_F32_512(u, v)                                                                              \
    do {                                                                                                \
        v8f xf_, yf_;                                                                                   \
        memcpy(&xf_, x + j, sizeof xf_);                                                                \
        memcpy(&yf_, y + j, sizeof yf_);                                                                \
        u = (v8d){xf_[0], xf_[1], xf_[2], xf_[3], xf_[4], xf_[5], xf_[6], xf_[7]};                      \
        v = (v8d){yf_[0], yf_[1], yf_[2], yf_[3], yf_[4], yf_[5], yf_[6], yf_[7]};                      \
    } while (0)
typedef float v4f __attribute__((vector_size(16)));
/* the same values: each bf16 interleaved with a zero half-word is its float32, 4 + 4 widened to float64 */
#define LOAD_BF16_512(u, v)                                                                             \
    do {                                                                                                \
        const v8h z_ = {0};                                                                             \
        v8h ha_, hb_;                                                                                   \
        memcpy(&ha_, x + j, sizeof ha_);                                                                \
        memcpy(&hb_, y + j, sizeof hb_);                                                                \
        vbad |= ((ha_ & 0x7F80) + 0x80) | ((hb_ & 0x7F80) + 0x80);                                      \
        v8h la_ = __builtin_shufflevector(z_, ha_, 0, 8, 1, 9, 2, 10, 3, 11);                           \
        v8h ua_ = __builtin_shufflevector(z_, ha_, 4, 12, 5, 13, 6, 14, 7, 15);                         \
        v8h lb_ = __builtin_shufflevector(z_, hb_, 0, 8, 1, 9, 2, 10, 3, 11);                           \
        v8h ub_ = __builtin_shufflevector(z_, hb_, 4, 12, 5, 13, 6, 14, 7, 15);                         \
        v4f a0_, a1_, b0_, b1_;                                                                         \
        memcpy(&a0_, &la_, 16);                                                                         \
        memcpy(&a1_, &ua_, 16);                                                                         \
        memcpy(&b0_, &lb_, 16);                                                                         \
        memcpy(&b1_, &ub_, 16);                                                                         \
        u = (v8d){a0_[0], a0_[1], a0_[2], a0_[3], a1_[0], a1_[1], a1_[2], a1_[3]};                      \
        v = (v8d){b0_[0], b0_[1], b0_[2], b0_[3], b1_[0], b1_[1], b1_[2], b1_[3]};                      \
    } while (0)
#else
#define LOAD_BF16_512 LOAD_BF16
#define LOAD_F32_512 LOAD_F32
#endif
#endif

/* |d| and kept |d| (0 where the mask drops it) of one block, in flat order: the mask of mm_gta_apply */
static inline void l1_block(const float *x, const float *b, int64_t nb, int64_t mode, float thr_hi,
                            int64_t *need_hi, float thr_lo, int64_t *need_lo, uint64_t useed, int64_t ustart,
                            float q, double *restrict av, double *restrict kv) {
    if (mode == RANDOM) {
        for (int64_t j = 0; j < nb; j++) {
            float a = fabsf(x[j] - b[j]);
            av[j] = a;
            kv[j] = uniform_(useed, ustart + j) < q ? (double)a : 0.0;
        }
    } else if (mode == TOPK) {
        int64_t ties = 0;
        for (int64_t j = 0; j < nb; j++) {
            float a = fabsf(x[j] - b[j]);
            av[j] = a;
            kv[j] = a > thr_hi ? (double)a : 0.0;
            ties += a == thr_hi;
        }
        if (ties && *need_hi > 0) {
            for (int64_t j = 0; j < nb; j++) {
                if (fabsf(x[j] - b[j]) == thr_hi && *need_hi > 0) { (*need_hi)--; kv[j] = av[j]; }
            }
        }
    } else if (mode == BAND) {
        for (int64_t j = 0; j < nb; j++) {
            float a = fabsf(x[j] - b[j]);
            av[j] = a;
            kv[j] = in_band(a, thr_hi, need_hi, thr_lo, need_lo) ? (double)a : 0.0;
        }
    } else {
        double keep = mode == ZERO ? 0.0 : 1.0;
        for (int64_t j = 0; j < nb; j++) {
            double a = fabsf(x[j] - b[j]);
            av[j] = a;
            kv[j] = a * keep;
        }
    }
}

#ifdef MM_VEC
typedef int64_t v8l __attribute__((vector_size(64)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* One block of a row (lanes in sb/sa, a block starts at a lane-0 position) for RANDOM/TOPK/DENSE/ZERO
 * without the arrays of l1_block: |d| and the keep mask per 8-element group, widened, added to the lanes.
 * Returns 0 (lanes untouched) for a TOPK block holding threshold ties while the tie counter lasts: those are
 * kept in index order, which the caller does element by element. Same bits as l1_block + lanes_add. */
static inline int l1_block_vec(const float *x, const float *b, int64_t nb, int64_t mode, float thr_hi,
                               const int64_t *need_hi, uint64_t useed, int64_t ustart, float q, int wide512,
                               double *sb, double *sa) {
    float ub[BLOCK];
    if (mode == RANDOM)
        for (int64_t j = 0; j < nb; j++) ub[j] = uniform_(useed, ustart + j);
    v8d vb, va;
    memcpy(&vb, sb, sizeof vb);
    memcpy(&va, sa, sizeof va);
    const v8d thr = {thr_hi, thr_hi, thr_hi, thr_hi, thr_hi, thr_hi, thr_hi, thr_hi};
    const v8d qd = {q, q, q, q, q, q, q, q};
    v8l ties = {0};
    int64_t j = 0;
    for (; j + LANES <= nb; j += LANES) {
        v8f xf, bf;
        memcpy(&xf, x + j, sizeof xf);
        memcpy(&bf, b + j, sizeof bf);
        v8f af = xf - bf;
        v8i bits;
        memcpy(&bits, &af, sizeof bits);
        bits &= 0x7FFFFFFF; /* fabsf */
        memcpy(&af, &bits, sizeof af);
        v8d a = wide512 ? (v8d){af[0], af[1], af[2], af[3], af[4], af[5], af[6], af[7]}
                        : __builtin_convertvector(af, v8d);
        v8l keep;
        if (mode == RANDOM) {
            v8f uf;
            memcpy(&uf, ub + j, sizeof uf);
            v8d u = wide512 ? (v8d){uf[0], uf[1], uf[2], uf[3], uf[4], uf[5], uf[6], uf[7]}
                            : __builtin_convertvector(uf, v8d);
            keep = u < qd; /* widening is exact and monotone: the float32 comparison */
        } else if (mode == TOPK) {
            keep = a > thr;
            ties |= a == thr;
        } else {
            keep = (v8l){0} - (mode != ZERO); /* all ones (DENSE) or zero */
        }
        v8l ab;
        memcpy(&ab, &a, sizeof ab);
        ab &= keep;
        v8d kept;
        memcpy(&kept, &ab, sizeof kept);
        vb += a;
        va += kept;
    }
    double tb[LANES], ta[LANES];
    memcpy(tb, &vb, sizeof tb);
    memcpy(ta, &va, sizeof ta);
    int any_ties = 0;
    for (int l = 0; l < LANES; l++) any_ties |= ties[l] != 0;
    if (any_ties && *need_hi > 0) return 0;
    for (int l = 0; j + l < nb; l++) { /* the row's last partial group */
        float af = fabsf(x[j + l] - b[j + l]);
        double a = af;
        int k = mode == RANDOM ? ub[j + l] < q : mode == TOPK ? af > thr_hi : mode != ZERO;
        if (mode == TOPK && af == thr_hi && *need_hi > 0) return 0;
        tb[l] += a;
        ta[l] += k ? a : 0.0;
    }
    memcpy(sb, tb, sizeof tb);
    memcpy(sa, ta, sizeof ta);
    return 1;
}
#endif

/* sums += (sum |x - b|, sum |keep * (x - b)|) in float64 by the fixed partition (rows of `row`), where keep
 * is the mask of the mode (counters in need_* carried across calls); n is a multiple of row. */
CLONES void mm_l1_sums(const float *x, const float *b, int64_t n, int64_t row, int64_t mode, float thr_hi,
                       int64_t *need_hi, float thr_lo, int64_t *need_lo, uint64_t useed, int64_t ustart, float q,
                       double *sums) {
    double av[BLOCK], kv[BLOCK];
    double t_before = sums[0], t_after = sums[1];
#ifdef MM_VEC
    int lm = lanes_mode();
    /* measured: the fused blocks win on AVX-512, and for RANDOM on SSE2 too; elsewhere the arrays */
    int fused = mode != BAND && (lm == LANES_512 || (lm == LANES_8 && mode == RANDOM));
#endif
    if (row < 1) row = 1;
    for (int64_t r0 = 0; r0 < n; r0 += row) {
        int64_t len = n - r0 < row ? n - r0 : row;
        double sb[LANES] = {0}, sa[LANES] = {0};
        for (int64_t j0 = 0; j0 < len; j0 += BLOCK) {
            int64_t nb = len - j0 < BLOCK ? len - j0 : BLOCK;
            int64_t o = r0 + j0;
#ifdef MM_VEC
            if (fused && l1_block_vec(x + o, b + o, nb, mode, thr_hi, need_hi, useed, ustart + o, q, lm == LANES_512,
                                      sb, sa))
                continue;
#endif
            l1_block(x + o, b + o, nb, mode, thr_hi, need_hi, thr_lo, need_lo, useed, ustart + o, q, av, kv);
            lanes_add(sb, av, nb);
            lanes_add(sa, kv, nb);
        }
        t_before += lanes_sum(sb);
        t_after += lanes_sum(sa);
    }
    sums[0] = t_before;
    sums[1] = t_after;
}

/* acc += (sum a^2, sum b^2, sum a*b) in float64 by the fixed partition (rows of `row`; n a multiple) */
CLONES void mm_dot_stats(const float *a, const float *b, int64_t n, int64_t row, double *acc) {
    double t0 = acc[0], t1 = acc[1], t2 = acc[2];
#ifdef MM_VEC
    int mode = lanes_mode();
#endif
    if (row < 1) row = 1;
    for (int64_t r0 = 0; r0 < n; r0 += row) {
        int64_t len = n - r0 < row ? n - r0 : row;
        const float *x = a + r0, *y = b + r0;
        double saa[LANES] = {0}, sbb[LANES] = {0}, sab[LANES] = {0};
        int64_t j = 0;
#ifdef MM_VEC
        if (mode == LANES_SPLIT)
            DOT_GROUPS_SPLIT(LOAD_F32);
        else if (mode == LANES_512)
            DOT_GROUPS_8(LOAD_F32_512);
        else
            DOT_GROUPS_8(LOAD_F32);
#endif
        for (; j + LANES <= len; j += LANES) {
            for (int l = 0; l < LANES; l++) {
                double u = x[j + l], v = y[j + l];
                saa[l] += u * u;
                sbb[l] += v * v;
                sab[l] += u * v;
            }
        }
        for (int l = 0; j + l < len; l++) {
            double u = x[j + l], v = y[j + l];
            saa[l] += u * u;
            sbb[l] += v * v;
            sab[l] += u * v;
        }
        t0 += lanes_sum(saa);
        t1 += lanes_sum(sbb);
        t2 += lanes_sum(sab);
    }
    acc[0] = t0;
    acc[1] = t1;
    acc[2] = t2;
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

/* SLERP's statistics pass straight from bfloat16 bits: acc += (sum a^2, sum b^2, sum a*b) in float64 by the
 * fixed partition (mm_dot_stats on the float32 conversions, without them); returns 1 when every value was
 * finite. */
CLONES int mm_dot_stats_bf16(const uint16_t *a, const uint16_t *b, int64_t n, int64_t row, double *acc) {
    double t0 = acc[0], t1 = acc[1], t2 = acc[2];
#ifdef MM_VEC
    int mode = lanes_mode();
#endif
    uint32_t bad = 0;
    if (row < 1) row = 1;
    for (int64_t r0 = 0; r0 < n; r0 += row) {
        int64_t len = n - r0 < row ? n - r0 : row;
        const uint16_t *x = a + r0, *y = b + r0;
        double saa[LANES] = {0}, sbb[LANES] = {0}, sab[LANES] = {0};
        int64_t j = 0;
#ifdef MM_VEC
        {
            v8h vbad = {0};
            if (mode == LANES_SPLIT)
                DOT_GROUPS_SPLIT(LOAD_BF16);
            else if (mode == LANES_512)
                DOT_GROUPS_8(LOAD_BF16_512);
            else
                DOT_GROUPS_8(LOAD_BF16);
            for (int l = 0; l < LANES; l++) bad |= (vbad[l] & 0x8000u) != 0;
        }
#endif
        for (; j + LANES <= len; j += LANES) {
            for (int l = 0; l < LANES; l++) {
                uint32_t va = x[j + l], vb = y[j + l];
                bad |= ((va & 0x7F80u) == 0x7F80u) | ((vb & 0x7F80u) == 0x7F80u);
                double u = bf16f(va), v = bf16f(vb);
                saa[l] += u * u;
                sbb[l] += v * v;
                sab[l] += u * v;
            }
        }
        for (int l = 0; j + l < len; l++) {
            uint32_t va = x[j + l], vb = y[j + l];
            bad |= ((va & 0x7F80u) == 0x7F80u) | ((vb & 0x7F80u) == 0x7F80u);
            double u = bf16f(va), v = bf16f(vb);
            saa[l] += u * u;
            sbb[l] += v * v;
            sab[l] += u * v;
        }
        t0 += lanes_sum(saa);
        t1 += lanes_sum(sbb);
        t2 += lanes_sum(sab);
    }
    acc[0] = t0;
    acc[1] = t1;
    acc[2] = t2;
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

/*
 * gemm.c - packed-weight AVX-512 kernel for the QNN (see gemm.h).
 *
 * Workload: n = 1..512 candidate rows against D x D weights (MicroLens:
 * D = 1024, 4 MiB per layer).  Loop order: two 16-wide panels of W
 * (2 x 16 x D floats, 128 KiB at D = 1024, stays in L2) outermost, then
 * blocks of 8 rows of x (8 x D floats, 32 KiB, in L1/L2), so W streams from
 * memory once per call and x once per panel pair.  The micro-kernel keeps an
 * 8 x 32 block of y in 16 zmm accumulators and does 16 FMAs per k.
 * Measured on the QNN shapes against single-threaded OpenBLAS (Haswell
 * kernels): 1.9x at n = 16..256, 2.6x at n = 1 (bench/README.md).
 */
#include "gemm.h"

#include <string.h>

#include "core/base/cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GEMM_X86 1
#endif

#define MR 8     /* rows of x per micro-kernel call */
#define NR 16    /* outputs per panel (one zmm) */

int gemm_packed_supported(int D) {
#ifdef GEMM_X86
    return D > 0 && D % (2 * NR) == 0 && cpu_has(CPU_AVX512F);
#else
    (void)D;
    return 0;
#endif
}

size_t gemm_packed_floats(int D) { return (size_t)D * (size_t)D; }

void gemm_pack(const float *w, int D, float *p) {
    for (int o = 0; o < D; o++)
        for (int k = 0; k < D; k++)
            p[((size_t)(o / NR) * D + k) * NR + (o % NR)] = w[(size_t)o * D + k];
}

#ifdef GEMM_X86
/* y[0..mr) x [32 outputs] = x[0..mr) . panels p0, p1. */
__attribute__((target("avx512f"))) static void kernel(int mr, int D, const float *x, int ldx,
                                                      const float *p0, const float *p1,
                                                      float *y, int ldy) {
    __m512 a0[MR], a1[MR];
    for (int i = 0; i < MR; i++) {
        a0[i] = _mm512_setzero_ps();
        a1[i] = _mm512_setzero_ps();
    }
    if (mr == MR) {
        for (int k = 0; k < D; k++) {
            __m512 w0 = _mm512_load_ps(p0 + (size_t)k * NR), w1 = _mm512_load_ps(p1 + (size_t)k * NR);
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++) {
                __m512 xb = _mm512_set1_ps(x[(size_t)i * ldx + k]);
                a0[i] = _mm512_fmadd_ps(xb, w0, a0[i]);
                a1[i] = _mm512_fmadd_ps(xb, w1, a1[i]);
            }
        }
    } else {
        for (int k = 0; k < D; k++) {
            __m512 w0 = _mm512_load_ps(p0 + (size_t)k * NR), w1 = _mm512_load_ps(p1 + (size_t)k * NR);
            for (int i = 0; i < mr; i++) {
                __m512 xb = _mm512_set1_ps(x[(size_t)i * ldx + k]);
                a0[i] = _mm512_fmadd_ps(xb, w0, a0[i]);
                a1[i] = _mm512_fmadd_ps(xb, w1, a1[i]);
            }
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm512_storeu_ps(y + (size_t)i * ldy, a0[i]);
        _mm512_storeu_ps(y + (size_t)i * ldy + NR, a1[i]);
    }
}
#endif

void gemm_packed(int n, int D, const float *x, int ldx, const float *p, float *y, int ldy) {
#ifdef GEMM_X86
    for (int pb = 0; pb < D / NR; pb += 2) {
        const float *p0 = p + (size_t)pb * D * NR, *p1 = p0 + (size_t)D * NR;
        for (int i0 = 0; i0 < n; i0 += MR)
            kernel(n - i0 < MR ? n - i0 : MR, D, x + (size_t)i0 * ldx, ldx, p0, p1,
                   y + (size_t)i0 * ldy + (size_t)pb * NR, ldy);
    }
#else
    (void)n; (void)D; (void)x; (void)ldx; (void)p; (void)y; (void)ldy;
#endif
}

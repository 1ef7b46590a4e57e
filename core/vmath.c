/*
 * vmath.c - array exp and sigmoid (see vmath.h).
 */
#include "vmath.h"

#include <math.h>

#include "core/base/cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VMATH_X86 1

/* glibc's 16-lane expf (libmvec, the vector ABI name of expf for AVX-512). */
__attribute__((target("avx512f"))) __m512 _ZGVeN16v_expf(__m512 x);

__attribute__((target("avx512f"))) static void exp16(float *x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _ZGVeN16v_expf(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _ZGVeN16v_expf(_mm512_maskz_loadu_ps(m, x + i));
        _mm512_mask_storeu_ps(x + i, m, v);
    }
}

__attribute__((target("avx512f"))) static void sigmoid16(float *x, int n) {
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    int i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_sub_ps(zero, _mm512_maskz_loadu_ps(m, x + i));
        v = _mm512_div_ps(one, _mm512_add_ps(one, _ZGVeN16v_expf(v)));
        _mm512_mask_storeu_ps(x + i, m, v);
    }
}
#endif

void vmath_exp(float *x, int n) {
#ifdef VMATH_X86
    if (cpu_path_on(CPU_PATH_VMATH_AVX512)) {
        exp16(x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) x[i] = expf(x[i]);
}

void vmath_sigmoid(float *x, int n) {
#ifdef VMATH_X86
    if (cpu_path_on(CPU_PATH_VMATH_AVX512)) {
        sigmoid16(x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));
}

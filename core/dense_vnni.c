/*
 * dense_vnni.c - int8 dense layers on an AVX512_VNNI kernel of our own
 * (dense_internal.h).  Where oneDNN runs int8 on AMX, the planner keeps
 * this kernel for a few rows at most; without AMX it was level with
 * oneDNN's or ahead.
 */
#include "dense_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"

#ifdef DENSE_X86
#include <immintrin.h>
#endif

/* --- int8 on our own VNNI kernel ------------------------------------------------
 *
 * The same arithmetic as oneDNN's u8 x s8 path (rows quantised by
 * dense_quantize_row, weights by dense_quantize_int8, the zero point taken out in
 * int32), computed by a small AVX512_VNNI kernel: 8 rows x 32 output
 * channels a block, 16 accumulators in registers (vpdpbusd issues two a
 * cycle on this CPU and has a latency of several: 16 independent chains
 * keep both ports busy; bench_isa), the 32 channels' weights of a block
 * (32 x in bytes, 32 KB at in = 1024) reused from L1 by every row block,
 * and the int32 sums turned into floats in registers (no int32 buffer).
 *
 * Weight layout (vnni_layout): for output block b (channels 32 b .. 32 b +
 * 31) and input group g (inputs 4 g .. 4 g + 3), 128 bytes: channel c's four
 * weights at 4 c (c = 0..31). */

static int vnni_shape_ok(int out, int in) { return out % 32 == 0 && in % 4 == 0; }

static void vnni_layout(const signed char *wq, int out, int in, signed char *p) {
    for (int b = 0; b < out / 32; b++)
        for (int g = 0; g < in / 4; g++)
            for (int c = 0; c < 32; c++)
                for (int j = 0; j < 4; j++)
                    p[(((size_t)b * (in / 4) + g) * 32 + c) * 4 + j] =
                        wq[(size_t)(32 * b + c) * in + 4 * g + j];
}

#ifdef DENSE_X86
/* acc += u8 b x s8 w, four products a lane.  As inline assembly: GCC 12
 * compiles _mm512_dpbusd_epi32 without tying the accumulator to the
 * output, and with 16 accumulators live it copies and spills them every
 * step (measured: half the instruction's rate in bench_isa's 24-chain
 * loop); the constraint "+v" keeps each accumulator in its register. */
#define VNNI_DPBUSD(acc, b, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(b), "v"(w))

/* R (1..8) rows of q (u8, stride in) by one 32-channel block w: y (stride
 * ldy) = (sum - zero_r colsum) scale_r wscale, R known at compile time
 * where it is inlined. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
vnni_block(const int R, int in, const unsigned char *q, const signed char *w,
           const int32_t *colsum, const float *wscale, const float *rscale, const int32_t *rzero,
           float *y, int ldy) {
    __m512i acc[8][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int g = 0; g < in / 4; g++) {
        const __m512i w0 = _mm512_load_si512(w + (size_t)g * 128);
        const __m512i w1 = _mm512_load_si512(w + (size_t)g * 128 + 64);
        for (int r = 0; r < R; r++) {
            int32_t v;
            memcpy(&v, q + (size_t)r * in + 4 * g, sizeof v);
            const __m512i b = _mm512_set1_epi32(v);
            VNNI_DPBUSD(acc[r][0], b, w0);
            VNNI_DPBUSD(acc[r][1], b, w1);
        }
    }
    const __m512i cs0 = _mm512_loadu_si512(colsum), cs1 = _mm512_loadu_si512(colsum + 16);
    const __m512 ws0 = _mm512_loadu_ps(wscale), ws1 = _mm512_loadu_ps(wscale + 16);
    for (int r = 0; r < R; r++) {
        const __m512i z = _mm512_set1_epi32(rzero[r]);
        const __m512 s = _mm512_set1_ps(rscale[r]);
        __m512i a0 = _mm512_sub_epi32(acc[r][0], _mm512_mullo_epi32(z, cs0));
        __m512i a1 = _mm512_sub_epi32(acc[r][1], _mm512_mullo_epi32(z, cs1));
        _mm512_storeu_ps(y + (size_t)r * ldy,
                         _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(s, ws0)));
        _mm512_storeu_ps(y + (size_t)r * ldy + 16,
                         _mm512_mul_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(s, ws1)));
    }
}

/* m rows (quantised in q, stride in) through every output block. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
vnni_rows(const dense *d, int m, const unsigned char *q, const float *rscale,
          const int32_t *rzero, float *y, int ldy) {
    const int in = d->in;
    for (int b = 0; b < d->out / 32; b++) {
        const signed char *w = d->wvnni + (size_t)b * (in / 4) * 128;
        const int32_t *cs = d->colsum + 32 * b;
        const float *ws = d->wscale + 32 * b;
        for (int r = 0; r < m; r += 8) {
            const unsigned char *qr = q + (size_t)r * in;
            float *yr = y + (size_t)r * ldy + 32 * b;
            switch (m - r < 8 ? m - r : 8) {
#define VNNI_CASE(R)                                                                          \
    case R: vnni_block(R, in, qr, w, cs, ws, rscale + r, rzero + r, yr, ldy); break;
                VNNI_CASE(1) VNNI_CASE(2) VNNI_CASE(3) VNNI_CASE(4)
                VNNI_CASE(5) VNNI_CASE(6) VNNI_CASE(7) VNNI_CASE(8)
#undef VNNI_CASE
            }
        }
    }
}
#endif

int dense_vnni_supported(int out, int in) {
#ifdef DENSE_X86
    return vnni_shape_ok(out, in) && cpu_has(CPU_AVX512VNNI) && cpu_has(CPU_AVX512BW);
#else
    (void)out;
    (void)in;
    return 0;
#endif
}

/* The int8 weights (dense_quantize_int8) in vnni_layout, and the workspace: the
 * quantised rows, their scales and zero points. */
int dense_vnni_make(dense *d, const signed char *wq, char *err, size_t errlen) {
    if (!(d->wvnni = dense_aligned_bytes((size_t)d->in * d->out)))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for int8 weights");
    vnni_layout(wq, d->out, d->in, d->wvnni);
    size_t src = dense_round_up((size_t)DENSE_MAX_ROWS * d->in);
    if (src > d->src_bytes) d->src_bytes = src;
    return CTR_OK;
}

/* m <= DENSE_MAX_ROWS rows on the int8 VNNI kernel. */
void dense_vnni_chunk(const dense *d, dense_ws *ws, int m, const float *x, float *y) {
#ifdef DENSE_X86
    const dense_ws_parts wp = dense_ws_parts_of(d, ws);
    dense_quantize_rows(d, m, x, wp.src, wp.scale, wp.zero, wp.row);
    if (d->prec != DENSE_INT8X2) {
        vnni_rows(d, m, wp.src, wp.scale, wp.zero, y, d->ld_out);
        return;
    }
    /* int8x2: both levels' rows, then their sum. */
    float *t = (float *)wp.dst;
    vnni_rows(d, 2 * m, wp.src, wp.scale, wp.zero, t, d->out);
    for (int i = 0; i < m; i++) {
        float *restrict yi = y + (size_t)i * d->ld_out;
        const float *restrict a = t + (size_t)i * d->out, *restrict b = a + (size_t)m * d->out;
        for (int o = 0; o < d->out; o++) yi[o] = a[o] + b[o];
    }
#else
    (void)d, (void)ws, (void)m, (void)x, (void)y;
#endif
}

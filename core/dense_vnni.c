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
 * and the int32 sums turned into floats in registers (no int32 buffer),
 * with a layer's dense_post applied there too when the caller gives one.
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

/* The rows and columns of a block in a dense_post: bias and shift at the
 * block's columns, res and dst at its first row and column. */
typedef struct vnni_post {
    const float *bias, *shift, *res;
    float *dst;
    int ld;
    float slope;
} vnni_post;

/* R (1..8) rows of q (u8, stride in) by one 32-channel block w: y (stride
 * ldy) = (sum - zero_r colsum) scale_r wscale, or with post (non-NULL) its
 * gated residual into post's rows instead (the same operations in the
 * same order as dense_post_rows), R known at compile time where it is
 * inlined. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
vnni_block(const int R, int in, const unsigned char *q, const signed char *w,
           const int32_t *colsum, const float *wscale, const float *rscale, const int32_t *rzero,
           float *y, int ldy, const vnni_post *post) {
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
        const __m512 p0 = _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(s, ws0));
        const __m512 p1 = _mm512_mul_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(s, ws1));
        if (!post) {
            _mm512_storeu_ps(y + (size_t)r * ldy, p0);
            _mm512_storeu_ps(y + (size_t)r * ldy + 16, p1);
            continue;
        }
        const float *res = post->res + (size_t)r * post->ld;
        float *dst = post->dst + (size_t)r * post->ld;
        const __m512 zero = _mm512_setzero_ps(), sl = _mm512_set1_ps(post->slope);
        for (int h = 0; h < 2; h++) {
            const __m512 rv = _mm512_loadu_ps(res + 16 * h);
            const __m512 zv = _mm512_add_ps(
                _mm512_mul_ps(rv, _mm512_add_ps(h ? p1 : p0, _mm512_loadu_ps(post->bias + 16 * h))),
                _mm512_loadu_ps(post->shift + 16 * h));
            const __m512 pos = _mm512_max_ps(zv, zero), neg = _mm512_min_ps(zv, zero);
            _mm512_storeu_ps(dst + 16 * h, _mm512_add_ps(rv, _mm512_add_ps(pos, _mm512_mul_ps(sl, neg))));
        }
    }
}

/* m rows (quantised in q, stride in) through every output block, into y
 * or, with post, through it. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
vnni_rows(const dense *d, int m, const unsigned char *q, const float *rscale,
          const int32_t *rzero, float *y, int ldy, const dense_post *post) {
    const int in = d->in;
    for (int b = 0; b < d->out / 32; b++) {
        const signed char *w = d->wvnni + (size_t)b * (in / 4) * 128;
        const int32_t *cs = d->colsum + 32 * b;
        const float *ws = d->wscale + 32 * b;
        for (int r = 0; r < m; r += 8) {
            const unsigned char *qr = q + (size_t)r * in;
            float *yr = y + (size_t)r * ldy + 32 * b;
            vnni_post vp, *pp = NULL;
            if (post) {
                const size_t at = (size_t)r * post->ld + 32 * (size_t)b;
                vp = (vnni_post){post->bias + 32 * b, post->shift + 32 * b, post->res + at,
                                 post->dst + at, post->ld, post->slope};
                pp = &vp;
            }
            switch (m - r < 8 ? m - r : 8) {
#define VNNI_CASE(R)                                                                          \
    case R: vnni_block(R, in, qr, w, cs, ws, rscale + r, rzero + r, yr, ldy, pp); break;
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

/* m <= DENSE_MAX_ROWS rows on the int8 VNNI kernel, then post. */
void dense_vnni_chunk(const dense *d, dense_ws *ws, int m, const float *x, float *y,
                      const dense_post *post) {
#ifdef DENSE_X86
    const dense_ws_parts wp = dense_ws_parts_of(d, ws);
    dense_quantize_rows(d, m, x, wp.src, wp.scale, wp.zero, wp.row);
    if (d->prec != DENSE_INT8X2) {
        vnni_rows(d, m, wp.src, wp.scale, wp.zero, y, d->ld_out, post);
        return;
    }
    /* int8x2: both levels' rows, then their sum. */
    float *t = (float *)wp.dst;
    vnni_rows(d, 2 * m, wp.src, wp.scale, wp.zero, t, d->out, NULL);
    for (int i = 0; i < m; i++) {
        float *restrict yi = y + (size_t)i * d->ld_out;
        const float *restrict a = t + (size_t)i * d->out, *restrict b = a + (size_t)m * d->out;
        for (int o = 0; o < d->out; o++) yi[o] = a[o] + b[o];
    }
    if (post) dense_post_rows(m, d->out, y, d->ld_out, post);
#else
    (void)d, (void)ws, (void)m, (void)x, (void)y, (void)post;
#endif
}

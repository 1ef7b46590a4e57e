/*
 * dense_quant.c - the dense layers' conversions (dense_internal.h): fp32
 * rows to bfloat16, rows and weights to int8 (scales, zero points, column
 * sums), and the int32 sums of an int8 product back to floats.  Per-element
 * loops over a call's rows: cloned for AVX-512 or written with its
 * intrinsics, with a scalar version beside each.
 */
#include "dense_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"

#ifdef DENSE_X86
#include <immintrin.h>
#endif

/* --- conversions ------------------------------------------------------- */

unsigned short dense_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u); /* to nearest, ties to even */
    return (unsigned short)(u >> 16);
}

/* Rows of x (stride ldx) into bfloat16 rows of `in` (contiguous).  Cloned
 * for AVX-512 like the other per-element loops here (the baseline build
 * runs them 4 floats at a time). */
CTR_CLONES static void to_bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
    for (int i = 0; i < n; i++) {
        const float *restrict xi = x + (size_t)i * ldx;
        unsigned short *restrict qi = q + (size_t)i * in;
        for (int k = 0; k < in; k++) {
            uint32_t u;
            memcpy(&u, &xi[k], sizeof u);
            qi[k] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}

#ifdef DENSE_X86
/* The same with AVX512_BF16's conversion (32 floats an instruction, round
 * to nearest even as above; it reads denormal inputs as zero, which moves
 * a value by less than 2^-126).  The conversion was a tenth of DIN's bf16
 * forward pass on the AVX-512F loop (perf, N = 64). */
__attribute__((target("avx512f,avx512bf16"))) static void
to_bf16_avx512bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * ldx;
        unsigned short *qi = q + (size_t)i * in;
        int k = 0;
        for (; k + 32 <= in; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xi + k + 16), _mm512_loadu_ps(xi + k));
            _mm512_storeu_si512((void *)(qi + k), (__m512i)v);
        }
        for (; k < in; k++) qi[k] = dense_bf16_round(xi[k]);
    }
}
#endif

/* Rows of x into bfloat16 on the fastest conversion this CPU has. */
void dense_rows_to_bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
#ifdef DENSE_X86
    if (cpu_has(CPU_AVX512BF16)) {
        to_bf16_avx512bf16(n, in, x, ldx, q);
        return;
    }
#endif
    to_bf16(n, in, x, ldx, q);
}

static float row_absmax(const float *x, int in) {
    float m = 0.0f;
    for (int k = 0; k < in; k++) {
        float a = fabsf(x[k]);
        m = a > m ? a : m;
    }
    return m;
}

/* The row's range, widened to hold 0 so that the zero point is 0..255
 * (and z * column sum stays far inside int32): scale = (hi - lo) / 255,
 * zero = round(-lo / scale); an all-zero row gets scale 1, zero 0. */
static void row_range(float lo, float hi, float *scale, float *inv, int32_t *zero) {
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    if (hi - lo > 0.0f) {
        *scale = (hi - lo) / 255.0f;
        *inv = 255.0f / (hi - lo);
        *zero = (int32_t)nearbyintf(-lo * *inv);
    } else {
        *scale = 1.0f;
        *inv = 0.0f;
        *zero = 0;
    }
}

static float quantize_row_scalar(const float *x, int in, unsigned char *q, int32_t *zero) {
    float lo = 0.0f, hi = 0.0f, scale, inv;
    for (int k = 0; k < in; k++) {
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    row_range(lo, hi, &scale, &inv, zero);
    for (int k = 0; k < in; k++) {
        float v = nearbyintf(x[k] * inv) + (float)*zero;
        q[k] = (unsigned char)(v > 255.0f ? 255.0f : (v < 0.0f ? 0.0f : v));
    }
    return scale;
}

#ifdef DENSE_X86
#define AVX512BW __attribute__((target("avx512f,avx512bw")))

/* The AVX-512 quantiser, in three steps so that a call of many rows
 * (dense_quantize_rows) can take the middle one for 8 rows at once: each
 * row's range, the ranges' scales and zero points, each row's bytes.  The
 * same arithmetic as quantize_row_scalar, so the same bytes. */

/* min(x, 0) and max(x, 0) of a row, in four pairs of accumulators: with
 * one pair, each step waited for the previous step's min and max (4
 * cycles' latency) and the range took as long as the rounding.  (min and
 * max are exact in any order, and the range starts at 0, so the sign of a
 * zero never matters.) */
static AVX512BW inline void range_avx512(const float *x, int in, float *lo_out, float *hi_out) {
    int k = 0;
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    __m512 lo1 = vlo, hi1 = vlo, lo2 = vlo, hi2 = vlo, lo3 = vlo, hi3 = vlo;
    for (; k + 64 <= in; k += 64) {
        __m512 v0 = _mm512_loadu_ps(x + k), v1 = _mm512_loadu_ps(x + k + 16),
               v2 = _mm512_loadu_ps(x + k + 32), v3 = _mm512_loadu_ps(x + k + 48);
        vlo = _mm512_min_ps(vlo, v0);
        vhi = _mm512_max_ps(vhi, v0);
        lo1 = _mm512_min_ps(lo1, v1);
        hi1 = _mm512_max_ps(hi1, v1);
        lo2 = _mm512_min_ps(lo2, v2);
        hi2 = _mm512_max_ps(hi2, v2);
        lo3 = _mm512_min_ps(lo3, v3);
        hi3 = _mm512_max_ps(hi3, v3);
    }
    for (; k + 16 <= in; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
    }
    vlo = _mm512_min_ps(_mm512_min_ps(vlo, lo1), _mm512_min_ps(lo2, lo3));
    vhi = _mm512_max_ps(_mm512_max_ps(vhi, hi1), _mm512_max_ps(hi2, hi3));
    float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi);
    for (; k < in; k++) {
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* row_range for up to 8 rows at once (n <= 8): lo and hi in, scale, inv
 * and zero out.  The divisions and the rounding of the zero points as
 * vectors: one row at a time, their latency (two divisions, a rounding, a
 * conversion) was a quarter of the quantiser's time on DIN's rows of 256
 * and 512 (perf). */
static AVX512BW inline void ranges_avx512(int n, const float *lo, const float *hi, float *scale,
                                          float *inv, int32_t *zero) {
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    const __m512 z0 = _mm512_setzero_ps(), k255 = _mm512_set1_ps(255.0f);
    __m512 l = _mm512_min_ps(_mm512_maskz_loadu_ps(m, lo), z0); /* lo < 0 ? lo : 0 */
    __m512 h = _mm512_max_ps(_mm512_maskz_loadu_ps(m, hi), z0); /* hi > 0 ? hi : 0 */
    __m512 w = _mm512_sub_ps(h, l);
    const __mmask16 pos = _mm512_cmp_ps_mask(w, z0, _CMP_GT_OQ);
    __m512 sc = _mm512_mask_div_ps(_mm512_set1_ps(1.0f), pos, w, k255);
    __m512 iv = _mm512_maskz_div_ps(pos, k255, w);
    __m512 zr = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(z0, l), iv),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_storeu_ps(scale, m, sc);
    _mm512_mask_storeu_ps(inv, m, iv);
    _mm512_mask_storeu_epi32(zero, m, _mm512_maskz_cvttps_epi32(pos, zr));
}

/* round(x inv) + z for 16 values, in int32. */
static AVX512BW inline __m512i round_add(const float *x, __m512 inv, __m512i z) {
    return _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv)), z);
}

/* The row's bytes: clamp(round(x inv) + zero, 0, 255) (cvtps rounds to
 * nearest even, as nearbyintf does in the default rounding mode).  64 at a
 * time: the saturating packs (int32 to int16 to u8) clamp to 0..255 as min
 * and max do, and one permutation puts the 128-bit lanes' dwords back in
 * order (lane i holds 4 values of each of the four vectors). */
static AVX512BW inline void bytes_avx512(const float *x, int in, float inv, int32_t zero,
                                         unsigned char *q) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i z = _mm512_set1_epi32(zero), top = _mm512_set1_epi32(255),
                  bottom = _mm512_setzero_si512();
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    int k = 0;
    for (; k + 64 <= in; k += 64) {
        __m512i a = round_add(x + k, vinv, z), b = round_add(x + k + 16, vinv, z),
                c = round_add(x + k + 32, vinv, z), d = round_add(x + k + 48, vinv, z);
        __m512i v = _mm512_packus_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
        _mm512_storeu_si512((void *)(q + k), _mm512_permutexvar_epi32(order, v));
    }
    for (; k + 16 <= in; k += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vinv));
        v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, z), bottom), top);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
    }
    for (; k < in; k++) {
        float v = nearbyintf(x[k] * inv) + (float)zero;
        q[k] = (unsigned char)(v > 255.0f ? 255.0f : (v < 0.0f ? 0.0f : v));
    }
}

static AVX512BW float quantize_row_avx512(const float *x, int in, unsigned char *q,
                                          int32_t *zero) {
    float lo, hi, scale, inv;
    range_avx512(x, in, &lo, &hi);
    row_range(lo, hi, &scale, &inv, zero);
    bytes_avx512(x, in, inv, *zero, q);
    return scale;
}

/* m rows (stride ldx) into q (rows of in), 8 rows at a time: their
 * ranges, then their scales together, then their bytes (8 rows of QIN's
 * 1024 floats are 32 KB: still in L1 for the second read). */
static AVX512BW void quantize_rows_avx512(int m, int in, const float *x, size_t ldx,
                                          unsigned char *q, float *scale, int32_t *zero) {
    for (int i0 = 0; i0 < m; i0 += 8) {
        const int n = m - i0 < 8 ? m - i0 : 8;
        /* a vector's width: ranges_avx512 uses n <= 8 of its 16 lanes */
        float lo[16], hi[16], inv[16];
        for (int i = 0; i < n; i++) range_avx512(x + (size_t)(i0 + i) * ldx, in, &lo[i], &hi[i]);
        ranges_avx512(n, lo, hi, scale + i0, inv, zero + i0);
        for (int i = 0; i < n; i++)
            bytes_avx512(x + (size_t)(i0 + i) * ldx, in, inv[i], zero[i0 + i],
                         q + (size_t)(i0 + i) * in);
    }
}
#undef AVX512BW
#endif

static int quantize_avx512_ok(void) { return cpu_has(CPU_AVX512F) && cpu_has(CPU_AVX512BW); }

float dense_quantize_row(const float *x, int in, unsigned char *q, int32_t *zero) {
#ifdef DENSE_X86
    if (quantize_avx512_ok()) return quantize_row_avx512(x, in, q, zero);
#endif
    return quantize_row_scalar(x, in, q, zero);
}

/* int8 weights, per output channel: scale = max |W[o,:]| / 127 and Wq =
 * round(W / scale) in -127..127; colsum[o] = sum_k Wq[o][k], which a row's
 * zero point z adds z times to its sums. */
static void quantize_weights(const float *w, int out, int in, signed char *wq, float *wscale,
                             int32_t *colsum) {
    for (int o = 0; o < out; o++) {
        const float *row = w + (size_t)o * in;
        float m = row_absmax(row, in);
        float inv = m > 0.0f ? 127.0f / m : 0.0f;
        int32_t sum = 0;
        for (int k = 0; k < in; k++) {
            float v = nearbyintf(row[k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            wq[(size_t)o * in + k] = (signed char)v;
            sum += (int32_t)v;
        }
        wscale[o] = m > 0.0f ? m / 127.0f : 0.0f;
        colsum[o] = sum;
    }
}

/* Weights rounded beforehand (dense_int8), checked and copied: q in
 * -127..127, scales finite and >= 0, balance factors finite and > 0. */
static int given_weights(dense *d, const dense_int8 *g, signed char *wq, char *err,
                         size_t errlen) {
    const int in = d->in, out = d->out;
    if (!g->q || !g->scale)
        return ctr_fail(err, errlen, CTR_EINVAL, "int8 weights without integers or scales");
    if (d->prec == DENSE_INT8 && g->balance)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "int8 weights with balanced columns are int8x2's, not int8's");
    for (int o = 0; o < out; o++) {
        int32_t sum = 0;
        for (int k = 0; k < in; k++) {
            const signed char v = g->q[(size_t)o * in + k];
            if (v < -127)
                return ctr_fail(err, errlen, CTR_EINVAL, "int8 weight %d outside -127..127", v);
            wq[(size_t)o * in + k] = v;
            sum += v;
        }
        if (!isfinite(g->scale[o]) || g->scale[o] < 0.0f)
            return ctr_fail(err, errlen, CTR_EINVAL, "int8 weight scale %d is %g", o,
                            (double)g->scale[o]);
        d->wscale[o] = g->scale[o];
        d->colsum[o] = sum;
    }
    for (int k = 0; d->colscale && k < in; k++) {
        const float f = g->balance ? g->balance[k] : 1.0f;
        if (!isfinite(f) || f <= 0.0f)
            return ctr_fail(err, errlen, CTR_EINVAL, "int8x2 column balance %d is %g", k,
                            (double)f);
        d->colscale[k] = f;
    }
    return CTR_OK;
}

/* The int8 weights, once for every kernel of the layer: Wq (out x in, a
 * buffer the caller frees), and d->wscale and d->colsum; given (not NULL):
 * its integers and scales; otherwise w rounded to nearest, int8x2
 * balancing the columns first (f_k = sqrt(max_o |W[o, k]|), W[:, k] / f_k,
 * kept in d->colscale for the rows). */
int dense_quantize_int8(dense *d, const float *w, const dense_int8 *given, signed char **wq,
                        char *err, size_t errlen) {
    const int in = d->in, out = d->out;
    *wq = malloc((size_t)in * out);
    d->wscale = dense_aligned_bytes((size_t)out * sizeof *d->wscale);
    d->colsum = dense_aligned_bytes((size_t)out * sizeof *d->colsum);
    float *wb = NULL;
    if (d->prec == DENSE_INT8X2) {
        d->colscale = dense_aligned_bytes((size_t)in * sizeof *d->colscale);
        if (!given) wb = malloc((size_t)in * out * sizeof *wb);
    }
    if (!*wq || !d->wscale || !d->colsum ||
        (d->prec == DENSE_INT8X2 && (!d->colscale || (!given && !wb)))) {
        free(wb);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for int8 weights");
    }
    if (given) {
        d->int8_given = 1;
        return given_weights(d, given, *wq, err, errlen);
    }
    if (wb) {
        for (int k = 0; k < in; k++) d->colscale[k] = 0.0f;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++) {
                float a = fabsf(w[(size_t)o * in + k]);
                d->colscale[k] = a > d->colscale[k] ? a : d->colscale[k];
            }
        for (int k = 0; k < in; k++)
            d->colscale[k] = d->colscale[k] > 0.0f ? sqrtf(d->colscale[k]) : 1.0f;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++)
                wb[(size_t)o * in + k] = w[(size_t)o * in + k] / d->colscale[k];
        w = wb;
    }
    quantize_weights(w, out, in, *wq, d->wscale, d->colsum);
    free(wb);
    return CTR_OK;
}

/* Rows of x (m, stride ld_in) quantised for the kernel into q: int8, one
 * row each (scales and zero points in scale[i], zero[i]); int8x2, x * f
 * into rows 0..m-1 and its rounding residual into rows m..2m-1. */
void dense_quantize_rows(const dense *d, int m, const float *x, unsigned char *q, float *scale,
                          int32_t *zero, float *row) {
    const int in = d->in;
#ifdef DENSE_X86
    if (d->prec != DENSE_INT8X2 && quantize_avx512_ok()) {
        quantize_rows_avx512(m, in, x, (size_t)d->ld_in, q, scale, zero);
        return;
    }
#endif
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * d->ld_in;
        if (d->prec != DENSE_INT8X2) {
            scale[i] = dense_quantize_row(xi, in, q + (size_t)i * in, &zero[i]);
            continue;
        }
        for (int k = 0; k < in; k++) row[k] = xi[k] * d->colscale[k];
        unsigned char *q1 = q + (size_t)i * in, *q2 = q + (size_t)(m + i) * in;
        const float s1 = scale[i] = dense_quantize_row(row, in, q1, &zero[i]);
        const int32_t z1 = zero[i];
        for (int k = 0; k < in; k++) row[k] -= s1 * (float)((int32_t)q1[k] - z1);
        scale[m + i] = dense_quantize_row(row, in, q2, &zero[m + i]);
    }
}

/* The gated residual of dense_post on one value: r + prelu(r (p + b) + c).
 * PReLU as max + a min: exactly z or a z, and written as two min/max
 * patterns so the compiler vectorizes it without a branch (the signs of z
 * are random: a branch mispredicts). */
static inline float post_one(float p, float r, float b, float c, float a) {
    float z = r * (p + b) + c;
    float pos = z > 0.0f ? z : 0.0f, neg = z < 0.0f ? z : 0.0f;
    return r + (pos + a * neg);
}

/* Cloned for AVX-512 (chosen at load time by the dynamic linker): compiled
 * for the baseline x86-64 it runs 4 floats at a time, and with the product
 * on oneDNN's int8 kernels it was 7% of QIN's forward pass (perf, N = 64). */
CTR_CLONES void dense_post_rows(int n, int out, const float *p, int ldp, const dense_post *post) {
    const float *restrict b = post->bias, *restrict c = post->shift;
    const float a = post->slope;
    for (int i = 0; i < n; i++) {
        const float *restrict pi = p + (size_t)i * ldp;
        const float *ri = post->res + (size_t)i * post->ld;
        float *di = post->dst + (size_t)i * post->ld;
        for (int o = 0; o < out; o++) di[o] = post_one(pi[o], ri[o], b[o], c[o], a);
    }
}

/* y = (sum - z_i colsum) * row scale * channel scale for m rows of int32
 * sums (stride out), summed over nlev levels (int8x2: 2): the zero point
 * taken out exactly, in int32 (both terms are below 2^26 in magnitude),
 * then one rounding to float; with post, the gated residual applied in the
 * same pass and written to post's rows instead of y (the int32 sums are
 * read once and no float product row is stored: what was two passes over
 * the layer's output, 5% and 6.5% of QIN's int8 forward pass at N = 64,
 * perf).  The same operations in the same order as y first, then
 * dense_post_rows: the same bits. */
CTR_CLONES void dense_dequantize(int m, int out, const dense_sums *lev, int nlev,
                                 const int32_t *restrict colsum, const float *restrict cscale,
                                 float *y, int ldy, const dense_post *post) {
    for (int i = 0; i < m; i++) {
        const int32_t *restrict a1 = lev[0].acc + (size_t)i * out;
        const float s1 = lev[0].scale[i];
        const int32_t z1 = lev[0].zero[i];
        if (nlev == 1 && !post) {
            float *restrict yi = y + (size_t)i * ldy;
            for (int o = 0; o < out; o++)
                yi[o] = (float)(a1[o] - z1 * colsum[o]) * (s1 * cscale[o]);
            continue;
        }
        if (nlev == 1) {
            const float *restrict b = post->bias, *restrict c = post->shift;
            const float sl = post->slope;
            const float *ri = post->res + (size_t)i * post->ld;
            float *di = post->dst + (size_t)i * post->ld;
            for (int o = 0; o < out; o++) {
                float p = (float)(a1[o] - z1 * colsum[o]) * (s1 * cscale[o]);
                di[o] = post_one(p, ri[o], b[o], c[o], sl);
            }
            continue;
        }
        const int32_t *restrict a2 = lev[1].acc + (size_t)i * out;
        const float s2 = lev[1].scale[i];
        const int32_t z2 = lev[1].zero[i];
        if (!post) {
            float *restrict yi = y + (size_t)i * ldy;
            for (int o = 0; o < out; o++) {
                float p = (float)(a1[o] - z1 * colsum[o]) * (s1 * cscale[o]);
                yi[o] = p + (float)(a2[o] - z2 * colsum[o]) * (s2 * cscale[o]);
            }
            continue;
        }
        const float *restrict b = post->bias, *restrict c = post->shift;
        const float sl = post->slope;
        const float *ri = post->res + (size_t)i * post->ld;
        float *di = post->dst + (size_t)i * post->ld;
        for (int o = 0; o < out; o++) {
            float p = (float)(a1[o] - z1 * colsum[o]) * (s1 * cscale[o]);
            p = p + (float)(a2[o] - z2 * colsum[o]) * (s2 * cscale[o]);
            di[o] = post_one(p, ri[o], b[o], c[o], sl);
        }
    }
}

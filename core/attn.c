/*
 * attn.c - window, gather, softmax and explanations (see attn.h).
 */
#include "attn.h"
#include "vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/base/cpu.h"

int attn_window(const float *const *hist, int num_hist, int max_len, int32_t *pos) {
    int first = num_hist > max_len ? num_hist - max_len : 0, nh = 0;
    for (int j = first; j < num_hist; j++)
        if (hist[j]) pos[nh++] = j;
    return nh;
}

void attn_gather(const float *const *hist, const int32_t *pos, int nh, int off, int width,
                 float *dst, int ld) {
    for (int j = 0; j < nh; j++)
        memcpy(dst + (size_t)j * ld, hist[pos[j]] + off, (size_t)width * sizeof *dst);
}

void attn_softmax_rows(float *s, int n, int nh, int ld) {
    if (nh <= 0) return;
    for (int i = 0; i < n; i++) {
        float *row = s + (size_t)i * ld;
        float mx = row[0];
        for (int j = 1; j < nh; j++) mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j < nh; j++) row[j] -= mx;
        vmath_exp(row, nh);
        float sum = 0.0f;
        for (int j = 0; j < nh; j++) sum += row[j];
        float inv = 1.0f / sum;
        for (int j = 0; j < nh; j++) row[j] *= inv;
    }
}

/* One maxss (fmaxf's NaN rules would cost a call or a branch). */
static inline float max2(float a, float b) { return a > b ? a : b; }

/* Inserts |w| = a (weight w, position q) into a top list sorted down by
 * magnitude (mag), keeping the first of equals in front. */
static inline void top_insert(float a, float w, int32_t q, int k, int *have, int32_t *p,
                              float *wt, float *mag) {
    int r = *have < k ? (*have)++ : k - 1;
    while (r > 0 && a > mag[r - 1]) {
        p[r] = p[r - 1];
        wt[r] = wt[r - 1];
        mag[r] = mag[r - 1];
        r--;
    }
    p[r] = q;
    wt[r] = w;
    mag[r] = a;
}

/* The fast paths' three steps, shared by the portable and the AVX-512
 * one.  1. The largest |w| of each chunk of a row (cmax, nc chunks); the
 * k-th largest of those is a lower bound of the row's k-th largest |w| (k
 * chunks each hold one at least as large), so only weights at or above it
 * can make the list: returns that bound (0 with fewer than k chunks). */
static inline float chunk_bound(const float *cmax, int nc, int k, int32_t *cp, float *cm_top,
                                float *mag) {
    if (nc < k) return 0.0f;
    int have = 0;
    for (int c = 0; c < nc; c++)
        if (have < k || cmax[c] > cm_top[k - 1])
            top_insert(cmax[c], cmax[c], c, k, &have, cp, cm_top, mag);
    return cm_top[k - 1];
}

/* 3. The list from the cnt candidates idx (2. found them), newest first so
 * that ties keep the later position. */
static inline void list_from(const float *row, const int32_t *idx, int cnt, const int32_t *pos,
                             int k, int32_t *p, float *wt, float *mag) {
    int have = 0;
    for (int c = cnt - 1; c >= 0; c--) {
        const int j = idx[c];
        const float a = fabsf(row[j]);
        if (have < k || a > mag[k - 1]) top_insert(a, row[j], pos[j], k, &have, p, wt, mag);
    }
}

/* A row of the list: position -1, weight 0. */
static inline void list_clear(int32_t *p, float *wt, int k) {
    for (int r = 0; r < k; r++) {
        p[r] = -1;
        wt[r] = 0.0f;
    }
}

/* The three steps for one row, portable: chunks of 8. */
static void explain_row(const float *row, int nh, const int32_t *pos, int k, int32_t *p,
                        float *wt, float *mag, float *cmax, float *cm_top, int32_t *cp,
                        int32_t *idx) {
    enum { CHUNK = 8 };
    /* Hot loop (n x nh weights a request, in an order no branch predictor
     * learns).  1. Each chunk's largest |w|, branch-free, vectorized. */
    const int nc = (nh + CHUNK - 1) / CHUNK, full = nh / CHUNK;
    for (int c = 0; c < full; c++) {
        /* A tree, not a running max: chunks stay independent of each
         * other (no chain through one accumulator). */
        const float *q = row + c * CHUNK;
        float a0 = max2(fabsf(q[0]), fabsf(q[1])), a1 = max2(fabsf(q[2]), fabsf(q[3]));
        float a2 = max2(fabsf(q[4]), fabsf(q[5])), a3 = max2(fabsf(q[6]), fabsf(q[7]));
        cmax[c] = max2(max2(a0, a1), max2(a2, a3));
    }
    if (full < nc) {
        float m = 0.0f;
        for (int j = full * CHUNK; j < nh; j++) m = max2(m, fabsf(row[j]));
        cmax[full] = m;
    }
    const float thr = chunk_bound(cmax, nc, k, cp, cm_top, mag);
    /* 2. Those weights' indices, appended without a branch, from the
     * chunks that hold any (about k of them). */
    int cnt = 0;
    for (int c = 0; c < nc; c++) {
        if (cmax[c] < thr) continue;
        const int lo = c * CHUNK, hi = lo + CHUNK < nh ? lo + CHUNK : nh;
        for (int j = lo; j < hi; j++) {
            idx[cnt] = j;
            cnt += fabsf(row[j]) >= thr;
        }
    }
    list_from(row, idx, cnt, pos, k, p, wt, mag);
}

/* The list by plain insertion, newest first (ties keep the later
 * position): for k beyond the fast path's stack lists. */
static void explain_plain(const float *w, int n, int nh, int ld, const int32_t *pos,
                          engine_explain *ex, int first) {
    const int k = ex->k;
    for (int i = 0; i < n; i++) {
        const float *row = w + (size_t)i * ld;
        int32_t *p = ex->pos + (size_t)(first + i) * k;
        float *wt = ex->weight + (size_t)(first + i) * k;
        int have = 0;
        list_clear(p, wt, k);
        for (int j = nh - 1; j >= 0; j--) {
            float a = fabsf(row[j]);
            if (have == k && !(a > fabsf(wt[k - 1]))) continue;
            int r = have < k ? have++ : k - 1;
            while (r > 0 && a > fabsf(wt[r - 1])) {
                p[r] = p[r - 1];
                wt[r] = wt[r - 1];
                r--;
            }
            p[r] = pos[j];
            wt[r] = row[j];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ATTN_X86 1

/* For k beyond explain_block16's registers: the fast path's three steps
 * for one row with AVX-512, a chunk being one register of 16 weights: its
 * maximum |w|, the compare with the bound and the compressed store of the
 * indices above it. */
__attribute__((target("avx512f"))) static void explain_row_avx512(
    const float *row, int nh, const int32_t *pos, int k, int32_t *p, float *wt, float *mag,
    float *cmax, float *cm_top, int32_t *cp, int32_t *idx) {
    const int nc = (nh + 15) / 16;
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    for (int c = 0; c < nc; c++) {
        const int left = nh - c * 16;
        const __mmask16 live = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 a = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_maskz_loadu_ps(live, row + c * 16)), absmask));
        cmax[c] = _mm512_reduce_max_ps(a);
    }
    const float thr = chunk_bound(cmax, nc, k, cp, cm_top, mag);
    const __m512 tv = _mm512_set1_ps(thr);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int cnt = 0;
    for (int c = 0; c < nc; c++) {
        if (cmax[c] < thr) continue;
        const int left = nh - c * 16;
        const __mmask16 live = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 a = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_maskz_loadu_ps(live, row + c * 16)), absmask));
        __mmask16 m = _mm512_mask_cmp_ps_mask(live, a, tv, _CMP_GE_OQ);
        _mm512_mask_compressstoreu_epi32(idx + cnt, m,
                                         _mm512_add_epi32(iota, _mm512_set1_epi32(c * 16)));
        cnt += __builtin_popcount((unsigned)m);
    }
    list_from(row, idx, cnt, pos, k, p, wt, mag);
}

/* Sixteen candidates at a time, one lane each: weight j of the 16 rows is
 * one gather, and each lane keeps its k largest in registers, merged by
 * compare-and-blend (no branch, no shuffle).  Weights go in oldest first
 * and win ties (>=), so on equal |w| the later position ranks first. */
__attribute__((target("avx512f"))) static void explain_block16(
    const float *w, int rows, int nh, int ld, const int32_t *pos, int k, int32_t *p,
    float *wt) {
    enum { KB = 8 };
    const __mmask16 live = rows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1);
    const __m512i lane_off = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(ld));
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512 tv[KB];
    __m512i ti[KB];
    for (int r = 0; r < k; r++) {
        tv[r] = _mm512_set1_ps(-1.0f);
        ti[r] = _mm512_set1_epi32(-1);
    }
    for (int j = 0; j < nh; j++) {
        __m512 cv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, lane_off, w + j, 4);
        cv = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(cv), absmask));
        __m512i ci = _mm512_set1_epi32(j);
        for (int r = 0; r < k; r++) {
            const __mmask16 m = _mm512_cmp_ps_mask(cv, tv[r], _CMP_GE_OQ);
            const __m512 ov = tv[r];
            const __m512i oi = ti[r];
            tv[r] = _mm512_mask_blend_ps(m, ov, cv);
            ti[r] = _mm512_mask_blend_epi32(m, oi, ci);
            cv = _mm512_mask_blend_ps(m, cv, ov);
            ci = _mm512_mask_blend_epi32(m, ci, oi);
        }
    }
    int32_t idx[KB][16];
    for (int r = 0; r < k; r++) _mm512_storeu_si512(idx[r], ti[r]);
    for (int i = 0; i < rows; i++)
        for (int r = 0; r < k; r++) {
            const int j = idx[r][i];
            p[(size_t)i * k + r] = j >= 0 ? pos[j] : -1;
            wt[(size_t)i * k + r] = j >= 0 ? w[(size_t)i * ld + j] : 0.0f;
        }
}
#endif

void attn_explain(const float *w, int n, int nh, int ld, const int32_t *pos,
                  engine_explain *ex, int first) {
    enum { KMAX = 16, NH_MAX = 4096 };
    const int k = ex->k;
    if (k > KMAX || nh > NH_MAX) {
        explain_plain(w, n, nh, ld, pos, ex, first);
        return;
    }
    int avx512 = 0;
    (void)avx512; /* read only where the AVX-512 path is compiled */
#ifdef ATTN_X86
    avx512 = cpu_path_on(CPU_PATH_EXPLAIN_AVX512);
    if (avx512 && k <= 8) {
        for (int i0 = 0; i0 < n; i0 += 16)
            explain_block16(w + (size_t)i0 * ld, n - i0 < 16 ? n - i0 : 16, nh, ld, pos, k,
                            ex->pos + (size_t)(first + i0) * k,
                            ex->weight + (size_t)(first + i0) * k);
        return;
    }
#endif
    float cmax[NH_MAX / 8], mag[KMAX], cm_top[KMAX];
    int32_t idx[NH_MAX], cp[KMAX];
    for (int i = 0; i < n; i++) {
        const float *row = w + (size_t)i * ld;
        int32_t *p = ex->pos + (size_t)(first + i) * k;
        float *wt = ex->weight + (size_t)(first + i) * k;
        list_clear(p, wt, k);
#ifdef ATTN_X86
        if (avx512) {
            explain_row_avx512(row, nh, pos, k, p, wt, mag, cmax, cm_top, cp, idx);
            continue;
        }
#endif
        explain_row(row, nh, pos, k, p, wt, mag, cmax, cm_top, cp, idx);
    }
}

/*
 * attn.c - window, gather, softmax and explanations (see attn.h).
 */
#include "attn.h"

#include <math.h>
#include <string.h>

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
        float sum = 0.0f;
        for (int j = 0; j < nh; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < nh; j++) row[j] *= inv;
    }
}

void attn_explain(const float *w, int n, int nh, int ld, const int32_t *pos,
                  engine_explain *ex, int first) {
    const int k = ex->k;
    for (int i = 0; i < n; i++) {
        const float *row = w + (size_t)i * ld;
        int32_t *p = ex->pos + (size_t)(first + i) * k;
        float *wt = ex->weight + (size_t)(first + i) * k;
        float *mag = wt;        /* |weight| of the kept ones, sorted down */
        float tmp[16];
        if (k <= 16) mag = tmp;
        int have = 0;
        for (int r = 0; r < k; r++) {
            p[r] = -1;
            wt[r] = 0.0f;
        }
        /* Insertion into a sorted list of at most k, newest first so that
         * ties keep the later position; once the list is full, an entry
         * must beat the k-th to get in, and the common case is one compare
         * (hot loop: n x nh entries per request, next to n x nh x width
         * multiply-adds in the forward pass; bench_models measures it). */
        float thr = -1.0f;
        for (int j = nh - 1; j >= 0; j--) {
            float a = fabsf(row[j]);
            if (!(a > thr)) continue;
            int r = have < k ? have++ : k - 1;
            while (r > 0 && a > (mag == wt ? fabsf(wt[r - 1]) : mag[r - 1])) {
                p[r] = p[r - 1];
                wt[r] = wt[r - 1];
                if (mag != wt) mag[r] = mag[r - 1];
                r--;
            }
            p[r] = pos[j];
            wt[r] = row[j];
            if (mag != wt) mag[r] = a;
            if (have == k) thr = mag == wt ? fabsf(wt[k - 1]) : mag[k - 1];
        }
    }
}

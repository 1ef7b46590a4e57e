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
        int have = 0;
        for (int r = 0; r < k; r++) {
            p[r] = -1;
            wt[r] = 0.0f;
        }
        /* Insertion into a sorted list of at most k: k is a handful and nh
         * at most max_len, so this is O(nh k) with no allocation. */
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

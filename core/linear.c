/*
 * linear.c - linear_gemm and the dense layer (see linear.h).
 *
 * Workload: per request, a few products of 16..16,384 rows (DIN's attention
 * runs one row per candidate-behaviour pair) against weights of up to
 * 1024 x 640; single-threaded.
 */
#include "linear.h"

#include <cblas.h>
#include <dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"

#define LINEAR_ALIGN 64

void linear_one_thread(void) {
    static _Thread_local int pinned;
    if (!pinned) {
        omp_set_num_threads(1);
        pinned = 1;
    }
}

static pthread_once_t warm_once = PTHREAD_ONCE_INIT;

/* Every kind of call linear_gemm makes: W as [out, in] and as [in, out],
 * beta 0 and 1, on small zeroed operands. */
static void warm_up(void) {
    enum { K = 16 };
    static float x[K * K], w[K * K], y[K * K];
    for (int t = 0; t < 2; t++)
        for (int b = 0; b < 2; b++) linear_gemm(K, K, K, x, K, w, K, t, (float)b, y, K);
}

void linear_warm_up(void) { pthread_once(&warm_once, warm_up); }

void linear_gemm(int n, int out, int in, const float *x, int ldx, const float *w, int ldw,
                 int w_out_in, float beta, float *y, int ldy) {
    if (n <= 0 || out <= 0) return;
    if (in <= 0) {
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) y[(size_t)i * ldy + o] *= beta;
        return;
    }
    if (cpu_path_on(CPU_PATH_LINEAR_ONEDNN)) {
        linear_one_thread();
        /* dnnl_sgemm is row-major: C (M x N) = A (M x K) op(B). */
        if (dnnl_sgemm('N', w_out_in ? 'T' : 'N', n, out, in, 1.0f, x, ldx, w, ldw, beta, y,
                       ldy) == dnnl_success)
            return;
        /* dnnl refuses only bad arguments, which would be a bug here;
         * OpenBLAS gives the answer regardless. */
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, w_out_in ? CblasTrans : CblasNoTrans, n, out, in,
                1.0f, x, ldx, w, ldw, beta, y, ldy);
}

void linear_forward(const linear_layer *l, int n, const float *x, int ldx, float *y, int ldy) {
    linear_gemm(n, l->out, l->in, x, ldx, l->w, l->in, 1, 0.0f, y, ldy);
    for (int i = 0; i < n; i++) {
        float *restrict yi = y + (size_t)i * ldy;
        const float *restrict b = l->b;
        for (int o = 0; o < l->out; o++) yi[o] += b[o];
    }
}

float *linear_falloc(size_t n) {
    if (n == 0) n = 1;
    if (n > SIZE_MAX / sizeof(float) - LINEAR_ALIGN) return NULL;
    size_t bytes = (n * sizeof(float) + LINEAR_ALIGN - 1) & ~(size_t)(LINEAR_ALIGN - 1);
    float *p = aligned_alloc(LINEAR_ALIGN, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

static void *bufs_keep(linear_bufs *b, void *p) {
    if (!p || b->n == LINEAR_BUFS_MAX) {
        free(p);
        b->failed = 1;
        return NULL;
    }
    return b->owned[b->n++] = p;
}

float *linear_bufs_floats(linear_bufs *b, size_t n) { return bufs_keep(b, linear_falloc(n)); }

int32_t *linear_bufs_ints(linear_bufs *b, size_t n) {
    _Static_assert(sizeof(int32_t) == sizeof(float), "int32 buffers as float-sized ones");
    return bufs_keep(b, linear_falloc(n));
}

void linear_bufs_free(linear_bufs *b) {
    for (int i = 0; i < b->n; i++) free(b->owned[i]);
    b->n = 0;
}

void linear_layer_free(linear_layer *l) {
    free(l->w);
    free(l->b);
    l->w = l->b = NULL;
}

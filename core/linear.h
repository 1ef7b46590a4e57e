/*
 * linear.h - the one run-time-shape product of every architecture.
 *
 * Two kinds of matrix product run per request:
 *   - a model's dense layers, whose weights are known at load: they are
 *     prepared once in the model's precision by dense.h (QIN's QNN, DIN's
 *     attention MLP and main MLP, TIN's MLP);
 *   - everything else, whose operands or shapes change with every request
 *     or item (attention scores and pooling against a history of any
 *     length, the item-side folds, heads of one output): linear_gemm, fp32.
 * linear_gemm is the one entry point for the second kind, so the library
 * behind it can be changed in this one place.  Today it is oneDNN's
 * dnnl_sgemm (its JIT AVX-512 kernels: 4-5x single-threaded OpenBLAS at the
 * DIN shapes on this machine, whose OpenBLAS either detects no kernel for
 * the CPU or is held to AVX2), with OpenBLAS's cblas_sgemm as the fallback
 * and the reference the tests compare against (tests/core/test_linear.c);
 * which of the two runs is the LINEAR_ONEDNN path of core/base/cpu.h
 * (CTR_DENSE_OPENBLAS=1 in the environment: OpenBLAS).
 *
 * Threading: one product runs on the calling thread only.  oneDNN's OpenMP
 * runtime would otherwise start a team of all cores inside every call, on
 * top of the service's own worker threads; linear_gemm pins each calling
 * thread's OpenMP team to one thread the first time it runs there.
 */
#ifndef CTR_LINEAR_H
#define CTR_LINEAR_H

#include <stddef.h>
#include <stdint.h>

/* y (n x out, row stride ldy) = x (n x in, stride ldx) op(W) + beta y.
 * w_out_in = 1: W is out x in ([out, in], as PyTorch stores a Linear) and
 * op(W) = W^T; 0: W is in x out and op(W) = W.  ldw is W's row stride.
 * in may be 0 (y is then scaled by beta); n or out 0 does nothing.
 * Thread-safe. */
void linear_gemm(int n, int out, int in, const float *x, int ldx, const float *w, int ldw,
                 int w_out_in, float beta, float *y, int ldy);

/* Holds oneDNN's OpenMP team in the calling thread to one thread (once per
 * thread; libgomp's limit is per thread).  linear_gemm and dense.c call it
 * before any oneDNN call. */
void linear_one_thread(void);

/* Makes oneDNN generate linear_gemm's kernels now rather than in the first
 * request: the process's first dnnl_sgemm call takes 70-170 ms on this
 * machine (JIT code for its kernels and the OpenMP runtime's start), the
 * first with a transposed W another 7-11 ms, where later ones take
 * microseconds; a first request that slow misses its deadline and skews
 * the server's running estimate of the scoring speed.  Once per process
 * (later calls return at once); the model loaders call it.  Thread-safe. */
void linear_warm_up(void);

/* A dense layer with its bias: y = x W^T + b. */
typedef struct linear_layer {
    int in, out;
    float *w;            /* out x in, 64-byte aligned */
    float *b;            /* out (never NULL once loaded) */
} linear_layer;

/* y = x W^T + b for n rows (bias added in the same pass over y). */
void linear_forward(const linear_layer *l, int n, const float *x, int ldx, float *y, int ldy);

/* Aligned allocation of n floats, zeroed; NULL on failure or overflow.
 * The buffers of din.c and tin.c (weights at load, scratch at start). */
float *linear_falloc(size_t n);

void linear_layer_free(linear_layer *l);

/* The buffers of a scratch, made together at init and freed together:
 * each linear_bufs_floats / linear_bufs_ints call allocates one (64-byte
 * aligned, zeroed) and keeps it; failed is set once any allocation failed
 * (or more than LINEAR_BUFS_MAX were asked for); linear_bufs_free frees
 * them all.  Start from a zeroed linear_bufs. */
#define LINEAR_BUFS_MAX 16
typedef struct linear_bufs {
    int n, failed;
    void *owned[LINEAR_BUFS_MAX];
} linear_bufs;

float *linear_bufs_floats(linear_bufs *b, size_t n);
int32_t *linear_bufs_ints(linear_bufs *b, size_t n);
void linear_bufs_free(linear_bufs *b);

#endif

/*
 * gemm.h - the QNN's matrix product with weights packed once at load.
 *
 * y = x W^T for n rows of x (n x D) and a fixed D x D weight W ([out, in]).
 * OpenBLAS repacks W on every call (a fifth of the QNN's time at 64
 * candidates) and, on machines where it is held to its AVX2 kernels, leaves
 * half of an AVX-512 core idle.  dense.h's fp32 layers may use this kernel
 * where the CPU has AVX-512F and the weight is square with D a multiple of
 * 32: its planner times it against oneDNN's fp32 matmul per row class at
 * load (it tends to win at a few rows only).
 * OpenBLAS (cblas_sgemm) stays the reference the tests compare against.
 */
#ifndef CTR_GEMM_H
#define CTR_GEMM_H

#include <stddef.h>

/* 1 when this CPU and width D can use the packed kernel. */
int gemm_packed_supported(int D);

/* Floats of a packed D x D weight. */
size_t gemm_packed_floats(int D);

/* Packs w (D x D, row-major, [out, in]) into p (gemm_packed_floats(D),
 * 64-byte aligned): p[panel][k][o % 16] with panel = o / 16. */
void gemm_pack(const float *w, int D, float *p);

/* y (n x D, row stride ldy) = x (n x D, stride ldx) W^T, W packed by
 * gemm_pack.  Only when gemm_packed_supported(D).  Thread-safe. */
void gemm_packed(int n, int D, const float *x, int ldx, const float *p, float *y, int ldy);

#endif

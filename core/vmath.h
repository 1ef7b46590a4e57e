/*
 * vmath.h - exp and sigmoid over arrays, for the softmaxes and sigmoids of
 * DIN and TIN (TIN computes about 180 exponentials per candidate, as many
 * as it does multiply-adds per 200; DIN's Dice one per unit of every
 * candidate-behaviour pair).
 *
 * Where the CPU has AVX-512F the work goes 16 at a time through glibc's
 * vector expf (libmvec, _ZGVeN16v_expf: glibc documents it within 1 ulp
 * here, like the scalar expf), else through expf: the VMATH_AVX512 path of
 * core/base/cpu.h.  tests/core/test_vmath.c holds the vector path to expf
 * on this machine.  Pure functions; thread-safe.
 */
#ifndef CTR_VMATH_H
#define CTR_VMATH_H

/* x[i] = expf(x[i]) for i < n. */
void vmath_exp(float *x, int n);

/* x[i] = 1 / (1 + expf(-x[i])) for i < n. */
void vmath_sigmoid(float *x, int n);

#endif

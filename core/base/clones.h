/*
 * clones.h - CTR_CLONES: a function compiled twice, for AVX-512F and for
 * baseline x86-64, the copy picked once at load time (GCC's target_clones:
 * an ifunc).  For the per-element loops around the dense products (format
 * conversions, fused passes), which the baseline build runs 4 floats at a
 * time.
 *
 * Not under ThreadSanitizer: an ifunc resolver runs while the dynamic
 * linker relocates the program, before TSan's runtime is set up, and the
 * instrumented resolver crashes there (every test binary died before main).
 * The TSan build runs the baseline copy, which is what it needs to find
 * races.
 */
#ifndef CTR_CLONES_H
#define CTR_CLONES_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_THREAD__)
#define CTR_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define CTR_CLONES
#endif

#endif

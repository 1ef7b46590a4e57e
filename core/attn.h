/*
 * attn.h - the attention plumbing the three architectures share: which
 * history entries count (the window), gathering their item-vector parts
 * into contiguous rows, row softmax, and the explanation (top-k weights).
 *
 * Workload: histories of up to max_len (64..430) behaviours and up to a few
 * hundred candidates per request; all of it is O(candidates x behaviours)
 * next to the O(candidates x behaviours x width) products, so it is plain
 * loops.  Pure functions, thread-safe.
 */
#ifndef CTR_ATTN_H
#define CTR_ATTN_H

#include <stdint.h>

#include "engine.h"

/* The entries that take part: of the last max_len entries of hist, the
 * non-NULL ones, oldest first; their positions in hist go to pos (room for
 * min(num_hist, max_len)).  Returns their count. */
int attn_window(const float *const *hist, int num_hist, int max_len, int32_t *pos);

/* Rows of dst (stride ld) = floats [off, off + width) of the vectors
 * hist[pos[j]], j < nh. */
void attn_gather(const float *const *hist, const int32_t *pos, int nh, int off, int width,
                 float *dst, int ld);

/* Softmax in place over the first nh entries of each of n rows (stride
 * ld), with the maximum subtracted first.  nh = 0 leaves the rows alone. */
void attn_softmax_rows(float *s, int n, int nh, int ld);

/* For candidates [0, n): the ex->k entries of row i of w (n x nh, stride
 * ld) largest in absolute value (ties: the later position first), as
 * positions pos[j] and signed weights, into rows first + i of ex; the rest
 * of a row is position -1, weight 0.  On AVX-512 where the CPU has it (the
 * EXPLAIN_AVX512 path of core/base/cpu.h), else a portable loop; the same
 * answer either way. */
void attn_explain(const float *w, int n, int nh, int ld, const int32_t *pos,
                  engine_explain *ex, int first);

#endif

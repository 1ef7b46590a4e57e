/*
 * arch.h - what each architecture gives the engine (engine.c): its loader,
 * item vectors, scratch, forward pass and cost, behind one table of
 * functions.  Internal to core/: callers use engine.h.
 *
 * The engine checks what is common before calling in (candidate count,
 * context ranges, NULL candidates, explain->k), so the architectures start
 * from a valid request.
 */
#ifndef CTR_ARCH_H
#define CTR_ARCH_H

#include "engine.h"
#include "safetensors.h"

typedef struct arch_ops {
    /* Loading, in two steps on a model of model_size bytes that the engine
     * allocates zeroed: build reads it from a parsed file whose schema sc
     * is already read and checked (every tensor checked against the
     * declared configuration, the exact folds made); prepare makes its
     * dense layers as p says (precision, kernel, column parts; dense.h).
     * free releases what
     * the two made and the model itself, also after either failed part
     * way. */
    size_t model_size;
    int (*build)(void *impl, const st_file *f, const engine_schema *sc, char *err, size_t errlen);
    int (*prepare)(void *impl, const engine_params *p, char *err, size_t errlen);
    void (*free)(void *impl);
    size_t (*item_vec_floats)(const void *impl);
    /* n vectors into out, stride item_vec_floats (see engine.h). */
    int (*items_compute)(const void *impl, int n, const engine_item *items, float *out, int *bad,
                         char *err, size_t errlen);
    int (*scratch_init)(const void *impl, int max_cand, void **scratch);
    void (*scratch_free)(void *scratch);
    int (*forward)(const void *impl, void *scratch, const engine_request *req, float *prob,
                   char *err, size_t errlen);
    engine_cost (*cost)(const void *impl, int nh);
    /* What computes the largest dense layer (engine_model_describe). */
    const char *(*describe)(const void *impl);
    /* Column parts a request's layers split into (engine_model_column_parts);
     * NULL: 1. */
    int (*column_parts)(const void *impl);
} arch_ops;

/* The model ops->load made for m, for the tests and benchmarks of one
 * architecture's insides (qin_internal.h's qin_model_of).  Owned by m. */
void *engine_model_impl(const engine_model *m);

extern const arch_ops qin_arch_ops;   /* qin.c */
extern const arch_ops din_arch_ops;   /* din.c */
extern const arch_ops tin_arch_ops;   /* tin.c */

#endif

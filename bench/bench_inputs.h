/*
 * bench_inputs.h - the random inputs of the engine benchmarks
 * (bench_models, bench_split): items with distinct ids and random features
 * within a model's vocabularies (tags, multimodal vector, or category),
 * and random context values (header-only, as bench.h).
 *
 * One xorshift64 stream with a fixed seed, drawn items first and context
 * second, so every run (and both programs) sees the same inputs.
 */
#ifndef CTR_BENCH_INPUTS_H
#define CTR_BENCH_INPUTS_H

#include <stdint.h>
#include <stdlib.h>

#include "core/engine.h"

static inline uint64_t bench_next(void) {
    static uint64_t rng = 88172645463325252ULL;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* nitems items (and the storage of their tags and multimodal features),
 * and ctx rows of context for up to max_n candidates. */
typedef struct bench_inputs {
    engine_item *items;
    int32_t *tags;
    float *mm;
    int32_t *ctx;
} bench_inputs;

static inline void bench_inputs_free(bench_inputs *in) {
    free(in->items);
    free(in->tags);
    free(in->mm);
    free(in->ctx);
}

/* 0, or -1 when out of memory (in freed). */
static inline int bench_inputs_make(bench_inputs *in, const engine_schema *sc, int nitems,
                                    int max_n) {
    in->items = calloc((size_t)nitems, sizeof *in->items);
    in->tags = calloc((size_t)nitems * (sc->num_tags ? sc->num_tags : 1), sizeof *in->tags);
    in->mm = calloc((size_t)nitems * (sc->mm_dim ? sc->mm_dim : 1), sizeof *in->mm);
    in->ctx = calloc((size_t)max_n * (sc->num_ctx ? sc->num_ctx : 1), sizeof *in->ctx);
    if (!in->items || !in->tags || !in->mm || !in->ctx) {
        bench_inputs_free(in);
        return -1;
    }
    const int64_t span = sc->item_vocab - sc->item_id_min;
    for (int i = 0; i < nitems; i++) {
        engine_item *it = &in->items[i];
        it->id = sc->item_id_min + (int64_t)(((uint64_t)i * 7919u + 13) % (uint64_t)span);
        it->tags = in->tags + (size_t)i * sc->num_tags;
        it->num_tags = sc->num_tags;
        for (int k = 0; k < sc->num_tags; k++)
            in->tags[(size_t)i * sc->num_tags + k] =
                (int32_t)(bench_next() % (uint64_t)sc->tag_vocab);
        if (sc->mm_dim) {
            it->mm = in->mm + (size_t)i * sc->mm_dim;
            for (int k = 0; k < sc->mm_dim; k++)
                in->mm[(size_t)i * sc->mm_dim + k] = (float)(bench_next() % 2000) * 0.001f - 1.0f;
        }
        it->cate = sc->cate_vocab ? (int32_t)(bench_next() % (uint64_t)sc->cate_vocab) : 0;
    }
    for (int i = 0; i < max_n; i++)
        for (int f = 0; f < sc->num_ctx; f++)
            in->ctx[(size_t)i * sc->num_ctx + f] =
                (int32_t)(bench_next() % (uint64_t)sc->ctx_vocab[f]);
    return 0;
}

#endif

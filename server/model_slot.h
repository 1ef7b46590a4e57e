/*
 * model_slot.h - one model being served, swapped atomically on reload.
 *
 * A slot is one loaded model (any architecture, core/engine.h) plus the
 * item cache that belongs to it (item vectors depend on the model, so a new
 * model starts with an empty cache and the old cache dies with the old
 * model).  Requests take a reference for their whole life, so a reload
 * never frees weights under a request in flight: the old slot goes when its
 * last request releases it.  A server with several models has one holder
 * per model (service.h).
 */
#ifndef CTR_MODEL_SLOT_H
#define CTR_MODEL_SLOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/engine.h"
#include "server/item_cache.h"
#include "server/metrics.h"

/* How a model is loaded: per model, so a server's models may differ.
 * Per-model engine settings (a precision, say) belong here. */
typedef struct model_slot_params {
    item_cache_params cache;        /* vec_floats is filled in by the loader */
    int warmup_max_cand;            /* > 0: engine_warmup for requests of up
                                       to this many candidates before the
                                       slot is handed out; 0: none */
    dense_precision precision;      /* of the dense layers (DENSE_FP32) */
    dense_backend kernel;           /* their kernel (DENSE_BACKEND_AUTO:
                                       planned at load, dense.h) */
    int column_parts;               /* engine_params.column_parts (1) */
} model_slot_params;

/* Defaults: item_cache_default_params, no warm-up. */
model_slot_params model_slot_default_params(void);

typedef struct model_slot {
    engine_model *model;
    const engine_schema *schema;    /* engine_model_schema(model) */
    item_cache *cache;
    uint64_t generation;            /* 1 for the first model, +1 per reload */
    const char *ctx_name[ENGINE_MAX_CTX];  /* for proto_rank_schema */
    char path[1024];
    double load_ms, warmup_ms;      /* what loading and warming up took */
    metrics *metrics;               /* when set, the cache's counters are
                                       handed over to series metrics_model
                                       before it is freed, so the _total
                                       series never go back */
    int metrics_model;
    atomic_int refs;
} model_slot;

typedef struct model_holder model_holder;

/* Loads path into a new slot, its dense layers prepared in p->precision
 * (warmed up when p says so), whose cache follows p->cache.  CTR_OK or the loader's error, with a message. */
int model_slot_load(const char *path, const model_slot_params *p, uint64_t generation,
                    model_slot **out, char *err, size_t errlen);

/* Gives a slot that serves no request yet a new, empty cache following p
 * (for a budget decided once the model's name, from its file, is known).
 * CTR_OK, or an error with a message (the slot keeps its old cache). */
int model_slot_set_cache(model_slot *s, const item_cache_params *p, char *err, size_t errlen);

/* Drops one reference; the last one frees model and cache.  Thread-safe. */
void model_slot_release(model_slot *s);

/* The holder owns the current slot (one reference).  Thread-safe. */
model_holder *model_holder_new(model_slot *first);
void model_holder_free(model_holder *h);

/* The current slot with a reference the caller must release. */
model_slot *model_holder_acquire(model_holder *h);

/* Makes s (freshly loaded, one reference which the holder takes over)
 * current: its generation becomes the old one's + 1 and it inherits the
 * old slot's metrics.  The old slot lives on until its last request
 * releases it.  Thread-safe. */
void model_holder_swap(model_holder *h, model_slot *s);

#endif

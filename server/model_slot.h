/*
 * model_slot.h - the model being served, swapped atomically on reload.
 *
 * A slot is one loaded model plus the item cache that belongs to it (item
 * vectors depend on the model, so a new model starts with an empty cache
 * and the old cache dies with the old model).  Requests take a reference
 * for their whole life, so a reload never frees weights under a request in
 * flight: the old slot goes when its last request releases it.
 */
#ifndef CTR_MODEL_SLOT_H
#define CTR_MODEL_SLOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/qin.h"
#include "server/item_cache.h"
#include "server/metrics.h"

typedef struct model_slot {
    qin_model *model;
    const qin_config *cfg;
    item_cache *cache;
    uint64_t generation;            /* 1 for the first model, +1 per reload */
    const char *ctx_name[QIN_MAX_CTX];  /* for proto_rank_schema */
    char path[1024];
    metrics *metrics;               /* when set, the cache's counters are
                                       handed over before it is freed, so
                                       the _total series never go back */
    atomic_int refs;
} model_slot;

typedef struct model_holder model_holder;

/* Loads path into a new slot whose cache follows cache_params (vec_floats
 * is filled in here), its dense layers prepared in `precision`.  CTR_OK or
 * the loader's error, with a message. */
int model_slot_load(const char *path, const item_cache_params *cache_params,
                    dense_precision precision, uint64_t generation, model_slot **out,
                    char *err, size_t errlen);

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

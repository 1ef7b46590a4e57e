/* model_slot.c - reference-counted model + cache, see model_slot.h. */
#include "model_slot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct model_holder {
    pthread_mutex_t mu;         /* guards cur (held for a pointer read) */
    model_slot *cur;
};

int model_slot_load(const char *path, const item_cache_params *cache_params,
                    dense_precision precision, uint64_t generation, model_slot **out,
                    char *err, size_t errlen) {
    *out = NULL;
    model_slot *s = calloc(1, sizeof *s);
    if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    int rc = qin_model_load(path, &s->model, err, errlen);
    if (rc == CTR_OK && (rc = qin_model_set_precision(s->model, precision, err, errlen)) < 0)
        qin_model_free(s->model);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->cfg = qin_model_config(s->model);
    item_cache_params cp = *cache_params;
    cp.vec_floats = qin_item_vec_floats(s->model);
    if ((rc = item_cache_init(&cp, &s->cache, err, errlen)) < 0) {
        qin_model_free(s->model);
        free(s);
        return rc;
    }
    for (int i = 0; i < s->cfg->num_ctx; i++) s->ctx_name[i] = s->cfg->ctx_name[i];
    snprintf(s->path, sizeof s->path, "%s", path);
    s->generation = generation;
    atomic_init(&s->refs, 1);
    *out = s;
    return CTR_OK;
}

void model_slot_release(model_slot *s) {
    if (!s) return;
    if (atomic_fetch_sub(&s->refs, 1) != 1) return;
    if (s->metrics) {
        item_cache_stats st;
        item_cache_stats_get(s->cache, &st);
        metrics_cache_retire(s->metrics, &st);
    }
    item_cache_free(s->cache);
    qin_model_free(s->model);
    free(s);
}

model_holder *model_holder_new(model_slot *first) {
    model_holder *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    pthread_mutex_init(&h->mu, NULL);
    h->cur = first;
    return h;
}

void model_holder_free(model_holder *h) {
    if (!h) return;
    model_slot_release(h->cur);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

model_slot *model_holder_acquire(model_holder *h) {
    pthread_mutex_lock(&h->mu);
    model_slot *s = h->cur;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&h->mu);
    return s;
}

void model_holder_swap(model_holder *h, model_slot *s) {
    pthread_mutex_lock(&h->mu);
    model_slot *old = h->cur;
    s->generation = old->generation + 1;
    s->metrics = old->metrics;
    h->cur = s;
    pthread_mutex_unlock(&h->mu);
    model_slot_release(old);
}

/* model_slot.c - reference-counted model + cache, see model_slot.h. */
#include "model_slot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/clock.h"

struct model_holder {
    pthread_mutex_t mu;         /* guards cur (held for a pointer read) */
    model_slot *cur;
};

model_slot_params model_slot_default_params(void) {
    return (model_slot_params){item_cache_default_params(), 0, DENSE_FP32, DENSE_BACKEND_AUTO, 1};
}

int model_slot_load(const char *path, const model_slot_params *p, uint64_t generation,
                    model_slot **out, char *err, size_t errlen) {
    *out = NULL;
    model_slot *s = calloc(1, sizeof *s);
    if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    int64_t t0 = clock_now_ns();
    engine_params ep = engine_default_params();
    ep.precision = p->precision;
    ep.kernel = p->kernel;
    ep.column_parts = p->column_parts;
    int rc = engine_model_load_with(path, &ep, &s->model, err, errlen);
    if (rc < 0) goto fail;
    s->schema = engine_model_schema(s->model);
    int64_t t1 = clock_now_ns();
    /* Before anyone can use it: the first requests find the kernels built. */
    if (p->warmup_max_cand > 0 &&
        (rc = engine_warmup(s->model, p->warmup_max_cand, err, errlen)) < 0)
        goto fail;
    s->load_ms = (double)(t1 - t0) * 1e-6;
    s->warmup_ms = (double)(clock_now_ns() - t1) * 1e-6;
    item_cache_params cp = p->cache;
    cp.vec_floats = engine_item_vec_floats(s->model);
    if ((rc = item_cache_init(&cp, &s->cache, err, errlen)) < 0) goto fail;
    for (int i = 0; i < s->schema->num_ctx; i++) s->ctx_name[i] = s->schema->ctx_name[i];
    snprintf(s->path, sizeof s->path, "%s", path);
    s->generation = generation;
    s->metrics_model = -1;
    atomic_init(&s->refs, 1);
    *out = s;
    return CTR_OK;
fail:
    engine_model_free(s->model);
    free(s);
    return rc;
}

int model_slot_set_cache(model_slot *s, const item_cache_params *p, char *err, size_t errlen) {
    item_cache_params cp = *p;
    cp.vec_floats = engine_item_vec_floats(s->model);
    item_cache *c;
    int rc = item_cache_init(&cp, &c, err, errlen);
    if (rc < 0) return rc;
    item_cache_free(s->cache);
    s->cache = c;
    return CTR_OK;
}

void model_slot_release(model_slot *s) {
    if (!s) return;
    if (atomic_fetch_sub(&s->refs, 1) != 1) return;
    if (s->metrics) {
        item_cache_stats st;
        item_cache_stats_get(s->cache, &st);
        metrics_cache_retire(s->metrics, s->metrics_model, &st);
    }
    item_cache_free(s->cache);
    engine_model_free(s->model);
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
    s->metrics_model = old->metrics_model;
    h->cur = s;
    pthread_mutex_unlock(&h->mu);
    model_slot_release(old);
}

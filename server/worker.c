/*
 * worker.c - per-thread state of ctr-server, and the service's model list
 * (see service.h).
 *
 * libmicrohttpd's pool threads and the scoring helpers each get one worker
 * the first time they need it, kept in a pthread key so it is freed when
 * the thread exits (MHD_stop_daemon and pool_free join their threads).  A
 * worker holds, per model, a feature-store connection under the model's
 * key prefix (connected on first use) and an engine scratch sized for the
 * largest request allowed, remade only when a reload brings a model of
 * another generation.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/log.h"
#include "server/service.h"

static pthread_key_t worker_key;

static void worker_destroy(void *p) {
    worker *w = p;
    if (!w) return;
    for (int i = 0; i < SERVICE_MAX_MODELS; i++) {
        featstore_close(w->m[i].fs);
        engine_scratch_free(w->m[i].scratch);
    }
    arena_free(&w->arena);
    proto_buf_free(&w->out);
    free(w);
}

int worker_global_init(void) { return pthread_key_create(&worker_key, worker_destroy) ? -1 : 0; }

void worker_global_free(void) {
    /* The main thread's worker (if any) is not freed by a thread exit. */
    worker_destroy(pthread_getspecific(worker_key));
    pthread_setspecific(worker_key, NULL);
    pthread_key_delete(worker_key);
}

worker *worker_self(service *svc) {
    worker *w = pthread_getspecific(worker_key);
    if (w) return w;
    w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->svc = svc;
    char err[256];
    for (int i = 0; i < svc->num_models; i++)
        if (featstore_open(&svc->models[i].fs_params, &w->m[i].fs, err, sizeof err) < 0) {
            log_error("feature store: %s", err);
            worker_destroy(w);
            return NULL;
        }
    arena_init(&w->arena, 1 << 20);
    proto_buf_init(&w->out);
    pthread_setspecific(worker_key, w);
    return w;
}

engine_scratch *worker_scratch(worker *w, const service_model *m, const model_slot *slot) {
    worker_model *wm = &w->m[m->index];
    if (wm->scratch && wm->scratch_gen == slot->generation) return wm->scratch;
    engine_scratch_free(wm->scratch);
    wm->scratch = NULL;
    if (engine_scratch_init(slot->model, w->svc->max_candidates, &wm->scratch) < 0) return NULL;
    wm->scratch_gen = slot->generation;
    return wm->scratch;
}

void worker_prepare(service *svc) {
    worker *w = worker_self(svc);
    if (!w) return;
    for (int i = 0; i < svc->num_models; i++) {
        model_slot *s = model_holder_acquire(svc->models[i].holder);
        if (!worker_scratch(w, &svc->models[i], s))
            log_warn("model %s: no scratch yet (out of memory); retried per request",
                     svc->models[i].name);
        model_slot_release(s);
    }
}

/* --- the service's models -------------------------------------------------- */

service_model *service_find_model(service *svc, const char *name) {
    if (!name) return svc->num_models ? &svc->models[0] : NULL;
    for (int i = 0; i < svc->num_models; i++)
        if (strcmp(svc->models[i].name, name) == 0) return &svc->models[i];
    return NULL;
}

featstore_params featstore_params_for(const featstore_params *base, const engine_schema *sc) {
    featstore_params p = *base;
    p.max_tags = sc->num_tags;
    p.mm_dim = sc->mm_dim;
    p.cate = sc->cate_vocab > 0;
    return p;
}

int service_add_model(service *svc, const char *name, const char *path,
                      const model_slot_params *sp, const char *prefix, model_slot *first,
                      char *err, size_t errlen) {
    if (svc->num_models == SERVICE_MAX_MODELS)
        return ctr_fail(err, errlen, CTR_EINVAL, "more than %d models", SERVICE_MAX_MODELS);
    if (service_find_model(svc, name) && svc->num_models)
        return ctr_fail(err, errlen, CTR_EINVAL, "two models named \"%s\" (name them with "
                        "--model NAME=PATH)", name);
    service_model *m = &svc->models[svc->num_models];
    memset(m, 0, sizeof *m);
    m->index = svc->num_models;
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->path, sizeof m->path, "%s", path);
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->slot_params = *sp;
    m->fs_params = featstore_params_for(&svc->fs_params, first->schema);
    m->fs_params.prefix = m->prefix;
    atomic_init(&m->feature_set, SERVICE_FS_UNKNOWN);
    atomic_init(&m->score_ns_per_mflop, 0);
    if (svc->metrics) {
        int k = metrics_add_model(svc->metrics, name);
        if (k != m->index)
            return ctr_fail(err, errlen, CTR_EINVAL, "metrics: no room for model %s", name);
        first->metrics = svc->metrics;
        first->metrics_model = k;
        metrics_set_model(svc->metrics, k, first->schema->name, first->schema->version,
                          engine_arch_name(first->schema->arch));
    }
    if (!(m->holder = model_holder_new(first)))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    svc->num_models++;
    return CTR_OK;
}

void service_free_models(service *svc) {
    for (int i = 0; i < svc->num_models; i++) {
        model_holder_free(svc->models[i].holder);
        svc->models[i].holder = NULL;
    }
    svc->num_models = 0;
}

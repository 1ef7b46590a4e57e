/*
 * worker.c - per-thread state of ctr-server (see worker.h).
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

#include "core/base/log.h"
#include "server/worker.h"

static pthread_key_t worker_key;
static int worker_key_made;   /* worker_global_init succeeded */

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

int worker_global_init(void) {
    if (pthread_key_create(&worker_key, worker_destroy)) return -1;
    worker_key_made = 1;
    return 0;
}

void worker_global_free(void) {
    /* Start-up may fail before the key exists: an uninitialised key may
     * name another library's, whose value is no worker. */
    if (!worker_key_made) return;
    worker_key_made = 0;
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
        engine_scratch *sc = worker_scratch(w, &svc->models[i], s);
        char err[256];
        if (!sc)
            log_warn("model %s: no scratch yet (out of memory); retried per request",
                     svc->models[i].name);
        /* This thread's first use of the CPU's AMX units and of its
         * scratch, now rather than in a request. */
        else if (engine_warmup_thread(s->model, sc, err, sizeof err) < 0)
            log_warn("model %s: thread warm-up: %s", svc->models[i].name, err);
        model_slot_release(s);
    }
}

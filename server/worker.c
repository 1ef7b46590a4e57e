/*
 * worker.c - per-thread state of ctr-server (see service.h).
 *
 * libmicrohttpd's pool threads and the scoring helpers each get one worker
 * the first time they need it, kept in a pthread key so it is freed when
 * the thread exits (MHD_stop_daemon and pool_free join their threads).  A
 * worker's engine scratch is sized for the largest request allowed and
 * remade only when a reload brings a model of another generation.
 */
#include <pthread.h>
#include <stdlib.h>

#include "server/log.h"
#include "server/service.h"

static pthread_key_t worker_key;

static void worker_destroy(void *p) {
    worker *w = p;
    if (!w) return;
    featstore_close(w->fs);
    qin_scratch_free(w->scratch);
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
    if (featstore_open(&svc->fs_params, &w->fs, err, sizeof err) < 0) {
        log_error("feature store: %s", err);
        free(w);
        return NULL;
    }
    arena_init(&w->arena, 1 << 20);
    proto_buf_init(&w->out);
    pthread_setspecific(worker_key, w);
    return w;
}

qin_scratch *worker_scratch(worker *w, const model_slot *slot) {
    if (w->scratch && w->scratch_gen == slot->generation) return w->scratch;
    qin_scratch_free(w->scratch);
    w->scratch = NULL;
    if (qin_scratch_init(slot->model, w->svc->max_candidates, &w->scratch) < 0) return NULL;
    w->scratch_gen = slot->generation;
    return w->scratch;
}

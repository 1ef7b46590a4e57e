/*
 * pool.c - fork-join scoring helpers (see pool.h).
 *
 * Jobs wait in a FIFO list; a helper takes the oldest job with unclaimed
 * parts.  Parts are claimed with an atomic counter shared by the helpers
 * and the job's caller; completion is counted under the job's mutex, and
 * the caller sleeps on its condition variable only once every part has
 * been claimed and some are still running elsewhere.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "core/base/status.h"

typedef struct job {
    pool_fn fn;
    void *arg;
    int nparts;
    atomic_int next;      /* next part to claim */
    int done;             /* parts finished (under mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *qnext;    /* in the pool's queue while parts are unclaimed */
} job;

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    int stop;
    int nthreads;
    pthread_t *threads;
};

/* Runs one part; wakes the caller when it was the last.  The count is
 * taken under the job's mutex so the caller, which owns the job on its
 * stack, cannot see the job finished and return while a helper is still
 * about to touch it. */
static void run_part(job *j, int part) {
    j->fn(j->arg, part, j->nparts);
    pthread_mutex_lock(&j->mu);
    if (++j->done == j->nparts) pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void unlink_job(pool *p, job *j) {
    job **pp = &p->head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (!*pp) return;
    *pp = j->qnext;
    if (p->tail == j) p->tail = prev;
    j->qnext = NULL;
}

static void *helper_main(void *arg) {
    pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->head) pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop) break;
        job *j = p->head;
        int part = atomic_fetch_add(&j->next, 1);
        if (part >= j->nparts - 1) unlink_job(p, j); /* that was the last part */
        if (part >= j->nparts) continue;
        pthread_mutex_unlock(&p->mu);
        run_part(j, part);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int pool_init(int nthreads, pool **out) {
    *out = NULL;
    if (nthreads < 0 || nthreads > 1024) return CTR_EINVAL;
    pool *p = calloc(1, sizeof *p);
    if (!p) return CTR_ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc(nthreads ? (size_t)nthreads : 1, sizeof *p->threads);
    if (!p->threads) {
        pool_free(p);
        return CTR_ENOMEM;
    }
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, helper_main, p) != 0) {
            pool_free(p);
            return CTR_ENOMEM;
        }
        p->nthreads++;
    }
    *out = p;
    return CTR_OK;
}

void pool_free(pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int pool_threads(const pool *p) { return p ? p->nthreads : 0; }

void pool_run(pool *p, pool_fn fn, void *arg, int nparts) {
    if (nparts <= 0) return;
    if (nparts == 1 || !p || p->nthreads == 0) {
        for (int i = 0; i < nparts; i++) fn(arg, i, nparts);
        return;
    }
    job j = {.fn = fn, .arg = arg, .nparts = nparts};
    atomic_init(&j.next, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);

    pthread_mutex_lock(&p->mu);
    if (p->tail) p->tail->qnext = &j; else p->head = &j;
    p->tail = &j;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    /* Work on our own job too, until its parts are all claimed. */
    for (;;) {
        int part = atomic_fetch_add(&j.next, 1);
        if (part >= nparts) break;
        run_part(&j, part);
    }
    /* The job may still sit in the queue (helpers never saw it). */
    pthread_mutex_lock(&p->mu);
    unlink_job(p, &j);
    pthread_mutex_unlock(&p->mu);

    pthread_mutex_lock(&j.mu);
    while (j.done < nparts) pthread_cond_wait(&j.cv, &j.mu);
    pthread_mutex_unlock(&j.mu);
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.cv);
}

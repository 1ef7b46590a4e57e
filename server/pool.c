/*
 * pool.c - fork-join scoring helpers (see pool.h).
 *
 * Jobs wait in a FIFO list; a helper takes the oldest job with unclaimed
 * parts.  Parts are claimed with an atomic counter shared by the helpers
 * and the job's caller.
 *
 * Latency: a request split by columns forks and joins once per layer,
 * every few tens of microseconds, and a futex wake-up and a context switch
 * cost about as much on a VM.  So a helper that finishes a part spins a
 * little (SPIN_NS) for the next job before it sleeps on the condition
 * variable, the caller signals the variable only when a helper sleeps,
 * and the caller waits for the last part by spinning for as long, then
 * sleeping on the job's own variable.  Spinning costs CPU only in those
 * gaps, and never where no job comes: a helper idle for SPIN_NS sleeps.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "core/base/status.h"

/* How long a helper waits for the next job, and the caller for its last
 * part, by spinning before sleeping. */
#define SPIN_NS 20000

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

typedef struct job {
    pool_fn fn;
    void *arg;
    int nparts;
    atomic_int next;      /* next part to claim */
    atomic_int done;      /* parts finished */
    int sleeping;         /* the caller waits on cv (under mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *qnext;    /* in the pool's queue while parts are unclaimed */
} job;

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    atomic_int queued;    /* jobs in the list (read without mu by spinners) */
    /* pool_each_thread's job (under mu): run once by each helper whose
     * generation is behind each_gen. */
    pool_fn each_fn;
    void *each_arg;
    int each_gen, each_done, each_next;
    pthread_cond_t each_cv;
    int sleepers;         /* helpers waiting on cv (under mu) */
    int stop;
    int nthreads;
    pthread_t *threads;
};

/* Runs one part; wakes the caller when it was the last and the caller
 * sleeps.  The caller owns the job on its stack and returns once it sees
 * done == nparts with no helper inside its mutex, so the last part's
 * helper takes the job's mutex for the count whenever the caller may be
 * asleep, and never touches the job after its count otherwise. */
static void run_part(job *j, int part) {
    j->fn(j->arg, part, j->nparts);
    pthread_mutex_lock(&j->mu);
    if (atomic_fetch_add(&j->done, 1) + 1 == j->nparts && j->sleeping) pthread_cond_signal(&j->cv);
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
    atomic_fetch_sub(&p->queued, 1);
}

static void *helper_main(void *arg) {
    pool *p = arg;
    int gen = 0;
    pthread_setname_np(pthread_self(), "ctr-score"); /* top -H, perf sched */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (gen != p->each_gen) {
            gen = p->each_gen;
            pool_fn fn = p->each_fn;
            void *a = p->each_arg;
            int i = p->each_next++;
            pthread_mutex_unlock(&p->mu);
            fn(a, i, p->nthreads);
            pthread_mutex_lock(&p->mu);
            p->each_done++;
            pthread_cond_broadcast(&p->each_cv);
            continue;
        }
        if (!p->stop && !p->head) {
            /* Spin a little for the next job (the next layer of the same
             * request, typically), then sleep. */
            pthread_mutex_unlock(&p->mu);
            for (long long t0 = now_ns(); !atomic_load_explicit(&p->queued, memory_order_acquire) &&
                                          now_ns() - t0 < SPIN_NS;)
                cpu_relax();
            pthread_mutex_lock(&p->mu);
            while (!p->stop && !p->head && gen == p->each_gen) {
                p->sleepers++;
                pthread_cond_wait(&p->cv, &p->mu);
                p->sleepers--;
            }
        }
        if (p->stop) break;
        if (gen != p->each_gen || !p->head) continue;
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
    pthread_cond_init(&p->each_cv, NULL);
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
    pthread_cond_destroy(&p->each_cv);
    free(p);
}

void pool_each_thread(pool *p, pool_fn fn, void *arg) {
    if (!p || !p->nthreads) return;
    pthread_mutex_lock(&p->mu);
    p->each_fn = fn;
    p->each_arg = arg;
    p->each_done = p->each_next = 0;
    p->each_gen++;
    pthread_cond_broadcast(&p->cv);
    while (p->each_done < p->nthreads) pthread_cond_wait(&p->each_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
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
    atomic_init(&j.done, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);

    pthread_mutex_lock(&p->mu);
    if (p->tail) p->tail->qnext = &j; else p->head = &j;
    p->tail = &j;
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->cv);
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

    for (long long t0 = now_ns();
         atomic_load_explicit(&j.done, memory_order_acquire) < nparts && now_ns() - t0 < SPIN_NS;)
        cpu_relax();
    /* Past here no helper may still hold j.mu (see run_part). */
    pthread_mutex_lock(&j.mu);
    j.sleeping = 1;
    while (atomic_load(&j.done) < nparts) pthread_cond_wait(&j.cv, &j.mu);
    pthread_mutex_unlock(&j.mu);
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.cv);
}

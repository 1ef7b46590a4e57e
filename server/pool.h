/*
 * pool.h - fork-join helpers that split one request's scoring across cores.
 *
 * A request with many candidates is cut into parts; the calling thread runs
 * parts itself and idle pool threads take the others, so the latency of a
 * big request falls with the number of cores.  The caller never only
 * waits: it keeps claiming parts of its own job until none are left, so a
 * busy pool (every helper on another request) degrades to running the job
 * on the caller alone, never to a queueing delay.  Several threads may call
 * pool_run at once; each job's parts are claimed with one atomic counter.
 */
#ifndef CTR_POOL_H
#define CTR_POOL_H

typedef struct pool pool;

/* fn(arg, part, nparts) runs part `part` of a job; parts are independent. */
typedef void (*pool_fn)(void *arg, int part, int nparts);

/* Starts nthreads helper threads (0 is allowed: pool_run then runs every
 * part on the caller).  CTR_OK or CTR_ENOMEM / CTR_EINVAL. */
int pool_init(int nthreads, pool **out);

/* Stops and joins the helpers; no pool_run may be in progress. */
void pool_free(pool *p);

/* Runs parts 0..nparts-1 of fn and returns when all are done.
 * Thread-safe. */
void pool_run(pool *p, pool_fn fn, void *arg, int nparts);

int pool_threads(const pool *p);

/* Runs fn(arg, i, pool_threads(p)) once on each helper thread (i numbers
 * them) and returns when every one has: for per-thread set-up, such as
 * warming a thread before it takes requests.  Not concurrently with
 * itself. */
void pool_each_thread(pool *p, pool_fn fn, void *arg);

#endif

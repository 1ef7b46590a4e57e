/*
 * rank_split.c - one request's forward pass across the scoring pool, and
 * --split auto's planner (rank_split.h).
 *
 * Workload: requests of 1..max_candidates candidates on the request
 * workers, each handing parts to score_threads - 1 helpers (pool.h); a
 * hand-off costs a futex wake and a context switch (tens of microseconds
 * on a VM), so a request is split only when each part carries enough
 * arithmetic to pay for it.  The planner runs once at start.
 */
#include "server/rank_split.h"

#include <stdlib.h>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/worker.h"

/* One slice of the candidates: candidate, context and explanation rows
 * offset alike. */
static void score_part(void *arg, int part, int nparts) {
    static log_limit lim;
    rank_split_job *j = arg;
    int lo = (int)((long long)j->n * part / nparts), hi = (int)((long long)j->n * (part + 1) / nparts);
    if (hi <= lo) return;
    worker *w = worker_self(j->svc);
    engine_scratch *s = w ? worker_scratch(w, j->m, j->slot) : NULL;
    char err[256];
    const int nctx = j->slot->schema->num_ctx;
    engine_explain ex;
    if (j->ex)
        ex = (engine_explain){j->ex->k, j->ex->pos + (size_t)lo * j->ex->k,
                              j->ex->weight + (size_t)lo * j->ex->k};
    engine_request r = {j->hist, j->nh, j->cand + lo, j->ctx + (size_t)lo * nctx, hi - lo,
                        j->ex ? &ex : NULL, NULL};
    if (!s || engine_forward(j->slot->model, s, &r, j->prob + lo, err, sizeof err) < 0) {
        if (s) log_limited(&lim, LOG_ERROR, "scoring failures", "request %s: scoring: %s",
                            j->request_id, err);
        atomic_store(&j->failed, 1);
    }
}

/* engine_par's runner: the parts on the scoring pool. */
static void par_run(void *ctx, engine_part_fn fn, void *arg, int nparts) {
    pool_run(ctx, fn, arg, nparts);
}

/* At the default split_min_mflops (25: ~150 us at the QNN kernel's rate)
 * the MicroLens QIN (8.5 MFLOP a candidate) and DIN (36 MFLOP) split 64
 * candidates in two, while TIN (0.08 MFLOP) and small models score them on
 * this thread.
 *
 * Under load every core already has a request, and a hand-off only adds a
 * wake-up and a wait (8 connections, int8 N = 64: 1,982 req/s when every
 * request split by candidates, 2,355 on one thread each).  So a request
 * takes only the score threads the others in hand leave; each holds at
 * least one (a split one may hold more, and then the pool's parts simply
 * queue behind it, claimed by the callers themselves). */
rank_split_way rank_split_choose(const service *svc, int column_parts, service_split mode, int n,
                                 double per_cand) {
    int threads = svc->score_parts - rank_split_others(svc);
    if (threads < 1) threads = 1;
    rank_split_way way = {1, 1};
    if (threads < 2 || mode == SERVICE_SPLIT_ONE) return way;
    /* Column parts need a thread each. */
    if (mode == SERVICE_SPLIT_COLUMNS && column_parts > 1 && column_parts <= threads) {
        int min_rows =
            per_cand > 0 ? (int)(svc->split_min_mflops * 1e6 * column_parts / per_cand) + 1 : n;
        if (n >= min_rows) {
            way.cols = column_parts;
            return way;
        }
    }
    int min_part = per_cand > 0 ? (int)(svc->split_min_mflops * 1e6 / per_cand) + 1 : n;
    if (min_part < svc->split_min) min_part = svc->split_min;
    way.parts = n / min_part;
    if (way.parts > threads) way.parts = threads;
    if (way.parts < 1) way.parts = 1;
    return way;
}

int rank_split_score(rank_split_job *job, service_split mode, double per_cand) {
    service *svc = job->svc;
    const int n = job->n;
    const rank_split_way way =
        rank_split_choose(svc, engine_model_column_parts(job->slot->model), mode, n, per_cand);
    if (way.cols > 1) {
        /* One call on this thread, the pool taking the other column parts
         * of each layer. */
        int min_rows =
            per_cand > 0 ? (int)(svc->split_min_mflops * 1e6 * way.cols / per_cand) + 1 : n;
        engine_par par = {par_run, svc->scorers, min_rows};
        worker *w = worker_self(svc);
        engine_scratch *s = w ? worker_scratch(w, job->m, job->slot) : NULL;
        engine_explain e;
        if (job->ex) e = *job->ex;
        engine_request r = {job->hist, job->nh, job->cand, job->ctx, n, job->ex ? &e : NULL, &par};
        char err[256];
        if (s && engine_forward(job->slot->model, s, &r, job->prob, err, sizeof err) == CTR_OK)
            return 0;
        static log_limit lim;
        if (s) log_limited(&lim, LOG_ERROR, "scoring failures", "scoring: %s", err);
        return -1;
    }
    pool_run(svc->scorers, score_part, job, way.parts);
    return atomic_load(&job->failed) ? -1 : 0;
}

/* --split auto.  Times a request of each size class's candidate count
 * (service_split_rows, within max_candidates) in each mode, interleaved
 * round by round (the order rotated) so a burst of other load falls on all
 * alike, and keeps per class the fastest median; candidates unless another
 * mode is 5% faster (timings on a shared machine jitter).  The requests: a
 * full history and ids spread over the vocabulary, every feature padding
 * (valid for every architecture). */
#define PLAN_ROUNDS 9

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

service_split rank_split_pick(const double *us, int nmodes) {
    service_split best = SERVICE_SPLIT_CANDIDATES;
    for (int k = 0; k < nmodes; k++)
        if (us[k] >= 0 && us[k] < 0.95 * us[SERVICE_SPLIT_CANDIDATES] && us[k] < us[best])
            best = (service_split)k;
    return best;
}

int rank_split_plan(service *svc, service_model *m, char *err, size_t errlen) {
    if (svc->score_parts < 2) return CTR_OK;
    model_slot *slot = model_holder_acquire(m->holder);
    const engine_model *em = slot->model;
    const engine_schema *sc = engine_model_schema(em);
    int top = 0;
    for (int c = 0; c < SERVICE_SPLIT_CLASSES; c++)
        if (service_split_rows(c) <= svc->max_candidates) top = service_split_rows(c);
    const int nh = sc->max_len, ni = top + nh;
    const size_t vf = engine_item_vec_floats(em);
    engine_item *items = calloc((size_t)ni, sizeof *items);
    float *vecs = engine_item_vecs_alloc(em, ni);
    float *prob = malloc((size_t)(top ? top : 1) * sizeof *prob);
    const float **ptr = malloc((size_t)ni * sizeof *ptr);
    int32_t *ctx = calloc((size_t)(top ? top : 1) * (sc->num_ctx ? sc->num_ctx : 1), sizeof *ctx);
    int rc = CTR_ENOMEM;
    if (!items || !vecs || !prob || !ptr || !ctx) {
        ctr_fail(err, errlen, rc, "split plan: out of memory");
        goto done;
    }
    const int span = sc->item_vocab - sc->item_id_min;
    for (int i = 0; i < ni; i++) items[i].id = sc->item_id_min + (int)((i * 7919LL) % span);
    if ((rc = engine_items_compute(em, ni, items, vecs, NULL, err, errlen)) < 0) goto done;
    for (int i = 0; i < ni; i++) ptr[i] = vecs + (size_t)i * vf;
    const double per_cand = 2.0 * engine_model_cost(em, nh).folded;
    const int cols = engine_model_column_parts(em) > 1;
    for (int c = 0; c < SERVICE_SPLIT_CLASSES && rc == CTR_OK; c++) {
        const int n = service_split_rows(c);
        if (n > svc->max_candidates) break; /* larger classes: as the largest timed */
        double t[SERVICE_SPLIT_COUNT][PLAN_ROUNDS];
        const int nmodes = cols ? SERVICE_SPLIT_COUNT : SERVICE_SPLIT_COLUMNS;
        for (int r = -1; r < PLAN_ROUNDS && rc == CTR_OK; r++)
            for (int k = 0; k < nmodes; k++) {
                const service_split mode = (service_split)((k + (r < 0 ? 0 : r)) % nmodes);
                rank_split_job job = {svc, m, slot, ptr + top, nh, ptr, ctx, n, prob, NULL,
                                      "split-plan", 0};
                int64_t t0 = clock_now_ns();
                if (rank_split_score(&job, mode, per_cand) < 0) {
                    rc = ctr_fail(err, errlen, CTR_EINVAL, "split plan: scoring failed");
                    break;
                }
                if (r >= 0) t[mode][r] = (double)(clock_now_ns() - t0) * 1e-3;
            }
        if (rc < 0) break;
        for (int k = 0; k < nmodes; k++) {
            qsort(t[k], PLAN_ROUNDS, sizeof t[k][0], cmp_double);
            m->split_us[c][k] = t[k][PLAN_ROUNDS / 2];
        }
        m->split[c] = rank_split_pick(m->split_us[c], nmodes);
        for (int d = c + 1; d < SERVICE_SPLIT_CLASSES; d++) m->split[d] = m->split[c];
    }
done:
    free(items);
    free(vecs);
    free(prob);
    free(ptr);
    free(ctx);
    model_slot_release(slot);
    return rc;
}

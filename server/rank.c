/*
 * rank.c - POST /v1/rank: decode, fetch features, score, answer.
 *
 * Workload: one user, N = 1..max_candidates candidates, a history of up to
 * max_len behaviours.  Cost order, warm cache: the forward pass (~90-160 us
 * per candidate on one core for MicroLens) >> JSON decode/encode (~1 us per
 * candidate) > one Redis GET for the history (~50 us on loopback).  So the
 * path is arranged to (1) touch Redis at most twice, one GET for the user
 * and one MGET for every item vector the cache lacks, (2) use cached item
 * vectors in place (pinned, never copied), and (3) split a big request's
 * candidates across the scoring pool so its latency falls with cores.
 *
 * Failures of the feature store degrade, never crash (README "Failure
 * behaviour"): no history -> scored with an empty history and
 * "history_unavailable"; item features unreachable -> the candidates the
 * cache lacks are left unscored ("item_features_unavailable"), and if that
 * leaves nothing to rank, 503.  Candidates Redis has no features for are
 * listed in "unscored" ("item_features_missing").
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "proto/error.h"
#include "proto/rank.h"
#include "server/log.h"
#include "server/service.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int answer_error(worker *w, proto_error e, const char *msg) {
    proto_buf_reset(&w->out);
    proto_error_encode(e, msg, &w->out);
    return proto_error_http(e);
}

/* Open-addressing map item id -> slot in the request's unique-item table. */
typedef struct idmap {
    int64_t *keys;
    int *vals;
    unsigned mask;
} idmap;

static int idmap_init(idmap *m, arena *a, int n) {
    unsigned cap = 16;
    while (cap < 2u * (unsigned)n) cap <<= 1;
    m->keys = arena_alloc(a, cap * sizeof *m->keys, 64);
    m->vals = arena_alloc(a, cap * sizeof *m->vals, 64);
    if (!m->keys || !m->vals) return -1;
    for (unsigned i = 0; i < cap; i++) m->keys[i] = 0; /* 0 is never a valid id */
    m->mask = cap - 1;
    return 0;
}

/* Index of id, inserting it as *next when new. */
static int idmap_get(idmap *m, int64_t id, int *next) {
    unsigned h = (unsigned)((uint64_t)id * 0x9E3779B97F4A7C15ull >> 32) & m->mask;
    while (m->keys[h] && m->keys[h] != id) h = (h + 1) & m->mask;
    if (!m->keys[h]) {
        m->keys[h] = id;
        m->vals[h] = (*next)++;
    }
    return m->vals[h];
}

typedef struct score_job {
    service *svc;
    const model_slot *slot;
    const float *const *hist;
    int nh;
    const float *const *cand;     /* n scorable candidates */
    const int32_t *ctx;
    int n;
    float *prob;
    atomic_int failed;
} score_job;

static void score_part(void *arg, int part, int nparts) {
    score_job *j = arg;
    int lo = (int)((long long)j->n * part / nparts), hi = (int)((long long)j->n * (part + 1) / nparts);
    if (hi <= lo) return;
    worker *w = worker_self(j->svc);
    qin_scratch *s = w ? worker_scratch(w, j->slot) : NULL;
    char err[256];
    const int nctx = j->slot->cfg->num_ctx;
    qin_request r = {j->hist, j->nh, j->cand + lo, j->ctx + (size_t)lo * nctx, hi - lo};
    if (!s || qin_forward(j->slot->model, s, &r, j->prob + lo, err, sizeof err) < 0) {
        if (s) log_error("scoring: %s", err);
        atomic_store(&j->failed, 1);
    }
}

static metrics_redis_result redis_result(int rc) {
    return rc == CTR_ETIMEOUT ? METRICS_REDIS_TIMEOUT
                              : (rc == CTR_EBACKEND ? METRICS_REDIS_ERROR : METRICS_REDIS_OK);
}

int rank_handle(worker *w, const char *body, size_t len) {
    service *svc = w->svc;
    double t0 = now_s();
    arena *a = &w->arena;
    arena_reset(a);
    proto_buf_reset(&w->out);
    char err[512];
    int status = 200;

    model_slot *slot = model_holder_acquire(svc->models);
    const qin_config *c = slot->cfg;
    const int nctx = c->num_ctx;
    int nref = 0;
    item_cache_ref *refs = NULL;

    proto_rank_schema schema = {nctx, slot->ctx_name, svc->max_candidates, svc->max_seq};
    proto_rank_request req;
    int rc = proto_rank_request_decode(body, len, &schema, a, &req, err, sizeof err);
    if (rc < 0) {
        status = answer_error(w, proto_error_from_status(rc), err);
        goto done;
    }
    const int n = req.num_cand;
    for (int i = 0; i < n; i++) {
        if (req.cand_id[i] < 1 || req.cand_id[i] >= c->item_vocab) {
            snprintf(err, sizeof err, "candidates[%d].item_id: %lld outside the model's items 1..%d",
                     i, (long long)req.cand_id[i], c->item_vocab - 1);
            status = answer_error(w, PROTO_ERROR_OUT_OF_RANGE, err);
            goto done;
        }
        for (int f = 0; f < nctx; f++) {
            int32_t v = req.ctx[(size_t)i * nctx + f];
            if (v < 0 || v >= c->ctx_vocab[f]) {
                snprintf(err, sizeof err, "candidates[%d].%s: %d outside 0..%d", i,
                         c->ctx_name[f], (int)v, c->ctx_vocab[f] - 1);
                status = answer_error(w, PROTO_ERROR_OUT_OF_RANGE, err);
                goto done;
            }
        }
    }

    const char *degraded[4];
    int ndeg = 0;

    /* History: the request's own, else one GET. */
    int64_t *hist_ids = req.item_seq;
    int nh = req.has_item_seq ? req.seq_len : 0;
    if (!req.has_item_seq) {
        double r0 = now_s();
        rc = featstore_get_user(w->fs, req.user_id, a, &hist_ids, &nh, err, sizeof err);
        metrics_redis(svc->metrics, METRICS_REDIS_GET_USER, now_s() - r0, redis_result(rc));
        if (rc == CTR_ENOTFOUND) {
            nh = 0;
        } else if (rc < 0) {
            log_warn("history of user %s: %s", req.user_id, err);
            degraded[ndeg++] = "history_unavailable";
            nh = 0;
        }
    }
    if (nh > c->max_len) { /* only the most recent max_len count */
        hist_ids += nh - c->max_len;
        nh = c->max_len;
    }

    /* Unique item ids of candidates and history (valid ones only: history
     * ids outside the vocabulary are padding). */
    idmap map;
    int nu = 0;
    int *cand_u = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand_u, 64);
    int *hist_u = arena_alloc(a, (size_t)(nh ? nh : 1) * sizeof *hist_u, 64);
    int64_t *uid = arena_alloc(a, (size_t)(n + nh + 1) * sizeof *uid, 64);
    const float **uvec = arena_alloc(a, (size_t)(n + nh + 1) * sizeof *uvec, 64);
    refs = arena_alloc(a, (size_t)(n + nh + 1) * sizeof *refs, 64);
    if (!cand_u || !hist_u || !uid || !uvec || !refs || idmap_init(&map, a, n + nh) < 0) {
        status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        int before = nu;
        cand_u[i] = idmap_get(&map, req.cand_id[i], &nu);
        if (nu > before) uid[cand_u[i]] = req.cand_id[i];
    }
    for (int j = 0; j < nh; j++) {
        int64_t id = hist_ids[j];
        if (id < 1 || id >= c->item_vocab) {
            hist_u[j] = -1;
            continue;
        }
        int before = nu;
        hist_u[j] = idmap_get(&map, id, &nu);
        if (nu > before) uid[hist_u[j]] = id;
    }

    /* Cached vectors, pinned for the rest of the request. */
    item_cache_get_many(slot->cache, uid, (size_t)nu, uvec, refs);
    nref = nu;

    /* One MGET for everything the cache lacks. */
    int nmiss = 0;
    int64_t *miss_id = arena_alloc(a, (size_t)(nu ? nu : 1) * sizeof *miss_id, 64);
    int *miss_u = arena_alloc(a, (size_t)(nu ? nu : 1) * sizeof *miss_u, 64);
    if (!miss_id || !miss_u) {
        status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");
        goto done;
    }
    for (int u = 0; u < nu; u++)
        if (!uvec[u]) {
            miss_id[nmiss] = uid[u];
            miss_u[nmiss++] = u;
        }
    int fetch_failed = 0;
    if (nmiss > 0) {
        featstore_item *feats = arena_alloc(a, (size_t)nmiss * sizeof *feats, 64);
        qin_item_input *in = arena_alloc(a, (size_t)nmiss * sizeof *in, 64);
        int *in_k = arena_alloc(a, (size_t)nmiss * sizeof *in_k, 64);
        if (!feats || !in || !in_k) {
            status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");
            goto done;
        }
        double r0 = now_s();
        rc = featstore_get_items(w->fs, miss_id, nmiss, a, feats, err, sizeof err);
        metrics_redis(svc->metrics, METRICS_REDIS_GET_ITEMS, now_s() - r0, redis_result(rc));
        if (rc < 0) {
            log_warn("item features: %s", err);
            fetch_failed = 1;
            degraded[ndeg++] = "item_features_unavailable";
        } else {
            int nin = 0;
            for (int k = 0; k < nmiss; k++) {
                if (!feats[k].found) continue;
                if (feats[k].mm_dim != c->mm_in) {
                    log_warn("item %lld: embedding width %d, the model reads %d",
                             (long long)miss_id[k], feats[k].mm_dim, c->mm_in);
                    continue;
                }
                in[nin] = (qin_item_input){miss_id[k], feats[k].tags, feats[k].num_tags,
                                           feats[k].mm};
                in_k[nin++] = k;
            }
            /* All the missing vectors in one batch (two sgemm), then into
             * the cache, which copies them and hands back pinned entries. */
            const size_t vf = qin_item_vec_floats(slot->model);
            float *vecs = arena_alloc(a, (size_t)(nin ? nin : 1) * vf * sizeof(float), 64);
            unsigned char *ok = arena_alloc(a, (size_t)(nin ? nin : 1), 64);
            if (!vecs || !ok) {
                status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");
                goto done;
            }
            memset(ok, 1, (size_t)(nin ? nin : 1));
            if (qin_items_compute(slot->model, nin, in, vecs, NULL, err, sizeof err) < 0) {
                /* Some item's features are out of the model's range: redo
                 * them one by one and leave the bad ones out. */
                for (int j = 0; j < nin; j++)
                    if (qin_item_compute(slot->model, &in[j], vecs + (size_t)j * vf, err,
                                         sizeof err) < 0) {
                        log_warn("item %lld: unusable features (%s)", (long long)in[j].id, err);
                        ok[j] = 0;
                    }
            }
            for (int j = 0; j < nin; j++) {
                if (!ok[j]) continue;
                int k = in_k[j];
                uvec[miss_u[k]] = item_cache_put(slot->cache, miss_id[k], vecs + (size_t)j * vf,
                                                 &refs[miss_u[k]]);
            }
        }
    }

    /* Pointer arrays for the engine; candidates without a vector are left
     * out and reported. */
    const float **hist = arena_alloc(a, (size_t)(nh ? nh : 1) * sizeof *hist, 64);
    const float **cand = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand, 64);
    int32_t *ctx = arena_alloc(a, (size_t)(n ? n : 1) * (nctx ? nctx : 1) * sizeof *ctx, 64);
    int *cand_of = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand_of, 64);
    int64_t *unscored = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *unscored, 64);
    float *prob = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *prob, 64);
    int64_t *sid = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *sid, 64);
    proto_rank_item *items = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *items, 64);
    if (!hist || !cand || !ctx || !cand_of || !unscored || !prob || !sid || !items) {
        status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");
        goto done;
    }
    for (int j = 0; j < nh; j++) hist[j] = hist_u[j] >= 0 ? uvec[hist_u[j]] : NULL;
    int ns = 0, nun = 0;
    for (int i = 0; i < n; i++) {
        const float *v = uvec[cand_u[i]];
        if (!v) {
            unscored[nun++] = req.cand_id[i];
            continue;
        }
        cand[ns] = v;
        memcpy(ctx + (size_t)ns * nctx, req.ctx + (size_t)i * nctx, (size_t)nctx * sizeof *ctx);
        sid[ns] = req.cand_id[i];
        cand_of[ns++] = i;
    }
    if (nun > 0 && !fetch_failed) degraded[ndeg++] = "item_features_missing";
    if (ns == 0 && n > 0 && fetch_failed) {
        status = answer_error(w, PROTO_ERROR_UNAVAILABLE,
                              "feature store unavailable and no candidate is cached");
        goto done;
    }

    if (svc->skip_scoring) {
        for (int i = 0; i < ns; i++) prob[i] = 0.0f;
    } else if (ns > 0) {
        score_job job = {svc, slot, hist, nh, cand, ctx, ns, prob, 0};
        /* A part must be worth a hand-off to another thread (a futex wake
         * and a context switch, tens of microseconds on a VM): at least
         * split_min candidates and split_min_mflops of arithmetic (25 by
         * default: ~150 us at the QNN kernel's rate).  So the MicroLens
         * model (8.4 MFLOP a candidate) splits 64 candidates in two, while
         * a small model scores them on this thread. */
        const double per_cand = 2.0 * c->num_layers * (double)c->input_dim * c->input_dim +
                                4.0 * c->max_len * c->item_dim + 2.0 * c->input_dim;
        int min_part = (int)(svc->split_min_mflops * 1e6 / per_cand) + 1;
        if (min_part < svc->split_min) min_part = svc->split_min;
        int parts = ns / min_part;
        if (parts > svc->score_parts) parts = svc->score_parts;
        if (parts < 1) parts = 1;
        pool_run(svc->scorers, score_part, &job, parts);
        if (atomic_load(&job.failed)) {
            status = answer_error(w, PROTO_ERROR_INTERNAL, "scoring failed (see the log)");
            goto done;
        }
        metrics_scored(svc->metrics, (uint64_t)ns);
    }

    int kept = proto_rank_order(sid, prob, ns, req.top_k, items);
    for (int k = 0; k < kept; k++) items[k].cand = cand_of[items[k].cand];
    for (int d = 0; d < ndeg; d++) metrics_degraded(svc->metrics, degraded[d]);
    proto_rank_answer ans = {req.request_id, c->name, c->version, items, kept,
                             (int64_t)((now_s() - t0) * 1e6), degraded, ndeg, unscored, nun};
    if (proto_rank_answer_encode(&ans, &w->out) < 0)
        status = answer_error(w, PROTO_ERROR_INTERNAL, "out of memory");

done:
    if (refs && nref) item_cache_release_many(slot->cache, refs, (size_t)nref);
    model_slot_release(slot);
    return status;
}

/*
 * rank.c - POST /v1/rank: decode, history, item vectors, score, answer
 * (stages and degraded reasons: rank.h).
 *
 * Workload: one user, N = 1..max_candidates candidates, a history of up to
 * max_len behaviours, under a deadline of a few to a few tens of
 * milliseconds, for one of the service's models (QIN, DIN or TIN, through
 * core/engine.h).  Cost order, warm cache: the forward pass (QIN ~60-130
 * us, DIN ~400 us, TIN ~1.5 us per candidate on one core at MicroLens and
 * Amazon shapes) against JSON decode/encode (~1 us per candidate) and one
 * Redis round trip for the history (~50 us on loopback): for TIN the
 * service's own work dominates.
 * So the path is arranged to (1) touch Redis at most twice, one read for
 * the user (none when the history cache has it, server/store/hcache.h;
 * otherwise the candidates are looked up in the item cache meanwhile, by
 * an idle scoring thread) and one pipeline for every item vector the cache
 * lacks, each bounded by what is left of the budget after the model's
 * expected share,
 * (2) use cached item vectors in place (pinned, never copied), and (3)
 * split a big request's candidates across the scoring pool so its latency
 * falls with cores.
 *
 * Failures of the feature store degrade, never crash, and never make the
 * answer late: no history -> scored with an empty history; item features
 * unreachable -> the candidates the cache lacks are left unscored, and if
 * that leaves nothing to rank, 503.  A score is never null: item vectors
 * are checked when computed (engine_items_compute refuses non-finite ones,
 * every architecture alike, so they are never cached), and a score that is
 * not finite after the pass sends its candidate to "unscored" (after
 * dropping any history item that poisons the attention).
 *
 * Explanations ("explain": k) ride along with the forward pass (the
 * engine's top-k per candidate, engine.h); when not asked for, the pass is
 * exactly the one without them.
 */
#include "server/rank.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/error.h"
#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/rank_split.h"

/* Time kept for ordering and encoding the answer after scoring. */
#define ANSWER_RESERVE_NS 100000
/* The forward pass's speed before any request has measured it. */
#define DEFAULT_NS_PER_MFLOP 20000

static int answer_error(rank_ctx *x, proto_error e, const char *msg) {
    proto_buf_reset(&x->w->out);
    proto_error_encode(e, msg, &x->w->out);
    return proto_error_http(e);
}

/* The request's id for its log records (proto/openapi.yaml: request_id is
 * in the logs); "-" when the client gave none.  Control characters in it
 * are escaped by the log itself. */
static const char *log_rid(const char *request_id) { return request_id ? request_id : "-"; }

static int out_of_memory(rank_ctx *x) {
    return answer_error(x, PROTO_ERROR_INTERNAL, "out of memory");
}

static void stage_end(rank_ctx *x, int stage) {
    int64_t now = clock_now_ns();
    x->stage_ns[stage] += now - x->stage_t0;
    x->stage_t0 = now;
}

void rank_degrade(rank_ctx *x, proto_degraded reason) {
    if ((unsigned)reason >= PROTO_DEGRADED_COUNT) return;
    for (int i = 0; i < x->ndeg; i++)
        if (x->degraded[i] == reason) return;
    x->degraded[x->ndeg++] = reason;
}

int64_t rank_score_estimate_ns(const rank_ctx *x, int n) {
    long long per = atomic_load_explicit(&x->m->score_ns_per_mflop, memory_order_relaxed);
    if (per <= 0) per = DEFAULT_NS_PER_MFLOP;
    return (int64_t)((double)n * x->flops_per_cand * 1e-6 * (double)per);
}

/* 2 flops per multiply-add of the folded model, for a history of nh. */
static double cand_flops(const rank_ctx *x, int nh) {
    return 2.0 * engine_model_cost(x->slot->model, nh).folded;
}

/* The deadline of a feature-store call: what is left after the model's
 * and the answer's expected share.  0 when nothing is left. */
static int64_t call_deadline(const rank_ctx *x) {
    int64_t d = x->deadline_ns - rank_score_estimate_ns(x, x->req.num_cand) - ANSWER_RESERVE_NS;
    return d > clock_now_ns() ? d : 0;
}

static metrics_redis_result redis_result(int rc) {
    return rc == CTR_ETIMEOUT ? METRICS_REDIS_TIMEOUT
                              : (rc == CTR_EBACKEND ? METRICS_REDIS_ERROR : METRICS_REDIS_OK);
}

/* A feature-store call that timed out because the request's budget ran
 * out, rather than Redis's own command timeout. */
static int budget_timeout(const rank_ctx *x, int rc, int64_t start, int64_t dl) {
    return rc == CTR_ETIMEOUT &&
           dl < start + (int64_t)x->svc->fs_params.command_timeout_ms * 1000000;
}

/* --- begin / end -------------------------------------------------------- */

void rank_begin(rank_ctx *x, worker *w, const rank_input *in) {
    memset(x, 0, sizeof *x);
    x->w = w;
    x->svc = w->svc;
    x->a = &w->arena;
    arena_reset(x->a);
    proto_buf_reset(&w->out);
    x->stage_t0 = clock_now_ns();
    x->arrival_ns = in->arrival_ns ? in->arrival_ns : x->stage_t0;
    x->stage_ns[RANK_STAGE_QUEUE] = x->stage_t0 - x->arrival_ns;
}

void rank_end(rank_ctx *x) {
    if (x->refs && x->nref) item_cache_release_many(x->slot->cache, x->refs, (size_t)x->nref);
    x->nref = 0;
    model_slot_release(x->slot);
    x->slot = NULL;
}

/* The decoder's picker (proto_rank_pick): the named model's current slot,
 * acquired for the rest of the request. */
static const proto_rank_schema *pick_model(void *arg, const char *name) {
    rank_ctx *x = arg;
    service_model *m = service_find_model(x->svc, name);
    if (!m) return NULL;
    if (m != x->m) {
        model_slot_release(x->slot);
        x->m = m;
        x->slot = model_holder_acquire(m->holder);
        x->sc = x->slot->schema;
        x->pschema = (proto_rank_schema){x->sc->num_ctx, x->slot->ctx_name,
                                         x->svc->max_candidates, x->svc->max_seq, NULL};
    }
    return &x->pschema;
}

/* "(models: a, b)" for the message of an unknown model. */
static void model_list(const service *svc, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, " (models: ");
    for (int i = 0; i < svc->num_models && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", svc->models[i].name);
    if (n < cap) snprintf(out + n, cap - n, ")");
}

/* --- decode ------------------------------------------------------------- */

int rank_decode(rank_ctx *x, const rank_input *in) {
    service *svc = x->svc;
    char err[768];
    int rc = proto_rank_request_decode_pick(in->body, in->len, pick_model, x, x->a, &x->req, err,
                                            sizeof err - 256);
    if (rc == CTR_ENOTFOUND) model_list(svc, err + strlen(err), 256);
    if (rc < 0) return answer_error(x, proto_error_from_status(rc), err);
    x->flops_per_cand = cand_flops(x, x->sc->max_len);

    int ms = x->req.deadline_ms ? x->req.deadline_ms
                                : (in->header_deadline_ms > 0 ? in->header_deadline_ms
                                                              : svc->deadline_ms);
    if (ms > svc->max_deadline_ms) ms = svc->max_deadline_ms;
    x->deadline_ms = ms;
    x->deadline_ns = x->arrival_ns + (int64_t)ms * 1000000;
    if (clock_now_ns() >= x->deadline_ns) {
        snprintf(err, sizeof err, "the request waited past its %d ms deadline before work "
                 "began", ms);
        metrics_shed(svc->metrics, 1);
        return answer_error(x, PROTO_ERROR_OVERLOADED, err);
    }

    if ((rc = engine_request_check(x->slot->model, x->req.cand_id, x->req.ctx, x->req.num_cand,
                                   err, sizeof err)) < 0)
        return answer_error(x, proto_error_from_status(rc), err);

    const size_t n1 = (size_t)(x->req.num_cand ? x->req.num_cand : 1);
    x->prob = arena_alloc(x->a, n1 * sizeof *x->prob, 64);
    x->scored = arena_alloc(x->a, n1, 64);
    if (!x->prob || !x->scored) return out_of_memory(x);
    memset(x->scored, 0, n1);
    if (x->req.explain > 0) {
        const size_t k = (size_t)x->req.explain;
        x->xpos = arena_alloc(x->a, n1 * k * sizeof *x->xpos, 64);
        x->xweight = arena_alloc(x->a, n1 * k * sizeof *x->xweight, 64);
        if (!x->xpos || !x->xweight) return out_of_memory(x);
    }
    stage_end(x, RANK_STAGE_DECODE);
    return 0;
}

/* --- history ------------------------------------------------------------ */

/* The user's history from the feature store (one bounded read, after
 * cached_history found it not cached) into hist_ids / nh, its failures as
 * degraded reasons.  Allocates from the arena: nothing else may while it
 * runs (history_part). */
static void read_history(rank_ctx *x, int64_t dl) {
    static log_limit lim_fail;
    int64_t start = clock_now_ns();
    char err[512];
    int rc = featstore_get_user_read(x->w->m[x->m->index].fs, &x->hprobe, dl, x->a,
                                     &x->hist_ids, &x->nh, err, sizeof err);
    metrics_redis(x->svc->metrics, METRICS_REDIS_GET_USER,
                  (double)(clock_now_ns() - start) * 1e-9, redis_result(rc));
    if (rc == CTR_ENOTFOUND) {
        x->nh = 0;
    } else if (rc < 0) {
        x->nh = 0;
        if (budget_timeout(x, rc, start, dl)) {
            rank_degrade(x, PROTO_DEGRADED_HISTORY_DEADLINE);
        } else {
            log_limited(&lim_fail, LOG_WARN, "history read failures",
                        "request %s: history of user %s: %s", log_rid(x->req.request_id),
                        x->req.user_id, err);
            rank_degrade(x, PROTO_DEGRADED_HISTORY_UNAVAILABLE);
        }
    }
}

/* The user's history when the history cache has it (no Redis call, a
 * few hundred ns): 1, with hist_ids / nh set; else 0, with x->hprobe set
 * for read_history. */
static int cached_history(rank_ctx *x) {
    int rc;
    if (!featstore_get_user_cached(x->w->m[x->m->index].fs, x->req.user_id, x->sc->max_len,
                                   x->a, &x->hist_ids, &x->nh, &rc, &x->hprobe))
        return 0;
    if (rc == CTR_ENOTFOUND) x->nh = 0;
    return 1;
}

static int unique_cands(rank_ctx *x);
static void lookup_cands(rank_ctx *x);

/* The two halves of rank_history's fork: part 0 the history read, part 1
 * the candidates' cache lookups (which touch neither the arena nor what
 * the read writes). */
typedef struct history_job {
    rank_ctx *x;
    int64_t dl;
} history_job;

static void history_part(void *arg, int part, int nparts) {
    (void)nparts;
    history_job *j = arg;
    if (part == 0) read_history(j->x, j->dl);
    else lookup_cands(j->x);
}

int rank_history(rank_ctx *x) {
    int fs_state = atomic_load(&x->m->feature_set);
    if (fs_state == SERVICE_FS_MISSING || fs_state == SERVICE_FS_MISMATCH)
        rank_degrade(x, PROTO_DEGRADED_FEATURE_SET_MISSING);

    x->hist_ids = x->req.item_seq;
    x->nh = x->req.has_item_seq ? x->req.seq_len : 0;
    if (!x->req.has_item_seq) {
        int64_t dl = call_deadline(x);
        if (!dl) {
            rank_degrade(x, PROTO_DEGRADED_HISTORY_DEADLINE);
        } else if (cached_history(x)) {
            /* Nothing to wait for: the candidates are looked up by this
             * thread in rank_items, without waking a helper. */
        } else {
            /* The round trip to Redis is mostly waiting: an idle scoring
             * thread looks up the candidates in the item cache meanwhile
             * (the caller does both, one after the other, when none is
             * idle: pool.h).  With other requests in hand the cores are
             * taken, and the hand-off would cost more than it hides. */
            if (unique_cands(x) < 0) return out_of_memory(x);
            history_job j = {x, dl};
            const int parts = x->ncu ? 2 : 1;
            if (rank_split_others(x->svc) > 0)
                for (int p = 0; p < parts; p++) history_part(&j, p, parts);
            else
                pool_run(x->svc->scorers, history_part, &j, parts);
            x->cands_looked = 1;
            x->nref = x->ncu;
        }
    }
    if (x->nh > x->sc->max_len) { /* only the most recent max_len count */
        x->hist_ids += x->nh - x->sc->max_len;
        x->nh = x->sc->max_len;
    }
    x->flops_per_cand = cand_flops(x, x->nh);
    stage_end(x, RANK_STAGE_HISTORY);
    return 0;
}

/* --- item vectors ------------------------------------------------------- */

/* Open-addressing map item id -> slot in the request's unique-item table.
 * Keys are id + 1, so 0 marks an empty slot (ids here are valid, so >= 0:
 * TIN's item 0 is real). */
typedef struct rank_idmap {
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
    for (unsigned i = 0; i < cap; i++) m->keys[i] = 0; /* empty */
    m->mask = cap - 1;
    return 0;
}

/* Index of id, inserting it as *next when new. */
static int idmap_get(idmap *m, int64_t id, int *next) {
    const int64_t key = id + 1;
    unsigned h = (unsigned)((uint64_t)key * 0x9E3779B97F4A7C15ull >> 32) & m->mask;
    while (m->keys[h] && m->keys[h] != key) h = (h + 1) & m->mask;
    if (!m->keys[h]) {
        m->keys[h] = key;
        m->vals[h] = (*next)++;
    }
    return m->vals[h];
}

/* Computes the vectors of the fetched items and puts them in the cache
 * (unless an item change invalidated it since `epoch`, read before the
 * features were: item_cache.h); items whose features are malformed or
 * overflow get no vector. */
static int compute_vectors(rank_ctx *x, const int64_t *miss_id, const int *miss_u, int nmiss,
                           const featstore_item *feats, uint64_t epoch) {
    static log_limit lim_width, lim_bad;
    const engine_schema *sc = x->sc;
    engine_item *in = arena_alloc(x->a, (size_t)nmiss * sizeof *in, 64);
    int *in_k = arena_alloc(x->a, (size_t)nmiss * sizeof *in_k, 64);
    if (!in || !in_k) return -1;
    int nin = 0;
    for (int k = 0; k < nmiss; k++) {
        int u = miss_u[k];
        if (!feats[k].found) {
            /* CTR_EBACKEND / CTR_ETIMEOUT: a cluster node failed (featstore.h) */
            int down = feats[k].status == CTR_EBACKEND || feats[k].status == CTR_ETIMEOUT;
            x->fetch_failed |= down;
            x->ureason[u] = down ? RANK_NOVEC_UNAVAILABLE
                                 : feats[k].status == CTR_EFORMAT ? RANK_NOVEC_INVALID
                                                                  : RANK_NOVEC_MISSING;
            continue;
        }
        if (feats[k].mm_dim != sc->mm_dim) {
            log_limited(&lim_width, LOG_WARN, "item width mismatches",
                        "request %s: item %lld: embedding width %d, the model reads %d",
                        log_rid(x->req.request_id), (long long)miss_id[k], feats[k].mm_dim,
                        sc->mm_dim);
            x->ureason[u] = RANK_NOVEC_INVALID;
            continue;
        }
        in[nin] = (engine_item){miss_id[k], feats[k].tags, feats[k].num_tags, feats[k].mm,
                                feats[k].cate};
        in_k[nin++] = k;
    }
    /* All the missing vectors in one batch (batched products), then into
     * the cache, which copies them and hands back pinned entries. */
    const size_t vf = engine_item_vec_floats(x->slot->model);
    float *vecs = arena_alloc(x->a, (size_t)(nin ? nin : 1) * vf * sizeof(float), 64);
    unsigned char *ok = arena_alloc(x->a, (size_t)(nin ? nin : 1), 64);
    if (!vecs || !ok) return -1;
    memset(ok, 1, (size_t)(nin ? nin : 1));
    char err[256];
    if (engine_items_compute(x->slot->model, nin, in, vecs, NULL, err, sizeof err) < 0) {
        /* Some item's features are out of the model's range or overflow:
         * redo them one by one and leave the bad ones out (never cached). */
        for (int j = 0; j < nin; j++)
            if (engine_items_compute(x->slot->model, 1, &in[j], vecs + (size_t)j * vf, NULL,
                                     err, sizeof err) < 0) {
                log_limited(&lim_bad, LOG_WARN, "unusable item features",
                            "request %s: item %lld: unusable features (%s)",
                            log_rid(x->req.request_id), (long long)in[j].id, err);
                ok[j] = 0;
                x->ureason[miss_u[in_k[j]]] = RANK_NOVEC_INVALID;
            }
    }
    for (int j = 0; j < nin; j++) {
        if (!ok[j]) continue;
        int u = miss_u[in_k[j]];
        x->uvec[u] = item_cache_put_at(x->slot->cache, miss_id[in_k[j]],
                                       vecs + (size_t)j * vf, epoch, &x->refs[u]);
        if (!x->uvec[u]) x->ureason[u] = RANK_NOVEC_UNAVAILABLE; /* out of memory */
    }
    return 0;
}

/* The unique ids of the candidates into x->uid[0..ncu) and each
 * candidate's slot (cand_u), with room for the history's (at most
 * max_len).  0, or -1 when out of memory. */
static int unique_cands(rank_ctx *x) {
    const int n = x->req.num_cand, cap = n + x->sc->max_len + 1;
    arena *a = x->a;
    x->cand_u = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *x->cand_u, 64);
    x->uid = arena_alloc(a, (size_t)cap * sizeof *x->uid, 64);
    x->uvec = arena_alloc(a, (size_t)cap * sizeof *x->uvec, 64);
    x->ureason = arena_alloc(a, (size_t)cap, 64);
    x->refs = arena_alloc(a, (size_t)cap * sizeof *x->refs, 64);
    x->umap = arena_alloc(a, sizeof *x->umap, 64);
    if (!x->cand_u || !x->uid || !x->uvec || !x->ureason || !x->refs || !x->umap ||
        idmap_init(x->umap, a, cap - 1) < 0)
        return -1;
    memset(x->ureason, 0, (size_t)cap);
    int nu = 0;
    for (int i = 0; i < n; i++) {
        int before = nu;
        x->cand_u[i] = idmap_get(x->umap, x->req.cand_id[i], &nu);
        if (nu > before) x->uid[x->cand_u[i]] = x->req.cand_id[i];
    }
    x->nu = x->ncu = nu;
    return 0;
}

/* The candidates' cached vectors, pinned for the rest of the request. */
static void lookup_cands(rank_ctx *x) {
    item_cache_get_many(x->slot->cache, x->uid, (size_t)x->ncu, x->uvec, x->refs);
}

/* The history's usable ids not among the candidates (other history ids
 * are padding) into x->uid[ncu..nu), and each entry's slot (hist_u).
 * 0, or -1 when out of memory. */
static int unique_hist(rank_ctx *x) {
    const int nh = x->nh;
    x->hist_u = arena_alloc(x->a, (size_t)(nh ? nh : 1) * sizeof *x->hist_u, 64);
    if (!x->hist_u) return -1;
    int nu = x->nu;
    for (int j = 0; j < nh; j++) {
        int64_t id = x->hist_ids[j];
        if (!engine_history_id_ok(x->slot->model, id)) {
            x->hist_u[j] = -1;
            continue;
        }
        int before = nu;
        x->hist_u[j] = idmap_get(x->umap, id, &nu);
        if (nu > before) x->uid[x->hist_u[j]] = id;
    }
    x->nu = nu;
    return 0;
}

/* One pipelined read for every unique item the cache lacks, bounded by
 * the call deadline; their vectors computed (compute_vectors), or each
 * marked unavailable or past the deadline.  0, or -1 when out of memory. */
static int fetch_missing(rank_ctx *x) {
    static log_limit lim_fail;
    arena *a = x->a;
    const int nu = x->nu;
    int nmiss = 0;
    int64_t *miss_id = arena_alloc(a, (size_t)(nu ? nu : 1) * sizeof *miss_id, 64);
    int *miss_u = arena_alloc(a, (size_t)(nu ? nu : 1) * sizeof *miss_u, 64);
    if (!miss_id || !miss_u) return -1;
    for (int u = 0; u < nu; u++)
        if (!x->uvec[u]) {
            miss_id[nmiss] = x->uid[u];
            miss_u[nmiss++] = u;
        }
    if (nmiss == 0) return 0;
    featstore_item *feats = arena_alloc(a, (size_t)nmiss * sizeof *feats, 64);
    if (!feats) return -1;
    int64_t start = clock_now_ns(), dl = call_deadline(x);
    int rc = CTR_ETIMEOUT, deadline_hit = !dl;
    char err[512] = "";
    const uint64_t epoch = item_cache_epoch(x->slot->cache);   /* before the read */
    if (dl) {
        rc = featstore_get_items(x->w->m[x->m->index].fs, miss_id, nmiss, dl, a, feats, err,
                                 sizeof err);
        metrics_redis(x->svc->metrics, METRICS_REDIS_GET_ITEMS,
                      (double)(clock_now_ns() - start) * 1e-9, redis_result(rc));
        deadline_hit = budget_timeout(x, rc, start, dl);
    }
    if (rc >= 0) return compute_vectors(x, miss_id, miss_u, nmiss, feats, epoch);
    x->fetch_failed = 1;
    if (!deadline_hit)
        log_limited(&lim_fail, LOG_WARN, "item read failures", "request %s: item features: %s",
                    log_rid(x->req.request_id), err);
    for (int k = 0; k < nmiss; k++)
        x->ureason[miss_u[k]] = deadline_hit ? RANK_NOVEC_DEADLINE : RANK_NOVEC_UNAVAILABLE;
    return 0;
}

/* Why candidates go unscored; history items without a vector are padding,
 * and said so when their features were bad.  0, or the status of the error
 * answered when no candidate can be scored because the read failed. */
static int items_verdict(rank_ctx *x) {
    static const proto_degraded why[] = {
        [RANK_NOVEC_MISSING] = PROTO_DEGRADED_ITEM_FEATURES_MISSING,
        [RANK_NOVEC_INVALID] = PROTO_DEGRADED_ITEM_FEATURES_INVALID,
        [RANK_NOVEC_UNAVAILABLE] = PROTO_DEGRADED_ITEM_FEATURES_UNAVAILABLE,
        [RANK_NOVEC_DEADLINE] = PROTO_DEGRADED_ITEM_FEATURES_DEADLINE,
    };
    const int n = x->req.num_cand;
    int nvec = 0;
    for (int i = 0; i < n; i++) {
        int u = x->cand_u[i];
        if (x->uvec[u]) nvec++;
        else rank_degrade(x, why[x->ureason[u] ? x->ureason[u] : RANK_NOVEC_MISSING]);
    }
    for (int j = 0; j < x->nh; j++)
        if (x->hist_u[j] >= 0 && x->ureason[x->hist_u[j]] == RANK_NOVEC_INVALID)
            rank_degrade(x, PROTO_DEGRADED_HISTORY_ITEM_INVALID);
    if (nvec > 0 || n == 0 || !x->fetch_failed) return 0;
    int deadline = x->ureason[x->cand_u[0]] == RANK_NOVEC_DEADLINE;
    return answer_error(x, deadline ? PROTO_ERROR_DEADLINE_EXCEEDED : PROTO_ERROR_UNAVAILABLE,
                        deadline ? "the deadline passed before any candidate's features "
                                   "could be read"
                                 : "feature store unavailable and no candidate is cached");
}

int rank_items(rank_ctx *x) {
    if (!x->cands_looked) {
        if (unique_cands(x) < 0) return out_of_memory(x);
        lookup_cands(x);
        x->nref = x->ncu;
    }
    if (unique_hist(x) < 0) return out_of_memory(x);
    /* The history's cached vectors, pinned likewise. */
    item_cache_get_many(x->slot->cache, x->uid + x->ncu, (size_t)(x->nu - x->ncu),
                        x->uvec + x->ncu, x->refs + x->ncu);
    x->nref = x->nu;
    if (fetch_missing(x) < 0) return out_of_memory(x);
    int status = items_verdict(x);
    if (status) return status;
    stage_end(x, RANK_STAGE_ITEMS);
    return 0;
}

/* --- scoring ------------------------------------------------------------ */

/* The forward pass of n candidates, split as the model's plan says for a
 * request of n (rank_split.h).  0, or -1 when the engine failed. */
static int score_run(rank_ctx *x, const float *const *hist, int nh, const float *const *cand,
                     const int32_t *ctx, int n, float *prob, const engine_explain *ex) {
    if (n <= 0) return 0;
    rank_split_job job = {x->svc, x->m, x->slot, hist, nh, cand, ctx, n, prob, ex,
                          log_rid(x->req.request_id), 0};
    return rank_split_score(&job, x->m->split[service_split_class(n)], cand_flops(x, nh));
}

/* Some scores are not finite.  If the history is to blame (the same
 * candidates score finite without it), find the history items that poison
 * the attention, one at a time with one of those candidates, drop them, and
 * score everything again.  Rare, so plain rather than fast. */
static int repair_history(rank_ctx *x, const float **hist, int nh, const float **cand,
                          const int32_t *ctx, int ns, float *prob, const engine_explain *ex) {
    static log_limit lim;
    const int nctx = x->sc->num_ctx;
    int probe = -1;
    float p;
    for (int i = 0; i < ns && probe < 0; i++) {
        if (isfinite(prob[i])) continue;
        if (score_run(x, NULL, 0, cand + i, ctx + (size_t)i * nctx, 1, &p, NULL) < 0) return -1;
        if (isfinite(p)) probe = i;
    }
    if (probe < 0) return 0; /* not the history's doing */
    int dropped = 0;
    for (int j = 0; j < nh; j++) {
        if (!hist[j]) continue;
        if (score_run(x, &hist[j], 1, cand + probe, ctx + (size_t)probe * nctx, 1, &p, NULL) < 0)
            return -1;
        if (!isfinite(p)) {
            log_limited(&lim, LOG_WARN, "history items dropped",
                        "request %s: user %s: history item %lld makes scores non-finite; "
                        "dropped", log_rid(x->req.request_id), x->req.user_id,
                        (long long)x->hist_ids[j]);
            hist[j] = NULL;
            dropped++;
        }
    }
    if (!dropped) return 0;
    rank_degrade(x, PROTO_DEGRADED_HISTORY_ITEM_INVALID);
    return score_run(x, hist, nh, cand, ctx, ns, prob, ex);
}

/* How many candidates (the first ones, in request order) the budget
 * leaves time to score: all ns, or fewer (0: none). */
static int scoring_budget(const rank_ctx *x, int ns) {
    int64_t left = x->deadline_ns - clock_now_ns() - ANSWER_RESERVE_NS;
    int64_t per = rank_score_estimate_ns(x, 1);
    if (rank_score_estimate_ns(x, ns) <= left) return ns;
    int k = per > 0 ? (int)(left / per) : ns;
    return k < 0 ? 0 : k > ns ? ns : k;
}

/* The model's running speed estimate after scoring k candidates in
 * elapsed_ns: an 8-sample moving average, races between threads
 * harmless. */
static void note_speed(rank_ctx *x, int k, int64_t elapsed_ns) {
    double mflops = (double)k * x->flops_per_cand * 1e-6;
    if (mflops <= 0.01) return;
    atomic_llong *est = &x->m->score_ns_per_mflop;
    long long sample = (long long)((double)elapsed_ns / mflops);
    long long old = atomic_load_explicit(est, memory_order_relaxed);
    if (old <= 0) old = sample;
    atomic_store_explicit(est, old + (sample - old) / 8, memory_order_relaxed);
}

/* The ns scores (and explanations, ex; NULL: none computed, so positions
 * -1) of the candidates cand_of[0..ns) into the context; a score that is
 * not finite leaves its candidate unscored. */
static void keep_scores(rank_ctx *x, const float *prob, int ns, const int *cand_of,
                        const engine_explain *ex) {
    const int xk = x->req.explain;
    for (int s = 0; s < ns; s++) {
        if (!isfinite(prob[s])) {
            rank_degrade(x, PROTO_DEGRADED_NON_FINITE);
            continue;
        }
        const size_t c = (size_t)cand_of[s];
        x->prob[c] = prob[s];
        x->scored[c] = 1;
        if (xk > 0 && ex) {
            memcpy(x->xpos + c * xk, ex->pos + (size_t)s * xk, (size_t)xk * sizeof *ex->pos);
            memcpy(x->xweight + c * xk, ex->weight + (size_t)s * xk,
                   (size_t)xk * sizeof *ex->weight);
        } else if (xk > 0) {
            for (int j = 0; j < xk; j++) x->xpos[c * xk + j] = -1;
        }
    }
}

int rank_score(rank_ctx *x) {
    service *svc = x->svc;
    const int n = x->req.num_cand, nh = x->nh, nctx = x->sc->num_ctx, xk = x->req.explain;
    arena *a = x->a;
    const float **hist = arena_alloc(a, (size_t)(nh ? nh : 1) * sizeof *hist, 64);
    const float **cand = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand, 64);
    int32_t *ctx = arena_alloc(a, (size_t)(n ? n : 1) * (nctx ? nctx : 1) * sizeof *ctx, 64);
    int *cand_of = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand_of, 64);
    float *prob = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *prob, 64);
    if (!hist || !cand || !ctx || !cand_of || !prob) return out_of_memory(x);
    /* Explanations of the scored candidates, in their order here. */
    engine_explain ex = {xk, NULL, NULL};
    if (xk > 0) {
        ex.pos = arena_alloc(a, (size_t)(n ? n : 1) * (size_t)xk * sizeof *ex.pos, 64);
        ex.weight = arena_alloc(a, (size_t)(n ? n : 1) * (size_t)xk * sizeof *ex.weight, 64);
        if (!ex.pos || !ex.weight) return out_of_memory(x);
    }
    for (int j = 0; j < nh; j++) hist[j] = x->hist_u[j] >= 0 ? x->uvec[x->hist_u[j]] : NULL;
    int ns = 0;
    for (int i = 0; i < n; i++) {
        const float *v = x->uvec[x->cand_u[i]];
        if (!v) continue;
        cand[ns] = v;
        memcpy(ctx + (size_t)ns * nctx, x->req.ctx + (size_t)i * nctx, (size_t)nctx * sizeof *ctx);
        cand_of[ns++] = i;
    }

    if (svc->skip_scoring) {
        for (int i = 0; i < ns; i++) prob[i] = 0.0f;
    } else if (ns > 0) {
        int k = scoring_budget(x, ns);
        if (k < ns) rank_degrade(x, PROTO_DEGRADED_SCORING_DEADLINE);
        if (k == 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "the %d ms deadline leaves no time to score any "
                     "candidate", x->deadline_ms);
            return answer_error(x, PROTO_ERROR_DEADLINE_EXCEEDED, msg);
        }
        int64_t t0 = clock_now_ns();
        if (score_run(x, hist, nh, cand, ctx, k, prob, xk > 0 ? &ex : NULL) < 0)
            return answer_error(x, PROTO_ERROR_INTERNAL, "scoring failed (see the log)");
        note_speed(x, k, clock_now_ns() - t0);
        int bad = 0;
        for (int i = 0; i < k; i++) bad += !isfinite(prob[i]);
        if (bad && nh > 0 &&
            repair_history(x, hist, nh, cand, ctx, k, prob, xk > 0 ? &ex : NULL) < 0)
            return answer_error(x, PROTO_ERROR_INTERNAL, "scoring failed (see the log)");
        ns = k;
        metrics_scored(svc->metrics, x->m->index, (uint64_t)ns);
    }
    keep_scores(x, prob, ns, cand_of, svc->skip_scoring ? NULL : &ex);
    stage_end(x, RANK_STAGE_SCORE);
    return 0;
}

/* --- answer ------------------------------------------------------------- */

int rank_answer(rank_ctx *x) {
    const int n = x->req.num_cand;
    arena *a = x->a;
    int64_t *sid = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *sid, 64);
    float *sp = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *sp, 64);
    int *cand_of = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *cand_of, 64);
    int64_t *unscored = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *unscored, 64);
    proto_rank_item *items = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *items, 64);
    if (!sid || !sp || !cand_of || !unscored || !items) return out_of_memory(x);
    int ns = 0, nun = 0;
    for (int i = 0; i < n; i++) {
        if (x->scored[i]) {
            sid[ns] = x->req.cand_id[i];
            sp[ns] = x->prob[i];
            cand_of[ns++] = i;
        } else {
            unscored[nun++] = x->req.cand_id[i];
        }
    }
    int kept = proto_rank_order(sid, sp, ns, x->req.top_k, items);
    for (int k = 0; k < kept; k++) items[k].cand = cand_of[items[k].cand];
    const char *degraded[PROTO_DEGRADED_COUNT];
    for (int d = 0; d < x->ndeg; d++) {
        degraded[d] = proto_degraded_label(x->degraded[d]);
        metrics_degraded(x->svc->metrics, x->degraded[d]);
    }
    x->items = items;
    x->num_items = kept;
    if (x->ndeg) metrics_degraded_response(x->svc->metrics);
    int64_t now = clock_now_ns(), stage_us[RANK_STAGES];
    for (int s = 0; s < RANK_STAGES; s++) {
        stage_us[s] = x->stage_ns[s] / 1000;
        metrics_rank_stage(x->svc->metrics, s, (double)x->stage_ns[s] * 1e-9);
    }
    proto_rank_answer ans = {.request_id = x->req.request_id,
                             .model_name = x->m->name,
                             .model_version = x->sc->version,
                             .items = items,
                             .num_items = kept,
                             .took_us = (now - x->arrival_ns) / 1000,
                             .stage_us = stage_us,
                             .degraded = degraded,
                             .num_degraded = x->ndeg,
                             .unscored = unscored,
                             .num_unscored = nun,
                             .explain_k = x->req.explain,
                             .explain_pos = x->xpos,
                             .explain_weight = x->xweight,
                             .hist_ids = x->hist_ids};
    if (proto_rank_answer_encode(&ans, &x->w->out) < 0) return out_of_memory(x);
    return 200;
}

/* --- the impression log ---------------------------------------------------- */

/* 1 with probability p: a per-thread xorshift64*, seeded on first use. */
static int sampled(double p) {
    static _Thread_local uint64_t s;
    if (p >= 1.0) return 1;
    if (p <= 0.0) return 0;
    if (!s) s = (uint64_t)clock_now_ns() ^ (uint64_t)(uintptr_t)&s ^ 0x9E3779B97F4A7C15ull;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return (double)((s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53 < p;
}

void rank_log(rank_ctx *x) {
    service *svc = x->svc;
    if (!svc->implog || !sampled(x->m->impression_sample)) return;
    const int n = x->req.num_cand;
    const size_t n1 = (size_t)(n ? n : 1);
    float *score = arena_alloc(x->a, n1 * sizeof *score, 64);
    int32_t *rank = arena_alloc(x->a, n1 * sizeof *rank, 64);
    if (!score || !rank) return;   /* the arena is full: no record */
    for (int i = 0; i < n; i++) {
        score[i] = x->scored[i] ? x->prob[i] : NAN;
        rank[i] = 0;
    }
    for (int k = 0; k < x->num_items; k++) rank[x->items[k].cand] = k + 1;
    const char *degraded[PROTO_DEGRADED_COUNT];
    for (int d = 0; d < x->ndeg; d++) degraded[d] = proto_degraded_label(x->degraded[d]);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const proto_impression r = {
        .time = (double)now.tv_sec + (double)now.tv_nsec * 1e-9,
        .request_id = x->req.request_id,
        .user_id = x->req.user_id,
        .user_id_is_int = x->req.user_id_is_int,
        .model_name = x->m->name,
        .model_version = x->sc->version,
        .precision = dense_precision_name(engine_model_precision(x->slot->model)),
        .history_from_request = x->req.has_item_seq,
        .history = x->nh > x->sc->max_len ? x->hist_ids + (x->nh - x->sc->max_len) : x->hist_ids,
        .nh = x->nh > x->sc->max_len ? x->sc->max_len : x->nh,
        .top_k = x->req.top_k,
        .num_ctx = x->sc->num_ctx,
        .ctx_name = x->slot->ctx_name,
        .n = n,
        .cand_id = x->req.cand_id,
        .ctx = x->req.ctx,
        .score = score,
        .rank = rank,
        .degraded = degraded,
        .num_degraded = x->ndeg};
    implog_submit(svc->implog, &r);
}

int rank_handle(worker *w, const rank_input *in) {
    rank_ctx x;
    rank_begin(&x, w, in);
    atomic_fetch_add(&x.svc->ranking, 1);
    int status = rank_decode(&x, in);
    if (!status) status = rank_history(&x);
    if (!status) status = rank_items(&x);
    if (!status) status = rank_score(&x);
    if (!status) status = rank_answer(&x);
    if (status == 200) rank_log(&x);
    atomic_fetch_sub(&x.svc->ranking, 1);
    rank_end(&x);
    return status;
}

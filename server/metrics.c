/*
 * metrics.c - lock-free metric slots and the Prometheus text renderer.
 *
 * Workload (see metrics.h): a few relaxed atomic adds per request from many
 * threads, one render per scrape.  Every series lives in a fixed slot sized
 * at compile time, so the update path is an index computation and an atomic
 * add.  Histogram sums are kept as integer nanoseconds: an atomic add on an
 * integer is exact and portable where a float sum would need a CAS loop,
 * and the renderer prints them back as exact decimal seconds.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Bucket upper bounds in seconds: 100 us (a cache-warm rank of a few
 * items) to 1 s (far past any sane deadline).  The literal is also the
 * le="..." text, so the label is exactly the bound written here. */
#define METRICS_BUCKETS(X) \
    X(0.0001) X(0.00025) X(0.0005) X(0.001) X(0.0025) X(0.005) \
    X(0.01) X(0.025) X(0.05) X(0.1) X(0.25) X(1)

#define AS_VALUE(b) b,
#define AS_TEXT(b) #b,
static const double bucket_bound[] = {METRICS_BUCKETS(AS_VALUE)};
static const char *const bucket_text[] = {METRICS_BUCKETS(AS_TEXT)};
#undef AS_VALUE
#undef AS_TEXT
#define NBUCKETS (sizeof bucket_bound / sizeof *bucket_bound)

typedef atomic_uint_fast64_t counter;

typedef struct histogram {
    counter bucket[NBUCKETS + 1];   /* per bucket, not cumulative; last +Inf */
    counter sum_ns;
} histogram;

/* Status codes 100..599 each get a slot; slot 0 collects anything else. */
#define STATUS_SLOTS 600

static const char *const endpoint_name[METRICS_EP_COUNT] = {
    "/v1/rank", "/healthz", "/readyz", "/metrics", "/v1/models", "other",
};

static const char *const redis_op_name[METRICS_REDIS_OP_COUNT] = {
    "get_user", "get_items", "ping",
};

static const char *const stage_name[METRICS_RANK_STAGES] = {
    "queue", "decode", "history", "items", "score",
};

typedef struct reason_slot {
    _Atomic(const char *) name;     /* NULL until claimed */
    counter count;
} reason_slot;

struct metrics {
    counter http[METRICS_EP_COUNT][STATUS_SLOTS];
    histogram http_time[METRICS_EP_COUNT];
    histogram redis_time[METRICS_REDIS_OP_COUNT];
    counter redis_timeouts[METRICS_REDIS_OP_COUNT];
    counter redis_errors[METRICS_REDIS_OP_COUNT];
    atomic_int_fast64_t inflight;
    counter scored;
    histogram stage_time[METRICS_RANK_STAGES];
    counter breaker_opens, breaker_closes, breaker_probes, breaker_short;
    counter shed_admission, shed_deadline, cut_receive;
    atomic_int feature_set_ready;
    _Atomic double feature_set_loaded_at;
    counter reloads_ok, reloads_failed;
    /* The last slot is "other" from the start; the rest are claimed by CAS
     * on first use of a reason. */
    reason_slot reasons[METRICS_MAX_REASONS];
    /* Counters of item caches already freed. */
    counter cache_hits, cache_misses, cache_insertions, cache_evictions,
        cache_expirations;
    double start_time;              /* unix seconds, written once at init */
    pthread_mutex_t model_lock;     /* guards model_name, model_version */
    char model_name[METRICS_LABEL_MAX];
    char model_version[METRICS_LABEL_MAX];
    char precision[16];             /* "" until set; guarded by model_lock */
    int exact;
    int model_set;
};

static inline void add(counter *c, uint64_t d) {
    atomic_fetch_add_explicit(c, d, memory_order_relaxed);
}

static inline uint64_t get(const counter *c) {
    return atomic_load_explicit((counter *)c, memory_order_relaxed);
}

int metrics_init(metrics **out) {
    metrics *m = calloc(1, sizeof *m);   /* zero is a valid atomic state */
    *out = NULL;
    if (!m) return CTR_ENOMEM;
    if (pthread_mutex_init(&m->model_lock, NULL) != 0) {
        free(m);
        return CTR_ENOMEM;
    }
    atomic_store(&m->reasons[METRICS_MAX_REASONS - 1].name, "other");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    *out = m;
    return CTR_OK;
}

void metrics_free(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->model_lock);
    free(m);
}

metrics_endpoint metrics_endpoint_of(const char *path) {
    if (!path) return METRICS_EP_OTHER;
    size_t n = strcspn(path, "?");
#define IS(s) (n == sizeof(s) - 1 && memcmp(path, s, n) == 0)
    if (IS("/v1/rank")) return METRICS_EP_RANK;
    if (IS("/healthz")) return METRICS_EP_HEALTHZ;
    if (IS("/readyz")) return METRICS_EP_READYZ;
    if (IS("/metrics")) return METRICS_EP_METRICS;
    if (IS("/v1/models") || (n > 11 && memcmp(path, "/v1/models/", 11) == 0))
        return METRICS_EP_MODELS;
#undef IS
    return METRICS_EP_OTHER;
}

static void observe(histogram *h, double seconds) {
    /* NaN and negatives (a clock step) count as 0; 1e9 s caps the integer. */
    if (!(seconds > 0)) seconds = 0;
    if (seconds > 1e9) seconds = 1e9;
    size_t i = 0;
    while (i < NBUCKETS && seconds > bucket_bound[i]) i++;
    add(&h->bucket[i], 1);
    add(&h->sum_ns, (uint64_t)llround(seconds * 1e9));
}

void metrics_http(metrics *m, metrics_endpoint ep, int status, double seconds) {
    if ((unsigned)ep >= METRICS_EP_COUNT) ep = METRICS_EP_OTHER;
    int slot = status >= 100 && status < STATUS_SLOTS ? status : 0;
    add(&m->http[ep][slot], 1);
    observe(&m->http_time[ep], seconds);
}

void metrics_redis(metrics *m, metrics_redis_op op, double seconds,
                   metrics_redis_result r) {
    if ((unsigned)op >= METRICS_REDIS_OP_COUNT) return;
    observe(&m->redis_time[op], seconds);
    if (r == METRICS_REDIS_TIMEOUT) add(&m->redis_timeouts[op], 1);
    else if (r != METRICS_REDIS_OK) add(&m->redis_errors[op], 1);
}

void metrics_inflight_add(metrics *m, int delta) {
    atomic_fetch_add_explicit(&m->inflight, delta, memory_order_relaxed);
}

void metrics_scored(metrics *m, uint64_t n) {
    add(&m->scored, n);
}

void metrics_rank_stage(metrics *m, int stage, double seconds) {
    if (stage < 0 || stage >= METRICS_RANK_STAGES) return;
    observe(&m->stage_time[stage], seconds);
}

void metrics_breaker(void *arg, breaker_event ev) {
    metrics *m = arg;
    if (!m) return;
    switch (ev) {
    case BREAKER_EV_OPENED: add(&m->breaker_opens, 1); break;
    case BREAKER_EV_CLOSED: add(&m->breaker_closes, 1); break;
    case BREAKER_EV_PROBE: add(&m->breaker_probes, 1); break;
    case BREAKER_EV_SHORT_CIRCUIT: add(&m->breaker_short, 1); break;
    }
}

void metrics_shed(metrics *m, int deadline) {
    add(deadline ? &m->shed_deadline : &m->shed_admission, 1);
}

void metrics_connection_cut(metrics *m) { add(&m->cut_receive, 1); }

void metrics_feature_set(metrics *m, int ready, double loaded_at) {
    atomic_store(&m->feature_set_ready, ready ? 1 : 0);
    atomic_store(&m->feature_set_loaded_at, loaded_at);
}

void metrics_set_model(metrics *m, const char *name, const char *version) {
    pthread_mutex_lock(&m->model_lock);
    snprintf(m->model_name, sizeof m->model_name, "%s", name ? name : "");
    snprintf(m->model_version, sizeof m->model_version, "%s", version ? version : "");
    m->model_set = 1;
    pthread_mutex_unlock(&m->model_lock);
}

void metrics_set_precision(metrics *m, const char *precision, int exact) {
    pthread_mutex_lock(&m->model_lock);
    snprintf(m->precision, sizeof m->precision, "%s", precision ? precision : "");
    m->exact = exact;
    pthread_mutex_unlock(&m->model_lock);
}

void metrics_reload(metrics *m, int ok) {
    add(ok ? &m->reloads_ok : &m->reloads_failed, 1);
}

void metrics_degraded(metrics *m, const char *reason) {
    if (!reason) reason = "unknown";
    reason_slot *other = &m->reasons[METRICS_MAX_REASONS - 1];
    if (strcmp(reason, "other") == 0) {   /* never a second "other" series */
        add(&other->count, 1);
        return;
    }
    for (int i = 0; i < METRICS_MAX_REASONS - 1; i++) {
        reason_slot *s = &m->reasons[i];
        const char *have = atomic_load_explicit(&s->name, memory_order_acquire);
        if (!have) {
            /* Claim the empty slot; if another thread got there first, its
             * reason may be ours (same text, different pointer). */
            const char *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(
                    &s->name, &expected, reason, memory_order_acq_rel,
                    memory_order_acquire)) {
                add(&s->count, 1);
                return;
            }
            have = expected;
        }
        if (have == reason || strcmp(have, reason) == 0) {
            add(&s->count, 1);
            return;
        }
    }
    add(&other->count, 1);
}

void metrics_cache_retire(metrics *m, const item_cache_stats *st) {
    add(&m->cache_hits, st->hits);
    add(&m->cache_misses, st->misses);
    add(&m->cache_insertions, st->insertions);
    add(&m->cache_evictions, st->evictions);
    add(&m->cache_expirations, st->expirations);
}

/* --- Rendering ---------------------------------------------------------- */

/* Label values escape backslash, double quote and newline (format 0.0.4);
 * HELP text escapes only backslash and newline. */
static void put_escaped(proto_buf *b, const char *s, int quote) {
    for (; *s; s++) {
        if (*s == '\\') proto_buf_puts(b, "\\\\");
        else if (*s == '\n') proto_buf_puts(b, "\\n");
        else if (*s == '"' && quote) proto_buf_puts(b, "\\\"");
        else proto_buf_putc(b, *s);
    }
}

static void family(proto_buf *b, const char *name, const char *type,
                   const char *help) {
    proto_buf_printf(b, "# HELP %s ", name);
    put_escaped(b, help, 0);
    proto_buf_printf(b, "\n# TYPE %s %s\n", name, type);
}

/* name{k1="v1",k2="v2"} — NULL keys end the label list early. */
static void series(proto_buf *b, const char *name, const char *suffix,
                   const char *k1, const char *v1, const char *k2, const char *v2) {
    proto_buf_puts(b, name);
    proto_buf_puts(b, suffix);
    if (k1) {
        proto_buf_printf(b, "{%s=\"", k1);
        put_escaped(b, v1, 1);
        proto_buf_putc(b, '"');
        if (k2) {
            proto_buf_printf(b, ",%s=\"", k2);
            put_escaped(b, v2, 1);
            proto_buf_putc(b, '"');
        }
        proto_buf_putc(b, '}');
    }
    proto_buf_putc(b, ' ');
}

static void sample_u64(proto_buf *b, const char *name, const char *k1,
                       const char *v1, const char *k2, const char *v2, uint64_t v) {
    series(b, name, "", k1, v1, k2, v2);
    proto_buf_printf(b, "%llu\n", (unsigned long long)v);
}

/* One histogram's _bucket/_sum/_count lines for one label.  The buckets
 * are read once and summed here, so +Inf always equals _count even while
 * writers keep adding. */
static void render_histogram(proto_buf *b, const char *name, const char *key,
                             const char *val, const histogram *h) {
    uint64_t cum = 0;
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += get(&h->bucket[i]);
        series(b, name, "_bucket", key, val, "le",
               i < NBUCKETS ? bucket_text[i] : "+Inf");
        proto_buf_printf(b, "%llu\n", (unsigned long long)cum);
    }
    uint64_t ns = get(&h->sum_ns);
    series(b, name, "_sum", key, val, NULL, NULL);
    proto_buf_printf(b, "%llu.%09llu\n", (unsigned long long)(ns / 1000000000u),
                     (unsigned long long)(ns % 1000000000u));
    series(b, name, "_count", key, val, NULL, NULL);
    proto_buf_printf(b, "%llu\n", (unsigned long long)cum);
}

int metrics_render(metrics *m, const item_cache_stats *cache, proto_buf *b) {
    static const item_cache_stats none;
    if (!cache) cache = &none;
    char status[16];

    family(b, "ctr_http_requests_total", "counter",
           "HTTP requests answered, by endpoint and status code.");
    for (int ep = 0; ep < METRICS_EP_COUNT; ep++) {
        for (int s = 0; s < STATUS_SLOTS; s++) {
            uint64_t v = get(&m->http[ep][s]);
            if (!v) continue;   /* only statuses that occurred */
            if (s) snprintf(status, sizeof status, "%d", s);
            else snprintf(status, sizeof status, "other");
            sample_u64(b, "ctr_http_requests_total", "endpoint", endpoint_name[ep],
                       "status", status, v);
        }
    }

    family(b, "ctr_http_request_duration_seconds", "histogram",
           "Time from request arrival to the answer being queued, by endpoint.");
    for (int ep = 0; ep < METRICS_EP_COUNT; ep++)
        render_histogram(b, "ctr_http_request_duration_seconds", "endpoint",
                         endpoint_name[ep], &m->http_time[ep]);

    family(b, "ctr_redis_call_duration_seconds", "histogram",
           "Round-trip time of feature store calls, failed ones included, by operation.");
    for (int op = 0; op < METRICS_REDIS_OP_COUNT; op++)
        render_histogram(b, "ctr_redis_call_duration_seconds", "op",
                         redis_op_name[op], &m->redis_time[op]);

    family(b, "ctr_redis_errors_total", "counter",
           "Failed feature store calls, by operation and kind.");
    for (int op = 0; op < METRICS_REDIS_OP_COUNT; op++) {
        sample_u64(b, "ctr_redis_errors_total", "op", redis_op_name[op], "kind",
                   "timeout", get(&m->redis_timeouts[op]));
        sample_u64(b, "ctr_redis_errors_total", "op", redis_op_name[op], "kind",
                   "error", get(&m->redis_errors[op]));
    }

    /* Counters: what retired caches counted plus the current cache. */
    const struct {
        const char *name, *help;
        const counter *base;
        uint64_t cur;
    } cache_ctr[] = {
        {"ctr_item_cache_hits_total", "Item vector lookups answered from the cache.",
         &m->cache_hits, cache->hits},
        {"ctr_item_cache_misses_total",
         "Item vector lookups that missed (or found an expired entry).",
         &m->cache_misses, cache->misses},
        {"ctr_item_cache_insertions_total", "Item vectors added to the cache.",
         &m->cache_insertions, cache->insertions},
        {"ctr_item_cache_evictions_total",
         "Item vectors dropped to keep the cache within its byte budget.",
         &m->cache_evictions, cache->evictions},
        {"ctr_item_cache_expirations_total",
         "Item vectors dropped because their TTL passed.",
         &m->cache_expirations, cache->expirations},
    };
    for (size_t i = 0; i < sizeof cache_ctr / sizeof *cache_ctr; i++) {
        family(b, cache_ctr[i].name, "counter", cache_ctr[i].help);
        sample_u64(b, cache_ctr[i].name, NULL, NULL, NULL, NULL,
                   get(cache_ctr[i].base) + cache_ctr[i].cur);
    }
    family(b, "ctr_item_cache_entries", "gauge", "Item vectors in the cache now.");
    sample_u64(b, "ctr_item_cache_entries", NULL, NULL, NULL, NULL, cache->entries);
    family(b, "ctr_item_cache_bytes", "gauge",
           "Bytes held by the cached item vectors (counted against cache_mb).");
    sample_u64(b, "ctr_item_cache_bytes", NULL, NULL, NULL, NULL, cache->bytes);

    family(b, "ctr_inflight_requests", "gauge", "HTTP requests being handled now.");
    proto_buf_printf(b, "ctr_inflight_requests %lld\n",
                     (long long)atomic_load_explicit(&m->inflight, memory_order_relaxed));

    family(b, "ctr_model_info", "gauge", "The model being served (value always 1).");
    pthread_mutex_lock(&m->model_lock);
    if (m->model_set)
        sample_u64(b, "ctr_model_info", "name", m->model_name, "version",
                   m->model_version, 1);
    pthread_mutex_unlock(&m->model_lock);

    family(b, "ctr_model_precision", "gauge",
           "Arithmetic of the model's dense layers (value always 1); only fp32 is exact.");
    pthread_mutex_lock(&m->model_lock);
    if (m->precision[0])
        sample_u64(b, "ctr_model_precision", "precision", m->precision, "exact",
                   m->exact ? "true" : "false", 1);
    pthread_mutex_unlock(&m->model_lock);

    family(b, "ctr_model_reloads_total", "counter", "Model reload attempts, by result.");
    sample_u64(b, "ctr_model_reloads_total", "result", "ok", NULL, NULL,
               get(&m->reloads_ok));
    sample_u64(b, "ctr_model_reloads_total", "result", "failed", NULL, NULL,
               get(&m->reloads_failed));

    family(b, "ctr_degraded_responses_total", "counter",
           "Responses answered in degraded form, by reason.");
    for (int i = 0; i < METRICS_MAX_REASONS; i++) {
        const char *name = atomic_load_explicit(&m->reasons[i].name, memory_order_acquire);
        uint64_t v = get(&m->reasons[i].count);
        if (name && v)
            sample_u64(b, "ctr_degraded_responses_total", "reason", name, NULL, NULL, v);
    }

    family(b, "ctr_scored_candidates_total", "counter",
           "Candidates scored by the model.");
    sample_u64(b, "ctr_scored_candidates_total", NULL, NULL, NULL, NULL, get(&m->scored));

    family(b, "ctr_rank_stage_duration_seconds", "histogram",
           "Time a rank request spent in each stage (queue: waiting for a worker).");
    for (int st = 0; st < METRICS_RANK_STAGES; st++)
        render_histogram(b, "ctr_rank_stage_duration_seconds", "stage", stage_name[st],
                         &m->stage_time[st]);

    uint64_t opens = get(&m->breaker_opens), closes = get(&m->breaker_closes);
    family(b, "ctr_redis_breaker_open", "gauge",
           "Feature store connections whose circuit breaker is open or probing.");
    proto_buf_printf(b, "ctr_redis_breaker_open %llu\n",
                     (unsigned long long)(opens > closes ? opens - closes : 0));
    family(b, "ctr_redis_breaker_opens_total", "counter",
           "Circuit breaker openings (a connection's call failed while closed).");
    sample_u64(b, "ctr_redis_breaker_opens_total", NULL, NULL, NULL, NULL, opens);
    family(b, "ctr_redis_breaker_probes_total", "counter",
           "Calls let through an open breaker to probe the feature store.");
    sample_u64(b, "ctr_redis_breaker_probes_total", NULL, NULL, NULL, NULL,
               get(&m->breaker_probes));
    family(b, "ctr_redis_breaker_short_circuits_total", "counter",
           "Calls failed at once because their connection's breaker was open.");
    sample_u64(b, "ctr_redis_breaker_short_circuits_total", NULL, NULL, NULL, NULL,
               get(&m->breaker_short));

    family(b, "ctr_requests_shed_total", "counter",
           "Rank requests answered 503 overloaded: over the admission bound, or past "
           "their deadline before a worker took them.");
    sample_u64(b, "ctr_requests_shed_total", "reason", "admission", NULL, NULL,
               get(&m->shed_admission));
    sample_u64(b, "ctr_requests_shed_total", "reason", "deadline", NULL, NULL,
               get(&m->shed_deadline));
    family(b, "ctr_connections_cut_total", "counter",
           "Connections closed for not sending a whole request within the receive deadline.");
    sample_u64(b, "ctr_connections_cut_total", "reason", "receive_deadline", NULL, NULL,
               get(&m->cut_receive));

    family(b, "ctr_feature_set_ready", "gauge",
           "1 when the feature store holds a feature-set marker matching the model.");
    proto_buf_printf(b, "ctr_feature_set_ready %d\n", atomic_load(&m->feature_set_ready));
    family(b, "ctr_feature_set_loaded_timestamp_seconds", "gauge",
           "When ctr-load finished writing the feature set (unix seconds; 0 unknown).");
    proto_buf_printf(b, "ctr_feature_set_loaded_timestamp_seconds %.3f\n",
                     atomic_load(&m->feature_set_loaded_at));

    family(b, "ctr_process_start_time_seconds", "gauge",
           "Start time of the process since the unix epoch, in seconds.");
    proto_buf_printf(b, "ctr_process_start_time_seconds %.3f\n", m->start_time);

    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}

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
#include <unistd.h>

#include "server/store/hcache.h"

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

/* The series of one model. */
typedef struct model_slots {
    char label[METRICS_LABEL_MAX];  /* written once, at startup */
    counter scored, reloads_ok, reloads_failed;
    atomic_int feature_set_ready;
    _Atomic double feature_set_loaded_at;
    atomic_int last_reload_ok;      /* 1 until a reload fails, 1 again after one succeeds */
    counter changes_applied, cache_drops;   /* item changes (metrics_item_changes) */
    _Atomic double change_lag;
    /* Counters of the model's item caches already freed. */
    counter cache_hits, cache_misses, cache_insertions, cache_evictions, cache_expirations;
    /* Guarded by metrics.model_lock. */
    char name[METRICS_LABEL_MAX], version[METRICS_LABEL_MAX], arch[METRICS_LABEL_MAX];
    int set;
    char precision[16];             /* "" until set */
    int exact;
    char isa[METRICS_LABEL_MAX];    /* "" until set */
    char kernel[METRICS_LABEL_MAX * 3];
} model_slots;

struct metrics {
    counter http[METRICS_EP_COUNT][STATUS_SLOTS];
    histogram http_time[METRICS_EP_COUNT];
    histogram redis_time[METRICS_REDIS_OP_COUNT];
    counter redis_timeouts[METRICS_REDIS_OP_COUNT];
    counter redis_errors[METRICS_REDIS_OP_COUNT];
    atomic_int_fast64_t inflight;
    atomic_int_fast64_t pending;
    atomic_int pending_limit;
    atomic_int redis_up;
    counter degraded_responses;
    histogram stage_time[METRICS_RANK_STAGES];
    counter breaker_opens, breaker_closes, breaker_probes, breaker_short;
    counter redis_desyncs;
    counter shed_admission, shed_deadline, cut_receive;
    /* Redis Cluster: per node (slot METRICS_MAX_NODES is "other"), and
     * cluster-wide. */
    pthread_mutex_t node_lock;      /* guards registration */
    atomic_int nnodes;
    char node_addr[METRICS_MAX_NODES][METRICS_LABEL_MAX];
    counter node_pipelines[METRICS_MAX_NODES + 1], node_errors[METRICS_MAX_NODES + 1],
        node_timeouts[METRICS_MAX_NODES + 1], node_opens[METRICS_MAX_NODES + 1],
        node_short[METRICS_MAX_NODES + 1];
    int node_other_used;
    counter refreshes_ok, refreshes_failed, moved, asked;
    counter degraded[PROTO_DEGRADED_COUNT];
    model_slots models[METRICS_MAX_MODELS];
    int nmodels;                    /* written at startup only */
    /* The impression log (implog.h), rendered when on. */
    int implog_on;                  /* written at startup only */
    const struct hcache *hcache;    /* the history cache; NULL: off */
    counter imp_written, imp_full, imp_sink, imp_shutdown, imp_errors, imp_queue, imp_limit;
    atomic_int imp_up;
    double start_time;              /* unix seconds, written once at init */
    pthread_mutex_t model_lock;     /* guards each model's name, version, arch */
};

/* The slots of model i, or NULL for an index not handed out. */
static model_slots *model_at(metrics *m, int i) {
    return i >= 0 && i < m->nmodels ? &m->models[i] : NULL;
}

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
    if (pthread_mutex_init(&m->node_lock, NULL) != 0) {
        pthread_mutex_destroy(&m->model_lock);
        free(m);
        return CTR_ENOMEM;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    *out = m;
    return CTR_OK;
}

void metrics_free(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->model_lock);
    pthread_mutex_destroy(&m->node_lock);
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

int metrics_add_model(metrics *m, const char *label) {
    if (m->nmodels == METRICS_MAX_MODELS) return -1;
    snprintf(m->models[m->nmodels].label, METRICS_LABEL_MAX, "%s", label ? label : "");
    atomic_store(&m->models[m->nmodels].last_reload_ok, 1);   /* loaded at startup */
    return m->nmodels++;
}

void metrics_scored(metrics *m, int model, uint64_t n) {
    model_slots *s = model_at(m, model);
    if (s) add(&s->scored, n);
}

void metrics_degraded_response(metrics *m) { add(&m->degraded_responses, 1); }

void metrics_pending_add(metrics *m, int delta) {
    atomic_fetch_add_explicit(&m->pending, delta, memory_order_relaxed);
}

void metrics_set_pending_limit(metrics *m, int limit) { atomic_store(&m->pending_limit, limit); }

void metrics_redis_up(metrics *m, int up) { atomic_store(&m->redis_up, up ? 1 : 0); }

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

void metrics_redis_desync(void *arg) {
    metrics *m = arg;
    if (m) add(&m->redis_desyncs, 1);
}

void metrics_shed(metrics *m, int deadline) {
    add(deadline ? &m->shed_deadline : &m->shed_admission, 1);
}

void metrics_connection_cut(metrics *m) { add(&m->cut_receive, 1); }

int metrics_node_id(void *arg, const char *addr) {
    metrics *m = arg;
    pthread_mutex_lock(&m->node_lock);
    int n = atomic_load(&m->nnodes), id = -1;
    for (int i = 0; i < n && id < 0; i++)
        if (strncmp(m->node_addr[i], addr, METRICS_LABEL_MAX - 1) == 0) id = i;
    if (id < 0 && n < METRICS_MAX_NODES) {
        snprintf(m->node_addr[n], METRICS_LABEL_MAX, "%s", addr);
        id = n;
        atomic_store(&m->nnodes, n + 1);   /* after the address is written */
    }
    if (id < 0) {
        id = METRICS_MAX_NODES;
        m->node_other_used = 1;
    }
    pthread_mutex_unlock(&m->node_lock);
    return id;
}

void metrics_node_event(void *arg, int id, featstore_node_event ev) {
    metrics *m = arg;
    if (id > METRICS_MAX_NODES) return;
    if (id < 0) {
        switch (ev) {
        case FEATSTORE_NODE_MOVED: add(&m->moved, 1); break;
        case FEATSTORE_NODE_ASK: add(&m->asked, 1); break;
        case FEATSTORE_NODE_REFRESH: add(&m->refreshes_ok, 1); break;
        case FEATSTORE_NODE_REFRESH_FAILED: add(&m->refreshes_failed, 1); break;
        default: break;
        }
        return;
    }
    switch (ev) {
    case FEATSTORE_NODE_PIPELINE: add(&m->node_pipelines[id], 1); break;
    case FEATSTORE_NODE_ERROR: add(&m->node_errors[id], 1); break;
    case FEATSTORE_NODE_TIMEOUT: add(&m->node_timeouts[id], 1); break;
    case FEATSTORE_NODE_BREAKER_OPENED: add(&m->node_opens[id], 1); break;
    case FEATSTORE_NODE_SHORT_CIRCUIT: add(&m->node_short[id], 1); break;
    default: break;
    }
}

void metrics_feature_set(metrics *m, int model, int ready, double loaded_at) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    atomic_store(&s->feature_set_ready, ready ? 1 : 0);
    atomic_store(&s->feature_set_loaded_at, loaded_at);
}

void metrics_set_model(metrics *m, int model, const char *name, const char *version,
                       const char *arch) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    pthread_mutex_lock(&m->model_lock);
    snprintf(s->name, sizeof s->name, "%s", name ? name : "");
    snprintf(s->version, sizeof s->version, "%s", version ? version : "");
    snprintf(s->arch, sizeof s->arch, "%s", arch ? arch : "");
    s->set = 1;
    pthread_mutex_unlock(&m->model_lock);
}

void metrics_reload(metrics *m, int model, int ok) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    add(ok ? &s->reloads_ok : &s->reloads_failed, 1);
    atomic_store(&s->last_reload_ok, ok ? 1 : 0);
}

void metrics_set_kernel(metrics *m, int model, const char *isa, const char *kernel) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    pthread_mutex_lock(&m->model_lock);
    snprintf(s->isa, sizeof s->isa, "%s", isa ? isa : "");
    snprintf(s->kernel, sizeof s->kernel, "%s", kernel ? kernel : "");
    pthread_mutex_unlock(&m->model_lock);
}

void metrics_set_precision(metrics *m, int model, const char *precision, int exact) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    pthread_mutex_lock(&m->model_lock);
    snprintf(s->precision, sizeof s->precision, "%s", precision ? precision : "");
    s->exact = exact;
    pthread_mutex_unlock(&m->model_lock);
}

void metrics_degraded(metrics *m, proto_degraded reason) {
    if ((unsigned)reason < PROTO_DEGRADED_COUNT) add(&m->degraded[reason], 1);
}

void metrics_cache_retire(metrics *m, int model, const item_cache_stats *st) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    add(&s->cache_hits, st->hits);
    add(&s->cache_misses, st->misses);
    add(&s->cache_insertions, st->insertions);
    add(&s->cache_evictions, st->evictions);
    add(&s->cache_expirations, st->expirations);
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

static void family_header(proto_buf *b, const char *name, const char *type,
                   const char *help) {
    proto_buf_printf(b, "# HELP %s ", name);
    put_escaped(b, help, 0);
    proto_buf_printf(b, "\n# TYPE %s %s\n", name, type);
}

/* name{k1="v1",k2="v2",...} of n label pairs kv[2i], kv[2i+1]; a NULL
 * key ends the list early. */
static void series_n(proto_buf *b, const char *name, const char *suffix,
                     const char *const *kv, int n) {
    proto_buf_puts(b, name);
    proto_buf_puts(b, suffix);
    int i = 0;
    for (; i < n && kv[2 * i]; i++) {
        proto_buf_printf(b, "%c%s=\"", i ? ',' : '{', kv[2 * i]);
        put_escaped(b, kv[2 * i + 1], 1);
        proto_buf_putc(b, '"');
    }
    if (i) proto_buf_putc(b, '}');
    proto_buf_putc(b, ' ');
}

/* name{k1="v1",k2="v2"} — NULL keys end the label list early. */
static void series(proto_buf *b, const char *name, const char *suffix,
                   const char *k1, const char *v1, const char *k2, const char *v2) {
    const char *const kv[] = {k1, v1, k2, v2};
    series_n(b, name, suffix, kv, 2);
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

/* --- The families ------------------------------------------------------- */

/* What one render reads besides m: the caches' stats, the cluster nodes
 * seen, and /proc/self/stat. */
typedef struct render_ctx {
    metrics *m;
    proto_buf *b;
    const item_cache_stats *caches;
    int ncaches;
    int nodes, last_node;           /* node slots 0..last_node are shown */
    hcache_stats hc;                /* the history cache's, when on */
    int proc_ok;                    /* the process_* values below were read */
    double cpu_seconds;
    unsigned long long rss_bytes;
} render_ctx;

typedef struct family family;
typedef void render_fn(const render_ctx *r, const family *f);

/* How a slot is read and printed. */
enum { V_COUNTER, V_INT, V_I64, V_SECONDS };
/* When a family is shown. */
enum { ALWAYS, CLUSTER_ONLY, WITH_PROC, WITH_IMPLOG, WITH_HCACHE };
#define NO_SLOT ((size_t)-1)
#define MAX_SLOTS 3

/* One metric family: its name, type and help (each written here only),
 * and how its samples are produced.  The generic renderers read `slot`
 * (offsets in metrics or model_slots, each with the value of label `key`),
 * `labels`/`n` (one histogram or counter per label value) and `cur` (an
 * offset in item_cache_stats). */
_Static_assert(offsetof(metrics, http) == 0 && offsetof(model_slots, label) == 0,
               "offset 0 ends a family's slot list");

struct family {
    const char *name, *type, *help;
    render_fn *render;
    int vt, when;
    const char *key;
    struct {
        const char *val;
        size_t off;
    } slot[MAX_SLOTS];
    const char *const *labels;
    int n;
    size_t cur;
};

static const void *at(const void *base, size_t off) { return (const char *)base + off; }

static void put_value(proto_buf *b, int vt, const void *p) {
    switch (vt) {
    case V_COUNTER: proto_buf_printf(b, "%llu\n", (unsigned long long)get(p)); break;
    case V_INT: proto_buf_printf(b, "%d\n", atomic_load((atomic_int *)p)); break;
    case V_I64:
        proto_buf_printf(b, "%lld\n", (long long)atomic_load_explicit(
                                          (atomic_int_fast64_t *)p, memory_order_relaxed));
        break;
    case V_SECONDS: proto_buf_printf(b, "%.3f\n", atomic_load((_Atomic double *)p)); break;
    }
}

/* Whether f has a slot s: slot 0 always, later ones when their offset is
 * not 0 (offset 0 of metrics and of model_slots holds no such slot). */
static int has_slot(const family *f, int s) { return s < MAX_SLOTS && (!s || f->slot[s].off); }

/* Slots of metrics itself, one sample each (labelled key=val, or bare). */
static void r_slots(const render_ctx *r, const family *f) {
    for (int s = 0; has_slot(f, s); s++) {
        series(r->b, f->name, "", f->key, f->slot[s].val, NULL, NULL);
        put_value(r->b, f->vt, at(r->m, f->slot[s].off));
    }
}

/* Slots of each model's model_slots: model="...", then key=val. */
static void r_model_slots(const render_ctx *r, const family *f) {
    for (int i = 0; i < r->m->nmodels; i++)
        for (int s = 0; has_slot(f, s); s++) {
            series(r->b, f->name, "", "model", r->m->models[i].label, f->key, f->slot[s].val);
            put_value(r->b, f->vt, at(&r->m->models[i], f->slot[s].off));
        }
}

/* One histogram per label value: histogram[n] at slot[0].off. */
static void r_histograms(const render_ctx *r, const family *f) {
    const histogram *h = at(r->m, f->slot[0].off);
    for (int i = 0; i < f->n; i++) render_histogram(r->b, f->name, f->key, f->labels[i], &h[i]);
}

/* Item cache figures per model: the current cache's (cur in
 * item_cache_stats) plus, for counters, what retired caches counted
 * (slot[0].off in model_slots). */
static void r_cache(const render_ctx *r, const family *f) {
    static const item_cache_stats none;
    for (int i = 0; i < r->m->nmodels; i++) {
        const item_cache_stats *st = r->caches && i < r->ncaches ? &r->caches[i] : &none;
        uint64_t v = *(const uint64_t *)at(st, f->cur);
        if (f->slot[0].off != NO_SLOT) v += get(at(&r->m->models[i], f->slot[0].off));
        sample_u64(r->b, f->name, "model", r->m->models[i].label, NULL, NULL, v);
    }
}

/* Per cluster node: counter[METRICS_MAX_NODES + 1] at slot[0].off (the
 * last one node="other", shown once used). */
static void r_nodes(const render_ctx *r, const family *f) {
    for (int i = 0; i <= r->last_node; i++) {
        if (i >= r->nodes && i < METRICS_MAX_NODES) continue;
        const char *node = i < r->nodes ? r->m->node_addr[i] : "other";
        for (int s = 0; has_slot(f, s); s++) {
            const counter *c = at(r->m, f->slot[s].off);
            sample_u64(r->b, f->name, "node", node, f->key, f->slot[s].val, get(&c[i]));
        }
    }
}

static void r_http_requests(const render_ctx *r, const family *f) {
    char status[16];
    for (int ep = 0; ep < METRICS_EP_COUNT; ep++)
        for (int s = 0; s < STATUS_SLOTS; s++) {
            uint64_t v = get(&r->m->http[ep][s]);
            if (!v) continue;   /* only statuses that occurred */
            if (s) snprintf(status, sizeof status, "%d", s);
            else snprintf(status, sizeof status, "other");
            sample_u64(r->b, f->name, "endpoint", endpoint_name[ep], "status", status, v);
        }
}

static void r_redis_errors(const render_ctx *r, const family *f) {
    for (int op = 0; op < METRICS_REDIS_OP_COUNT; op++) {
        sample_u64(r->b, f->name, "op", redis_op_name[op], "kind", "timeout",
                   get(&r->m->redis_timeouts[op]));
        sample_u64(r->b, f->name, "op", redis_op_name[op], "kind", "error",
                   get(&r->m->redis_errors[op]));
    }
}

/* ctr_model_info and ctr_model_precision: value 1, labels from the model
 * files, read under model_lock. */
static void r_model_info(const render_ctx *r, const family *f) {
    pthread_mutex_lock(&r->m->model_lock);
    for (int i = 0; i < r->m->nmodels; i++) {
        const model_slots *s = &r->m->models[i];
        if (!s->set) continue;
        const char *const kv[] = {"model", s->label, "name", s->name, "version", s->version,
                                  "arch", s->arch};
        series_n(r->b, f->name, "", kv, 4);
        proto_buf_puts(r->b, "1\n");
    }
    pthread_mutex_unlock(&r->m->model_lock);
}

static void r_model_kernel(const render_ctx *r, const family *f) {
    pthread_mutex_lock(&r->m->model_lock);
    for (int i = 0; i < r->m->nmodels; i++) {
        const model_slots *s = &r->m->models[i];
        if (!s->isa[0]) continue;
        const char *const kv[] = {"model", s->label, "isa", s->isa, "kernel", s->kernel};
        series_n(r->b, f->name, "", kv, 3);
        proto_buf_puts(r->b, "1\n");
    }
    pthread_mutex_unlock(&r->m->model_lock);
}

static void r_model_precision(const render_ctx *r, const family *f) {
    pthread_mutex_lock(&r->m->model_lock);
    for (int i = 0; i < r->m->nmodels; i++) {
        const model_slots *s = &r->m->models[i];
        if (!s->precision[0]) continue;
        const char *const kv[] = {"model", s->label, "precision", s->precision, "exact",
                                  s->exact ? "true" : "false"};
        series_n(r->b, f->name, "", kv, 3);
        proto_buf_puts(r->b, "1\n");
    }
    pthread_mutex_unlock(&r->m->model_lock);
}

/* Only the reasons that occurred, in the order of PROTO_DEGRADED_MAP. */
static void r_degraded(const render_ctx *r, const family *f) {
    for (int d = 0; d < PROTO_DEGRADED_COUNT; d++) {
        uint64_t v = get(&r->m->degraded[d]);
        if (v) sample_u64(r->b, f->name, "reason", proto_degraded_label(d), NULL, NULL, v);
    }
}

static void r_breaker_open(const render_ctx *r, const family *f) {
    uint64_t opens = get(&r->m->breaker_opens), closes = get(&r->m->breaker_closes);
    sample_u64(r->b, f->name, NULL, NULL, NULL, NULL, opens > closes ? opens - closes : 0);
}

/* The history cache's figure at `cur` in hcache_stats (a uint64_t; the
 * gauge `up` an int). */
static void r_hcache(const render_ctx *r, const family *f) {
    uint64_t v = f->vt == V_INT ? (uint64_t)*(const int *)at(&r->hc, f->cur)
                                : *(const uint64_t *)at(&r->hc, f->cur);
    sample_u64(r->b, f->name, NULL, NULL, NULL, NULL, v);
}

static void r_process_start(const render_ctx *r, const family *f) {
    proto_buf_printf(r->b, "%s %.3f\n", f->name, r->m->start_time);
}

static void r_process_cpu(const render_ctx *r, const family *f) {
    proto_buf_printf(r->b, "%s %.2f\n", f->name, r->cpu_seconds);
}

static void r_process_rss(const render_ctx *r, const family *f) {
    proto_buf_printf(r->b, "%s %llu\n", f->name, r->rss_bytes);
}

#define M(field) offsetof(metrics, field)
#define MS(field) offsetof(model_slots, field)
#define CS(field) offsetof(item_cache_stats, field)
#define HS(field) offsetof(hcache_stats, field)
#define FAM(n, t, h, fn) .name = (n), .type = (t), .help = (h), .render = (fn)

/* Every family, in the order rendered. */
static const family families[] = {
    {FAM("ctr_http_requests_total", "counter",
         "HTTP requests answered, by endpoint and status code.", r_http_requests)},
    {FAM("ctr_http_request_duration_seconds", "histogram",
         "Time from request arrival to the answer being queued, by endpoint.", r_histograms),
     .key = "endpoint", .slot = {{NULL, M(http_time)}}, .labels = endpoint_name,
     .n = METRICS_EP_COUNT},
    {FAM("ctr_redis_call_duration_seconds", "histogram",
         "Round-trip time of feature store calls, failed ones included, by operation.",
         r_histograms),
     .key = "op", .slot = {{NULL, M(redis_time)}}, .labels = redis_op_name,
     .n = METRICS_REDIS_OP_COUNT},
    {FAM("ctr_redis_errors_total", "counter",
         "Failed feature store calls, by operation and kind.", r_redis_errors)},
    {FAM("ctr_redis_up", "gauge",
         "1 when the health check's last PING to the feature store was answered.", r_slots),
     .vt = V_INT, .slot = {{NULL, M(redis_up)}}},
    {FAM("ctr_item_cache_hits_total", "counter",
         "Item vector lookups answered from the cache.", r_cache),
     .slot = {{NULL, MS(cache_hits)}}, .cur = CS(hits)},
    {FAM("ctr_item_cache_misses_total", "counter",
         "Item vector lookups that missed (or found an expired entry).", r_cache),
     .slot = {{NULL, MS(cache_misses)}}, .cur = CS(misses)},
    {FAM("ctr_item_cache_insertions_total", "counter", "Item vectors added to the cache.",
         r_cache),
     .slot = {{NULL, MS(cache_insertions)}}, .cur = CS(insertions)},
    {FAM("ctr_item_cache_evictions_total", "counter",
         "Item vectors dropped to keep the cache within its byte budget.", r_cache),
     .slot = {{NULL, MS(cache_evictions)}}, .cur = CS(evictions)},
    {FAM("ctr_item_cache_expirations_total", "counter",
         "Item vectors dropped because their TTL passed.", r_cache),
     .slot = {{NULL, MS(cache_expirations)}}, .cur = CS(expirations)},
    {FAM("ctr_item_cache_entries", "gauge", "Item vectors in the cache now.", r_cache),
     .slot = {{NULL, NO_SLOT}}, .cur = CS(entries)},
    {FAM("ctr_item_cache_bytes", "gauge",
         "Bytes held by the cached item vectors (counted against cache_mb).", r_cache),
     .slot = {{NULL, NO_SLOT}}, .cur = CS(bytes)},
    {FAM("ctr_inflight_requests", "gauge", "HTTP requests being handled now.", r_slots),
     .vt = V_I64, .slot = {{NULL, M(inflight)}}},
    {FAM("ctr_rank_pending_requests", "gauge",
         "Rank requests admitted and not yet answered (queued or being worked on).", r_slots),
     .vt = V_I64, .slot = {{NULL, M(pending)}}},
    {FAM("ctr_rank_pending_requests_limit", "gauge",
         "Admission bound on ctr_rank_pending_requests (max_pending); beyond it, 503.",
         r_slots),
     .vt = V_INT, .slot = {{NULL, M(pending_limit)}}},
    {FAM("ctr_model_info", "gauge",
         "The file each model serves (name and version from its metadata; value always 1).",
         r_model_info)},
    {FAM("ctr_model_precision", "gauge",
         "Arithmetic of each model's dense layers (value always 1); only fp32 is exact.",
         r_model_precision)},
    {FAM("ctr_model_kernel", "gauge",
         "oneDNN's instruction set on this host and the kernel of each model's largest "
         "dense layer per row class (value always 1).",
         r_model_kernel)},
    {FAM("ctr_model_reloads_total", "counter", "Model reload attempts, by result.",
         r_model_slots),
     .key = "result", .slot = {{"ok", MS(reloads_ok)}, {"failed", MS(reloads_failed)}}},
    {FAM("ctr_model_last_reload_successful", "gauge",
         "0 when the model's last reload failed (its previous version still serves), else 1.",
         r_model_slots),
     .vt = V_INT, .slot = {{NULL, MS(last_reload_ok)}}},
    {FAM("ctr_degraded_responses_total", "counter",
         "Responses answered in degraded form, by reason (an answer with several reasons "
         "counts under each).",
         r_degraded)},
    {FAM("ctr_rank_degraded_responses_total", "counter",
         "Rank answers carrying at least one degradation reason, each counted once.", r_slots),
     .slot = {{NULL, M(degraded_responses)}}},
    {FAM("ctr_scored_candidates_total", "counter", "Candidates scored by the model.",
         r_model_slots),
     .slot = {{NULL, MS(scored)}}},
    {FAM("ctr_rank_stage_duration_seconds", "histogram",
         "Time a rank request spent in each stage (queue: waiting for a worker).",
         r_histograms),
     .key = "stage", .slot = {{NULL, M(stage_time)}}, .labels = stage_name,
     .n = METRICS_RANK_STAGES},
    {FAM("ctr_redis_breaker_open", "gauge",
         "Feature store connections whose circuit breaker is open or probing.",
         r_breaker_open)},
    {FAM("ctr_redis_breaker_opens_total", "counter",
         "Circuit breaker openings (a connection's call failed while closed).", r_slots),
     .slot = {{NULL, M(breaker_opens)}}},
    {FAM("ctr_redis_breaker_probes_total", "counter",
         "Calls let through an open breaker to probe the feature store.", r_slots),
     .slot = {{NULL, M(breaker_probes)}}},
    {FAM("ctr_redis_breaker_short_circuits_total", "counter",
         "Calls failed at once because their connection's breaker was open.", r_slots),
     .slot = {{NULL, M(breaker_short)}}},
    {FAM("ctr_redis_desync_total", "counter",
         "Feature-store connections dropped because a reply belonged to no command (of the "
         "wrong type, left over after a pipeline, or arriving while idle).",
         r_slots),
     .slot = {{NULL, M(redis_desyncs)}}},
    {FAM("ctr_redis_node_pipelines_total", "counter",
         "Pipelines sent to each Redis Cluster node (one per node a call reads from).",
         r_nodes),
     .when = CLUSTER_ONLY, .slot = {{NULL, M(node_pipelines)}}},
    {FAM("ctr_redis_node_breaker_opens_total", "counter",
         "Circuit breaker openings of each Redis Cluster node's connections.", r_nodes),
     .when = CLUSTER_ONLY, .slot = {{NULL, M(node_opens)}}},
    {FAM("ctr_redis_node_short_circuits_total", "counter",
         "Calls to a Redis Cluster node refused at once by its open breaker.", r_nodes),
     .when = CLUSTER_ONLY, .slot = {{NULL, M(node_short)}}},
    {FAM("ctr_redis_node_errors_total", "counter",
         "Failed exchanges with each Redis Cluster node: no answer in time, or a broken "
         "connection or error reply.",
         r_nodes),
     .when = CLUSTER_ONLY, .key = "kind",
     .slot = {{"timeout", M(node_timeouts)}, {"error", M(node_errors)}}},
    {FAM("ctr_redis_cluster_map_refreshes_total", "counter",
         "Redis Cluster slot map reads (CLUSTER SLOTS) by the workers.", r_slots),
     .when = CLUSTER_ONLY, .key = "result",
     .slot = {{"ok", M(refreshes_ok)}, {"failed", M(refreshes_failed)}}},
    {FAM("ctr_redis_cluster_redirects_total", "counter",
         "Redis Cluster redirections followed (moved: a slot has a new owner; ask: a key is "
         "being migrated).",
         r_slots),
     .when = CLUSTER_ONLY, .key = "kind", .slot = {{"moved", M(moved)}, {"ask", M(asked)}}},
    {FAM("ctr_requests_shed_total", "counter",
         "Rank requests answered 503 overloaded: over the admission bound, or past their "
         "deadline before a worker took them.",
         r_slots),
     .key = "reason", .slot = {{"admission", M(shed_admission)}, {"deadline", M(shed_deadline)}}},
    {FAM("ctr_connections_cut_total", "counter",
         "Connections closed for not sending a whole request within the receive deadline.",
         r_slots),
     .key = "reason", .slot = {{"receive_deadline", M(cut_receive)}}},
    {FAM("ctr_feature_set_ready", "gauge",
         "1 when the feature store holds a feature-set marker matching the model, under its "
         "key prefix.",
         r_model_slots),
     .vt = V_INT, .slot = {{NULL, MS(feature_set_ready)}}},
    {FAM("ctr_feature_set_loaded_timestamp_seconds", "gauge",
         "When ctr-load finished writing the feature set (unix seconds; 0 unknown).",
         r_model_slots),
     .vt = V_SECONDS, .slot = {{NULL, MS(feature_set_loaded_at)}}},
    {FAM("ctr_item_changes_applied_total", "counter",
         "Cached item vectors dropped because ctr-load recorded a change of the item "
         "(<prefix>item-changes), so the next request reads its new features.",
         r_model_slots),
     .slot = {{NULL, MS(changes_applied)}}},
    {FAM("ctr_item_cache_drops_total", "counter",
         "Whole item caches dropped because the change stream could not say what changed "
         "(records trimmed before they were read, the stream lost, the feature set loaded "
         "anew).",
         r_model_slots),
     .slot = {{NULL, MS(cache_drops)}}},
    {FAM("ctr_item_change_lag_seconds", "gauge",
         "Age of the newest item change when the health check applied it (Redis's clock "
         "against this host's).",
         r_model_slots),
     .vt = V_SECONDS, .slot = {{NULL, MS(change_lag)}}},
    {FAM("ctr_history_cache_hits_total", "counter",
         "Users' histories answered from the history cache (no Redis round trip).", r_hcache),
     .when = WITH_HCACHE, .cur = HS(hits)},
    {FAM("ctr_history_cache_misses_total", "counter",
         "History lookups read from Redis while the cache was on (not cached, expired, or "
         "the invalidation link behind).",
         r_hcache),
     .when = WITH_HCACHE, .cur = HS(misses)},
    {FAM("ctr_history_cache_bypassed_total", "counter",
         "History lookups read from Redis because the invalidation link was down or refused "
         "(the cache is then empty and unused).",
         r_hcache),
     .when = WITH_HCACHE, .cur = HS(bypassed)},
    {FAM("ctr_history_cache_insertions_total", "counter", "Histories added to the cache.",
         r_hcache),
     .when = WITH_HCACHE, .cur = HS(insertions)},
    {FAM("ctr_history_cache_stale_inserts_refused_total", "counter",
         "Histories not cached because an invalidation of the user (or a flush) arrived "
         "while they were being read.",
         r_hcache),
     .when = WITH_HCACHE, .cur = HS(stale_refused)},
    {FAM("ctr_history_cache_evictions_total", "counter",
         "Histories dropped to keep the cache within history_cache_mb.", r_hcache),
     .when = WITH_HCACHE, .cur = HS(evictions)},
    {FAM("ctr_history_cache_expirations_total", "counter",
         "Histories found past history_cache_ttl_s (read again).", r_hcache),
     .when = WITH_HCACHE, .cur = HS(expirations)},
    {FAM("ctr_history_cache_invalidations_total", "counter",
         "Users' keys Redis said changed (each drops its cached history).", r_hcache),
     .when = WITH_HCACHE, .cur = HS(invalidations)},
    {FAM("ctr_history_cache_flushes_total", "counter",
         "Times the whole history cache was emptied: the invalidation link lost or set up "
         "again, FLUSHDB or FLUSHALL.",
         r_hcache),
     .when = WITH_HCACHE, .cur = HS(flushes)},
    {FAM("ctr_history_cache_entries", "gauge", "Histories in the cache now.", r_hcache),
     .when = WITH_HCACHE, .cur = HS(entries)},
    {FAM("ctr_history_cache_up", "gauge",
         "1 when the history cache's invalidation link is up (lookups may hit); 0: every "
         "history is read from Redis.",
         r_hcache),
     .when = WITH_HCACHE, .vt = V_INT, .cur = HS(up)},
    {FAM("ctr_impressions_written_total", "counter",
         "Impression log records written to the sink.", r_slots),
     .when = WITH_IMPLOG, .slot = {{NULL, M(imp_written)}}},
    {FAM("ctr_impressions_dropped_total", "counter",
         "Impression log records dropped: the queue was full (the sink is slow or down), a "
         "write failed, or they were still queued at shutdown.",
         r_slots),
     .when = WITH_IMPLOG, .key = "reason",
     .slot = {{"queue_full", M(imp_full)}, {"sink_failed", M(imp_sink)},
              {"shutdown", M(imp_shutdown)}}},
    {FAM("ctr_impression_log_sink_errors_total", "counter",
         "Failed writes, connects or reopens of the impression log's sink.", r_slots),
     .when = WITH_IMPLOG, .slot = {{NULL, M(imp_errors)}}},
    {FAM("ctr_impression_log_up", "gauge", "1 when the impression log's last write succeeded.",
         r_slots),
     .when = WITH_IMPLOG, .vt = V_INT, .slot = {{NULL, M(imp_up)}}},
    {FAM("ctr_impression_log_queue_bytes", "gauge",
         "Bytes of impression records waiting for the sink.", r_slots),
     .when = WITH_IMPLOG, .slot = {{NULL, M(imp_queue)}}},
    {FAM("ctr_impression_log_queue_limit_bytes", "gauge",
         "Bound of ctr_impression_log_queue_bytes (impression_queue_mb); beyond it, records "
         "are dropped.",
         r_slots),
     .when = WITH_IMPLOG, .slot = {{NULL, M(imp_limit)}}},
    /* The standard process_* series of Prometheus client libraries. */
    {FAM("process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.", r_process_start)},
    {FAM("process_cpu_seconds_total", "counter",
         "Total user and system CPU time spent in seconds.", r_process_cpu),
     .when = WITH_PROC},
    {FAM("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         r_process_rss),
     .when = WITH_PROC},
};

#undef M
#undef MS
#undef CS
#undef HS
#undef FAM

/* CPU time and resident size from /proc/self/stat (one small read); without
 * /proc they are left out rather than written as 0.  (process_open_fds is
 * not among them: counting /proc/self/fd walks every connection's entry,
 * on the event loop that answers the scrape.) */
static void read_proc(render_ctx *r) {
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name (which may hold spaces and parens),
     * counted from the state, field 3: utime 14, stime 15, rss 24 (pages). */
    const char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0, rss = 0;
    int field = 3, found = 0;
    for (p = p ? p + 1 : NULL; p && *p && found < 3; field++) {
        while (*p == ' ') p++;
        unsigned long long v = strtoull(p, NULL, 10);   /* field 3 (a letter): 0 */
        if (field == 14) utime = v, found++;
        else if (field == 15) stime = v, found++;
        else if (field == 24) rss = v, found++;
        p = strchr(p, ' ');
    }
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    if (found != 3 || ticks <= 0 || page <= 0) return;
    r->cpu_seconds = (double)(utime + stime) / (double)ticks;
    r->rss_bytes = rss * (unsigned long long)page;
    r->proc_ok = 1;
}

void metrics_item_changes(metrics *m, int model, uint64_t applied, int dropped, double lag_s) {
    model_slots *s = model_at(m, model);
    if (!s) return;
    add(&s->changes_applied, applied);
    if (dropped) add(&s->cache_drops, 1);
    if (lag_s >= 0) atomic_store_explicit(&s->change_lag, lag_s, memory_order_relaxed);
}

void metrics_history_cache_on(metrics *m, const struct hcache *c) { m->hcache = c; }

void metrics_impression_log_on(metrics *m, uint64_t limit_bytes) {
    m->implog_on = 1;
    atomic_store(&m->imp_limit, limit_bytes);
    atomic_store(&m->imp_up, 1);
}

void metrics_impression_event(void *arg, implog_event ev, uint64_t n) {
    metrics *m = arg;
    switch (ev) {
    case IMPLOG_WRITTEN: add(&m->imp_written, n); break;
    case IMPLOG_DROPPED_FULL: add(&m->imp_full, n); break;
    case IMPLOG_DROPPED_SINK: add(&m->imp_sink, n); break;
    case IMPLOG_DROPPED_SHUTDOWN: add(&m->imp_shutdown, n); break;
    case IMPLOG_SINK_ERROR: add(&m->imp_errors, n); break;
    case IMPLOG_SINK_UP: atomic_store_explicit(&m->imp_up, n ? 1 : 0, memory_order_relaxed); break;
    case IMPLOG_QUEUE_BYTES: atomic_store_explicit(&m->imp_queue, n, memory_order_relaxed); break;
    }
}

int metrics_render(metrics *m, const item_cache_stats *caches, int ncaches, proto_buf *b) {
    render_ctx r = {.m = m, .b = b, .caches = caches, .ncaches = ncaches};
    r.nodes = atomic_load(&m->nnodes);
    pthread_mutex_lock(&m->node_lock);
    r.last_node = m->node_other_used ? METRICS_MAX_NODES : r.nodes - 1;
    pthread_mutex_unlock(&m->node_lock);
    read_proc(&r);
    if (m->hcache) hcache_stats_get(m->hcache, &r.hc);
    for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
        const family *f = &families[i];
        if ((f->when == CLUSTER_ONLY && !r.nodes) || (f->when == WITH_PROC && !r.proc_ok) ||
            (f->when == WITH_IMPLOG && !m->implog_on) || (f->when == WITH_HCACHE && !m->hcache))
            continue;
        family_header(b, f->name, f->type, f->help);
        f->render(&r, f);
    }
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}

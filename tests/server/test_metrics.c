/*
 * test_metrics.c - server/metrics.c: the rendered text is read back by a
 * strict parser of exposition format 0.0.4 written here (names, HELP/TYPE
 * before samples, families contiguous, label syntax and escapes, numeric
 * values), then checked for meaning: bucket placement and monotonicity,
 * +Inf == _count, exact sums, label escaping of an awkward model version,
 * and updates from many threads summing exactly while a scraper renders.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server/metrics.h"

/* --- A strict reader of the text format -------------------------------- */

#define MAX_SAMPLES 2048
#define MAX_FAMILIES 64
#define MAX_LABELS 4

typedef struct sample {
    char name[96];
    char family[96];
    int nlabels;
    char key[MAX_LABELS][32];
    char val[MAX_LABELS][256];   /* unescaped */
    char labels[512];            /* canonical "k=v,k=v" (unescaped), for lookup */
    double value;
} sample;

typedef struct family_info {
    char name[96];
    char type[16];
    int help, has_type, closed;
} family_info;

typedef struct parsed {
    sample s[MAX_SAMPLES];
    int n;
    family_info f[MAX_FAMILIES];
    int nf;
} parsed;

static int valid_name(const char *s, size_t n, int metric) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = isalpha((unsigned char)c) || c == '_' || (metric && c == ':') ||
                 (i > 0 && isdigit((unsigned char)c));
        if (!ok) return 0;
    }
    return 1;
}

/* strcat with a bound (snprintf into the struct trips -Wrestrict). */
static void append(char *dst, size_t cap, const char *src) {
    size_t l = strlen(dst), n = strlen(src);
    if (l + n >= cap) fail_msg("labels too long");
    memcpy(dst + l, src, n + 1);
}

static family_info *find_family(parsed *p, const char *name) {
    for (int i = 0; i < p->nf; i++)
        if (strcmp(p->f[i].name, name) == 0) return &p->f[i];
    return NULL;
}

static int parse_value(const char *s, double *v) {
    if (strcmp(s, "+Inf") == 0) { *v = INFINITY; return 1; }
    if (strcmp(s, "-Inf") == 0) { *v = -INFINITY; return 1; }
    if (strcmp(s, "NaN") == 0) { *v = NAN; return 1; }
    char *end;
    *v = strtod(s, &end);
    return end != s && *end == '\0' && !isspace((unsigned char)*s);
}

static void parse_comment(parsed *p, const char *line, int lineno) {
    char kind[8], name[128];
    int off = 0;
    if (sscanf(line, "# %7s %127s %n", kind, name, &off) < 2)
        fail_msg("line %d: bad comment: %s", lineno, line);
    if (!valid_name(name, strlen(name), 1)) fail_msg("line %d: bad name %s", lineno, name);
    family_info *f = find_family(p, name);
    if (!f) {
        assert_true(p->nf < MAX_FAMILIES);
        f = &p->f[p->nf++];
        snprintf(f->name, sizeof f->name, "%s", name);
    }
    if (f->closed) fail_msg("line %d: %s reopened after its samples", lineno, name);
    if (strcmp(kind, "HELP") == 0) {
        if (f->help++) fail_msg("line %d: second HELP for %s", lineno, name);
        /* Only \\ and \n are escapes in HELP text. */
        for (const char *c = line + off; *c; c++)
            if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                fail_msg("line %d: bad escape in HELP", lineno);
            else if (*c == '\\')
                c++;
    } else if (strcmp(kind, "TYPE") == 0) {
        if (f->has_type++) fail_msg("line %d: second TYPE for %s", lineno, name);
        const char *t = line + off;
        if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") &&
            strcmp(t, "summary") && strcmp(t, "untyped"))
            fail_msg("line %d: bad type %s", lineno, t);
        snprintf(f->type, sizeof f->type, "%s", t);
    } else {
        fail_msg("line %d: unexpected comment %s", lineno, line);
    }
}

static void parse_sample(parsed *p, const char *line, int lineno, family_info **cur) {
    assert_true(p->n < MAX_SAMPLES);
    sample *s = &p->s[p->n++];
    memset(s, 0, sizeof *s);
    size_t n = strcspn(line, "{ ");
    if (!valid_name(line, n, 1) || n >= sizeof s->name)
        fail_msg("line %d: bad metric name: %s", lineno, line);
    memcpy(s->name, line, n);
    const char *c = line + n;
    if (*c == '{') {
        c++;
        while (*c != '}') {
            if (s->nlabels == MAX_LABELS) fail_msg("line %d: too many labels", lineno);
            size_t k = strcspn(c, "=");
            if (!valid_name(c, k, 0) || k >= 32 || (k >= 2 && c[0] == '_' && c[1] == '_'))
                fail_msg("line %d: bad label name", lineno);
            memcpy(s->key[s->nlabels], c, k);
            for (int j = 0; j < s->nlabels; j++)
                if (strcmp(s->key[j], s->key[s->nlabels]) == 0)
                    fail_msg("line %d: duplicate label", lineno);
            c += k;
            if (c[0] != '=' || c[1] != '"') fail_msg("line %d: label without =\"", lineno);
            c += 2;
            char *v = s->val[s->nlabels];
            size_t vl = 0;
            for (; *c != '"'; c++) {
                if (!*c) fail_msg("line %d: unterminated label value", lineno);
                char ch = *c;
                if (ch == '\\') {
                    c++;
                    if (*c == '\\') ch = '\\';
                    else if (*c == '"') ch = '"';
                    else if (*c == 'n') ch = '\n';
                    else fail_msg("line %d: bad escape \\%c", lineno, *c);
                }
                if (vl + 1 >= 256) fail_msg("line %d: label too long", lineno);
                v[vl++] = ch;
            }
            c++;
            s->nlabels++;
            if (*c == ',') c++;
            else if (*c != '}') fail_msg("line %d: expected , or }", lineno);
        }
        c++;
    }
    if (*c != ' ') fail_msg("line %d: expected a space before the value", lineno);
    c++;
    /* No timestamps are written, so the rest is the value. */
    if (!parse_value(c, &s->value)) fail_msg("line %d: bad value '%s'", lineno, c);
    for (int j = 0; j < s->nlabels; j++) {
        if (j) append(s->labels, sizeof s->labels, ",");
        append(s->labels, sizeof s->labels, s->key[j]);
        append(s->labels, sizeof s->labels, "=");
        append(s->labels, sizeof s->labels, s->val[j]);
    }

    /* Which family: the name itself, or a histogram's suffixed series. */
    family_info *f = find_family(p, s->name);
    if (!f) {
        static const char *const suf[] = {"_bucket", "_sum", "_count"};
        for (int i = 0; i < 3 && !f; i++) {
            size_t nl = strlen(s->name), sl = strlen(suf[i]);
            if (nl > sl && strcmp(s->name + nl - sl, suf[i]) == 0) {
                char base[96];
                snprintf(base, sizeof base, "%.*s", (int)(nl - sl), s->name);
                family_info *h = find_family(p, base);
                if (h && strcmp(h->type, "histogram") == 0) f = h;
            }
        }
    }
    if (!f || !f->has_type) fail_msg("line %d: sample %s before its TYPE", lineno, s->name);
    if (*cur && *cur != f) (*cur)->closed = 1;
    if (f->closed) fail_msg("line %d: family %s not contiguous", lineno, f->name);
    *cur = f;
    snprintf(s->family, sizeof s->family, "%s", f->name);
    if (strcmp(f->type, "counter") == 0) {
        size_t nl = strlen(s->name);
        if (nl < 6 || strcmp(s->name + nl - 6, "_total") != 0)
            fail_msg("line %d: counter %s without _total", lineno, s->name);
        if (s->value < 0) fail_msg("line %d: negative counter", lineno);
    }
    if (strcmp(s->name + strlen(f->name), "_bucket") == 0) {
        int has_le = 0;
        for (int j = 0; j < s->nlabels; j++) has_le |= strcmp(s->key[j], "le") == 0;
        if (!has_le) fail_msg("line %d: bucket without le", lineno);
    }
}

static void parse(parsed *p, const char *text) {
    memset(p, 0, sizeof *p);
    size_t len = strlen(text);
    if (len && text[len - 1] != '\n') fail_msg("text does not end with a newline");
    family_info *cur = NULL;
    int lineno = 0;
    for (const char *l = text; *l;) {
        const char *nl = strchr(l, '\n');
        char line[1024];
        size_t n = (size_t)(nl - l);
        lineno++;
        if (n >= sizeof line) {
            fail_msg("line %d too long", lineno);
            return;
        }
        memcpy(line, l, n);
        line[n] = '\0';
        l = nl + 1;
        if (n == 0) fail_msg("line %d: empty line", lineno);
        if (line[0] == '#') {
            /* A comment after a family's samples begins another family. */
            if (cur) cur->closed = 1, cur = NULL;
            parse_comment(p, line, lineno);
        } else {
            parse_sample(p, line, lineno, &cur);
        }
    }
    for (int i = 0; i < p->nf; i++)
        if (!p->f[i].help || !p->f[i].has_type)
            fail_msg("family %s lacks HELP or TYPE", p->f[i].name);
}

/* Value of name{labels}, or -1 when absent. */
static double value(const parsed *p, const char *name, const char *labels) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->s[i].name, name) == 0 && strcmp(p->s[i].labels, labels) == 0)
            return p->s[i].value;
    return -1;
}

static int count_samples(const parsed *p, const char *name) {
    int n = 0;
    for (int i = 0; i < p->n; i++) n += strcmp(p->s[i].name, name) == 0;
    return n;
}

/* Every histogram: per label set, le increasing, counts non-decreasing,
 * ending at +Inf == _count, with a _sum.  Returns the histograms checked. */
static int check_histograms(const parsed *p) {
    int checked = 0;
    for (int fi = 0; fi < p->nf; fi++) {
        const family_info *f = &p->f[fi];
        if (strcmp(f->type, "histogram") != 0) continue;
        char bname[128], cname[128], sname[128];
        snprintf(bname, sizeof bname, "%s_bucket", f->name);
        snprintf(cname, sizeof cname, "%s_count", f->name);
        snprintf(sname, sizeof sname, "%s_sum", f->name);
        for (int i = 0; i < p->n; i++) {
            if (strcmp(p->s[i].name, cname) != 0) continue;
            const char *lbl = p->s[i].labels;   /* e.g. "endpoint=/v1/rank" */
            double prev_le = -INFINITY, prev = 0, last_le = 0, last = -1;
            int nb = 0;
            for (int j = 0; j < p->n; j++) {
                const sample *b = &p->s[j];
                if (strcmp(b->name, bname) != 0) continue;
                /* Same labels apart from le (le is written last). */
                char other[512] = "";
                double le = NAN;
                for (int k = 0; k < b->nlabels; k++) {
                    if (strcmp(b->key[k], "le") == 0) {
                        assert_true(parse_value(b->val[k], &le));
                    } else {
                        size_t l = strlen(other);
                        snprintf(other + l, sizeof other - l, "%s%s=%s", l ? "," : "",
                                 b->key[k], b->val[k]);
                    }
                }
                if (strcmp(other, lbl) != 0) continue;
                if (!(le > prev_le)) fail_msg("%s{%s}: le not increasing", f->name, lbl);
                if (b->value < prev) fail_msg("%s{%s}: buckets decrease", f->name, lbl);
                prev_le = last_le = le;
                prev = last = b->value;
                nb++;
            }
            assert_true(nb >= 2);
            assert_true(isinf(last_le) && last_le > 0);
            assert_true(last == p->s[i].value);
            assert_true(value(p, sname, lbl) >= 0);
            checked++;
        }
    }
    return checked;
}

static char *render(metrics *m, const item_cache_stats *st, parsed *p) {
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(metrics_render(m, st, st ? 1 : 0, &b), CTR_OK);
    parse(p, proto_buf_str(&b));
    return b.data;   /* caller frees */
}

static parsed P;   /* big; one at a time */

static const char *const families[] = {
    "ctr_http_requests_total", "ctr_http_request_duration_seconds",
    "ctr_redis_call_duration_seconds", "ctr_redis_errors_total", "ctr_redis_up",
    "ctr_item_cache_hits_total", "ctr_item_cache_misses_total",
    "ctr_item_cache_insertions_total", "ctr_item_cache_evictions_total",
    "ctr_item_cache_expirations_total", "ctr_item_cache_entries",
    "ctr_item_cache_bytes", "ctr_inflight_requests", "ctr_rank_pending_requests",
    "ctr_rank_pending_requests_limit", "ctr_model_info", "ctr_model_precision",
    "ctr_model_kernel",
    "ctr_model_reloads_total", "ctr_model_last_reload_successful", "ctr_degraded_responses_total",
    "ctr_rank_degraded_responses_total", "ctr_scored_candidates_total", "ctr_rank_stage_duration_seconds",
    "ctr_redis_breaker_open", "ctr_redis_breaker_opens_total",
    "ctr_redis_breaker_probes_total", "ctr_redis_breaker_short_circuits_total",
    "ctr_redis_desync_total", "ctr_requests_shed_total", "ctr_connections_cut_total",
    "ctr_feature_set_ready", "ctr_feature_set_loaded_timestamp_seconds",
    "ctr_item_changes_applied_total", "ctr_item_cache_drops_total", "ctr_item_change_lag_seconds",
    "process_start_time_seconds",
    "process_cpu_seconds_total", "process_resident_memory_bytes",
};

static void test_fresh(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    assert_int_equal(metrics_add_model(m, "qin"), 0);
    free(render(m, NULL, &P));
    assert_int_equal(P.nf, (int)(sizeof families / sizeof *families));
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        assert_non_null(find_family(&P, families[i]));
    assert_int_equal(count_samples(&P, "ctr_http_requests_total"), 0);
    assert_int_equal(count_samples(&P, "ctr_model_info"), 0);
    assert_int_equal(check_histograms(&P), METRICS_EP_COUNT + METRICS_REDIS_OP_COUNT + METRICS_RANK_STAGES);
    assert_true(value(&P, "ctr_http_request_duration_seconds_count", "endpoint=/v1/rank") == 0);
    assert_true(value(&P, "ctr_item_cache_entries", "model=qin") == 0);
    assert_true(value(&P, "ctr_redis_errors_total", "op=ping,kind=timeout") == 0);
    double start = value(&P, "process_start_time_seconds", "");
    assert_true(fabs(start - (double)time(NULL)) < 5);
    assert_true(value(&P, "ctr_model_last_reload_successful", "model=qin") == 1);
    assert_true(value(&P, "ctr_redis_up", "") == 0);
    assert_true(value(&P, "ctr_rank_pending_requests", "") == 0);
    assert_true(value(&P, "ctr_rank_pending_requests_limit", "") == 0);
    assert_true(value(&P, "ctr_rank_degraded_responses_total", "") == 0);
    assert_true(value(&P, "ctr_redis_breaker_open", "") == 0);
    assert_true(value(&P, "ctr_redis_desync_total", "") == 0);
    assert_true(value(&P, "ctr_feature_set_ready", "model=qin") == 0);
    /* The issue-7 series move as their events happen. */
    metrics_breaker(m, BREAKER_EV_OPENED);
    metrics_breaker(m, BREAKER_EV_OPENED);
    metrics_breaker(m, BREAKER_EV_SHORT_CIRCUIT);
    metrics_breaker(m, BREAKER_EV_CLOSED);
    metrics_shed(m, 0);
    metrics_shed(m, 1);
    metrics_shed(m, 1);
    metrics_connection_cut(m);
    metrics_redis_desync(m);
    metrics_redis_desync(NULL);                       /* no metrics: ignored */
    metrics_feature_set(m, 0, 1, 1714557600.5);
    metrics_feature_set(m, 5, 1, 1.0);                /* not a model: ignored */
    metrics_rank_stage(m, 2, 0.0003);
    metrics_redis_up(m, 1);
    metrics_set_pending_limit(m, 32);
    metrics_pending_add(m, 1);
    metrics_pending_add(m, 1);
    metrics_pending_add(m, 1);
    metrics_pending_add(m, -1);
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_redis_up", "") == 1);
    assert_true(value(&P, "ctr_rank_pending_requests", "") == 2);
    assert_true(value(&P, "ctr_rank_pending_requests_limit", "") == 32);
    assert_true(value(&P, "ctr_redis_breaker_open", "") == 1);
    assert_true(value(&P, "ctr_redis_breaker_opens_total", "") == 2);
    assert_true(value(&P, "ctr_redis_breaker_short_circuits_total", "") == 1);
    assert_true(value(&P, "ctr_requests_shed_total", "reason=admission") == 1);
    assert_true(value(&P, "ctr_requests_shed_total", "reason=deadline") == 2);
    assert_true(value(&P, "ctr_connections_cut_total", "reason=receive_deadline") == 1);
    assert_true(value(&P, "ctr_redis_desync_total", "") == 1);
    assert_true(value(&P, "ctr_feature_set_ready", "model=qin") == 1);
    assert_int_equal(count_samples(&P, "ctr_feature_set_ready"), 1);
    assert_true(value(&P, "ctr_feature_set_loaded_timestamp_seconds", "model=qin") == 1714557600.5);
    assert_true(value(&P, "ctr_rank_stage_duration_seconds_count", "stage=history") == 1);
    metrics_free(m);
}

/* Resident bytes of this process, from /proc/self/statm. */
static double statm_rss(void) {
    long size = 0, pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &size, &pages), 2);
    fclose(f);
    return (double)pages * (double)sysconf(_SC_PAGESIZE);
}

/* The process_* series against what getrusage and /proc/self/statm say
 * around the render (the parse that follows touches megabytes). */
/* Item changes per model; the impression log's series only once it is
 * on, fed by its hook. */
static void test_changes_and_impressions(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    assert_int_equal(metrics_add_model(m, "qin"), 0);
    assert_int_equal(metrics_add_model(m, "din"), 1);
    metrics_item_changes(m, 1, 7, 0, 0.25);
    metrics_item_changes(m, 1, 3, 1, -1);   /* lag left as it was */
    metrics_item_changes(m, 5, 9, 1, 9);    /* no such model: ignored */
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_item_changes_applied_total", "model=din") == 10);
    assert_true(value(&P, "ctr_item_changes_applied_total", "model=qin") == 0);
    assert_true(value(&P, "ctr_item_cache_drops_total", "model=din") == 1);
    assert_true(value(&P, "ctr_item_change_lag_seconds", "model=din") == 0.25);
    assert_null(find_family(&P, "ctr_impressions_written_total"));

    metrics_impression_log_on(m, 16u << 20);
    metrics_impression_event(m, IMPLOG_WRITTEN, 100);
    metrics_impression_event(m, IMPLOG_WRITTEN, 20);
    metrics_impression_event(m, IMPLOG_DROPPED_FULL, 5);
    metrics_impression_event(m, IMPLOG_DROPPED_SINK, 3);
    metrics_impression_event(m, IMPLOG_DROPPED_SHUTDOWN, 2);
    metrics_impression_event(m, IMPLOG_SINK_ERROR, 1);
    metrics_impression_event(m, IMPLOG_SINK_UP, 0);
    metrics_impression_event(m, IMPLOG_QUEUE_BYTES, 4096);
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_impressions_written_total", "") == 120);
    assert_true(value(&P, "ctr_impressions_dropped_total", "reason=queue_full") == 5);
    assert_true(value(&P, "ctr_impressions_dropped_total", "reason=sink_failed") == 3);
    assert_true(value(&P, "ctr_impressions_dropped_total", "reason=shutdown") == 2);
    assert_true(value(&P, "ctr_impression_log_sink_errors_total", "") == 1);
    assert_true(value(&P, "ctr_impression_log_up", "") == 0);
    assert_true(value(&P, "ctr_impression_log_queue_bytes", "") == 4096);
    assert_true(value(&P, "ctr_impression_log_queue_limit_bytes", "") == 16u << 20);
    metrics_impression_event(m, IMPLOG_SINK_UP, 1);
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_impression_log_up", "") == 1);
    metrics_free(m);
}

static void test_process(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    /* Some CPU time to see: /proc counts whole 10 ms ticks, so burn until
     * getrusage says 50 ms (a fixed loop count is under one tick on a
     * fast core, and then the series reads 0). */
#define SECS(r) ((double)((r).ru_utime.tv_sec + (r).ru_stime.tv_sec) + \
                 (double)((r).ru_utime.tv_usec + (r).ru_stime.tv_usec) / 1e6)
    struct rusage r0, r1;
    do {
        for (volatile long i = 0; i < 1000000; i++) {
        }
        assert_int_equal(getrusage(RUSAGE_SELF, &r0), 0);
    } while (SECS(r0) < 0.05);
    proto_buf b;
    proto_buf_init(&b);
    double rss0 = statm_rss();
    assert_int_equal(metrics_render(m, NULL, 0, &b), CTR_OK);
    double rss1 = statm_rss();
    assert_int_equal(getrusage(RUSAGE_SELF, &r1), 0);
    parse(&P, proto_buf_str(&b));
    double cpu = value(&P, "process_cpu_seconds_total", "");
    /* /proc counts in clock ticks (10 ms) and is printed to 10 ms. */
    assert_true(cpu >= SECS(r0) - 0.02 && cpu <= SECS(r1) + 0.02);
    assert_true(cpu > 0);
#undef SECS
    double rss = value(&P, "process_resident_memory_bytes", "");
    assert_true(rss >= 0.9 * rss0 && rss <= 1.1 * rss1 && rss > 0);
    proto_buf_free(&b);
    metrics_free(m);
}

/* Redis Cluster nodes: a series set per node address (the first
 * METRICS_MAX_NODES; later ones share node="other"), cluster-wide
 * redirects and refreshes; nothing of it in one-node mode (test_fresh). */
static void test_nodes(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    int a = metrics_node_id(m, "10.0.0.1:7000");
    int b = metrics_node_id(m, "[::1]:7001");
    assert_true(a >= 0 && b >= 0 && a != b);
    assert_int_equal(metrics_node_id(m, "10.0.0.1:7000"), a);   /* same node, same id */
    metrics_node_event(m, a, FEATSTORE_NODE_PIPELINE);
    metrics_node_event(m, a, FEATSTORE_NODE_PIPELINE);
    metrics_node_event(m, b, FEATSTORE_NODE_TIMEOUT);
    metrics_node_event(m, b, FEATSTORE_NODE_ERROR);
    metrics_node_event(m, b, FEATSTORE_NODE_BREAKER_OPENED);
    metrics_node_event(m, b, FEATSTORE_NODE_SHORT_CIRCUIT);
    metrics_node_event(m, -1, FEATSTORE_NODE_MOVED);
    metrics_node_event(m, -1, FEATSTORE_NODE_ASK);
    metrics_node_event(m, -1, FEATSTORE_NODE_REFRESH);
    metrics_node_event(m, -1, FEATSTORE_NODE_REFRESH);
    metrics_node_event(m, -1, FEATSTORE_NODE_REFRESH_FAILED);
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_redis_node_pipelines_total", "node=10.0.0.1:7000") == 2);
    assert_true(value(&P, "ctr_redis_node_pipelines_total", "node=[::1]:7001") == 0);
    assert_true(value(&P, "ctr_redis_node_errors_total", "node=[::1]:7001,kind=timeout") == 1);
    assert_true(value(&P, "ctr_redis_node_errors_total", "node=[::1]:7001,kind=error") == 1);
    assert_true(value(&P, "ctr_redis_node_breaker_opens_total", "node=[::1]:7001") == 1);
    assert_true(value(&P, "ctr_redis_node_short_circuits_total", "node=[::1]:7001") == 1);
    assert_true(value(&P, "ctr_redis_cluster_redirects_total", "kind=moved") == 1);
    assert_true(value(&P, "ctr_redis_cluster_redirects_total", "kind=ask") == 1);
    assert_true(value(&P, "ctr_redis_cluster_map_refreshes_total", "result=ok") == 2);
    assert_true(value(&P, "ctr_redis_cluster_map_refreshes_total", "result=failed") == 1);
    assert_int_equal(count_samples(&P, "ctr_redis_node_pipelines_total"), 2);
    /* Bounded: past METRICS_MAX_NODES addresses, one "other" series. */
    char addr[32];
    for (int i = 0; i < METRICS_MAX_NODES + 5; i++) {
        snprintf(addr, sizeof addr, "10.0.1.%d:7000", i);
        metrics_node_event(m, metrics_node_id(m, addr), FEATSTORE_NODE_PIPELINE);
    }
    free(render(m, NULL, &P));
    assert_int_equal(count_samples(&P, "ctr_redis_node_pipelines_total"), METRICS_MAX_NODES + 1);
    assert_true(value(&P, "ctr_redis_node_pipelines_total", "node=other") == 7);
    metrics_free(m);
}

static void test_values(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    assert_int_equal(metrics_add_model(m, "qin"), 0);
    metrics_http(m, METRICS_EP_RANK, 200, 0.0001);    /* le is inclusive */
    metrics_http(m, METRICS_EP_RANK, 200, 0.00011);
    metrics_http(m, METRICS_EP_RANK, 503, 2.5);       /* only in +Inf */
    metrics_http(m, METRICS_EP_RANK, 200, -1);        /* clock step: 0 */
    metrics_http(m, METRICS_EP_OTHER, 404, 0.001);
    metrics_http(m, METRICS_EP_OTHER, 42, 0.001);     /* nonsense status */
    metrics_http(m, (metrics_endpoint)99, 200, 0.001);
    metrics_redis(m, METRICS_REDIS_GET_ITEMS, 0.0004, METRICS_REDIS_OK);
    metrics_redis(m, METRICS_REDIS_GET_ITEMS, 0.02, METRICS_REDIS_TIMEOUT);
    metrics_redis(m, METRICS_REDIS_PING, 0.001, METRICS_REDIS_ERROR);
    metrics_inflight_add(m, 1);
    metrics_inflight_add(m, 1);
    metrics_inflight_add(m, -1);
    metrics_scored(m, 0, 300);
    metrics_scored(m, 0, 12);
    metrics_scored(m, 1, 99);                        /* no such model: ignored */
    metrics_reload(m, 0, 1);
    metrics_reload(m, 0, 0);
    metrics_reload(m, 0, 0);
    metrics_set_model(m, 0, "qin", "2024-01-01", "qin");
    metrics_set_model(m, 0, "qin", "2024-02-01", "qin");   /* replaces, one series */
    metrics_degraded_response(m);
    metrics_degraded_response(m);

    metrics_degraded(m, PROTO_DEGRADED_HISTORY_UNAVAILABLE);
    metrics_degraded(m, PROTO_DEGRADED_FEATURE_SET_MISSING);
    metrics_degraded(m, PROTO_DEGRADED_FEATURE_SET_MISSING);
    metrics_degraded(m, PROTO_DEGRADED_COUNT);             /* not a reason: ignored */
    metrics_degraded(m, (proto_degraded)-1);

    item_cache_stats old = {.hits = 10, .misses = 5, .insertions = 5, .evictions = 1,
                            .expirations = 2, .entries = 2, .bytes = 999};
    metrics_cache_retire(m, 0, &old);
    item_cache_stats cur = {.hits = 7, .misses = 3, .insertions = 3, .evictions = 0,
                            .expirations = 1, .entries = 3, .bytes = 3 * 4672};

    char *text = render(m, &cur, &P);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=/v1/rank,status=200") == 3);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=/v1/rank,status=503") == 1);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=other,status=404") == 1);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=other,status=other") == 1);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=other,status=200") == 1);
    assert_int_equal(count_samples(&P, "ctr_http_requests_total"), 5);

    const char *h = "ctr_http_request_duration_seconds_bucket";
    assert_true(value(&P, h, "endpoint=/v1/rank,le=0.0001") == 2);
    assert_true(value(&P, h, "endpoint=/v1/rank,le=0.00025") == 3);
    assert_true(value(&P, h, "endpoint=/v1/rank,le=1") == 3);
    assert_true(value(&P, h, "endpoint=/v1/rank,le=+Inf") == 4);
    /* Sums are exact decimals of integer nanoseconds. */
    assert_non_null(strstr(text, "ctr_http_request_duration_seconds_sum{endpoint=\"/v1/rank\"} 2.500210000\n"));
    assert_true(value(&P, "ctr_redis_call_duration_seconds_count", "op=get_items") == 2);
    assert_true(value(&P, "ctr_redis_call_duration_seconds_bucket", "op=get_items,le=0.0005") == 1);
    assert_true(value(&P, "ctr_redis_call_duration_seconds_bucket", "op=get_items,le=0.025") == 2);
    assert_true(value(&P, "ctr_redis_errors_total", "op=get_items,kind=timeout") == 1);
    assert_true(value(&P, "ctr_redis_errors_total", "op=get_items,kind=error") == 0);
    assert_true(value(&P, "ctr_redis_errors_total", "op=ping,kind=error") == 1);
    assert_true(value(&P, "ctr_redis_call_duration_seconds_count", "op=ping") == 1);
    assert_int_equal(check_histograms(&P), METRICS_EP_COUNT + METRICS_REDIS_OP_COUNT + METRICS_RANK_STAGES);

    assert_true(value(&P, "ctr_inflight_requests", "") == 1);
    assert_true(value(&P, "ctr_scored_candidates_total", "model=qin") == 312);
    assert_int_equal(count_samples(&P, "ctr_scored_candidates_total"), 1);
    assert_true(value(&P, "ctr_model_reloads_total", "model=qin,result=ok") == 1);
    assert_true(value(&P, "ctr_model_reloads_total", "model=qin,result=failed") == 2);
    assert_true(value(&P, "ctr_model_last_reload_successful", "model=qin") == 0);
    assert_true(value(&P, "ctr_rank_degraded_responses_total", "") == 2);
    assert_int_equal(count_samples(&P, "ctr_model_info"), 1);
    assert_true(value(&P, "ctr_model_info", "model=qin,name=qin,version=2024-02-01,arch=qin") == 1);

    /* A series for each reason counted, by its label; none for the others. */
    assert_true(value(&P, "ctr_degraded_responses_total", "reason=history_unavailable") == 1);
    assert_true(value(&P, "ctr_degraded_responses_total", "reason=feature_set_missing") == 2);
    assert_true(value(&P, "ctr_degraded_responses_total", "reason=non_finite") == -1);
    assert_int_equal(count_samples(&P, "ctr_degraded_responses_total"), 2);

    assert_true(value(&P, "ctr_item_cache_hits_total", "model=qin") == 17);
    assert_true(value(&P, "ctr_item_cache_misses_total", "model=qin") == 8);
    assert_true(value(&P, "ctr_item_cache_insertions_total", "model=qin") == 8);
    assert_true(value(&P, "ctr_item_cache_evictions_total", "model=qin") == 1);
    assert_true(value(&P, "ctr_item_cache_expirations_total", "model=qin") == 3);
    assert_true(value(&P, "ctr_item_cache_entries", "model=qin") == 3);
    assert_true(value(&P, "ctr_item_cache_bytes", "model=qin") == 3 * 4672);
    free(text);

    /* No current cache: the retired counters remain, gauges read 0. */
    metrics_reload(m, 0, 1);                          /* a good reload clears it */
    free(render(m, NULL, &P));
    assert_true(value(&P, "ctr_model_last_reload_successful", "model=qin") == 1);
    assert_true(value(&P, "ctr_item_cache_hits_total", "model=qin") == 10);
    assert_true(value(&P, "ctr_item_cache_entries", "model=qin") == 0);
    metrics_free(m);
}

/* Several models: one series each, labelled by name, counted apart. */
static void test_models(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    assert_int_equal(metrics_add_model(m, "qin"), 0);
    assert_int_equal(metrics_add_model(m, "din"), 1);
    assert_int_equal(metrics_add_model(m, "tin"), 2);
    for (int i = 3; i < METRICS_MAX_MODELS; i++) {
        char name[8];
        snprintf(name, sizeof name, "m%d", i);
        assert_int_equal(metrics_add_model(m, name), i);
    }
    assert_int_equal(metrics_add_model(m, "one-too-many"), -1);
    metrics_set_model(m, 1, "din-small", "v3", "din");
    metrics_scored(m, 1, 64);
    metrics_scored(m, 2, 5);
    metrics_reload(m, 2, 0);
    metrics_feature_set(m, 2, 1, 7.0);
    item_cache_stats st[3] = {{.hits = 1}, {.hits = 2, .entries = 4}, {.hits = 3}};
    metrics_cache_retire(m, 1, &(item_cache_stats){.hits = 10});
    proto_buf b;
    proto_buf_init(&b);
    assert_int_equal(metrics_render(m, st, 3, &b), CTR_OK);
    parse(&P, proto_buf_str(&b));
    proto_buf_free(&b);
    assert_true(value(&P, "ctr_scored_candidates_total", "model=din") == 64);
    assert_true(value(&P, "ctr_scored_candidates_total", "model=tin") == 5);
    assert_true(value(&P, "ctr_scored_candidates_total", "model=qin") == 0);
    assert_true(value(&P, "ctr_model_reloads_total", "model=tin,result=failed") == 1);
    assert_true(value(&P, "ctr_model_reloads_total", "model=din,result=failed") == 0);
    assert_true(value(&P, "ctr_feature_set_ready", "model=tin") == 1);
    assert_true(value(&P, "ctr_feature_set_ready", "model=din") == 0);
    assert_true(value(&P, "ctr_model_last_reload_successful", "model=tin") == 0);
    assert_true(value(&P, "ctr_model_last_reload_successful", "model=din") == 1);
    assert_true(value(&P, "ctr_item_cache_hits_total", "model=din") == 12);
    assert_true(value(&P, "ctr_item_cache_hits_total", "model=tin") == 3);
    assert_true(value(&P, "ctr_item_cache_entries", "model=din") == 4);
    assert_int_equal(count_samples(&P, "ctr_item_cache_hits_total"), METRICS_MAX_MODELS);
    assert_true(value(&P, "ctr_item_cache_hits_total", "model=m7") == 0);
    assert_int_equal(count_samples(&P, "ctr_model_info"), 1);   /* only din's is set */
    assert_true(value(&P, "ctr_model_info", "model=din,name=din-small,version=v3,arch=din") == 1);
    metrics_free(m);
}

static void test_escaping(void **state) {
    metrics *m;
    assert_int_equal(metrics_init(&m), CTR_OK);
    const char *version = "v1 \"beta\"\\2\nnext";
    assert_int_equal(metrics_add_model(m, "m"), 0);
    metrics_set_model(m, 0, "q\\in", version, "qin");
    char *text = render(m, NULL, &P);
    assert_non_null(strstr(text,
        "\nctr_model_info{model=\"m\",name=\"q\\\\in\",version=\"v1 \\\"beta\\\"\\\\2\\nnext\",arch=\"qin\"} 1\n"));
    int found = 0;
    for (int i = 0; i < P.n; i++) {
        if (strcmp(P.s[i].name, "ctr_model_info") != 0) continue;
        found++;
        assert_string_equal(P.s[i].val[1], "q\\in");
        assert_string_equal(P.s[i].val[2], version);
    }
    assert_int_equal(found, 1);
    /* No precision series until one is set, then one per model. */
    assert_null(strstr(text, "\nctr_model_precision{"));
    free(text);
    metrics_set_precision(m, 0, "fp32", 1);
    metrics_set_precision(m, 0, "int8", 0);
    metrics_set_precision(m, 3, "bf16", 0);        /* not a model: ignored */
    text = render(m, NULL, &P);
    assert_non_null(strstr(text, "\nctr_model_precision{model=\"m\",precision=\"int8\","
                                 "exact=\"false\"} 1\n"));
    assert_null(strstr(text, "precision=\"fp32\""));
    assert_null(strstr(text, "precision=\"bf16\""));
    assert_null(strstr(text, "\nctr_model_kernel{"));
    free(text);
    metrics_set_kernel(m, 0, "avx512_core_amx", "int8: oneDNN brg:avx512_core_amx_int8 (planned)");
    metrics_set_kernel(m, 3, "avx2", "x");         /* not a model: ignored */
    text = render(m, NULL, &P);
    assert_non_null(strstr(text, "\nctr_model_kernel{model=\"m\",isa=\"avx512_core_amx\","
                                 "kernel=\"int8: oneDNN brg:avx512_core_amx_int8 (planned)\"} 1\n"));
    assert_null(strstr(text, "isa=\"avx2\""));
    free(text);

    /* Over-long labels are cut, not overflowed. */
    char big[600];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    metrics_set_model(m, 0, big, NULL, NULL);
    free(render(m, NULL, &P));
    for (int i = 0; i < P.n; i++)
        if (strcmp(P.s[i].name, "ctr_model_info") == 0) {
            assert_int_equal(strlen(P.s[i].val[1]), METRICS_LABEL_MAX - 1);
            assert_string_equal(P.s[i].val[2], "");
        }
    metrics_free(m);
}

static void test_endpoint_of(void **state) {
    assert_int_equal(metrics_endpoint_of("/v1/rank"), METRICS_EP_RANK);
    assert_int_equal(metrics_endpoint_of("/v1/rank?debug=1"), METRICS_EP_RANK);
    assert_int_equal(metrics_endpoint_of("/v1/ranks"), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_of("/healthz"), METRICS_EP_HEALTHZ);
    assert_int_equal(metrics_endpoint_of("/readyz"), METRICS_EP_READYZ);
    assert_int_equal(metrics_endpoint_of("/metrics"), METRICS_EP_METRICS);
    assert_int_equal(metrics_endpoint_of("/v1/models"), METRICS_EP_MODELS);
    assert_int_equal(metrics_endpoint_of("/v1/models/current"), METRICS_EP_MODELS);
    assert_int_equal(metrics_endpoint_of("/v1/models/"), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_of("/v1/modelsx"), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_of("/"), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_of(""), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_of(NULL), METRICS_EP_OTHER);
}

/* --- Threads ---------------------------------------------------------- */

#define NTHREADS 8
#define ITERS 20000

static metrics *shared;
static atomic_int writers_done;
static atomic_int scraping;   /* writers start once the scraper is running */

static void *writer(void *arg) {
    int t = (int)(intptr_t)arg;
    static const proto_degraded why[] = {PROTO_DEGRADED_HISTORY_UNAVAILABLE,
                                         PROTO_DEGRADED_ITEM_FEATURES_MISSING,
                                         PROTO_DEGRADED_SCORING_DEADLINE};
    while (!atomic_load(&scraping)) sched_yield();
    for (int i = 0; i < ITERS; i++) {
        metrics_inflight_add(shared, 1);
        /* Durations in whole microseconds, so the expected sum is exact. */
        double s = (double)((i % 1000) + 1) * 1e-6;
        metrics_http(shared, (metrics_endpoint)(i % METRICS_EP_COUNT),
                     i % 2 ? 200 : 503, s);
        metrics_redis(shared, (metrics_redis_op)(i % METRICS_REDIS_OP_COUNT), s,
                      (metrics_redis_result)(i % 3));
        metrics_scored(shared, 0, 3);
        metrics_degraded(shared, why[(i + t) % 3]);
        metrics_inflight_add(shared, -1);
    }
    atomic_fetch_add(&writers_done, 1);
    return NULL;
}

static void *scraper(void *arg) {
    static parsed q;   /* only this thread parses while writers run */
    int renders = 0;
    while (atomic_load(&writers_done) < NTHREADS || renders == 0) {
        free(render(shared, NULL, &q));
        check_histograms(&q);
        renders++;
        atomic_store(&scraping, 1);
    }
    return (void *)(intptr_t)renders;
}

static void test_threads(void **state) {
    assert_int_equal(metrics_init(&shared), CTR_OK);
    assert_int_equal(metrics_add_model(shared, "qin"), 0);
    atomic_store(&writers_done, 0);
    atomic_store(&scraping, 0);
    pthread_t t[NTHREADS], sc;
    assert_int_equal(pthread_create(&sc, NULL, scraper, NULL), 0);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
    void *renders;
    pthread_join(sc, &renders);
    print_message("    %d renders while writing\n", (int)(intptr_t)renders);

    free(render(shared, NULL, &P));
    const double total = (double)NTHREADS * ITERS;
    double reqs = 0, count = 0;
    for (int i = 0; i < P.n; i++) {
        if (strcmp(P.s[i].name, "ctr_http_requests_total") == 0) reqs += P.s[i].value;
        if (strcmp(P.s[i].name, "ctr_http_request_duration_seconds_count") == 0)
            count += P.s[i].value;
    }
    assert_true(reqs == total);
    assert_true(count == total);
    assert_true(value(&P, "ctr_http_requests_total", "endpoint=/v1/rank,status=503") ==
                NTHREADS * ((ITERS + 5) / 6));   /* i % 6 == 0 is even */
    /* Sum over all i of (i%1000+1) us, per thread: 20 * 500500 us. */
    double sum = 0;
    for (int i = 0; i < P.n; i++)
        if (strcmp(P.s[i].name, "ctr_http_request_duration_seconds_sum") == 0)
            sum += P.s[i].value;
    assert_true(fabs(sum - NTHREADS * 20 * 0.5005) < 1e-6);
    assert_true(value(&P, "ctr_scored_candidates_total", "model=qin") == 3 * total);
    assert_true(value(&P, "ctr_inflight_requests", "") == 0);
    double timeouts = 0, errors = 0;
    for (int op = 0; op < METRICS_REDIS_OP_COUNT; op++) {
        static const char *const names[] = {"get_user", "get_items", "ping"};
        char l[64];
        snprintf(l, sizeof l, "op=%s,kind=timeout", names[op]);
        timeouts += value(&P, "ctr_redis_errors_total", l);
        snprintf(l, sizeof l, "op=%s,kind=error", names[op]);
        errors += value(&P, "ctr_redis_errors_total", l);
    }
    int want_t = 0, want_e = 0;
    for (int i = 0; i < ITERS; i++) {
        want_t += i % 3 == METRICS_REDIS_TIMEOUT;
        want_e += i % 3 == METRICS_REDIS_ERROR;
    }
    assert_true(timeouts == NTHREADS * want_t);
    assert_true(errors == NTHREADS * want_e);
    double degraded = 0;
    for (int i = 0; i < P.n; i++)
        if (strcmp(P.s[i].name, "ctr_degraded_responses_total") == 0) degraded += P.s[i].value;
    assert_true(degraded == total);
    assert_int_equal(count_samples(&P, "ctr_degraded_responses_total"), 3);
    metrics_free(shared);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh),
        cmocka_unit_test(test_changes_and_impressions),
        cmocka_unit_test(test_process),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_nodes),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_endpoint_of),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * config.c - the settings table and the parsers, --help and dump that read
 * it.
 *
 * Workload: a few dozen settings read once at startup, so clarity beats
 * speed everywhere here: linear lookups, one pass per source.  What matters
 * is that a mistyped key or value stops the server with a message that
 * names the setting and the file line, variable or flag it came from,
 * instead of starting with a default the operator did not mean.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

typedef enum setting_type {
    SET_STR,      /* char[cap] */
    SET_INT,      /* int, min..max */
    SET_SIZE,     /* size_t, min..max */
    SET_BOOL,     /* int 0/1 */
    SET_CHOICE,   /* char[cap], one of `choices` ("a|b|c") */
    SET_MODELS,   /* config_params.models: PATH or NAME=PATH entries */
} setting_type;

typedef struct setting {
    const char *key;
    setting_type type;
    size_t off;                 /* offsetof(config_params, field) */
    size_t cap;                 /* SET_STR, SET_CHOICE: field size */
    long long min, max;         /* SET_INT, SET_SIZE */
    const char *arg;            /* what --help shows after the flag */
    const char *choices;        /* SET_CHOICE */
    /* Extra check of a string; fills why and returns -1 when bad. */
    int (*check)(const char *v, char *why, size_t whylen);
    const char *default_note;   /* why the default is what it is, or NULL */
    const char *help;
} setting;

/* The per-model settings: they take NAME=VALUE entries too (config.h). */
static const char *const per_model_keys[] = {"redis_prefix", "cache_mb", "precision"};

static int per_model(const setting *s) {
    for (size_t i = 0; i < sizeof per_model_keys / sizeof *per_model_keys; i++)
        if (strcmp(s->key, per_model_keys[i]) == 0) return 1;
    return 0;
}

static int check_nonempty(const char *v, char *why, size_t whylen) {
    if (*v) return 0;
    snprintf(why, whylen, "must not be empty");
    return -1;
}

/* "host:port" or "/unix/socket/path", checked here so a typo fails at
 * startup rather than at the first request. */
static int check_redis(const char *v, char *why, size_t whylen) {
    if (v[0] == '/') {
        if (strlen(v) < sizeof(((struct sockaddr_un *)0)->sun_path)) return 0;
        snprintf(why, whylen, "unix socket path longer than %zu bytes",
                 sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        return -1;
    }
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v) {
        snprintf(why, whylen, "expected host:port or a /unix/socket path");
        return -1;
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (!isdigit((unsigned char)colon[1]) || *end || errno || port < 1 || port > 65535) {
        snprintf(why, whylen, "port after ':' must be 1..65535");
        return -1;
    }
    return 0;
}

/* "host:port[,host:port...]" (IPv6 hosts in brackets), or "". */
static int check_redis_cluster(const char *v, char *why, size_t whylen) {
    char item[CONFIG_STR_MAX];
    if (!*v) return 0;
    for (const char *s = v;;) {
        size_t n = strcspn(s, ",");
        snprintf(item, sizeof item, "%.*s", (int)n, s);
        char *t = item;
        while (*t == ' ') t++;
        size_t tl = strlen(t);
        while (tl && t[tl - 1] == ' ') t[--tl] = '\0';
        const char *colon = strrchr(t, ':');
        int v6 = t[0] == '[';
        if (!tl || t[0] == '/' || (colon && !v6 && strchr(t, ':') != colon) ||
            (v6 && (!colon || colon[-1] != ']')) || check_redis(t, why, whylen) < 0) {
            snprintf(why, whylen, "seed \"%.64s\": expected host:port (IPv6 as [addr]:port), "
                     "seeds separated by commas", t);
            return -1;
        }
        if (!s[n]) return 0;
        s += n + 1;   /* past the comma: another seed must follow */
    }
}

/* Settings whose value is never printed (config_dump). */
static int is_secret(const char *key) { return strcmp(key, "redis_password") == 0; }

#define F(field) offsetof(config_params, field)
#define CAP(field) sizeof(((config_params *)0)->field)

/* Every setting, in the order --help and config_dump show them. */
static const setting settings[] = {
    {"config", SET_STR, F(config), CAP(config), 0, 0, "FILE", NULL, NULL, NULL,
     "Settings file (lines `key = value`, # comments), read before the "
     "environment and flags.  Only from a flag or CTR_CONFIG."},
    {"model", SET_MODELS, F(models), 0, 0, 0, "[NAME=]PATH", NULL, NULL, NULL,
     "Model file (safetensors) to serve, as PATH (named from the file's metadata) or "
     "NAME=PATH.  Repeat it (or separate entries with commas) to serve several models: "
     "a rank request picks one with \"model\": NAME, the first by default.  Each model "
     "has its own item cache, reload and metrics (label model)."},
    {"redis", SET_STR, F(redis), CAP(redis), 0, 0, "HOST:PORT|/SOCKET", NULL,
     check_redis, NULL,
     "Feature store (Redis) address: host:port, or a unix socket path "
     "starting with /."},
    {"redis_cluster", SET_STR, F(redis_cluster), CAP(redis_cluster), 0, 0,
     "HOST:PORT[,HOST:PORT...]", NULL, check_redis_cluster, "\"\": one node, see redis",
     "Redis Cluster seed nodes: the feature store is then the cluster (slot map from "
     "CLUSTER SLOTS, one connection per node and worker) and `redis` is not used."},
    {"redis_read_replicas", SET_BOOL, F(redis_read_replicas), 0, 0, 1, "BOOL", NULL, NULL,
     NULL,
     "Redis Cluster: read features from replicas (READONLY), spreading reads over every "
     "node; a replica may lag its master by a few milliseconds."},
    {"redis_cluster_refresh_ms", SET_INT, F(redis_cluster_refresh_ms), 0, 1, 60000, "MS",
     NULL, NULL, NULL,
     "Redis Cluster: after a redirect or a node failure, a worker reads the slot map "
     "again at most this often (so a promoted replica is found within about this)."},
    {"redis_user", SET_STR, F(redis_user), CAP(redis_user), 0, 0, "USER", NULL, NULL,
     "\"\": the default user",
     "Redis ACL user to authenticate as (AUTH user password); needs a password."},
    {"redis_password", SET_STR, F(redis_password), CAP(redis_password), 0, 0, "SECRET",
     NULL, NULL, "\"\": no AUTH",
     "Redis password (AUTH), for every node.  Never printed or logged.  A flag is "
     "visible to other local users while the process starts: prefer "
     "redis_password_file or the environment."},
    {"redis_password_file", SET_STR, F(redis_password_file), CAP(redis_password_file), 0, 0,
     "FILE", NULL, NULL, NULL,
     "Read the Redis password from the first line of this file (a mounted secret); not "
     "with redis_password."},
    {"redis_prefix", SET_STR, F(redis_prefix), CAP(redis_prefix), 0, 0, "[NAME=]PREFIX",
     NULL, NULL, NULL,
     "Prefix of every feature key read from Redis (and of the feature-set marker "
     "<prefix>meta).  NAME=PREFIX sets it for one model (repeatable, or comma-separated): "
     "models whose item features differ need prefixes of their own (TIN's items carry "
     "a category, QIN's and DIN's tags and an embedding, so QIN and DIN can share one)."},
    {"redis_connect_timeout_ms", SET_INT, F(redis_connect_timeout_ms), 0, 1, 60000,
     "MS", NULL, NULL, NULL, "Timeout for connecting to Redis."},
    {"redis_timeout_ms", SET_INT, F(redis_timeout_ms), 0, 1, 60000, "MS", NULL, NULL,
     NULL, "Longest wait for one Redis call (a request's own deadline may cut it "
     "shorter)."},
    {"redis_breaker_base_ms", SET_INT, F(redis_breaker_base_ms), 0, 1, 60000, "MS", NULL,
     NULL, NULL,
     "After a Redis call fails or times out, its connection fails calls at once for "
     "this long (with jitter), then lets one call through as a probe."},
    {"redis_breaker_max_ms", SET_INT, F(redis_breaker_max_ms), 0, 1, 600000, "MS", NULL,
     NULL, NULL,
     "Each failed probe doubles the fail-fast period, up to this; so a connection "
     "probes again within 1.25 x this of Redis returning.  At least "
     "redis_breaker_base_ms."},
    {"deadline_ms", SET_INT, F(deadline_ms), 0, 1, 600000, "MS", NULL, NULL, NULL,
     "A rank request's budget from arrival to answer when it names none (body "
     "deadline_ms, or header X-Request-Timeout-Ms).  When it runs short the answer "
     "comes on time, degraded."},
    {"max_deadline_ms", SET_INT, F(max_deadline_ms), 0, 1, 600000, "MS", NULL, NULL, NULL,
     "The longest budget a request may ask for; longer ones are cut to this."},
    {"bind", SET_STR, F(bind), CAP(bind), 0, 0, "ADDR", NULL, check_nonempty, NULL,
     "Address to listen on (0.0.0.0 for every interface)."},
    {"port", SET_INT, F(port), 0, 1, 65535, "N", NULL, NULL, NULL,
     "TCP port to listen on."},
    {"threads", SET_INT, F(threads), 0, 1, 1024, "N", NULL, NULL,
     "the number of online CPUs",
     "Request worker threads: each runs one rank request at a time, with its own "
     "Redis connection."},
    {"max_pending", SET_INT, F(max_pending), 0, 0, 1000000, "N", NULL, NULL,
     "0: 4 x threads",
     "Most rank requests queued or in work at once; more are answered 503 "
     "overloaded with Retry-After at once, so admitted requests keep their "
     "latency."},
    {"worker_nice", SET_INT, F(worker_nice), 0, 0, 19, "N", NULL, NULL, NULL,
     "Added to the request workers' nice value, with SCHED_BATCH, so that on a "
     "saturated CPU the event loop still reads requests, refuses the excess and "
     "writes answers at once instead of waiting behind the model.  Off by default: "
     "SCHED_BATCH also delays a worker's wake-up on a busy machine, which costs "
     "normal requests latency."},
    {"max_connections", SET_INT, F(max_connections), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "Most open client connections; more are accepted and closed at once.  The "
     "server raises its open-file limit to fit (or lowers this, with a warning, "
     "when the hard limit is lower)."},
    {"max_connections_per_ip", SET_INT, F(max_connections_per_ip), 0, 0, 1000000, "N",
     NULL, NULL, "0: no limit, since behind a proxy every client shares its address",
     "Most open connections from one client address."},
    {"receive_timeout_ms", SET_INT, F(receive_timeout_ms), 0, 1, 3600000, "MS", NULL, NULL,
     NULL,
     "A request (line, headers and body) must arrive whole within this of its first "
     "line (of the connect, for a connection's first request; of the previous answer "
     "plus request_timeout_s, for the next ones); else its connection is closed, so "
     "clients trickling bytes cannot hold connections."},
    {"health_interval_ms", SET_INT, F(health_interval_ms), 0, 10, 60000, "MS", NULL, NULL,
     NULL,
     "How often the server checks Redis and its feature-set marker (what /readyz "
     "and the feature_set_missing reason report)."},
    {"score_threads", SET_INT, F(score_threads), 0, 1, 1024, "N", NULL, NULL,
     "the number of online CPUs",
     "Threads one large request's candidates are split across."},
    {"split_min", SET_INT, F(split_min), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "Fewest candidates worth splitting across score_threads; smaller "
     "requests are scored on their worker thread."},
    {"split_min_mflops", SET_INT, F(split_min_mflops), 0, 0, 1000000, "MFLOP", NULL, NULL,
     NULL,
     "Least arithmetic (millions of flops of the folded model) in each part of "
     "a split request, so a hand-off to another thread is worth its cost; "
     "with a small model, requests stay on one thread."},
    {"max_candidates", SET_INT, F(max_candidates), 0, 1, 100000, "N", NULL, NULL, NULL,
     "Most candidates one request may carry (more: 422).  Sizes each "
     "worker's scratch memory."},
    {"max_body_bytes", SET_SIZE, F(max_body_bytes), 0, 1024, 1 << 30, "BYTES", NULL,
     NULL, NULL, "Largest request body accepted (more: 413)."},
    {"max_seq", SET_INT, F(max_seq), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "History entries read per user; the model uses the most recent max_len "
     "of them."},
    {"precision", SET_CHOICE, F(precision), CAP(precision), 0, 0, "[NAME=]PRECISION",
     "fp32|bf16|int8", NULL, NULL,
     "Arithmetic of the models' dense layers (NAME=PRECISION for one model, "
     "repeatable).  fp32 is exact (the trained "
     "model's scores to 1e-5); bf16 and int8 are not, and trade a little "
     "accuracy for speed where the CPU runs bfloat16 / int8 dot products "
     "faster than float32 ones (int8 with VNNI: about 2.7x; bf16 is slower "
     "than fp32 on CPUs whose bf16 units run at half rate, such as this "
     "project's Xeon): bench/README.md has the measured score error and "
     "speed.  The startup log, /v1/models and /metrics say which one is in "
     "force."},
    {"cache_mb", SET_INT, F(cache_mb), 0, 0, 1 << 20, "[NAME=]MIB", NULL, NULL, NULL,
     "Item vector cache budget in MiB, split equally among the models without a "
     "budget of their own (NAME=MIB, repeatable); 0 disables the cache."},
    {"warmup", SET_BOOL, F(warmup), 0, 0, 1, "BOOL", NULL, NULL, NULL,
     "Score dummy requests of 1..256 candidates with each model as it loads (and "
     "reloads, before it serves), so the first real requests do not pay for compiling "
     "the dense-product kernels."},
    {"cache_ttl_s", SET_INT, F(cache_ttl_s), 0, 0, 365 * 86400, "SECONDS", NULL, NULL,
     NULL, "How long an item vector stays cached, which bounds how stale it "
     "gets after its features change in Redis; 0 never expires."},
    {"request_timeout_s", SET_INT, F(request_timeout_s), 0, 1, 3600, "SECONDS", NULL,
     NULL, NULL, "Idle keep-alive connections are closed after this."},
    {"skip_scoring", SET_BOOL, F(skip_scoring), 0, 0, 1, "BOOL", NULL, NULL, NULL,
     "BENCHMARK ONLY, NEVER IN PRODUCTION: answer score 0 for every "
     "candidate without running the model, to measure the HTTP + JSON + "
     "Redis floor."},
    {"log_level", SET_CHOICE, F(log_level), CAP(log_level), 0, 0, "LEVEL",
     "debug|info|warn|error", NULL, NULL, "Least severe log records printed."},
};

#undef F
#undef CAP

#define NSETTINGS (sizeof settings / sizeof *settings)

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    return n > 1024 ? 1024 : (int)n;
}

config_params config_default_params(void) {
    config_params p;
    memset(&p, 0, sizeof p);
    snprintf(p.models[0].path, sizeof p.models[0].path, "demo/model.safetensors");
    p.num_models = 1;
    p.models_source = -1;    /* any source's models replace the default */
    snprintf(p.redis, sizeof p.redis, "127.0.0.1:6379");
    snprintf(p.redis_prefix, sizeof p.redis_prefix, "ctr:");
    p.redis_read_replicas = 0;
    p.redis_cluster_refresh_ms = 100;
    p.redis_connect_timeout_ms = 50;
    p.redis_timeout_ms = 20;
    p.redis_breaker_base_ms = 100;
    p.redis_breaker_max_ms = 400;
    p.deadline_ms = 50;
    p.max_deadline_ms = 1000;
    snprintf(p.bind, sizeof p.bind, "127.0.0.1");
    p.port = 8080;
    p.threads = online_cpus();
    p.score_threads = online_cpus();
    p.max_pending = 0;
    p.worker_nice = 0;
    p.max_connections = 10000;
    p.max_connections_per_ip = 0;
    p.receive_timeout_ms = 5000;
    p.health_interval_ms = 200;
    p.split_min = 32;
    p.split_min_mflops = 25;
    p.max_candidates = 512;
    p.max_body_bytes = (size_t)1 << 20;
    p.max_seq = 1000;
    snprintf(p.precision, sizeof p.precision, "fp32");
    p.cache_mb = 256;
    p.cache_ttl_s = 600;
    p.warmup = 1;
    p.request_timeout_s = 10;
    p.skip_scoring = 0;
    snprintf(p.log_level, sizeof p.log_level, "info");
    p.config[0] = '\0';
    return p;
}

/* --- Lookup and conversion --------------------------------------------- */

/* The setting named by key[0..len), with '-' read as '_'. */
static const setting *find_setting(const char *key, size_t len) {
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *k = settings[i].key;
        if (strlen(k) != len) continue;
        size_t j = 0;
        while (j < len && (key[j] == '-' ? '_' : key[j]) == k[j]) j++;
        if (j == len) return &settings[i];
    }
    return NULL;
}

static void env_name(const setting *s, char *out, size_t outlen) {
    size_t n = (size_t)snprintf(out, outlen, "CTR_");
    for (const char *c = s->key; *c && n + 1 < outlen; c++)
        out[n++] = (char)toupper((unsigned char)*c);
    out[n < outlen ? n : outlen - 1] = '\0';
}

static const char *const bool_true[] = {"1", "true", "yes", "on"};
static const char *const bool_false[] = {"0", "false", "no", "off"};

/* 1 or 0 for a boolean word, -1 for anything else. */
static int parse_bool(const char *v) {
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, bool_true[i]) == 0) return 1;
        if (strcasecmp(v, bool_false[i]) == 0) return 0;
    }
    return -1;
}

static char *trim(char *s);

/* Message prefix: "where: key: " (where may be NULL). */
#define WHERE_FMT "%s%s%s: "
#define WHERE_ARGS(where, s) (where) ? (where) : "", (where) ? ": " : "", (s)->key

/* Checks v for setting s and stores it in field (the setting's type). */
static int set_field(const setting *s, void *fieldp, const char *v, const char *where,
                     char *err, size_t errlen) {
    char *field = fieldp;
    switch (s->type) {
    case SET_MODELS: break;
    case SET_INT:
    case SET_SIZE: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || isspace((unsigned char)*v))
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "\"%.64s\" is not a whole number",
                            WHERE_ARGS(where, s), v);
        if (errno == ERANGE || x < s->min || x > s->max)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "%.64s is out of range %lld..%lld",
                            WHERE_ARGS(where, s), v, s->min, s->max);
        if (s->type == SET_INT) *(int *)field = (int)x;
        else *(size_t *)field = (size_t)x;
        return CTR_OK;
    }
    case SET_BOOL: {
        int b = parse_bool(v);
        if (b < 0)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "\"%.64s\" is not a boolean "
                            "(true/false, yes/no, on/off, 1/0)",
                            WHERE_ARGS(where, s), v);
        *(int *)field = b;
        return CTR_OK;
    }
    case SET_CHOICE: {
        size_t vl = strlen(v);
        for (const char *c = s->choices; *c;) {
            size_t n = strcspn(c, "|");
            if (n == vl && strncasecmp(c, v, n) == 0) {
                snprintf(field, s->cap, "%.*s", (int)n, c);   /* canonical case */
                return CTR_OK;
            }
            c += n + (c[n] == '|');
        }
        return ctr_fail(err, errlen, CTR_EINVAL,
                        WHERE_FMT "\"%.64s\" is not one of %s",
                        WHERE_ARGS(where, s), v, s->choices);
    }
    case SET_STR: {
        if (strlen(v) >= s->cap)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "value longer than %zu bytes",
                            WHERE_ARGS(where, s), s->cap - 1);
        for (const char *c = v; *c; c++)
            if (iscntrl((unsigned char)*c))
                return ctr_fail(err, errlen, CTR_EINVAL,
                                WHERE_FMT "value contains a control character",
                                WHERE_ARGS(where, s));
        char why[128];
        if (s->check && s->check(v, why, sizeof why) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "\"%.64s\": %s",
                            WHERE_ARGS(where, s), v, why);
        snprintf(field, s->cap, "%s", v);
        return CTR_OK;
    }
    }
    return ctr_fail(err, errlen, CTR_EINVAL, "config: bad setting type");
}

int config_model_name_ok(const char *s, size_t len) {
    if (len < 1 || len >= CONFIG_NAME_MAX || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

/* Length of the NAME in "NAME=rest", or 0 when e does not start so. */
static size_t name_prefix(const char *e) {
    size_t n = strcspn(e, "=");
    return e[n] == '=' && config_model_name_ok(e, n) ? n : 0;
}

/* One `model` entry: PATH or NAME=PATH. */
static int add_model(config_params *p, const setting *s, const char *e, const char *where,
                     char *err, size_t errlen) {
    if (p->models_source != p->source) {   /* a higher source: its own list */
        p->num_models = 0;
        p->models_source = p->source;
    }
    if (p->num_models == CONFIG_MAX_MODELS)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "more than %d models",
                        WHERE_ARGS(where, s), CONFIG_MAX_MODELS);
    size_t n = name_prefix(e);
    const char *path = n ? e + n + 1 : e;
    if (!*path)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "\"%.64s\": empty file name",
                        WHERE_ARGS(where, s), e);
    if (strlen(path) >= CONFIG_STR_MAX)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "path longer than %d bytes",
                        WHERE_ARGS(where, s), CONFIG_STR_MAX - 1);
    config_model *m = &p->models[p->num_models++];
    snprintf(m->name, sizeof m->name, "%.*s", (int)n, e);
    snprintf(m->path, sizeof m->path, "%s", path);
    return CTR_OK;
}

/* One NAME=VALUE entry of a per-model setting: checked as the setting's
 * value, then kept as text (replacing the model's earlier entry). */
static int add_override(config_params *p, const setting *s, const char *e, size_t n,
                        const char *where, char *err, size_t errlen) {
    union { int i; size_t z; char str[CONFIG_STR_MAX]; } tmp;
    int rc = set_field(s, &tmp, e + n + 1, where, err, errlen);
    if (rc < 0) return rc;
    config_override *o = NULL;
    for (int i = 0; i < p->num_overrides && !o; i++)
        if (strcmp(p->overrides[i].key, s->key) == 0 &&
            strlen(p->overrides[i].model) == n && memcmp(p->overrides[i].model, e, n) == 0)
            o = &p->overrides[i];
    if (!o) {
        if (p->num_overrides == CONFIG_MAX_OVERRIDES)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "more than %d NAME=VALUE "
                            "entries in all", WHERE_ARGS(where, s), CONFIG_MAX_OVERRIDES);
        o = &p->overrides[p->num_overrides++];
    }
    o->key = s->key;
    snprintf(o->model, sizeof o->model, "%.*s", (int)n, e);
    snprintf(o->value, sizeof o->value, "%s", e + n + 1);
    snprintf(o->where, sizeof o->where, "%s", where ? where : "");
    return CTR_OK;
}

/* A value: one entry, or for list settings (model, per-model ones)
 * entries separated by commas, blanks around them ignored. */
static int set_value(config_params *p, const setting *s, const char *v, const char *where,
                     char *err, size_t errlen) {
    if (s->type != SET_MODELS && !per_model(s))
        return set_field(s, (char *)p + s->off, v, where, err, errlen);
    if (strlen(v) >= CONFIG_STR_MAX)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "value longer than %d bytes",
                        WHERE_ARGS(where, s), CONFIG_STR_MAX - 1);
    char buf[CONFIG_STR_MAX];
    snprintf(buf, sizeof buf, "%s", v);
    const int several = strchr(buf, ',') != NULL;
    for (char *e = buf, *next; e; e = next) {
        char *comma = strchr(e, ',');
        next = comma ? comma + 1 : NULL;
        if (comma) *comma = '\0';
        if (several) e = trim(e);
        if (several && !*e)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "an empty entry in \"%.64s\"",
                            WHERE_ARGS(where, s), v);
        int rc;
        if (s->type == SET_MODELS) {
            rc = add_model(p, s, e, where, err, errlen);
        } else {
            size_t n = name_prefix(e);
            rc = n ? add_override(p, s, e, n, where, err, errlen)
                   : set_field(s, (char *)p + s->off, e, where, err, errlen);
        }
        if (rc < 0) return rc;
    }
    return CTR_OK;
}

const char *config_model_value(const config_params *p, const char *key, const char *model) {
    for (int i = 0; i < p->num_overrides; i++)
        if (strcmp(p->overrides[i].key, key) == 0 && strcmp(p->overrides[i].model, model) == 0)
            return p->overrides[i].value;
    return NULL;
}

int config_check_models(const config_params *p, const char *const *names, int n, char *err,
                        size_t errlen) {
    for (int i = 0; i < p->num_overrides; i++) {
        const config_override *o = &p->overrides[i];
        int k = 0;
        while (k < n && strcmp(names[k], o->model) != 0) k++;
        if (k < n) continue;
        char list[512] = "";
        for (int j = 0; j < n; j++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                     names[j]);
        return ctr_fail(err, errlen, CTR_EINVAL, "%s%s%s: \"%s=%.64s\": no model named \"%s\" "
                        "(serving %s)", o->where, o->where[0] ? ": " : "", o->key, o->model,
                        o->value, o->model, list);
    }
    return CTR_OK;
}

int config_set(config_params *p, const char *key, const char *value,
               const char *where, char *err, size_t errlen) {
    const setting *s = find_setting(key, strlen(key));
    if (!s)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%s%sunknown setting \"%.64s\" (--help lists them)",
                        where ? where : "", where ? ": " : "", key);
    return set_value(p, s, value, where, err, errlen);
}

/* --- Sources ----------------------------------------------------------- */

static const char *env_get(char *const envp[], const char *name) {
    size_t n = strlen(name);
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

/* Splits one config line into key and value (in place).  Returns 0, 1 for
 * a blank or comment line, or -1 with a reason in *why. */
static int split_line(char *line, char **key, char **value, const char **why) {
    line[strcspn(line, "\r\n")] = '\0';
    char *l = trim(line);
    if (!*l || *l == '#') return 1;
    char *eq = strchr(l, '=');
    if (!eq) {
        *why = "expected `key = value`";
        return -1;
    }
    *eq = '\0';
    *key = trim(l);
    if (!**key) {
        *why = "missing key before '='";
        return -1;
    }
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (*v == '"') {
        /* Quoted: up to the last quote, no escapes; then only a comment. */
        char *close = strrchr(v + 1, '"');
        if (!close) {
            *why = "unterminated quote";
            return -1;
        }
        char *rest = close + 1;
        while (*rest == ' ' || *rest == '\t') rest++;
        if (*rest && *rest != '#') {
            *why = "text after the closing quote";
            return -1;
        }
        *close = '\0';
        *value = v + 1;
        return 0;
    }
    /* Unquoted: a '#' at the start or after a blank begins a comment. */
    for (char *c = v; *c; c++)
        if (*c == '#' && (c == v || c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    *value = trim(v);
    return 0;
}

static int load_file(config_params *p, const char *path, const char *from,
                     char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f)
        return ctr_fail(err, errlen, CTR_EIO, "%s: cannot read config file \"%s\": %s",
                        from, path, strerror(errno));
    char line[4096], where[CONFIG_STR_MAX + 32];
    int rc = CTR_OK;
    for (int lineno = 1; fgets(line, sizeof line, f); lineno++) {
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = ctr_fail(err, errlen, CTR_EINVAL, "%s: line longer than %zu bytes",
                          where, sizeof line - 2);
            break;
        }
        char *key, *value;
        const char *why = NULL;
        int r = split_line(line, &key, &value, &why);
        if (r == 1) continue;
        if (r < 0) {
            rc = ctr_fail(err, errlen, CTR_EINVAL, "%s: %s", where, why);
            break;
        }
        const setting *s = find_setting(key, strlen(key));
        if (!s) {
            rc = ctr_fail(err, errlen, CTR_EINVAL,
                          "%s: unknown setting \"%.64s\" (--help lists them)", where, key);
            break;
        }
        if (strcmp(s->key, "config") == 0) {
            rc = ctr_fail(err, errlen, CTR_EINVAL,
                          "%s: config: a config file cannot name another", where);
            break;
        }
        if ((rc = set_value(p, s, value, where, err, errlen)) < 0) break;
    }
    if (rc == CTR_OK && ferror(f))
        rc = ctr_fail(err, errlen, CTR_EIO, "%s: read error", path);
    fclose(f);
    if (rc == CTR_OK) snprintf(p->config, sizeof p->config, "%s", path);
    return rc;
}

/* Reads the flag at argv[*i] (and its value) and advances *i.  Fills *s,
 * *value and `where` ("flag --key"). */
static int next_flag(int argc, char *const argv[], int *i, const setting **s,
                     const char **value, char *where, size_t wlen, char *err,
                     size_t errlen) {
    const char *a = argv[(*i)++];
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "unexpected argument \"%.64s\" (settings are --key value)", a);
    const char *key = a + 2;
    const char *eq = strchr(key, '=');
    size_t klen = eq ? (size_t)(eq - key) : strlen(key);
    snprintf(where, wlen, "flag --%.*s", (int)klen, key);
    *s = find_setting(key, klen);
    if (!*s)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%s: unknown setting \"%.*s\" (--help lists them)", where,
                        (int)(klen > 64 ? 64 : klen), key);
    if (eq) {
        *value = eq + 1;
    } else if ((*s)->type == SET_BOOL) {
        /* "--skip_scoring" alone is true; a boolean word after it is its
         * value, anything else is the next flag. */
        if (*i < argc && parse_bool(argv[*i]) >= 0) *value = argv[(*i)++];
        else *value = "true";
    } else if (*i < argc) {
        *value = argv[(*i)++];
    } else {
        return ctr_fail(err, errlen, CTR_EINVAL, "%s: needs a value", where);
    }
    return CTR_OK;
}

int config_parse(config_params *p, int argc, char *const argv[],
                 char *const envp[], char *err, size_t errlen) {
    if (!envp) envp = environ;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return CONFIG_HELP;

    /* Pass 1: check the flags' syntax and find --config, which must be
     * read before the environment and the other flags. */
    const setting *s;
    const char *value, *cfg = NULL;
    char where[96], cfg_from[96] = "";
    int rc;
    for (int i = 1; i < argc;) {
        if ((rc = next_flag(argc, argv, &i, &s, &value, where, sizeof where, err,
                            errlen)) < 0)
            return rc;
        if (strcmp(s->key, "config") == 0) {
            cfg = value;
            snprintf(cfg_from, sizeof cfg_from, "%s", where);
        }
    }
    if (!cfg) {
        cfg = env_get(envp, "CTR_CONFIG");
        if (cfg && !*cfg) cfg = NULL;
        snprintf(cfg_from, sizeof cfg_from, "env CTR_CONFIG");
    }
    if (cfg) {
        if (!*cfg)
            return ctr_fail(err, errlen, CTR_EINVAL, "%s: config: empty file name",
                            cfg_from);
        p->source = 1;
        if ((rc = load_file(p, cfg, cfg_from, err, errlen)) < 0) return rc;
    }
    p->source = 2;

    for (size_t k = 0; k < NSETTINGS; k++) {
        if (strcmp(settings[k].key, "config") == 0) continue;   /* done above */
        char name[64];
        env_name(&settings[k], name, sizeof name);
        const char *v = env_get(envp, name);
        if (!v || !*v) continue;
        snprintf(where, sizeof where, "env %s", name);
        if ((rc = set_value(p, &settings[k], v, where, err, errlen)) < 0) return rc;
    }

    p->source = 3;
    for (int i = 1; i < argc;) {
        next_flag(argc, argv, &i, &s, &value, where, sizeof where, NULL, 0);
        if (strcmp(s->key, "config") == 0) continue;
        if ((rc = set_value(p, s, value, where, err, errlen)) < 0) return rc;
    }
    return CTR_OK;
}

/* --- Output ------------------------------------------------------------ */

/* A string as the file syntax reads it back: quoted when it would
 * otherwise be trimmed or cut. */
static void print_str(FILE *out, const char *field) {
    size_t n = strlen(field);
    int quote = n == 0 || field[0] == ' ' || field[0] == '\t' || field[0] == '"' ||
                field[n - 1] == ' ' || field[n - 1] == '\t' || strchr(field, '#');
    fprintf(out, quote ? "\"%s\"" : "%s", field);
}

static void print_model(FILE *out, const config_model *m) {
    char e[CONFIG_NAME_MAX + CONFIG_STR_MAX + 1];
    snprintf(e, sizeof e, "%s%s%s", m->name, m->name[0] ? "=" : "", m->path);
    print_str(out, e);
}

static void print_value(FILE *out, const setting *s, const config_params *p) {
    const char *field = (const char *)p + s->off;
    switch (s->type) {
    case SET_MODELS:
        for (int i = 0; i < p->num_models; i++) {
            if (i) fputc(',', out);
            print_model(out, &p->models[i]);
        }
        break;
    case SET_INT: fprintf(out, "%d", *(const int *)field); break;
    case SET_SIZE: fprintf(out, "%zu", *(const size_t *)field); break;
    case SET_BOOL: fputs(*(const int *)field ? "true" : "false", out); break;
    case SET_CHOICE:
    case SET_STR: print_str(out, field); break;
    }
}

/* Prints text word-wrapped to 78 columns, each line indented by 6. */
static void print_wrapped(FILE *out, const char *text) {
    const int indent = 6, width = 78;
    int col = 0;
    for (const char *w = text; *w;) {
        while (*w == ' ') w++;
        int n = (int)strcspn(w, " ");
        if (!n) break;
        if (col > indent && col + 1 + n > width) {
            fputc('\n', out);
            col = 0;
        }
        if (col == 0) col = fprintf(out, "%*s", indent, "");
        else col += fprintf(out, " ");
        col += fprintf(out, "%.*s", n, w);
        w += n;
    }
    fputc('\n', out);
}

void config_help(FILE *out, const char *prog) {
    config_params d = config_default_params();
    fprintf(out,
            "Usage: %s [--config FILE] [--KEY VALUE | --KEY=VALUE]...\n"
            "\n"
            "Each setting comes from, lowest precedence first: its default, the\n"
            "config file (`key = value` lines, # comments), its environment\n"
            "variable, a command-line flag.  In keys, - and _ are the same.\n"
            "\n"
            "Several models: repeat --model (or separate entries with commas, as\n"
            "in CTR_MODEL=qin=/m/q.safetensors,din=/m/d.safetensors, or repeat the\n"
            "`model =` line in the file); a source that sets models replaces a\n"
            "lower one's.  Settings shown with [NAME=] take a VALUE for every model\n"
            "and NAME=VALUE entries for one model, in the same list forms\n"
            "(--redis-prefix ctr: --redis-prefix tin=ctr-tin:).  No entry may hold\n"
            "a comma.\n"
            "\n",
            prog ? prog : "ctr-score");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        char env[64];
        env_name(s, env, sizeof env);
        fprintf(out, "  --%s %s  [env %s]", s->key, s->arg, env);
        if (strcmp(s->key, "config") != 0) {
            fputs("  default: ", out);
            print_value(out, s, &d);
            if (s->default_note) fprintf(out, " (%s)", s->default_note);
        }
        fputc('\n', out);
        char text[512];
        if (s->type == SET_INT || s->type == SET_SIZE)
            snprintf(text, sizeof text, "%s  Range %lld..%lld.", s->help, s->min, s->max);
        else if (s->type == SET_CHOICE)
            snprintf(text, sizeof text, "%s  One of %s.", s->help, s->choices);
        else
            snprintf(text, sizeof text, "%s", s->help);
        print_wrapped(out, text);
    }
    fputs("  --help\n      Print this and exit.\n", out);
}

void config_dump(const config_params *p, FILE *out) {
    if (p->config[0]) fprintf(out, "# settings in effect (config file: %s)\n", p->config);
    else fputs("# settings in effect (no config file)\n", out);
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        if (strcmp(s->key, "config") == 0) continue;   /* not valid in a file */
        if (is_secret(s->key) && *((const char *)p + s->off)) {
            fprintf(out, "# %s is set (not shown)\n", s->key);
            continue;
        }
        if (s->type == SET_MODELS) {   /* one line per entry: lines add up */
            for (int m = 0; m < p->num_models; m++) {
                fprintf(out, "%s = ", s->key);
                print_model(out, &p->models[m]);
                fputc('\n', out);
            }
            continue;
        }
        fprintf(out, "%s = ", s->key);
        print_value(out, s, p);
        if (strcmp(s->key, "skip_scoring") == 0 && p->skip_scoring)
            fputs("   # WARNING: benchmark mode, every score is 0", out);
        if (strcmp(s->key, "precision") == 0 && strcmp(p->precision, "fp32") != 0)
            fputs("   # NOT EXACT: scores differ slightly from the trained model's", out);
        fputc('\n', out);
        for (int o = 0; o < p->num_overrides; o++) {
            if (strcmp(p->overrides[o].key, s->key) != 0) continue;
            char e[CONFIG_NAME_MAX + CONFIG_STR_MAX + 1];
            snprintf(e, sizeof e, "%s=%s", p->overrides[o].model, p->overrides[o].value);
            fprintf(out, "%s = ", s->key);
            print_str(out, e);
            fputc('\n', out);
        }
    }
}

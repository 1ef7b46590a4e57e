/*
 * config_table.c - every setting of ctr-server, ctr-load and ctr-score:
 * the table config.c parses, prints and dumps from, the checks of
 * addresses it names, and each program's defaults.
 */
#include "server/cmd/config_table.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/features.h"
#include "server/implog.h"

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

/* "", or as check_redis. */
static int check_redis_or_empty(const char *v, char *why, size_t whylen) {
    return *v ? check_redis(v, why, whylen) : 0;
}

/* "", "redis:KEY" or "file:PATH". */
static int check_impression_log(const char *v, char *why, size_t whylen) {
    return !*v || implog_target_ok(v, why, whylen) ? 0 : -1;
}

#define F(field) offsetof(config_params, field)
#define CAP(field) sizeof(((config_params *)0)->field)
#define S CONFIG_SERVER
#define L CONFIG_LOAD
#define C CONFIG_SCORE

const setting config_settings[] = {
    {"config", SET_STR, F(config), CAP(config), 0, 0, "FILE", NULL, NULL, NULL,
     "Settings file (lines `key = value`, # comments), read before the "
     "environment and flags.  Only from a flag or CTR_CONFIG.", S, 0, NULL},
    {"model", SET_MODELS, F(models), 0, 0, 0, "[NAME=]PATH", NULL, NULL, NULL,
     "Model file (safetensors) to serve, as PATH (named from the file's metadata) or "
     "NAME=PATH.  Repeat it (or separate entries with commas) to serve several models: "
     "a rank request picks one with \"model\": NAME, the first by default.  Each model "
     "has its own item cache, reload and metrics (label model).", S, 0, NULL},
    {"model", SET_STR, F(model_path), CAP(model_path), 0, 0, "PATH", NULL, NULL,
     "\"\": no checks against a model",
     "Model file (QIN, DIN or TIN): write what its schema reads (tags and embedding, or a "
     "category), take max_tags and mm_dim from it, refuse items outside its vocabularies "
     "(item ids, tag ids, cate_id) and items whose features make its "
     "item vector overflow.", L, 0, NULL},
    {"model", SET_STR, F(model_path), CAP(model_path), 0, 0, "PATH", NULL, check_nonempty,
     "\"\": required",
     "Model file (safetensors, as written by tools/convert.py): QIN, DIN or TIN, as its "
     "metadata says.", C, 0, NULL},
    {"items", SET_STR, F(items), CAP(items), 0, 0, "FILE", NULL, NULL, NULL,
     "Item features, one JSON object a line (formats above), stored as "
     "<prefix>i:<item_id>; fields the model does not read are ignored.", L, 0, NULL},
    {"items", SET_STR, F(items), CAP(items), 0, 0, "FILE", NULL, check_nonempty,
     "\"\": required",
     "Item features, one JSON object a line (formats above); ids, tags and cate_id must be "
     "within the model's vocabularies; fewer tags than the model's are padded; fields the "
     "model does not read are ignored.", C, 0, NULL},
    {"users", SET_STR, F(users), CAP(users), 0, 0, "FILE", NULL, NULL, NULL,
     "User histories, one JSON object a line: {\"user_id\": \"u1\" | 42, \"item_seq\": "
     "[ids, oldest first]}, stored as <prefix>u:<user_id> (an integer id by its decimal "
     "text, so 42 and \"42\" are the same user).", L, 0, NULL},
    {"users", SET_STR, F(users), CAP(users), 0, 0, "FILE", NULL, NULL,
     "\"\": every user is unknown",
     "Stored histories, one JSON object a line: {\"user_id\": \"u1\" | 42, \"item_seq\": "
     "[ids, oldest first]}.", C, 0, NULL},
    {"max_tags", SET_INT, F(max_tags), 0, 0, FEATURES_MAX_TAGS, "N", NULL, NULL,
     "or the model's",
     "Tag slots per item; lines with more are bad.  With --model, leave it out (or give "
     "the model's).", L, 0, NULL},
    {"mm_dim", SET_INT, F(mm_dim), 0, 0, FEATURES_MAX_MM, "N", NULL, NULL, "or the model's",
     "Embedding width; lines with another are bad.  With --model, leave it out (or give "
     "the model's).", L, 0, NULL},
    {"batch", SET_INT, F(batch), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "SETs per pipelined round trip (with redis_cluster: one pipeline per master, all "
     "at once).", L, 0, NULL},
    {"redis", SET_STR, F(redis), CAP(redis), 0, 0, "HOST:PORT|/SOCKET", NULL,
     check_redis, NULL,
     "Feature store (Redis) address: host:port, or a unix socket path "
     "starting with /.", S, 0, NULL},
    {"redis", SET_STR, F(redis), CAP(redis), 0, 0, "HOST:PORT|/SOCKET", NULL, check_redis,
     "\"\": give redis or redis_cluster",
     "Redis to write to: host:port ([v6addr]:port for IPv6), or the path of a unix "
     "socket starting with /.", L, 0, NULL},
    {"redis_cluster", SET_STR, F(redis_cluster), CAP(redis_cluster), 0, 0,
     "HOST:PORT[,HOST:PORT...]", NULL, check_redis_cluster, "\"\": one node, see redis",
     "Redis Cluster seed nodes: the feature store is then the cluster (slot map from "
     "CLUSTER SLOTS, MOVED and ASK followed, one connection per node) and `redis` is not "
     "used.", S | L, 0, NULL},
    {"redis_read_replicas", SET_BOOL, F(redis_read_replicas), 0, 0, 1, "BOOL", NULL, NULL,
     NULL,
     "Redis Cluster: read features from replicas (READONLY), spreading reads over every "
     "node; a replica may lag its master by a few milliseconds.", S, 0, NULL},
    {"redis_cluster_refresh_ms", SET_INT, F(redis_cluster_refresh_ms), 0, 1, 60000, "MS",
     NULL, NULL, NULL,
     "Redis Cluster: after a redirect or a node failure, a worker reads the slot map "
     "again at most this often (so a promoted replica is found within about this).", S, 0, NULL},
    {"redis_user", SET_STR, F(redis_user), CAP(redis_user), 0, 0, "USER", NULL, NULL,
     "\"\": the default user",
     "Redis ACL user to authenticate as (AUTH user password); needs a password.", S | L, SETTING_ENV, NULL},
    {"redis_password", SET_STR, F(redis_password), CAP(redis_password), 0, 0, "SECRET",
     NULL, NULL, "\"\": no AUTH",
     "Redis password (AUTH), for every node.  Never printed or logged.  A flag is "
     "visible to other local users while the process starts: prefer "
     "redis_password_file or the environment.", S | L, SETTING_SECRET | SETTING_ENV, NULL},
    {"redis_password_file", SET_STR, F(redis_password_file), CAP(redis_password_file), 0, 0,
     "FILE", NULL, NULL, NULL,
     "Read the Redis password from the first line of this file (a mounted secret); not "
     "with redis_password.", S | L, SETTING_ENV, NULL},
    {"redis_prefix", SET_STR, F(redis_prefix), CAP(redis_prefix), 0, 0, "[NAME=]PREFIX",
     NULL, NULL, NULL,
     "Prefix of every feature key read from Redis (and of the feature-set marker "
     "<prefix>meta).  NAME=PREFIX sets it for one model (repeatable, or comma-separated): "
     "models whose item features differ need prefixes of their own (TIN's items carry "
     "a category, QIN's and DIN's tags and an embedding, so QIN and DIN can share one).", S, SETTING_PER_MODEL, NULL},
    {"redis_prefix", SET_STR, F(redis_prefix), CAP(redis_prefix), 0, 0, "PREFIX", NULL, NULL,
     NULL,
     "Key prefix of every value written (and of the feature-set marker <prefix>meta); "
     "load a new feature version under a new prefix and point the service at it.", L, 0,
     "prefix"},
    {"redis_connect_timeout_ms", SET_INT, F(redis_connect_timeout_ms), 0, 1, 60000,
     "MS", NULL, NULL, NULL, "Timeout for connecting to Redis.", S, 0, NULL},
    {"redis_timeout_ms", SET_INT, F(redis_timeout_ms), 0, 1, 60000, "MS", NULL, NULL,
     NULL, "Longest wait for one Redis call (a request's own deadline may cut it "
     "shorter).", S, 0, NULL},
    {"redis_timeout_ms", SET_INT, F(redis_timeout_ms), 0, 1, 3600000, "MS", NULL, NULL, NULL,
     "Most time one connect or one batch may take.", L, 0, "timeout_ms"},
    {"redis_breaker_base_ms", SET_INT, F(redis_breaker_base_ms), 0, 1, 60000, "MS", NULL,
     NULL, NULL,
     "After a Redis call fails or times out, its connection fails calls at once for "
     "this long (with jitter), then lets one call through as a probe.", S, 0, NULL},
    {"redis_breaker_max_ms", SET_INT, F(redis_breaker_max_ms), 0, 1, 600000, "MS", NULL,
     NULL, NULL,
     "Each failed probe doubles the fail-fast period, up to this; so a connection "
     "probes again within 1.25 x this of Redis returning.  At least "
     "redis_breaker_base_ms.", S, 0, NULL},
    {"deadline_ms", SET_INT, F(deadline_ms), 0, 1, 600000, "MS", NULL, NULL, NULL,
     "A rank request's budget from arrival to answer when it names none (body "
     "deadline_ms, or header X-Request-Timeout-Ms).  When it runs short the answer "
     "comes on time, degraded.", S, 0, NULL},
    {"max_deadline_ms", SET_INT, F(max_deadline_ms), 0, 1, 600000, "MS", NULL, NULL, NULL,
     "The longest budget a request may ask for; longer ones are cut to this.", S, 0, NULL},
    {"bind", SET_STR, F(bind), CAP(bind), 0, 0, "ADDR", NULL, check_nonempty, NULL,
     "Address to listen on (0.0.0.0 for every interface).", S, 0, NULL},
    {"port", SET_INT, F(port), 0, 1, 65535, "N", NULL, NULL, NULL,
     "TCP port to listen on.", S, 0, NULL},
    {"threads", SET_INT, F(threads), 0, 1, 1024, "N", NULL, NULL,
     "the number of online CPUs",
     "Request worker threads: each runs one rank request at a time, with its own "
     "Redis connection.", S, 0, NULL},
    {"max_pending", SET_INT, F(max_pending), 0, 0, 1000000, "N", NULL, NULL,
     "0: 4 x threads",
     "Most rank requests queued or in work at once; more are answered 503 "
     "overloaded with Retry-After at once, so admitted requests keep their "
     "latency.", S, 0, NULL},
    {"worker_nice", SET_INT, F(worker_nice), 0, 0, 19, "N", NULL, NULL, NULL,
     "Added to the request workers' nice value, with SCHED_BATCH, so that on a "
     "saturated CPU the event loop still reads requests, refuses the excess and "
     "writes answers at once instead of waiting behind the model.  Off by default: "
     "SCHED_BATCH also delays a worker's wake-up on a busy machine, which costs "
     "normal requests latency.", S, 0, NULL},
    {"max_connections", SET_INT, F(max_connections), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "Most open client connections; more are accepted and closed at once.  Each "
     "takes three open files (its socket and the HTTP gate's socket pair): the "
     "server raises its open-file limit to fit (or lowers this, with a warning, "
     "when the hard limit is lower).", S, 0, NULL},
    {"max_connections_per_ip", SET_INT, F(max_connections_per_ip), 0, 0, 1000000, "N",
     NULL, NULL, "0: no limit, since behind a proxy every client shares its address",
     "Most open connections from one client address.", S, 0, NULL},
    {"receive_timeout_ms", SET_INT, F(receive_timeout_ms), 0, 1, 3600000, "MS", NULL, NULL,
     NULL,
     "A request (line, headers and body) must arrive whole within this of its first "
     "line (of the connect, for a connection's first request; of the previous answer "
     "plus request_timeout_s, for the next ones); else its connection is closed, so "
     "clients trickling bytes cannot hold connections.", S, 0, NULL},
    {"health_interval_ms", SET_INT, F(health_interval_ms), 0, 10, 60000, "MS", NULL, NULL,
     NULL,
     "How often the server checks Redis and its feature-set marker (what /readyz "
     "and the feature_set_missing reason report).", S, 0, NULL},
    {"score_threads", SET_INT, F(score_threads), 0, 1, 1024, "N", NULL, NULL,
     "the number of online CPUs",
     "Threads one large request's candidates are split across.", S, 0, NULL},
    {"split", SET_CHOICE, F(split), CAP(split), 0, 0, "HOW", "auto|one|columns|candidates", NULL,
     NULL,
     "How one large request is split across score_threads.  one: every "
     "request is scored on its worker's thread alone (the score threads still "
     "read the user's history beside the candidates' cache lookups).  candidates: "
     "each thread takes a share of the candidates and streams every layer's whole "
     "weight.  columns: every QIN layer's output columns in two, one half of the "
     "weights per core, so each core keeps multiplying by the same half (held in its "
     "own cache; the weights' memory doubles); models that cannot (DIN, TIN, a width "
     "not a multiple of 64) and servers with one score thread split candidates.  "
     "auto (default): at start, a request of 16, 64 and 256 candidates is timed on one thread, "
     "split by candidates and split by columns, and each size keeps the fastest "
     "(candidates unless another is 5% faster; logged); the weights' memory doubles "
     "as with columns.  bench_split compares the three on a host.",
     S, 0, NULL},
    {"split_min", SET_INT, F(split_min), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "Fewest candidates worth splitting across score_threads; smaller "
     "requests are scored on their worker thread.", S, 0, NULL},
    {"split_min_mflops", SET_INT, F(split_min_mflops), 0, 0, 1000000, "MFLOP", NULL, NULL,
     NULL,
     "Least arithmetic (millions of flops of the folded model) in each part of "
     "a split request, so a hand-off to another thread is worth its cost; "
     "with a small model, requests stay on one thread.", S, 0, NULL},
    {"max_candidates", SET_INT, F(max_candidates), 0, 1, 100000, "N", NULL, NULL, NULL,
     "Most candidates one request may carry (more: 422).  Sizes each "
     "worker's scratch memory.", S, 0, NULL},
    {"max_candidates", SET_INT, F(max_candidates), 0, 1, 1 << 20, "N", NULL, NULL, NULL,
     "Most candidates a request may have (more: the line is bad).", C, 0, "max_cand"},
    {"max_body_bytes", SET_SIZE, F(max_body_bytes), 0, 1024, 1 << 30, "BYTES", NULL,
     NULL, NULL, "Largest request body accepted (more: 413).", S, 0, NULL},
    {"max_seq", SET_INT, F(max_seq), 0, 1, 1000000, "N", NULL, NULL, NULL,
     "History entries read per user; the model uses the most recent max_len "
     "of them.", S, 0, NULL},
    {"max_seq", SET_INT, F(max_seq), 0, 1, INT_MAX, "N", NULL, NULL, NULL,
     "Longest history stored; longer ones keep their most recent N ids (counted, not an "
     "error).  Written into each value (its max_seq), so appends to it keep as many.", L, 0,
     NULL},
    {"max_seq", SET_INT, F(max_seq), 0, 1, 1 << 20, "N", NULL, NULL, NULL,
     "Most ids a request's item_seq may have (only the last max_len of any history are "
     "used: 64 for the challenge QIN and DIN, 430 for TIN).", C, 0, NULL},
    {"precision", SET_CHOICE, F(precision), CAP(precision), 0, 0, "[NAME=]PRECISION",
     "fp32|bf16|int8|int8x2", NULL, NULL,
     "Arithmetic of the models' dense layers (NAME=PRECISION for one model, "
     "repeatable).  fp32 is exact (the trained "
     "model's scores to 1e-5); bf16 and int8 are not, and trade a little "
     "accuracy for speed where the CPU runs bfloat16 / int8 dot products "
     "faster than float32 ones (int8 with VNNI: about 2.7x; bf16 is slower "
     "than fp32 on CPUs whose bf16 units run at half rate, such as this "
     "project's Xeon); int8x2 quantises each row twice (the row and its rounding "
     "residual) for about the error of int8 weights alone at twice int8's arithmetic: "
     "docs/PRECISION.md and bench/results/ have the measured score error and "
     "speed.  The startup log, /v1/models and /metrics say which one is in "
     "force.", S, SETTING_PER_MODEL, NULL},
    {"precision", SET_CHOICE, F(precision), CAP(precision), 0, 0, "PRECISION",
     "fp32|bf16|int8|int8x2", NULL, NULL,
     "Arithmetic of the dense layers: fp32 is exact to the trained model; bf16, int8 "
     "and int8x2 are faster on CPUs with AVX512_BF16 / VNNI / AMX, not exact (a note on "
     "stderr says so; measured error in docs/PRECISION.md).", C, 0, NULL},
    {"kernel", SET_CHOICE, F(kernel), CAP(kernel), 0, 0, "KERNEL",
     "auto|onednn|packed|openblas", NULL, NULL,
     "Which code computes the dense layers.  auto (default): at load, every "
     "kernel that runs the layer's precision on this CPU is timed per layer "
     "shape and row count and the fastest kept (oneDNN on AMX where the CPU "
     "has it; this project's AVX512-VNNI int8 and packed fp32 kernels); the "
     "startup log, /v1/models and /metrics show each choice and oneDNN's "
     "instruction set (ONEDNN_MAX_CPU_ISA in the environment caps it).  "
     "onednn, packed (fp32: square layers of a multiple of 32; int8: a "
     "multiple of 32 outputs) or openblas (fp32 only) run that kernel "
     "everywhere; a model it cannot run fails to load.", S, 0, NULL},
    {"cache_mb", SET_INT, F(cache_mb), 0, 0, 1 << 20, "[NAME=]MIB", NULL, NULL, NULL,
     "Item vector cache budget in MiB, split equally among the models without a "
     "budget of their own (NAME=MIB, repeatable); 0 disables the cache.", S, SETTING_PER_MODEL, NULL},
    {"warmup", SET_BOOL, F(warmup), 0, 0, 1, "BOOL", NULL, NULL, NULL,
     "Score dummy requests of 1..256 candidates with each model as it loads (and "
     "reloads, before it serves), so the first real requests do not pay for compiling "
     "the dense-product kernels.", S, 0, NULL},
    {"cache_ttl_s", SET_INT, F(cache_ttl_s), 0, 0, 365 * 86400, "SECONDS", NULL, NULL,
     NULL, "How long an item vector stays cached, which bounds how stale it "
     "gets after its features change in Redis; 0 never expires.", S, 0, NULL},
    {"history_cache_mb", SET_INT, F(history_cache_mb), 0, 0, 1 << 20, "MIB", NULL, NULL,
     NULL, "Users' histories cached in the process (one Redis only; off with "
     "redis_cluster), kept fresh by Redis's client-side caching: a connection of "
     "its own subscribes to broadcast invalidations of every key under the users' "
     "prefixes (Redis 6 or later, CLIENT and SUBSCRIBE allowed), so a history "
     "changed by ctr-load, an append or any other client is read anew by the next "
     "request; while that connection is down or refused, every history is read "
     "from Redis.  0 disables it (docs/BEHAVIOUR.md, \"History cache\").", S, 0, NULL},
    {"history_cache_ttl_s", SET_INT, F(history_cache_ttl_s), 0, 0, 365 * 86400, "SECONDS",
     NULL, NULL, NULL, "A cached history is read again from Redis after this long "
     "even without an invalidation (a safety net); 0 never expires.", S, 0, NULL},
    {"request_timeout_s", SET_INT, F(request_timeout_s), 0, 1, 3600, "SECONDS", NULL,
     NULL, NULL, "Idle keep-alive connections are closed after this.", S, 0, NULL},
    {"skip_scoring", SET_BOOL, F(skip_scoring), 0, 0, 1, "BOOL", NULL, NULL, NULL,
     "BENCHMARK ONLY, NEVER IN PRODUCTION: answer score 0 for every "
     "candidate without running the model, to measure the HTTP + JSON + "
     "Redis floor.", S, 0, NULL},
    {"impression_log", SET_STR, F(impression_log), CAP(impression_log), 0, 0,
     "redis:KEY|file:PATH", NULL, check_impression_log, "\"\": off",
     "Log what each sampled rank answer served (user, model, history, candidates with "
     "their context fields, scores and ranks, degraded reasons), one JSON record per "
     "answer, for retraining: redis:KEY appends to a Redis Stream (XADD MAXLEN ~ "
     "impression_log_maxlen; read it with XREADGROUP), file:PATH to a JSON Lines file "
     "(reopened on SIGHUP, for logrotate).  Records go through a bounded queue to a "
     "thread of their own: a slow or failing sink drops records (counted in "
     "ctr_impressions_dropped_total), never delays an answer.", S, 0, NULL},
    {"impression_sample", SET_FRACTION, F(impression_sample), 0, 0, 0, "[NAME=]FRACTION",
     NULL, NULL, NULL,
     "Share of rank answers logged when impression_log is set (NAME=FRACTION for one "
     "model, repeatable).", S, SETTING_PER_MODEL, NULL},
    {"impression_log_redis", SET_STR, F(impression_log_redis), CAP(impression_log_redis), 0,
     0, "HOST:PORT|/SOCKET", NULL, check_redis_or_empty,
     "\"\": the feature store's Redis (redis, or the node of redis_cluster owning KEY)",
     "The Redis of a redis:KEY impression log, when it should not be the feature "
     "store's (same AUTH settings).", S, 0, NULL},
    {"impression_log_maxlen", SET_INT, F(impression_log_maxlen), 0, 1, 2000000000, "N", NULL,
     NULL, NULL, "Entries a redis:KEY impression log keeps (approximately: XADD MAXLEN ~).",
     S, 0, NULL},
    {"impression_queue_mb", SET_INT, F(impression_queue_mb), 0, 1, 4096, "MIB", NULL, NULL,
     NULL,
     "Bytes of records waiting for the impression log's sink (about 1.5 KB a record of "
     "64 candidates); a full queue drops new records.", S, 0, NULL},
    {"events", SET_STR, F(events), CAP(events), 0, 0, "FILE", NULL, NULL, NULL,
     "Behaviours to append to histories, one JSON object a line: {\"user_id\": \"u1\" | 42, "
     "\"item_id\": 17} or {\"user_id\": ..., \"item_seq\": [ids, oldest first]}, appended in "
     "file order with the Redis Functions library (FCALL ctr_append_packed, --batch events a "
     "round trip), after the items and users; a missing user is created; each history "
     "keeps its most recent --max-seq ids.", L, 0, NULL},
    {"changes_maxlen", SET_INT, F(changes_maxlen), 0, 1, 100000000, "N", NULL, NULL, NULL,
     "Entries <prefix>item-changes keeps, about (each holds the ids of one batch of "
     "items written into a prefix that was loaded already).", L, 0, NULL},
    {"log_level", SET_CHOICE, F(log_level), CAP(log_level), 0, 0, "LEVEL",
     "debug|info|warn|error", NULL, NULL, "Least severe log records printed.", S, 0, NULL}
};

const size_t config_nsettings = sizeof config_settings / sizeof *config_settings;

#undef F
#undef CAP
#undef S
#undef L
#undef C

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
    snprintf(p.kernel, sizeof p.kernel, "auto");
    snprintf(p.split, sizeof p.split, "auto");
    p.cache_mb = 256;
    p.cache_ttl_s = 600;
    p.history_cache_mb = 64;
    p.history_cache_ttl_s = 60;
    p.warmup = 1;
    p.request_timeout_s = 10;
    p.skip_scoring = 0;
    snprintf(p.log_level, sizeof p.log_level, "info");
    p.config[0] = '\0';
    p.max_tags = 5;
    p.mm_dim = 128;
    p.batch = 512;
    p.impression_sample = 1.0;
    p.impression_log_maxlen = 1000000;
    p.impression_queue_mb = 16;
    p.changes_maxlen = 1000;
    p.prog = CONFIG_SERVER;
    return p;
}

config_params config_prog_params(config_prog prog) {
    config_params p = config_default_params();
    p.prog = prog;
    if (prog == CONFIG_SERVER) return p;
    /* ctr-load and ctr-score: no model list, no server address default. */
    p.num_models = 0;
    p.redis[0] = '\0';
    if (prog == CONFIG_LOAD) {
        p.redis_timeout_ms = 5000;
    } else {
        p.max_candidates = 1024;
        p.max_seq = 65536;
    }
    return p;
}

_Static_assert(sizeof config_settings / sizeof *config_settings <= CONFIG_MAX_SETTINGS,
               "config_params.given has a slot per row");

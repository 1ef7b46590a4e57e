/*
 * ctr_server.c - ctr-server: the online CTR scoring service.
 *
 *   ctr-server [--config FILE] [--model [NAME=]PATH]... [--redis HOST:PORT|/sock] ...
 *   ctr-server --help          every setting, its env variable and default
 *
 * Startup: settings (config.h), models (each loaded, checked and warmed up;
 * a bad one is refused with a message: exit 1), open-file limit, scoring
 * pool, one health check, HTTP, the reload thread.  Then the main thread
 * waits for signals, and every health_interval_ms checks Redis (PING) and
 * each model's feature-set marker under its prefix (what /readyz reports)
 * and prints the rate-limited log summaries due:
 *   SIGHUP          reopen a file:PATH impression log (logrotate), and ask
 *                   the reload thread to reload every model file; each
 *                   is swapped only if the new file loads and keeps the
 *                   model's feature schema, else that model keeps serving
 *                   its old version (logged, counted in
 *                   ctr_model_reloads_total{model}).  Loading and warm-up
 *                   run on that thread, so health checks, /readyz and
 *                   SIGTERM never wait for them; SIGHUPs during a reload
 *                   make one more reload after it;
 *   SIGTERM/SIGINT  stop accepting, finish the requests in flight (and serve,
 *                   with Connection: close, ones arriving on open
 *                   connections meanwhile), exit 0.
 * Every other thread has these signals blocked, so they arrive here.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/meta.h"
#include "core/base/clock.h"
#include "server/cmd/config.h"
#include "server/http.h"
#include "server/item_changes.h"
#include "server/rank_split.h"
#include "core/base/log.h"
#include "server/service.h"
#include "server/store/hcache.h"
#include "server/worker.h"

#define SHUTDOWN_GRACE_MS 10000
/* At exit, how long a reload still running is waited for before it is
 * abandoned (the process exits under it). */
#define RELOAD_ABANDON_MS 1000
/* What the impression log may take to write what is queued at exit. */
#define IMPRESSION_LOG_GRACE_MS 2000

/* SIGHUP: load each model's file again; keep a model's old version unless
 * the new one loads and reads the same item features (the model's
 * feature-store connections decode values with its tag count, embedding
 * width and category).  Runs on the reload thread only, so reloads never
 * overlap; stops between models once *stop is set. */
static void reload(service *svc, const atomic_int *stop) {
    for (int i = 0; i < svc->num_models && !atomic_load(stop); i++) {
        service_model *m = &svc->models[i];
        model_slot *s = NULL;
        char err[1024];
        log_info("SIGHUP: reloading model %s from %s", m->name, m->path);
        int rc = model_slot_load(m->path, &m->slot_params, 0, &s, err, sizeof err);
        if (rc == CTR_OK) {
            featstore_params want = service_fs_params(&m->fs_params, s->schema);
            if (want.max_tags != m->fs_params.max_tags || want.mm_dim != m->fs_params.mm_dim ||
                want.cate != m->fs_params.cate) {
                snprintf(err, sizeof err,
                         "new file reads %d tags, %d-d embeddings%s; the running one %d, %d%s: "
                         "a feature schema change needs a restart", want.max_tags, want.mm_dim,
                         want.cate ? " and a category" : "", m->fs_params.max_tags,
                         m->fs_params.mm_dim, m->fs_params.cate ? " and a category" : "");
                rc = CTR_EMODEL;
            }
        }
        if (rc < 0) {
            model_slot_release(s);
            metrics_reload(svc->metrics, m->index, 0);
            log_error("reload of model %s failed, still serving its previous version: %s",
                      m->name, err);
            continue;
        }
        model_holder_swap(m->holder, s); /* the holder owns s now */
        s = model_holder_acquire(m->holder);
        metrics_reload(svc->metrics, m->index, 1);
        metrics_set_model(svc->metrics, m->index, s->schema->name, s->schema->version,
                          engine_arch_name(s->schema->arch));
        log_info("reloaded model %s: now %s version %s (generation %llu; load %.0f ms, "
                 "warm-up %.0f ms)", m->name, s->schema->name, s->schema->version,
                 (unsigned long long)s->generation, s->load_ms, s->warmup_ms);
        model_slot_release(s);
    }
}

/* The reload thread: SIGHUP (on the main thread) asks, this thread loads,
 * warms up and swaps.  A reload can take long (a large model: load and
 * warm-up, half a second and more) or hang (a file on a stuck network
 * mount), so it never runs where health checks and SIGTERM are handled. */
typedef struct reloader {
    service *svc;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int requested;                  /* a SIGHUP came since the last start */
    int busy;                       /* a reload is running */
    atomic_int stop;
} reloader;

static void *reloader_main(void *arg) {
    reloader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->requested && !atomic_load(&r->stop)) pthread_cond_wait(&r->cv, &r->mu);
        if (atomic_load(&r->stop)) break;
        r->requested = 0;
        r->busy = 1;
        pthread_mutex_unlock(&r->mu);
        reload(r->svc, &r->stop);
        pthread_mutex_lock(&r->mu);
        r->busy = 0;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static int reloader_start(reloader *r, service *svc) {
    memset(r, 0, sizeof *r);
    r->svc = svc;
    atomic_init(&r->stop, 0);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    return pthread_create(&r->thread, NULL, reloader_main, r) == 0 ? 0 : -1;
}

/* SIGHUP: a reload now, or right after the one running. */
static void reloader_request(reloader *r) {
    pthread_mutex_lock(&r->mu);
    if (r->busy)
        log_info("SIGHUP: a reload is running; another follows it");
    r->requested = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Stops the thread: a reload running ends after its current model, waited
 * for up to wait_ms.  0 when the thread has ended (joined), -1 when the
 * reload is still running (hung): it is abandoned, and the caller must
 * leave everything it may touch (the service) alone. */
static int reloader_stop(reloader *r, int wait_ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&r->mu);
    atomic_store(&r->stop, 1);
    pthread_cond_broadcast(&r->cv);
    while (r->busy)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0) break;
    int busy = r->busy;
    pthread_mutex_unlock(&r->mu);
    if (busy) return -1;
    pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    return 0;
}

/* The model's item changes since the last check (item_changes.h), read
 * once its feature-set marker is there (marker_gen: its generation;
 * back: it was missing at the last check), applied to the current slot's
 * item cache; metrics and log. */
typedef struct changes_state {
    item_changes model[SERVICE_MAX_MODELS];   /* where each model is */
    arena a;                                  /* the reads' records */
} changes_state;

static void apply_item_changes(service *svc, changes_state *cs, int i, featstore *fs,
                               uint64_t marker_gen, int back, int64_t deadline) {
    static log_limit lim;
    service_model *m = &svc->models[i];
    model_slot *s = model_holder_acquire(m->holder);
    item_changes_result r;
    char err[512];
    int rc = item_changes_poll(&cs->model[i], fs, s->cache, marker_gen, back, deadline, &cs->a,
                               &r, err, sizeof err);
    model_slot_release(s);
    if (rc < 0) {
        log_limited(&lim, LOG_WARN, "item change reads failed", "model %s: item changes: %s",
                    m->name, err);
        return;
    }
    metrics_item_changes(svc->metrics, i, r.applied, r.dropped_all, r.lag_s);
    if (r.dropped_all)
        log_warn("model %s: item cache dropped: %s (prefix \"%s\")", m->name, r.why, m->prefix);
    else if (r.records)
        log_debug("model %s: %d item change record(s), %llu cached vector(s) dropped",
                  m->name, r.records, (unsigned long long)r.applied);
}

/* The health check: PING, then each model's feature-set marker under its
 * prefix, compared with the model's schema, then its item changes.  Sets
 * each model's feature_set and the metrics; logs changes. */
static void health_check(service *svc, featstore *const *fs, changes_state *cs) {
    static int last[SERVICE_MAX_MODELS] = {-1, -1, -1, -1, -1, -1, -1, -1};
    static double last_loaded_at[SERVICE_MAX_MODELS];
    char err[512] = "", buf[FEATSTORE_META_MAX + 1];
    size_t len;
    /* More patience than a request has: a busy machine must not make
     * /readyz flap. */
    int wait_ms = svc->fs_params.command_timeout_ms < 100 ? 100 : svc->fs_params.command_timeout_ms;
    int64_t dl = clock_now_ns() + (int64_t)wait_ms * 1000000;
    int64_t t0 = clock_now_ns();
    int ping = featstore_ping(fs[0], dl, err, sizeof err);
    metrics_redis(svc->metrics, METRICS_REDIS_PING, (double)(clock_now_ns() - t0) * 1e-9,
                  ping == CTR_OK ? METRICS_REDIS_OK
                                 : ping == CTR_ETIMEOUT ? METRICS_REDIS_TIMEOUT
                                                        : METRICS_REDIS_ERROR);
    metrics_redis_up(svc->metrics, ping == CTR_OK);
    for (int i = 0; i < svc->num_models; i++) {
        service_model *mod = &svc->models[i];
        int state = SERVICE_FS_UNKNOWN;
        double loaded_at = 0;
        uint64_t marker_gen = 0;
        int rc = ping;
        if (rc == CTR_OK)
            rc = featstore_get_meta(fs[i], dl, buf, sizeof buf, &len, err, sizeof err);
        if (rc == CTR_OK) {
            proto_meta m;
            const featstore_params *p = &mod->fs_params;
            if (proto_meta_decode(buf, len, &m, err, sizeof err) < 0) {
                state = SERVICE_FS_MISMATCH;
            } else if (m.num_tags > p->max_tags || m.mm_dim != p->mm_dim) {
                snprintf(err, sizeof err, "feature set of %d tags and %d-d embeddings, the "
                         "model reads %d and %d", m.num_tags, m.mm_dim, p->max_tags, p->mm_dim);
                state = SERVICE_FS_MISMATCH;
            } else {
                state = SERVICE_FS_OK;
                loaded_at = m.loaded_at;
                marker_gen = m.item_changes;
            }
        } else if (rc == CTR_ENOTFOUND) {
            state = SERVICE_FS_MISSING;
        } else if (rc == CTR_EFORMAT) {
            state = SERVICE_FS_MISMATCH;
        } else if (ping == CTR_OK && svc->fs_params.cluster && last[i] > SERVICE_FS_UNKNOWN) {
            /* A Redis Cluster answers, but not the marker's shard (master
             * and replica): it is failing over, or down.  The marker has
             * not changed for that; keep the last view, so that every
             * replica behind a load balancer does not go unready at once
             * while the other shards still serve (deploy/README.md). */
            state = last[i];
            loaded_at = last_loaded_at[i];
        }
        last_loaded_at[i] = loaded_at;
        if (rc == CTR_OK && state == SERVICE_FS_OK)
            apply_item_changes(svc, cs, i, fs[i], marker_gen,
                               last[i] == SERVICE_FS_MISSING || last[i] == SERVICE_FS_MISMATCH,
                               dl);
        atomic_store(&mod->feature_set, state);
        metrics_feature_set(svc->metrics, i, state == SERVICE_FS_OK, loaded_at);
        if (state != last[i]) {
            if (state == SERVICE_FS_OK)
                log_info("model %s: feature store ready (prefix \"%s\", feature set loaded "
                         "at %.0f)", mod->name, mod->prefix, loaded_at);
            else
                log_warn("model %s: feature store not ready (prefix \"%s\"): %s", mod->name,
                         mod->prefix, err);
            last[i] = state;
        }
    }
}

static void warm_helper(void *arg, int i, int n) {
    (void)i, (void)n;
    worker_prepare(arg);
}

/* --split auto: each model's split per request size, measured now (the
 * helpers warm, nothing served yet), and logged with what was measured. */
static void plan_splits(service *svc) {
    for (int i = 0; svc->split_auto && i < svc->num_models; i++) {
        service_model *m = &svc->models[i];
        char err[256], line[600];
        int64_t t0 = clock_now_ns();
        if (rank_split_plan(svc, m, err, sizeof err) < 0) {
            log_warn("model %s: split plan: %s; requests split by candidates", m->name, err);
            continue;
        }
        size_t len = 0;
        for (int c = 0; c < SERVICE_SPLIT_CLASSES && len < sizeof line; c++) {
            if (m->split_us[c][SERVICE_SPLIT_CANDIDATES] < 0) break;
            len += (size_t)snprintf(line + len, sizeof line - len, "%s%d candidates: %s (",
                                    c ? "; " : "", service_split_rows(c),
                                    service_split_name(m->split[c]));
            for (int k = 0; k < SERVICE_SPLIT_COUNT && len < sizeof line; k++)
                if (m->split_us[c][k] >= 0)
                    len += (size_t)snprintf(line + len, sizeof line - len, "%s%s %.0f us",
                                            k ? ", " : "", service_split_name((service_split)k),
                                            m->split_us[c][k]);
            if (len < sizeof line) len += (size_t)snprintf(line + len, sizeof line - len, ")");
        }
        service_split_describe(m, 1);
        log_info("model %s: split measured (%.0f ms): %s", m->name,
                 (double)(clock_now_ns() - t0) * 1e-6, len ? line : "nothing timed");
    }
}

/* The precision of the model served as `name` (NULL: not known yet): its
 * own NAME=PRECISION entry, else the plain setting (both checked by
 * config_parse). */
static dense_precision precision_of(const config_params *cp, const char *name) {
    const char *v = name ? config_model_value(cp, "precision", name) : NULL;
    dense_precision p = DENSE_FP32;
    dense_precision_parse(v ? v : cp->precision, &p);
    return p;
}

/* Loads every model of the settings into svc: its name (given, or the
 * file's), its key prefix and cache budget (its own NAME=VALUE, else the
 * plain setting; models without a budget of their own share cache_mb
 * equally), warmed up.  Two passes, since a bare path's name (and so
 * whether it has a budget of its own) is known once its file is loaded.
 * CTR_OK, or an error with a message. */
static int load_models(service *svc, const config_params *cp, char *err, size_t errlen) {
    model_slot *slot[CONFIG_MAX_MODELS] = {NULL};
    const char *names[CONFIG_MAX_MODELS];
    model_slot_params sp = model_slot_default_params();
    sp.cache.ttl_ms = (uint64_t)cp->cache_ttl_s * 1000;
    sp.cache.max_bytes = 0; /* until the budgets are known */
    sp.warmup_max_cand = cp->warmup ? cp->max_candidates : 0;
    if (dense_backend_parse(cp->kernel, &sp.kernel) < 0) sp.kernel = DENSE_BACKEND_AUTO;
    sp.column_parts = svc->split == SERVICE_SPLIT_COLUMNS || svc->split_auto ? 2 : 1;
    log_info("dense layers: kernel %s; oneDNN instruction set %s", cp->kernel, dense_cpu_isa());
    char inner[900];
    int rc = CTR_OK, shared = 0, i;
    for (i = 0; i < cp->num_models; i++) {
        const config_model *cm = &cp->models[i];
        sp.precision = precision_of(cp, cm->name[0] ? cm->name : NULL);
        rc = model_slot_load(cm->path, &sp, 1, &slot[i], inner, sizeof inner);
        /* A bare path is named by its file: its own precision entry, if
         * any, is known only now. */
        if (rc == CTR_OK && !cm->name[0] &&
            precision_of(cp, slot[i]->schema->name) != sp.precision) {
            sp.precision = precision_of(cp, slot[i]->schema->name);
            model_slot_release(slot[i]);
            slot[i] = NULL;
            rc = model_slot_load(cm->path, &sp, 1, &slot[i], inner, sizeof inner);
        }
        if (rc < 0) {
            ctr_fail(err, errlen, rc, "model %s: %s", cm->name[0] ? cm->name : cm->path, inner);
            goto fail;
        }
        names[i] = cm->name[0] ? cm->name : slot[i]->schema->name;
        shared += !config_model_value(cp, "cache_mb", names[i]);
    }
    for (i = 0; i < cp->num_models; i++) {
        const char *v = config_model_value(cp, "cache_mb", names[i]);
        size_t mb = v ? (size_t)atoi(v) : (size_t)cp->cache_mb / (size_t)(shared ? shared : 1);
        model_slot_params msp = sp;
        msp.cache.max_bytes = mb << 20;
        msp.precision = engine_model_precision(slot[i]->model);   /* reloads keep it */
        const char *prefix = config_model_value(cp, "redis_prefix", names[i]);
        if ((rc = model_slot_set_cache(slot[i], &msp.cache, inner, sizeof inner)) < 0 ||
            (rc = service_add_model(svc, names[i], cp->models[i].path, &msp,
                                    prefix ? prefix : cp->redis_prefix, slot[i], inner,
                                    sizeof inner)) < 0) {
            ctr_fail(err, errlen, rc, "model %s: %s", names[i], inner);
            goto fail;
        }
        const model_slot *s = slot[i];
        slot[i] = NULL; /* the service's now */
        names[i] = svc->models[i].name;
        const char *sample = config_model_value(cp, "impression_sample", names[i]);
        svc->models[i].impression_sample = sample ? strtod(sample, NULL) : cp->impression_sample;
        dense_precision pr = engine_model_precision(s->model);
        log_info("model %s: %s version %s (%s), %s; prefix \"%s\", item cache %zu MiB; "
                 "precision %s, kernel %s; load %.0f ms, warm-up %.0f ms", names[i], s->schema->name,
                 s->schema->version, engine_arch_name(s->schema->arch), cp->models[i].path,
                 svc->models[i].prefix, mb, dense_precision_name(pr),
                 engine_model_describe(s->model), s->load_ms, s->warmup_ms);
        if (!dense_precision_exact(pr))
            log_warn("model %s: precision %s is NOT EXACT: %s, so scores differ from the "
                     "trained model's (measured error against fp32 in bench/README.md); "
                     "--precision %s=fp32 gives them to 1e-5", names[i], dense_precision_name(pr),
                     dense_precision_what(pr), names[i]);
    }
    return config_check_models(cp, names, cp->num_models, err, errlen);
fail:
    for (int k = 0; k < cp->num_models; k++) model_slot_release(slot[k]);
    return rc;
}

/* The impression log of the settings (off when impression_log is ""):
 * file:PATH opened now, redis:KEY on the feature store's Redis unless
 * impression_log_redis names another.  CTR_OK or an error with a
 * message. */
static int open_impression_log(service *svc, const config_params *cp, char *err, size_t errlen) {
    if (!cp->impression_log[0]) return CTR_OK;
    implog_params ip;
    implog_default_params(&ip);
    char seed[CONFIG_STR_MAX];
    ip.target = cp->impression_log;
    ip.queue_bytes = (size_t)cp->impression_queue_mb << 20;
    ip.redis_maxlen = cp->impression_log_maxlen;
    ip.redis_user = cp->redis_user;
    ip.redis_password = cp->redis_password;
    if (cp->impression_log_redis[0]) {
        ip.redis_addr = cp->impression_log_redis;
    } else if (cp->redis_cluster[0]) {
        /* The first seed; MOVED leads to the node owning the key. */
        snprintf(seed, sizeof seed, "%.*s", (int)strcspn(cp->redis_cluster, ","),
                 cp->redis_cluster + strspn(cp->redis_cluster, " "));
        seed[strcspn(seed, " ")] = '\0';
        ip.redis_addr = seed;
        ip.redis_cluster = 1;
    } else {
        ip.redis_addr = cp->redis;
    }
    ip.hook = metrics_impression_event;
    ip.hook_arg = svc->metrics;
    int rc = implog_open(&ip, &svc->implog, err, errlen);
    if (rc < 0) return rc;
    metrics_impression_log_on(svc->metrics, ip.queue_bytes);
    char rates[512] = "";
    for (int i = 0; i < svc->num_models; i++)
        snprintf(rates + strlen(rates), sizeof rates - strlen(rates), "%s%s %g", i ? ", " : "",
                 svc->models[i].name, svc->models[i].impression_sample);
    log_info("impression log: %s (sampled: %s; queue %d MiB)", cp->impression_log, rates,
             cp->impression_queue_mb);
    return CTR_OK;
}

/* Threads started before main (OpenBLAS starts its pool in a library
 * constructor) do not block the signals main waits for, so the kernel may
 * hand SIGTERM, SIGINT or SIGHUP to one of them while main is not inside
 * sigtimedwait (a health check, a reload): with the default action that
 * killed the process (exit 143 instead of a drain; SIGHUP too).  A handler
 * instead sends it on to the main thread, which blocks it, so it waits
 * there for sigtimedwait.  pthread_kill is async-signal-safe. */
static pthread_t main_thread;
static void forward_to_main(int sig) {
    int saved = errno;
    pthread_kill(main_thread, sig);
    errno = saved;
}

/* Room for max_connections connections (HTTP_FDS_PER_CONNECTION
 * descriptors each), Redis connections, the model and logs: raise the
 * soft open-file limit as far as the hard one allows, and lower the
 * connection limit to fit what it does. */
static int fit_fd_limit(int want_conns, int threads) {
    const int reserve = 64 + 2 * threads;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return want_conns;
    rlim_t want = (rlim_t)want_conns * HTTP_FDS_PER_CONNECTION + (rlim_t)reserve;
    if (rl.rlim_cur < want) {
        rlim_t cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        struct rlimit nr = {cur, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nr) == 0) rl.rlim_cur = cur;
    }
    if (rl.rlim_cur >= want) return want_conns;
    int fit = ((int)rl.rlim_cur - reserve) / HTTP_FDS_PER_CONNECTION;
    if (fit < 16) fit = 16;
    log_warn("open-file limit %llu: max_connections lowered from %d to %d (raise `ulimit -n`)",
             (unsigned long long)rl.rlim_cur, want_conns, fit);
    return fit;
}

/* The service's settings from the configuration (models come later, by
 * load_models).  svc must be zeroed. */
static void service_setup(service *svc, const config_params *cp) {
    svc->max_candidates = cp->max_candidates;
    svc->max_seq = cp->max_seq;
    svc->max_body = cp->max_body_bytes;
    svc->split_min = cp->split_min;
    svc->split_min_mflops = cp->split_min_mflops;
    svc->score_parts = cp->score_threads;
    svc->split = cp->score_threads < 2 || strcmp(cp->split, "one") == 0 ? SERVICE_SPLIT_ONE
                 : strcmp(cp->split, "columns") == 0 ? SERVICE_SPLIT_COLUMNS
                                                     : SERVICE_SPLIT_CANDIDATES;
    svc->split_auto = cp->score_threads > 1 && strcmp(cp->split, "auto") == 0;
    svc->skip_scoring = cp->skip_scoring;
    svc->deadline_ms = cp->deadline_ms;
    svc->max_deadline_ms = cp->max_deadline_ms > cp->deadline_ms ? cp->max_deadline_ms
                                                                 : cp->deadline_ms;
    atomic_init(&svc->stopping, 0);
    atomic_init(&svc->draining, 0);
    featstore_params *fp = &svc->fs_params;
    featstore_default_params(fp);
    fp->addr = cp->redis;
    fp->prefix = cp->redis_prefix;
    fp->connect_timeout_ms = cp->redis_connect_timeout_ms;
    fp->command_timeout_ms = cp->redis_timeout_ms;
    fp->breaker_base_ms = cp->redis_breaker_base_ms;
    fp->breaker_max_ms = cp->redis_breaker_max_ms > cp->redis_breaker_base_ms
                             ? cp->redis_breaker_max_ms
                             : cp->redis_breaker_base_ms;
    fp->max_seq = cp->max_seq;
    fp->cluster = cp->redis_cluster[0] ? cp->redis_cluster : NULL;
    fp->read_replicas = cp->redis_read_replicas;
    fp->cluster_refresh_ms = cp->redis_cluster_refresh_ms;
    fp->user = cp->redis_user;
    fp->password = cp->redis_password;
}

/* The users' history cache (hcache.h) and its invalidation link, shared
 * by the feature stores of every worker opened from now on; *out NULL when
 * off (history_cache_mb 0, or a Redis Cluster).  Entries hold the longest
 * history a model reads now (max_len, at most max_seq); a model reloaded
 * with a longer one reads longer histories from Redis.  -1 when it cannot
 * be made (err says why). */
static int start_history_cache(service *svc, const config_params *cp, hcache **out, char *err,
                               size_t errlen) {
    *out = NULL;
    if (!cp->history_cache_mb) {
        log_info("history cache off (history_cache_mb 0): each request reads its user's "
                 "history from Redis");
        return 0;
    }
    if (cp->redis_cluster[0]) {
        log_info("history cache off: not available with redis_cluster (each request reads "
                 "its user's history from the cluster)");
        return 0;
    }
    int max_ids = 1;
    for (int i = 0; i < svc->num_models; i++) {
        model_slot *s = model_holder_acquire(svc->models[i].holder);
        if (s->schema->max_len > max_ids) max_ids = s->schema->max_len;
        model_slot_release(s);
    }
    if (max_ids > cp->max_seq) max_ids = cp->max_seq;
    hcache_params hp = hcache_default_params();
    hp.max_bytes = (size_t)cp->history_cache_mb << 20;
    hp.max_ids = max_ids;
    hp.ttl_ms = (int64_t)cp->history_cache_ttl_s * 1000;
    hcache *hc;
    if (hcache_init(&hp, &hc, err, errlen) < 0) return -1;
    static char prefix[SERVICE_MAX_MODELS][1100];
    const char *prefixes[SERVICE_MAX_MODELS];
    for (int i = 0; i < svc->num_models; i++) {
        snprintf(prefix[i], sizeof prefix[i], "%su:", svc->models[i].prefix);
        prefixes[i] = prefix[i];
    }
    hcache_link_params lp = {
        .addr = cp->redis,
        .user = cp->redis_user,
        .password = cp->redis_password,
        .connect_timeout_ms = cp->redis_connect_timeout_ms < 100 ? 100
                                                                 : cp->redis_connect_timeout_ms,
        .prefixes = prefixes,
        .nprefixes = svc->num_models,
        .retry_ms = 100,
        .ping_ms = 1000,
    };
    if (hcache_start(hc, &lp, err, errlen) < 0) {
        hcache_free(hc);
        return -1;
    }
    for (int i = 0; i < svc->num_models; i++) svc->models[i].fs_params.history_cache = hc;
    metrics_history_cache_on(svc->metrics, hc);
    hcache_stats st;
    hcache_stats_get(hc, &st);
    log_info("history cache: %d MiB, %d users of up to %d ids, TTL %d s, kept fresh by "
             "Redis's invalidations (bypassed until they flow)",
             cp->history_cache_mb, st.capacity, max_ids, cp->history_cache_ttl_s);
    *out = hc;
    return 0;
}

/* Blocks the signals main waits for before any thread starts, so every
 * thread inherits the mask and they all arrive at sigtimedwait; a thread
 * started before main gets them forwarded (forward_to_main). */
static void signals_setup(sigset_t *sigs) {
    sigemptyset(sigs);
    sigaddset(sigs, SIGTERM);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    main_thread = pthread_self();
    struct sigaction fwd;
    memset(&fwd, 0, sizeof fwd);
    fwd.sa_handler = forward_to_main;
    sigfillset(&fwd.sa_mask);
    sigaction(SIGTERM, &fwd, NULL);
    sigaction(SIGINT, &fwd, NULL);
    sigaction(SIGHUP, &fwd, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The startup line: models, address, feature store (never the password),
 * workers and limits. */
static void log_serving(const service *svc, const config_params *cp, const http_params *hp,
                        int port) {
    char served[512] = "";
    for (int i = 0; i < svc->num_models; i++)
        snprintf(served + strlen(served), sizeof served - strlen(served), "%s%s", i ? ", " : "",
                 svc->models[i].name);
    char redis_desc[CONFIG_STR_MAX + 300];
    int n = snprintf(redis_desc, sizeof redis_desc, "%s %s",
                     cp->redis_cluster[0] ? "Redis Cluster" : "redis",
                     cp->redis_cluster[0] ? cp->redis_cluster : cp->redis);
    if (cp->redis_cluster[0] && cp->redis_read_replicas)
        n += snprintf(redis_desc + n, sizeof redis_desc - (size_t)n, " (reads from replicas)");
    if (cp->redis_password[0])   /* that AUTH is on, and as whom; never the password */
        snprintf(redis_desc + n, sizeof redis_desc - (size_t)n, " with AUTH%s%s",
                 cp->redis_user[0] ? " as " : "", cp->redis_user);
    log_info("serving %d model(s) (%s; default %s) on http://%s:%d; %s; %d "
             "workers, %d admitted at most, deadline %d ms (max %d), %d connections at "
             "most; scoring split over up to %d threads%s", svc->num_models, served,
             svc->models[0].name, cp->bind, port, redis_desc, cp->threads, hp->max_pending,
             svc->deadline_ms, svc->max_deadline_ms, hp->connection_limit, cp->score_threads,
             cp->skip_scoring ? "; SKIP_SCORING: every score is 0 (benchmark floor only)" : "");
}

/* The health check's own connection to each model's feature store: no
 * worker's breaker or metrics hooks, and more patience than a request has
 * (at least 100 ms), so a busy machine does not make /readyz flap. */
static int open_health_stores(const service *svc, featstore **fs, char *err, size_t errlen) {
    for (int i = 0; i < svc->num_models; i++) {
        featstore_params hfp = svc->models[i].fs_params;
        hfp.breaker_hook = NULL;
        hfp.node_hooks = NULL;
        hfp.history_cache = NULL;
        if (hfp.command_timeout_ms < 100) hfp.command_timeout_ms = 100;
        if (featstore_open(&hfp, &fs[i], err, errlen) < 0) return -1;
    }
    return 0;
}

/* Until SIGTERM or SIGINT: the health check every interval_ms (and the
 * log summaries due); on SIGHUP, a file:PATH impression log reopened and a
 * reload asked of the reload thread. */
static void serve(service *svc, featstore *const *health_fs, changes_state *cs,
                  const sigset_t *sigs, http_server *http, reloader *rl, int interval_ms) {
    int64_t next_check = clock_now_ns();
    for (;;) {
        int64_t wait = next_check - clock_now_ns();
        if (wait <= 0) {
            health_check(svc, health_fs, cs);
            log_limit_tick();
            next_check = clock_now_ns() + (int64_t)interval_ms * 1000000;
            continue;
        }
        struct timespec ts = {wait / 1000000000, wait % 1000000000};
        int sig = sigtimedwait(sigs, NULL, &ts);
        if (sig < 0) continue; /* timeout or EINTR */
        if (sig == SIGHUP) {
            implog_reopen(svc->implog);   /* file:PATH: after logrotate */
            reloader_request(rl);
            continue;
        }
        log_info("%s: stopping; %d request(s) in flight", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 http_inflight(http));
        return;
    }
}

/* The settings from the command line, the environment and a settings
 * file, the password scrubbed from argv.  -1 to go on, or the exit status
 * (0 after --help, 2 for a settings error). */
static int read_settings(config_params *cp, int argc, char **argv) {
    char err[1024];
    int rc = config_parse(cp, argc, argv, NULL, err, sizeof err);
    if (rc == CONFIG_HELP) {
        config_help(stdout, argv[0]);
        return 0;
    }
    config_scrub_argv(argc, argv);
    if (rc < 0) {
        fprintf(stderr, "ctr-server: %s\n(see ctr-server --help)\n", err);
        return 2;
    }
    if (config_redis_auth(cp, err, sizeof err) < 0) {
        fprintf(stderr, "ctr-server: %s\n", err);
        return 2;
    }
    return -1;
}

/* What the service needs before its models: metrics, the workers' globals,
 * the scoring pool, and the feature store's hooks into the metrics.  -1
 * when out of memory. */
static int service_start(service *svc, const config_params *cp) {
    static featstore_node_hooks node_hooks = {metrics_node_id, metrics_node_event, NULL};
    if (metrics_init(&svc->metrics) < 0 || worker_global_init() < 0 ||
        pool_init(cp->score_threads > 1 ? cp->score_threads - 1 : 0, &svc->scorers) < 0)
        return -1;
    svc->fs_params.breaker_hook = metrics_breaker;
    svc->fs_params.breaker_hook_arg = svc->metrics;
    svc->fs_params.desync_hook = metrics_redis_desync;
    svc->fs_params.desync_hook_arg = svc->metrics;
    node_hooks.arg = svc->metrics;
    svc->fs_params.node_hooks = &node_hooks;
    return 0;
}

/* Frees what service_start and load_models made (every thread stopped). */
static void service_stop(service *svc) {
    pool_free(svc->scorers);
    service_free_models(svc);
    if (svc->metrics) metrics_free(svc->metrics);
    worker_global_free();
}

/* The HTTP server's settings; the connection limit fitted to the
 * open-file limit. */
static http_params http_settings(const service *svc, const config_params *cp) {
    return (http_params){
        .bind = cp->bind,
        .port = cp->port,
        .workers = cp->threads,
        .max_pending = cp->max_pending ? cp->max_pending : 4 * cp->threads,
        .idle_timeout_s = cp->request_timeout_s,
        .receive_timeout_ms = cp->receive_timeout_ms,
        .connection_limit = fit_fd_limit(cp->max_connections, (cp->threads + cp->score_threads) *
                                                                   (svc->num_models + 1)),
        .per_ip_limit = cp->max_connections_per_ip,
        .worker_nice = cp->worker_nice,
    };
}

int main(int argc, char **argv) {
    config_params cp = config_default_params();
    int rc = read_settings(&cp, argc, argv);
    if (rc >= 0) return rc;
    log_set_level_name(cp.log_level);
    sigset_t sigs;
    signals_setup(&sigs);

    static service svc;   /* large (per-model state): not on the stack */
    service_setup(&svc, &cp);
    char err[1024];
    int exit_code = 1;
    http_server *http = NULL;
    static reloader rl;
    int rl_started = 0;
    featstore *health_fs[SERVICE_MAX_MODELS] = {NULL};
    hcache *history_cache = NULL;
    static changes_state changes;   /* large: not on the stack */
    arena_init(&changes.a, 1 << 16);
    if (service_start(&svc, &cp) < 0) {
        log_error("out of memory at startup");
        goto out;
    }
    if (load_models(&svc, &cp, err, sizeof err) < 0) {
        log_error("cannot load the model: %s", err);
        goto out;
    }
    if (start_history_cache(&svc, &cp, &history_cache, err, sizeof err) < 0) {
        log_error("%s", err);
        goto out;
    }
    /* The scoring helpers warmed now, as the HTTP workers are when they
     * start (worker_prepare): scratch, AMX state, connections. */
    pool_each_thread(svc.scorers, warm_helper, &svc);
    if (open_impression_log(&svc, &cp, err, sizeof err) < 0) {
        log_error("%s", err);
        goto out;
    }
    plan_splits(&svc);
    if (open_health_stores(&svc, health_fs, err, sizeof err) < 0) {
        log_error("feature store: %s", err);
        goto out;
    }
    health_check(&svc, health_fs, &changes);

    http_params hp = http_settings(&svc, &cp);
    if (http_start(&svc, &hp, &http, err, sizeof err) < 0) {
        log_error("%s", err);
        goto out;
    }
    if (reloader_start(&rl, &svc) < 0) {
        log_error("cannot start the reload thread");
        goto out;
    }
    rl_started = 1;
    log_serving(&svc, &cp, &hp, http_port(http));
    serve(&svc, health_fs, &changes, &sigs, http, &rl, cp.health_interval_ms);
    atomic_store(&svc.draining, 1); /* http_stop sets stopping after its wait */
    http_stop(http, SHUTDOWN_GRACE_MS);
    http = NULL;
    exit_code = 0;
    log_info("stopped");
out:
    http_stop(http, 0);
    implog_close(svc.implog, IMPRESSION_LOG_GRACE_MS);   /* after the last answer */
    if (rl_started && reloader_stop(&rl, RELOAD_ABANDON_MS) < 0) {
        /* A reload that hangs (reading a stuck file) holds the service:
         * leave it, and the thread, to the process's end. */
        log_warn("exit: a model reload still running after %d ms is abandoned",
                 RELOAD_ABANDON_MS);
        fflush(stderr);
        _exit(exit_code);
    }
    for (int i = 0; i < SERVICE_MAX_MODELS; i++) featstore_close(health_fs[i]);
    arena_free(&changes.a);
    service_stop(&svc);
    hcache_free(history_cache);   /* after every feature store that used it */
    return exit_code;
}

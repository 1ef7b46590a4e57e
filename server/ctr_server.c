/*
 * ctr_server.c - ctr-server: the online CTR scoring service.
 *
 *   ctr-server [--config FILE] [--model PATH] [--redis HOST:PORT|/sock] ...
 *   ctr-server --help          every setting, its env variable and default
 *
 * Startup: settings (config.h), model (refused with a message if bad: exit
 * 1), open-file limit, scoring pool, one health check, HTTP.  Then the main
 * thread waits for signals, and every health_interval_ms checks Redis
 * (PING) and its feature-set marker (what /readyz reports) and prints the
 * rate-limited log summaries due:
 *   SIGHUP          reload the model file; swap only if the new one loads
 *                   and keeps the feature schema, else keep serving the old
 *                   one (logged, counted in ctr_model_reloads_total);
 *   SIGTERM/SIGINT  stop accepting, finish the requests in flight, exit 0.
 * Every other thread has these signals blocked, so they arrive here.
 */
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/meta.h"
#include "server/clock.h"
#include "server/config.h"
#include "server/http.h"
#include "server/log.h"
#include "server/service.h"

#define SHUTDOWN_GRACE_MS 10000

static void cache_params_from(const config_params *cp, item_cache_params *out) {
    *out = item_cache_default_params();
    out->max_bytes = (size_t)cp->cache_mb << 20;
    out->ttl_ms = (uint64_t)cp->cache_ttl_s * 1000;
}

/* SIGHUP: load the file again; keep the old model unless the new one loads
 * and reads the same features (the feature store's values are decoded with
 * the first model's tag count and embedding width).  Runs on the main
 * thread only, so reloads never overlap. */
static void reload(service *svc) {
    model_slot *old = model_holder_acquire(svc->models);
    int old_tags = old->cfg->num_tags, old_mm = old->cfg->mm_in;
    model_slot *s = NULL;
    char err[1024];
    log_info("SIGHUP: reloading %s", svc->model_path);
    /* the precision stays what the server started with */
    int rc = model_slot_load(svc->model_path, &svc->cache_params, qin_model_precision(old->model),
                             0, &s, err, sizeof err);
    if (rc == CTR_OK && (s->cfg->num_tags != old_tags || s->cfg->mm_in != old_mm)) {
        snprintf(err, sizeof err,
                 "new model reads %d tags and %d-d embeddings, the running one %d and %d; a "
                 "feature schema change needs a restart", s->cfg->num_tags, s->cfg->mm_in,
                 old_tags, old_mm);
        rc = CTR_EMODEL;
    }
    model_slot_release(old);
    if (rc < 0) {
        model_slot_release(s);
        metrics_reload(svc->metrics, 0);
        log_error("reload failed, still serving the previous model: %s", err);
        return;
    }
    model_holder_swap(svc->models, s); /* the holder owns s now */
    s = model_holder_acquire(svc->models);
    metrics_reload(svc->metrics, 1);
    metrics_set_model(svc->metrics, s->cfg->name, s->cfg->version);
    log_info("reloaded: now serving %s version %s (generation %llu)", s->cfg->name,
             s->cfg->version, (unsigned long long)s->generation);
    model_slot_release(s);
}

/* The health check: PING, then the feature-set marker, compared with the
 * model's schema.  Sets svc->feature_set and the metrics; logs changes. */
static void health_check(service *svc, featstore *fs) {
    static int last = -1;
    char err[512] = "", buf[FEATSTORE_META_MAX + 1];
    size_t len;
    /* More patience than a request has: a busy machine must not make
     * /readyz flap. */
    int wait_ms = svc->fs_params.command_timeout_ms < 100 ? 100 : svc->fs_params.command_timeout_ms;
    int64_t dl = clock_now_ns() + (int64_t)wait_ms * 1000000;
    int state = SERVICE_FS_UNKNOWN;
    double loaded_at = 0;
    int64_t t0 = clock_now_ns();
    int rc = featstore_ping(fs, dl, err, sizeof err);
    metrics_redis(svc->metrics, METRICS_REDIS_PING, (double)(clock_now_ns() - t0) * 1e-9,
                  rc == CTR_OK ? METRICS_REDIS_OK
                               : rc == CTR_ETIMEOUT ? METRICS_REDIS_TIMEOUT : METRICS_REDIS_ERROR);
    if (rc == CTR_OK) rc = featstore_get_meta(fs, dl, buf, sizeof buf, &len, err, sizeof err);
    if (rc == CTR_OK) {
        proto_meta m;
        model_slot *s = model_holder_acquire(svc->models);
        if (proto_meta_decode(buf, len, &m, err, sizeof err) < 0) {
            state = SERVICE_FS_MISMATCH;
        } else if (m.num_tags > s->cfg->num_tags || m.mm_dim != s->cfg->mm_in) {
            snprintf(err, sizeof err, "feature set of %d tags and %d-d embeddings, the model "
                     "reads %d and %d", m.num_tags, m.mm_dim, s->cfg->num_tags, s->cfg->mm_in);
            state = SERVICE_FS_MISMATCH;
        } else {
            state = SERVICE_FS_OK;
            loaded_at = m.loaded_at;
        }
        model_slot_release(s);
    } else if (rc == CTR_ENOTFOUND) {
        state = SERVICE_FS_MISSING;
    } else if (rc == CTR_EFORMAT) {
        state = SERVICE_FS_MISMATCH;
    }
    atomic_store(&svc->feature_set, state);
    metrics_feature_set(svc->metrics, state == SERVICE_FS_OK, loaded_at);
    if (state != last) {
        if (state == SERVICE_FS_OK) log_info("feature store ready (feature set loaded at %.0f)",
                                             loaded_at);
        else log_warn("feature store not ready: %s", err);
        last = state;
    }
}

/* Room for max_connections sockets, Redis connections, the model and
 * logs: raise the soft open-file limit as far as the hard one allows, and
 * lower the connection limit to fit what it does. */
static int fit_fd_limit(int want_conns, int threads) {
    const int reserve = 64 + 2 * threads;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return want_conns;
    rlim_t want = (rlim_t)want_conns + (rlim_t)reserve;
    if (rl.rlim_cur < want) {
        rlim_t cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        struct rlimit nr = {cur, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nr) == 0) rl.rlim_cur = cur;
    }
    if (rl.rlim_cur >= want) return want_conns;
    int fit = (int)rl.rlim_cur - reserve;
    if (fit < 16) fit = 16;
    log_warn("open-file limit %llu: max_connections lowered from %d to %d (raise `ulimit -n`)",
             (unsigned long long)rl.rlim_cur, want_conns, fit);
    return fit;
}

int main(int argc, char **argv) {
    config_params cp = config_default_params();
    char err[1024];
    int rc = config_parse(&cp, argc, argv, NULL, err, sizeof err);
    if (rc == CONFIG_HELP) {
        config_help(stdout, argv[0]);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "ctr-server: %s\n(see ctr-server --help)\n", err);
        return 2;
    }
    log_set_level_name(cp.log_level);

    /* Block the signals we wait for before any thread starts, so every
     * thread inherits the mask and they all arrive at sigwait below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    service svc;
    memset(&svc, 0, sizeof svc);
    snprintf(svc.model_path, sizeof svc.model_path, "%s", cp.model);
    cache_params_from(&cp, &svc.cache_params);
    svc.max_candidates = cp.max_candidates;
    svc.max_seq = cp.max_seq;
    svc.max_body = cp.max_body_bytes;
    svc.split_min = cp.split_min;
    svc.split_min_mflops = cp.split_min_mflops;
    svc.score_parts = cp.score_threads;
    svc.skip_scoring = cp.skip_scoring;
    svc.deadline_ms = cp.deadline_ms;
    svc.max_deadline_ms = cp.max_deadline_ms > cp.deadline_ms ? cp.max_deadline_ms
                                                              : cp.deadline_ms;
    atomic_init(&svc.stopping, 0);
    atomic_init(&svc.feature_set, SERVICE_FS_UNKNOWN);
    atomic_init(&svc.score_ns_per_mflop, 0);

    dense_precision precision = DENSE_FP32;
    dense_precision_parse(cp.precision, &precision); /* checked by config_parse */
    model_slot *first;
    if (model_slot_load(cp.model, &svc.cache_params, precision, 1, &first, err, sizeof err) < 0) {
        log_error("cannot load the model: %s", err);
        return 1;
    }
    featstore_default_params(&svc.fs_params);
    svc.fs_params.addr = cp.redis;
    svc.fs_params.prefix = cp.redis_prefix;
    svc.fs_params.connect_timeout_ms = cp.redis_connect_timeout_ms;
    svc.fs_params.command_timeout_ms = cp.redis_timeout_ms;
    svc.fs_params.breaker_base_ms = cp.redis_breaker_base_ms;
    svc.fs_params.breaker_max_ms = cp.redis_breaker_max_ms > cp.redis_breaker_base_ms
                                       ? cp.redis_breaker_max_ms
                                       : cp.redis_breaker_base_ms;
    svc.fs_params.max_tags = first->cfg->num_tags;
    svc.fs_params.mm_dim = first->cfg->mm_in;
    svc.fs_params.max_seq = cp.max_seq;

    int exit_code = 1;
    http_server *http = NULL;
    featstore *health_fs = NULL;
    svc.models = model_holder_new(first);
    if (!svc.models || metrics_init(&svc.metrics) < 0 || worker_global_init() < 0 ||
        pool_init(cp.score_threads > 1 ? cp.score_threads - 1 : 0, &svc.scorers) < 0) {
        log_error("out of memory at startup");
        goto out;
    }
    metrics_set_model(svc.metrics, first->cfg->name, first->cfg->version);
    metrics_set_precision(svc.metrics, dense_precision_name(precision),
                          dense_precision_exact(precision));
    first->metrics = svc.metrics;
    svc.fs_params.breaker_hook = metrics_breaker;
    svc.fs_params.breaker_hook_arg = svc.metrics;
    featstore_params hfp = svc.fs_params;
    hfp.breaker_hook = NULL; /* the health check's breaker is not a worker's */
    hfp.command_timeout_ms = cp.redis_timeout_ms < 100 ? 100 : cp.redis_timeout_ms;
    if (featstore_open(&hfp, &health_fs, err, sizeof err) < 0) {
        log_error("feature store: %s", err);
        goto out;
    }
    health_check(&svc, health_fs);

    http_params hp = {cp.bind,
                      cp.port,
                      cp.threads,
                      cp.max_pending ? cp.max_pending : 4 * cp.threads,
                      cp.request_timeout_s,
                      cp.receive_timeout_ms,
                      fit_fd_limit(cp.max_connections, cp.threads + cp.score_threads),
                      cp.max_connections_per_ip,
                      cp.worker_nice};
    if (http_start(&svc, &hp, &http, err, sizeof err) < 0) {
        log_error("%s", err);
        goto out;
    }
    log_info("serving %s version %s (%s) on http://%s:%d; redis %s prefix \"%s\"; %d "
             "workers, %d admitted at most, deadline %d ms (max %d), %d connections at "
             "most; scoring split over up to %d threads; precision %s (%s)%s",
             first->cfg->name, first->cfg->version, cp.model, cp.bind, http_port(http), cp.redis,
             cp.redis_prefix, cp.threads, hp.max_pending, svc.deadline_ms, svc.max_deadline_ms,
             hp.connection_limit, cp.score_threads, dense_precision_name(precision),
             qin_model_describe(first->model),
             cp.skip_scoring ? "; SKIP_SCORING: every score is 0 (benchmark floor only)" : "");
    if (!dense_precision_exact(precision))
        log_warn("precision %s is NOT EXACT: %s, so scores differ from the trained model's "
                 "(measured error against fp32 in bench/README.md); --precision fp32 gives "
                 "them to 1e-5", dense_precision_name(precision),
                 dense_precision_what(precision));

    int64_t next_check = clock_now_ns();
    for (;;) {
        int64_t wait = next_check - clock_now_ns();
        if (wait <= 0) {
            health_check(&svc, health_fs);
            log_limit_tick();
            next_check = clock_now_ns() + (int64_t)cp.health_interval_ms * 1000000;
            continue;
        }
        struct timespec ts = {wait / 1000000000, wait % 1000000000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig < 0) continue; /* timeout or EINTR */
        if (sig == SIGHUP) {
            reload(&svc);
            continue;
        }
        log_info("%s: stopping; %d request(s) in flight", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 http_inflight(http));
        break;
    }
    atomic_store(&svc.stopping, 1);
    http_stop(http, SHUTDOWN_GRACE_MS);
    http = NULL;
    exit_code = 0;
    log_info("stopped");
out:
    http_stop(http, 0);
    featstore_close(health_fs);
    pool_free(svc.scorers);
    model_holder_free(svc.models);
    if (svc.metrics) metrics_free(svc.metrics);
    worker_global_free();
    return exit_code;
}

/*
 * metrics.h - the server's counters, gauges and histograms, and their
 * rendering as Prometheus text exposition format 0.0.4 for GET /metrics.
 *
 * Workload: every request updates a handful of series from any of 2..64
 * worker threads; a scraper renders everything every few seconds.  So every
 * update is a relaxed atomic add on a fixed slot (no lock, no allocation, no
 * lookup by string); rendering reads the slots without stopping writers, so
 * a scrape is a consistent-enough view, never a torn number.  The set of
 * series is fixed here (endpoints, Redis operations, histogram buckets),
 * which is what keeps updates that cheap.
 *
 * Series (all prefixed ctr_):
 *   http_requests_total{endpoint,status}        counter
 *   http_request_duration_seconds{endpoint}     histogram
 *   redis_call_duration_seconds{op}             histogram
 *   redis_errors_total{op,kind="timeout|error"} counter
 *   item_cache_{hits,misses,insertions,evictions,expirations}_total  counter
 *   item_cache_entries, item_cache_bytes        gauge
 *   inflight_requests                           gauge
 *   model_info{name,version} 1                  gauge
 *   model_precision{precision,exact} 1          gauge
 *   model_reloads_total{result="ok|failed"}     counter
 *   degraded_responses_total{reason}            counter
 *   scored_candidates_total                     counter
 *   rank_stage_duration_seconds{stage}          histogram (queue, decode,
 *                                               history, items, score)
 *   redis_breaker_open                          gauge (connections whose
 *                                               breaker is open or probing)
 *   redis_breaker_{opens,probes,short_circuits}_total  counter
 *   requests_shed_total{reason="admission|deadline"}   counter
 *   connections_cut_total{reason="receive_deadline"}   counter
 *   feature_set_ready                           gauge (1: marker present
 *                                               and matching the model)
 *   feature_set_loaded_timestamp_seconds        gauge (unix time of the
 *                                               load; 0 when unknown)
 *   process_start_time_seconds                  gauge (unix time)
 *
 * Usage:
 *
 *     metrics *m;  metrics_init(&m);                  // once per process
 *     metrics_inflight_add(m, 1);
 *     ... metrics_http(m, metrics_endpoint_of(url), 200, elapsed_s);
 *     metrics_inflight_add(m, -1);
 *
 *     // GET /metrics
 *     item_cache_stats st;  item_cache_stats_get(cache, &st);
 *     metrics_render(m, &st, &buf);    // Content-Type: METRICS_CONTENT_TYPE
 *
 * Thread-safety: everything except init and free may be called from any
 * thread at any time, including concurrently with metrics_render.
 */
#ifndef CTR_SERVER_METRICS_H
#define CTR_SERVER_METRICS_H

#include <stdint.h>

#include "core/status.h"
#include "proto/buf.h"
#include "server/breaker.h"
#include "server/item_cache.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Endpoints get fixed slots; anything else (typos, scanners) is OTHER, so a
 * client cannot grow the series set by inventing URLs. */
typedef enum metrics_endpoint {
    METRICS_EP_RANK,      /* /v1/rank */
    METRICS_EP_HEALTHZ,   /* /healthz */
    METRICS_EP_READYZ,    /* /readyz */
    METRICS_EP_METRICS,   /* /metrics */
    METRICS_EP_MODELS,    /* /v1/models and /v1/models/... */
    METRICS_EP_OTHER,
    METRICS_EP_COUNT
} metrics_endpoint;

typedef enum metrics_redis_op {
    METRICS_REDIS_GET_USER,
    METRICS_REDIS_GET_ITEMS,
    METRICS_REDIS_PING,
    METRICS_REDIS_OP_COUNT
} metrics_redis_op;

typedef enum metrics_redis_result {
    METRICS_REDIS_OK,
    METRICS_REDIS_TIMEOUT,
    METRICS_REDIS_ERROR
} metrics_redis_result;

/* Distinct degraded-response reasons kept; later ones count as "other". */
#define METRICS_MAX_REASONS 16
/* Model name and version are cut to this many bytes (with the NUL). */
#define METRICS_LABEL_MAX 128

typedef struct metrics metrics;

/* Allocates zeroed metrics and records the process start time (now).
 * CTR_OK or CTR_ENOMEM. */
int metrics_init(metrics **out);
void metrics_free(metrics *m);

/* The endpoint slot for a request path (query string ignored).  Pure. */
metrics_endpoint metrics_endpoint_of(const char *path);

/* One answered HTTP request: its status (100..599; anything else is counted
 * as status="other") and its wall time in seconds. */
void metrics_http(metrics *m, metrics_endpoint ep, int status, double seconds);

/* One Redis call, its wall time, and whether it failed. */
void metrics_redis(metrics *m, metrics_redis_op op, double seconds,
                   metrics_redis_result r);

/* Requests being handled: +1 on arrival, -1 when answered. */
void metrics_inflight_add(metrics *m, int delta);

/* Candidates scored by the model (after a successful forward pass). */
void metrics_scored(metrics *m, uint64_t n);

/* The model being served.  Copies both strings (cut to METRICS_LABEL_MAX
 * bytes); NULL is "".  Takes a mutex: meant for load and reload only. */
void metrics_set_model(metrics *m, const char *name, const char *version);

/* The precision the model's dense layers run in ("fp32", "bf16", "int8")
 * and whether it is exact: ctr_model_precision{precision, exact} 1. */
void metrics_set_precision(metrics *m, const char *precision, int exact);

/* One model reload attempt (ok != 0: succeeded). */
void metrics_reload(metrics *m, int ok);

/* One response answered in degraded form.  `reason` is a short label such
 * as "user_features_missing"; it must have static storage duration (a
 * string literal), because the metrics keep the pointer instead of copying.
 * The first METRICS_MAX_REASONS - 1 distinct reasons get their own series,
 * the rest count as "other". */
void metrics_degraded(metrics *m, const char *reason);

/* Time one rank request spent in a stage (0..METRICS_RANK_STAGES-1, in
 * the order of proto_rank_stage_name). */
#define METRICS_RANK_STAGES 5
void metrics_rank_stage(metrics *m, int stage, double seconds);

/* One breaker event of a feature-store connection (a breaker_hook: pass m
 * as the argument). */
void metrics_breaker(void *m, breaker_event ev);

/* A request answered 503 overloaded: at admission, or because it waited
 * past its deadline in the queue (deadline != 0). */
void metrics_shed(metrics *m, int deadline);

/* A connection closed for not sending its request within the receive
 * deadline. */
void metrics_connection_cut(metrics *m);

/* The health check's view of the feature set: ready (marker present and
 * matching), and its load time in unix seconds (0: unknown). */
void metrics_feature_set(metrics *m, int ready, double loaded_at);

/* Adds the final counters of an item cache about to be freed (after a
 * model reload) to a base, so the *_total series stay monotonic across
 * caches.  Gauges (entries, bytes) are not affected. */
void metrics_cache_retire(metrics *m, const item_cache_stats *final_stats);

/* Appends every series to `out` in text format 0.0.4.  `cache` is the
 * current item cache's stats, or NULL when there is none (no model loaded
 * yet, or caching off): the gauges then read 0 and the counters show only
 * what retired caches counted.  CTR_OK, or CTR_ENOMEM when the buffer could
 * not grow. */
int metrics_render(metrics *m, const item_cache_stats *cache, proto_buf *out);

#endif

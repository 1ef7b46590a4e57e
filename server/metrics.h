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
 * Series (ctr_ prefix, apart from the standard process_* ones; those marked
 * [model] have one series per model served, labelled model="<its name>",
 * the first label):
 *   ctr_http_requests_total{endpoint,status}        counter
 *   ctr_http_request_duration_seconds{endpoint}     histogram
 *   ctr_redis_call_duration_seconds{op}             histogram
 *   ctr_redis_errors_total{op,kind="timeout|error"} counter
 *   ctr_redis_up                                    gauge (1: the last health
 *                                                   check's PING answered)
 *   ctr_item_cache_{hits,misses,insertions,evictions,expirations}_total  counter [model]
 *   ctr_item_cache_entries, ctr_item_cache_bytes    gauge [model]
 *   ctr_inflight_requests                           gauge (HTTP, every endpoint)
 *   ctr_rank_pending_requests                       gauge (rank requests queued
 *                                                   or in work: what admission
 *                                                   bounds)
 *   ctr_rank_pending_requests_limit                 gauge (that bound, max_pending)
 *   ctr_model_info{name,version,arch} 1             gauge [model] (name and
 *                                                   version from the file)
 *   ctr_model_precision{precision,exact} 1          gauge [model] (fp32|bf16|
 *                                                   int8; exact "true" for fp32)
 *   ctr_model_kernel{isa,kernel} 1                  gauge [model] (oneDNN's
 *                                                   instruction set; what runs
 *                                                   the largest dense layer,
 *                                                   per row class)
 *   ctr_model_reloads_total{result="ok|failed"}     counter [model]
 *   ctr_model_last_reload_successful                gauge [model] (1 until a reload fails,
 *                                                   1 again after one succeeds)
 *   ctr_degraded_responses_total{reason}            counter (an answer with two
 *                                                   reasons counts under both)
 *   ctr_rank_degraded_responses_total               counter (answers with at
 *                                                   least one reason, once each)
 *   ctr_scored_candidates_total                     counter [model]
 *   ctr_rank_stage_duration_seconds{stage}          histogram (queue, decode,
 *                                                   history, items, score)
 *   ctr_redis_breaker_open                          gauge (connections whose
 *                                                   breaker is open or probing)
 *   ctr_redis_breaker_{opens,probes,short_circuits}_total  counter
 *   ctr_redis_desync_total                          counter (connections dropped
 *                                                   out of step: a reply that
 *                                                   belonged to no command)
 *   ctr_requests_shed_total{reason="admission|deadline"}   counter
 *   ctr_connections_cut_total{reason="receive_deadline"}   counter
 *   ctr_feature_set_ready                           gauge [model] (1: marker
 *                                                   present and matching the
 *                                                   model, under its prefix)
 *   ctr_feature_set_loaded_timestamp_seconds        gauge [model] (unix time of the
 *                                                   load; 0 when unknown)
 *   ctr_item_changes_applied_total                  counter [model] (cached item
 *                                                   vectors dropped because
 *                                                   ctr-load changed the item)
 *   ctr_item_cache_drops_total                      counter [model] (whole caches
 *                                                   dropped: the change stream
 *                                                   was behind or lost)
 *   ctr_item_change_lag_seconds                     gauge [model] (age of the
 *                                                   newest change when applied)
 * With the history cache on (metrics_history_cache_on; server/store/hcache.h):
 *   ctr_history_cache_{hits,misses,bypassed,insertions,stale_inserts_refused,
 *     evictions,expirations,invalidations,flushes}_total   counter
 *   ctr_history_cache_entries                       gauge
 *   ctr_history_cache_up                            gauge (1: invalidations
 *                                                   flow, lookups may hit)
 * With the impression log on (metrics_impression_log_on):
 *   ctr_impressions_written_total                   counter
 *   ctr_impressions_dropped_total{reason="queue_full|sink_failed|shutdown"}  counter
 *   ctr_impression_log_sink_errors_total            counter
 *   ctr_impression_log_up                           gauge (1: the last write
 *                                                   succeeded)
 *   ctr_impression_log_queue_bytes, ctr_impression_log_queue_limit_bytes  gauge
 *   process_start_time_seconds                      gauge (unix time)
 *   process_cpu_seconds_total                       counter (user + system)
 *   process_resident_memory_bytes                   gauge
 *   process_open_fds, process_max_fds               gauge
 * Redis Cluster mode only (nodes are few: the first METRICS_MAX_NODES node
 * addresses get their own series, later ones share node="other"):
 *   ctr_redis_node_pipelines_total{node}            counter
 *   ctr_redis_node_errors_total{node,kind="timeout|error"}  counter
 *   ctr_redis_node_breaker_opens_total{node}        counter
 *   ctr_redis_node_short_circuits_total{node}       counter
 *   ctr_redis_cluster_map_refreshes_total{result="ok|failed"}  counter
 *   ctr_redis_cluster_redirects_total{kind="moved|ask"}        counter
 * The process_* series are the standard ones of Prometheus client libraries
 * (read from /proc at each scrape; absent where /proc is not).  Label values
 * come from fixed sets (endpoints, status codes, operations, stages, the
 * degraded reasons of proto/degraded.h) or from the settings and model files (model, name, version, arch): never
 * from a request.  deploy/prometheus/ holds the recording and alert rules
 * built on these names, deploy/grafana/ the dashboard: rename with them.
 *
 * Usage:
 *
 *     metrics *m;  metrics_init(&m);                  // once per process
 *     int qin = metrics_add_model(m, "qin");          // at startup, each model
 *     metrics_inflight_add(m, 1);
 *     ... metrics_http(m, metrics_endpoint_of(url), 200, elapsed_s);
 *     metrics_inflight_add(m, -1);
 *
 *     // GET /metrics: each model's current cache, in model order
 *     item_cache_stats st[1];  item_cache_stats_get(cache, &st[0]);
 *     metrics_render(m, st, 1, &buf);  // Content-Type: METRICS_CONTENT_TYPE
 *
 * Thread-safety: everything except init, free and metrics_add_model may be
 * called from any thread at any time, including concurrently with
 * metrics_render; metrics_add_model belongs to startup, before any other
 * thread uses m.
 */
#ifndef CTR_SERVER_METRICS_H
#define CTR_SERVER_METRICS_H

#include <stdint.h>

#include "core/base/status.h"
#include "proto/buf.h"
#include "proto/degraded.h"
#include "server/store/breaker.h"
#include "server/store/featstore.h"
#include "server/implog.h"
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

/* Models with series of their own. */
#define METRICS_MAX_MODELS 8
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

/* Registers a model served under `label` (copied, cut to
 * METRICS_LABEL_MAX bytes) and returns its index for the [model] calls
 * below (models are numbered 0, 1, ... in the order added), or -1 when
 * METRICS_MAX_MODELS are registered already.  Startup only. */
int metrics_add_model(metrics *m, const char *label);

/* In the [model] calls, an index that was not returned by
 * metrics_add_model is ignored. */

/* Candidates scored by model (after a successful forward pass). */
void metrics_scored(metrics *m, int model, uint64_t n);

/* The file a model serves now.  Copies the strings (cut to
 * METRICS_LABEL_MAX bytes); NULL is "".  Takes a mutex: meant for load and
 * reload only. */
void metrics_set_model(metrics *m, int model, const char *name, const char *version,
                       const char *arch);

/* The precision model's dense layers run in ("fp32", "bf16", "int8") and
 * whether it is exact: ctr_model_precision{model, precision, exact} 1.
 * Takes a mutex: startup only. */
void metrics_set_precision(metrics *m, int model, const char *precision, int exact);

/* oneDNN's instruction set on this host (dense_cpu_isa) and what computes
 * the model's largest dense layer (engine_model_describe):
 * ctr_model_kernel{model, isa, kernel} 1.  Takes a mutex: startup only. */
void metrics_set_kernel(metrics *m, int model, const char *isa, const char *kernel);

/* One reload attempt of model (ok != 0: succeeded); also sets its
 * ctr_model_last_reload_successful. */
void metrics_reload(metrics *m, int model, int ok);

/* One response answered in degraded form for `reason` (a value outside
 * the enum is ignored); its series appears once counted. */
void metrics_degraded(metrics *m, proto_degraded reason);

/* One rank answer carrying at least one degradation reason (besides
 * metrics_degraded for each reason). */
void metrics_degraded_response(metrics *m);

/* Rank requests admitted and not yet answered by a worker: +1 at
 * admission, -1 when the worker is done. */
void metrics_pending_add(metrics *m, int delta);

/* The admission bound (max_pending), set once at start. */
void metrics_set_pending_limit(metrics *m, int limit);

/* Whether the health check's last PING was answered. */
void metrics_redis_up(metrics *m, int up);

/* Time one rank request spent in a stage (0..METRICS_RANK_STAGES-1, in
 * the order of proto_rank_stage_name). */
#define METRICS_RANK_STAGES 5
void metrics_rank_stage(metrics *m, int stage, double seconds);

/* One breaker event of a feature-store connection (a breaker_hook: pass m
 * as the argument). */
void metrics_breaker(void *m, breaker_event ev);

/* One feature-store connection dropped out of step (a featstore
 * desync_hook: pass m as the argument). */
void metrics_redis_desync(void *m);

/* Redis Cluster nodes with series of their own (then node="other"). */
#define METRICS_MAX_NODES 32

/* featstore_node_hooks for a cluster featstore: pass m as the argument.
 * metrics_node_id gives the slot of the node "host:port" (registered on
 * first sight, under a lock); metrics_node_event counts one event (id -1:
 * the cluster-wide events).  Thread-safe. */
int metrics_node_id(void *m, const char *addr);
void metrics_node_event(void *m, int id, featstore_node_event ev);

/* A request answered 503 overloaded: at admission, or because it waited
 * past its deadline in the queue (deadline != 0). */
void metrics_shed(metrics *m, int deadline);

/* A connection closed for not sending its request within the receive
 * deadline. */
void metrics_connection_cut(metrics *m);

/* The health check's view of a model's feature set: ready (marker present
 * and matching), and its load time in unix seconds (0: unknown). */
void metrics_feature_set(metrics *m, int model, int ready, double loaded_at);

/* The health check applied a model's item changes: `applied` cached
 * vectors dropped for changed items, `dropped` whole caches dropped
 * (0 or 1), lag_s the age of the newest change applied (< 0: leave the
 * gauge as it is). */
void metrics_item_changes(metrics *m, int model, uint64_t applied, int dropped, double lag_s);

/* The impression log is on, with a queue of limit_bytes: its series are
 * rendered.  Startup only. */
void metrics_impression_log_on(metrics *m, uint64_t limit_bytes);

/* The users' history cache is on: its series are rendered from its
 * counters (c outlives every render).  Startup only. */
struct hcache;
void metrics_history_cache_on(metrics *m, const struct hcache *c);

/* An implog_hook: pass m as the argument. */
void metrics_impression_event(void *m, implog_event ev, uint64_t n);

/* Adds the final counters of a model's item cache about to be freed
 * (after a reload) to a base, so the *_total series stay monotonic across
 * caches.  Gauges (entries, bytes) are not affected. */
void metrics_cache_retire(metrics *m, int model, const item_cache_stats *final_stats);

/* Appends every series to `out` in text format 0.0.4.  `caches` holds the
 * current item cache stats of models 0..ncaches-1 (NULL, or fewer than the
 * models: the others have none, so their gauges read 0 and their counters
 * show only what retired caches counted).  CTR_OK, or CTR_ENOMEM when the
 * buffer could not grow. */
int metrics_render(metrics *m, const item_cache_stats *caches, int ncaches, proto_buf *out);

#endif

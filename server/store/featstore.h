/*
 * featstore.h - the feature store client: one worker's connection to Redis,
 * holding user histories and item features as the binary values of
 * proto/features.h (layout and keys: deploy/REDIS_SCHEMA.md).
 *
 * Workload: every rank request makes one read of the user's history and
 * one pipelined read of the items it has not cached (a few hundred keys,
 * ~540 bytes each), under a latency budget of a few milliseconds; ctr-load
 * writes millions of values in pipelined batches.  Redis may restart, hang
 * or be unreachable at any time and the service must keep answering on
 * time (without features), so:
 *
 *   - every read takes the caller's absolute deadline (clock.h; the rest of
 *     the request's budget) and also stops at command_timeout_ms, whichever
 *     comes first; the deadline covers the whole round trip, not each read:
 *     the socket is non-blocking and polled, so a server that trickles
 *     bytes cannot hold a worker longer;
 *   - a circuit breaker (breaker.h) per connection: after a timeout, a
 *     failed connect or an unavailable reply, calls fail at once with
 *     CTR_EBACKEND for a back-off period (breaker_base_ms doubling to
 *     breaker_max_ms, with jitter); then one call probes, and its success
 *     closes the breaker.  A hung Redis costs microseconds per call, and
 *     one bounded call per connection per period;
 *   - reads are bounded: a history is read as its header and its last
 *     `keep` ids (GETRANGE), never whole, and an item value is read up to
 *     one byte past the longest the schema allows, so a huge value costs
 *     no more than a normal one and is refused as malformed;
 *   - featstore_open never connects; the first call does.  A read on a
 *     kept connection that turns out closed by the other end (Redis
 *     restarted, an idle timeout) is sent once more on a new connection,
 *     within the same deadline, so a restart does not fail the next request
 *     of every worker;
 *   - a call that timed out drops its connection, since the late reply
 *     would otherwise answer the next command.
 *
 * A call takes at most min(deadline, connect + command timeouts).
 *
 * Redis Cluster (params.cluster set; featstore_cluster.c, routing in
 * rcluster.h): the same calls, the same deadlines and degraded answers,
 * over every node of the cluster:
 *
 *   - the slot map comes from CLUSTER SLOTS, asked of a seed (then of any
 *     node the map knows) on the first call; it is asked again when a call
 *     saw it stale (a MOVED, a node that failed, a slot with no master, a
 *     CLUSTERDOWN answer), at most every cluster_refresh_ms, and every
 *     FEATSTORE_CLUSTER_MAX_AGE_MS anyway (replicas added);
 *   - one connection per node, each with its own breaker (a dead master
 *     costs microseconds per call, not a timeout, while the healthy nodes
 *     keep answering), the same connect and command timeouts, and the same
 *     one resend of reads whose reused connection turned out closed;
 *   - a call's keys are grouped by node, one pipeline per node, every node
 *     in flight at once (rcluster_exec); MOVED and ASK are followed within
 *     the call;
 *   - featstore_get_items answers per item: items whose node failed get
 *     found = 0 and status CTR_EBACKEND or CTR_ETIMEOUT while the others
 *     are decoded, and the call returns CTR_OK unless no item could be read
 *     at all (then the first failure, as for one node);
 *   - reads go to replicas with read_replicas (READONLY; a replica that
 *     cannot be reached sends its reads to the master); writes and the
 *     feature-set marker go to masters;
 *   - featstore_ping asks a node for the slot map: CTR_OK when some node
 *     answers with one (the cluster is reachable, even when some slots are
 *     not served).
 *
 * Replies out of step: every command is answered by exactly one reply of
 * the types it can answer (rconn.h).  A reply of another type, bytes left
 * over after a pipeline's replies, or bytes arriving on a connection while
 * it is idle mean that a reply no command asked for was received (a
 * misbehaving proxy or server): the connection is dropped, the event
 * counted (stats.desyncs, desync_hook) and logged (rate-limited), and the
 * call fails with CTR_EBACKEND when its own replies were involved (on a
 * cluster, the items of that node; the others are read), so that nothing
 * read out of step is decoded; bytes found before a call sends anything
 * only cost a new connection.  (What rconn.h cannot see: a stray reply
 * whose displaced last byte arrives after the call's replies were read; the
 * next call sees it.)
 *
 * AUTH: with `password` set (and `user`, for an ACL user), every new
 * connection authenticates before its first command (one more round trip
 * per connection, within the connect timeout).  The password is copied and
 * never written into a message, a log or a metric.
 *
 * Usage (one per worker thread):
 *
 *     featstore_params p;
 *     featstore_default_params(&p);
 *     p.addr = "127.0.0.1:6379";  p.max_tags = 5;  p.mm_dim = 128;
 *     featstore *fs;
 *     if (featstore_open(&p, &fs, err, sizeof err) < 0) ...   // bad params
 *     int64_t deadline = clock_now_ns() + 5000000;            // 5 ms budget
 *     rc = featstore_get_user(fs, "u1", 64, deadline, &req_arena, &ids, &n, err, sizeof err);
 *     rc = featstore_get_items(fs, ids, n, deadline, &req_arena, items, err, sizeof err);
 *     featstore_close(fs);
 *
 * SIGPIPE: hiredis writes with write(2), so a write to a connection Redis
 * has closed raises SIGPIPE.  The process must ignore it
 * (signal(SIGPIPE, SIG_IGN), as servers do); the write then fails with EPIPE
 * and the call returns CTR_EBACKEND.
 *
 * Memory: decoded values live in the caller's arena (request lifetime);
 * keys and argument vectors are built there too.  hiredis itself allocates
 * its command buffer and reply objects with malloc; they are freed before
 * each call returns.
 *
 * Thread-safety: a featstore is not thread-safe; give each worker its own.
 * Different featstores may be used from different threads at once.
 *
 * Inside (server/store/), bottom up: rconn.h, one Redis connection under a
 * deadline; rcluster.h, Redis Cluster routing; the two backends behind one
 * table of functions (featstore_backend.h): featstore_single.c (one
 * Redis) and featstore_cluster.c (a cluster); and featstore.c, this
 * interface: keys, commands, and decoding the replies.
 */
#ifndef CTR_SERVER_FEATSTORE_H
#define CTR_SERVER_FEATSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "core/base/status.h"
#include "server/store/breaker.h"
#include "server/store/hcache.h"

typedef struct featstore featstore;

typedef struct featstore_params {
    const char *addr;           /* "host:port" ("[v6addr]:port" too) or a
                                   unix socket path (starts with '/');
                                   default "127.0.0.1:6379".  Use a numeric
                                   address: names are resolved on every
                                   connect.  Copied by featstore_open. */
    int connect_timeout_ms;     /* a connect may take this long (50) */
    int command_timeout_ms;     /* a whole call, sent to answered (20) */
    int breaker_base_ms;        /* first open period of the breaker (100) */
    int breaker_max_ms;         /* longest open period (400); a connection
                                   probes again within 1.25 x this of Redis
                                   returning */
    breaker_hook breaker_hook;  /* breaker events, for metrics (NULL) */
    void *breaker_hook_arg;
    const char *prefix;         /* key prefix ("ctr:"); copied */
    int max_tags;               /* tag slots of the model (5): item values
                                   with more tags are malformed */
    int mm_dim;                 /* embedding width of the model (128): item
                                   values of another width are malformed */
    int cate;                   /* 1: the model reads a category (TIN):
                                   item values without one are malformed
                                   (0) */
    int max_seq;                /* longest history returned (1000): longer
                                   ones keep their most recent max_seq ids */
    const char *cluster;        /* Redis Cluster seeds, "host:port[,host:
                                   port...]" (NULL or "": one node, addr);
                                   copied */
    int read_replicas;          /* cluster: reads from replicas (0) */
    int cluster_refresh_ms;     /* cluster: least time between two slot-map
                                   refreshes of one featstore (100) */
    const char *user;           /* AUTH user (ACL; NULL or "": the default
                                   user); copied */
    const char *password;       /* AUTH password (NULL or "": no AUTH);
                                   copied, never logged */
    void (*desync_hook)(void *arg); /* a connection dropped out of step (see
                                   "Replies out of step"), for metrics
                                   (NULL); called from the featstore's
                                   thread */
    void *desync_hook_arg;
    const struct featstore_node_hooks *node_hooks;  /* cluster: per-node
                                   events, for metrics (NULL) */
    struct hcache *history_cache;   /* users' histories cached in the
                                   process and kept fresh by Redis
                                   (hcache.h), shared by the featstores
                                   given it; not owned.  NULL: none.
                                   Ignored in cluster mode. */
} featstore_params;

/* A cluster's slot map is asked again at least this often. */
#define FEATSTORE_CLUSTER_MAX_AGE_MS 10000

/* Per-node events of a cluster featstore (node ids come from hooks.node;
 * id -1: the cluster as a whole). */
typedef enum featstore_node_event {
    FEATSTORE_NODE_PIPELINE,        /* a pipeline sent to the node */
    FEATSTORE_NODE_ERROR,           /* its connection failed, or it answered
                                       an error (LOADING, NOAUTH...) */
    FEATSTORE_NODE_TIMEOUT,         /* no answer in time */
    FEATSTORE_NODE_BREAKER_OPENED,  /* its breaker opened */
    FEATSTORE_NODE_SHORT_CIRCUIT,   /* a call refused by its open breaker */
    FEATSTORE_NODE_MOVED,           /* id -1: MOVED replies followed */
    FEATSTORE_NODE_ASK,             /* id -1: ASK replies followed */
    FEATSTORE_NODE_REFRESH,         /* id -1: slot map refreshed */
    FEATSTORE_NODE_REFRESH_FAILED,  /* id -1: no node gave a slot map */
} featstore_node_event;

typedef struct featstore_node_hooks {
    /* A small id for the node "host:port", asked once per node a featstore
     * learns; -1: that node's events are dropped.  Called from the
     * featstore's thread; must be thread-safe across featstores. */
    int (*node)(void *arg, const char *addr);
    void (*event)(void *arg, int id, featstore_node_event ev);
    void *arg;
} featstore_node_hooks;

/* One item of featstore_get_items.  When found, the arrays live in the
 * arena given to that call. */
typedef struct featstore_item {
    int found;                  /* 1: tags and mm below are valid */
    int status;                 /* CTR_OK (found), CTR_ENOTFOUND (no key,
                                   or a key that is not a string),
                                   CTR_EFORMAT (value malformed), or in
                                   cluster mode CTR_EBACKEND / CTR_ETIMEOUT
                                   (the item's node failed; the others
                                   were read) */
    int32_t *tags;              /* num_tags ids (fewer than max_tags: the
                                   rest are padding); NULL when none */
    int num_tags;
    float *mm;                  /* mm_dim floats, 64-byte aligned */
    int mm_dim;
    int has_cate;               /* 1: the value carries a category */
    int32_t cate;               /* its category id (0 when has_cate is 0) */
} featstore_item;

/* Counters since featstore_open, for tests and metrics. */
typedef struct featstore_stats {
    uint64_t round_trips;       /* commands or pipelines sent to Redis */
    uint64_t failures;          /* calls that returned CTR_EBACKEND or
                                   CTR_ETIMEOUT (fast failures included) */
    uint64_t timeouts;          /* of which CTR_ETIMEOUT */
    uint64_t fast_failures;     /* of which refused by the open breaker */
    uint64_t breaker_opens;     /* closed -> open transitions */
    uint64_t connect_attempts;
    uint64_t connects;          /* attempts that succeeded */
    uint64_t retries;           /* reads sent again because their reused
                                   connection turned out closed */
    uint64_t items_requested;   /* ids asked of featstore_get_items */
    uint64_t items_missing;     /* of which without a key */
    uint64_t items_malformed;   /* of which with a malformed value */
    uint64_t users_malformed;   /* featstore_get_user calls: CTR_EFORMAT */
    uint64_t items_unavailable; /* cluster: items whose node failed (the
                                   call still answered the others) */
    uint64_t map_refreshes;     /* cluster: slot maps read */
    uint64_t map_refresh_failures;
    uint64_t moved, asked;      /* cluster: redirects followed */
    uint64_t replica_reroutes;  /* cluster: replica reads sent to the master */
    uint64_t desyncs;           /* connections dropped out of step (replies
                                   that belonged to no command) */
} featstore_stats;

/* Fills *p with the defaults above.  Thread-safe. */
void featstore_default_params(featstore_params *p);

/* Checks the params and makes a featstore; does not connect, so Redis being
 * down is not an error here.  On success *out owns the featstore (free with
 * featstore_close).  CTR_EINVAL for a bad address, timeout or limit;
 * CTR_ENOMEM.  Thread-safe. */
int featstore_open(const featstore_params *p, featstore **out, char *err,
                   size_t errlen);

/* Closes the connection and frees fs (NULL is fine). */
void featstore_close(featstore *fs);

/* Reads take `deadline_ns`, an absolute time of clock_now_ns() (0: none);
 * the call also stops at command_timeout_ms from its start.  A deadline
 * already past fails at once with CTR_ETIMEOUT and does not count against
 * the breaker. */

/* CTR_OK when Redis answers PING; otherwise CTR_EBACKEND (cannot connect,
 * breaker open, connection or protocol error, an error reply such as
 * LOADING) or CTR_ETIMEOUT. */
int featstore_ping(featstore *fs, int64_t deadline_ns, char *err, size_t errlen);

/* The history of user_id (a NUL-terminated string; an integer id is looked
 * up by its decimal text), oldest first: its most recent min(count, keep)
 * ids (keep < 1: max_seq), read as the value's header and tail in one round
 * trip (STRLEN, two GETRANGE), so a long history costs no more than keep
 * ids.  The header, the length and the ids read are checked.  *ids lives
 * in the arena a; *ids is NULL when *n is 0.
 * With params.history_cache, a user found there is answered without a
 * round trip, and what a read finds (a history, or no key) is offered to
 * it (hcache.h says when it is taken and how it is kept fresh).
 * Returns CTR_OK (found; the history may be empty), CTR_ENOTFOUND (no such
 * key: *n = 0, *ids = NULL), CTR_EFORMAT (the key holds a malformed value
 * or is not a string: *n = 0), CTR_EBACKEND (cannot connect, breaker open,
 * connection or protocol error, error reply), CTR_ETIMEOUT, CTR_ENOMEM
 * (arena). */
int featstore_get_user(featstore *fs, const char *user_id, int keep, int64_t deadline_ns,
                       arena *a, int64_t **ids, int *n, char *err, size_t errlen);

/* What featstore_get_user_cached found out when the cache did not
 * answer, for the read that follows: the key (in the arena), and the
 * stamp of a miss, so that what the read finds is offered to the cache
 * without a second lookup. */
typedef struct featstore_user_probe {
    const char *user_id;
    char *key;                  /* NULL: user_id NULL or the arena full */
    size_t klen;
    int keep;
    int cached;                 /* hcache_result */
    hcache_stamp stamp;
} featstore_user_probe;

/* The history of user_id from params.history_cache alone, never a round
 * trip: 1 when the cache answers (*status CTR_OK with *ids / *n as
 * featstore_get_user gives them, or CTR_ENOTFOUND: cached as having no
 * value), 0 when it does not (no cache, not cached, its link down, arena
 * full): then read with featstore_get_user_read(fs, probe, ...). */
int featstore_get_user_cached(featstore *fs, const char *user_id, int keep, arena *a,
                              int64_t **ids, int *n, int *status, featstore_user_probe *probe);

/* featstore_get_user's read from Redis after featstore_get_user_cached
 * did not answer (probe as it left it; same arena): the same results. */
int featstore_get_user_read(featstore *fs, const featstore_user_probe *probe, int64_t deadline_ns,
                            arena *a, int64_t **ids, int *n, char *err, size_t errlen);

/* Features of n items in one round trip (no round trip when n is 0):
 * out[i] for ids[i] (duplicates allowed).  Each value is read up to one
 * byte past the longest item value the schema allows (max_tags, mm_dim,
 * cate), so a longer one is refused as malformed without being read whole;
 * with cate set, a value without a category is malformed too.
 * Missing and malformed items are not errors: out[i].found is 0 and
 * out[i].status says why, and the stats count them; err then holds a note
 * on the first malformed value (err is left empty when none was).  In
 * cluster mode, items of a node that failed are not errors either when
 * other items were read (status CTR_EBACKEND / CTR_ETIMEOUT; err then
 * says why the first one failed).  Returns
 * CTR_OK, or for the whole call CTR_EBACKEND / CTR_ETIMEOUT / CTR_ENOMEM
 * (arena) / CTR_EINVAL (n < 0), in which case out[] is unspecified. */
int featstore_get_items(featstore *fs, const int64_t *ids, int n, int64_t deadline_ns,
                        arena *a, featstore_item *out, char *err, size_t errlen);

/* The feature-set marker <prefix>meta that ctr-load writes last (see
 * proto/meta.h), at most FEATSTORE_META_MAX bytes (a longer value is
 * CTR_EFORMAT), copied into buf (cap bytes, NUL-terminated); *len gets its
 * length.  CTR_OK, CTR_ENOTFOUND (no marker), or as featstore_ping. */
#define FEATSTORE_META_MAX 4096
int featstore_get_meta(featstore *fs, int64_t deadline_ns, char *buf, size_t cap,
                       size_t *len, char *err, size_t errlen);

/* Queues SET <prefix>meta (ctr-load; sent by featstore_flush). */
int featstore_put_meta(featstore *fs, const void *value, size_t len, char *err,
                       size_t errlen);

/* The breaker's state (breaker.h), for tests and /metrics; in cluster
 * mode the most open of the nodes' breakers. */
breaker_state featstore_breaker_state(const featstore *fs);

/* --- Writing (ctr-load) ----------------------------------------------- */

/* Queue SET <prefix>i:<item_id> / SET <prefix>u:<user_id> of an encoded
 * value (features_item_encode / features_user_encode; the bytes are copied
 * at once).  Nothing is sent until featstore_flush; queue a batch (a few
 * hundred) and flush.  Connects if needed: CTR_EBACKEND when it cannot
 * (the queue is then empty), otherwise CTR_OK (CTR_ENOMEM). */
int featstore_put_item(featstore *fs, int64_t item_id, const void *value,
                       size_t len, char *err, size_t errlen);
int featstore_put_user(featstore *fs, const char *user_id, const void *value,
                       size_t len, char *err, size_t errlen);

/* Sends the queued SETs and reads every answer, all within one
 * command_timeout_ms.  CTR_OK when every SET succeeded; CTR_EBACKEND (an
 * error reply, e.g. OOM, or a broken connection) or CTR_ETIMEOUT, with
 * which SETs are stored unknown.  The queue is empty afterwards. */
int featstore_flush(featstore *fs, char *err, size_t errlen);

/* Number of SETs queued and not yet flushed. */
int featstore_pending(const featstore *fs);

/* --- Appends and item changes (the Redis Functions library `ctr`) ------
 *
 * deploy/redis/ctr.lua (deploy/REDIS_SCHEMA.md): ctr_append_packed
 * appends to user values, ctr_item_changes records changed
 * items on <prefix>item-changes.  These calls are not queued: each is one
 * round trip (per master), within command_timeout_ms, on the masters only,
 * and never sent twice (an append repeated would duplicate ids).  They must
 * not be mixed with queued SETs: flush first. */

/* FUNCTION LOAD REPLACE of the library's source (len bytes) on the one
 * Redis, or on every master of a cluster (replicas follow by
 * replication).  CTR_OK; CTR_EBACKEND (a node cannot be reached, or
 * refuses: err says which and why, e.g. a Redis older than 7 without
 * FUNCTION), CTR_ETIMEOUT. */
int featstore_load_functions(featstore *fs, const void *src, size_t len, char *err,
                             size_t errlen);

/* Appends to n users' histories at once: users[i] (as in
 * featstore_get_user) gets counts[i] >= 1 ids, the next ones of ids[]
 * (each 0..INT32_MAX, oldest first), and keeps max_seq (>= 1) from now on.
 * One node: one FCALL ctr_append_packed per call; a cluster: one per
 * user (keys of different slots cannot share one), pipelined per master.  Per user, status[i]:
 * CTR_OK (held[i], when held is not NULL, gets the ids the value holds
 * afterwards), CTR_EFORMAT (the key holds something that is not a user
 * value: left as it was; err notes the first), or in cluster mode
 * CTR_EBACKEND / CTR_ETIMEOUT (its node failed: appended or not,
 * unknown).  Returns CTR_OK when every user was answered; else the call's
 * failure (one node: nothing is known of any user), CTR_EINVAL (bad
 * arguments), CTR_ENOMEM (arena a, which holds the commands). */
int featstore_append(featstore *fs, int n, const char *const *users, const int *counts,
                     const int64_t *ids, int max_seq, arena *a, int *status, int64_t *held,
                     char *err, size_t errlen);

/* Records that the items ids[0..n) (n >= 1) changed: one entry on
 * <prefix>item-changes, the stream capped near maxlen entries; *gen gets
 * its generation: one more than the stream's last entry's, or than floor
 * (the generation known reached: the marker's) when that is higher.
 * CTR_OK, CTR_EFORMAT (the key is not such a stream), or as
 * featstore_ping. */
int featstore_record_item_changes(featstore *fs, const int64_t *ids, int n, long maxlen,
                                  uint64_t floor, uint64_t *gen, char *err, size_t errlen);

/* One entry of <prefix>item-changes. */
typedef struct featstore_change {
    char id[48];                /* the stream entry's id, "<ms>-<seq>" */
    uint64_t ms;                /* its time (Redis's clock), unix ms */
    uint64_t gen;               /* its generation */
    int64_t *ids;               /* n changed items; in the arena */
    int n;
} featstore_change;

/* The entries of <prefix>item-changes after the entry `after` (exclusive),
 * at most max (>= 1), oldest first; with after NULL or "", the last entry
 * only (where the stream ends).  *n gets how many (0: none, or no stream).
 * Read from masters (replicas when a master cannot answer).  CTR_OK;
 * CTR_EFORMAT (the key is not a stream, or an entry is not one
 * ctr_item_changes writes); otherwise as featstore_ping. */
int featstore_get_item_changes(featstore *fs, const char *after, int max, int64_t deadline_ns,
                               arena *a, featstore_change *out, int *n, char *err,
                               size_t errlen);

/* Copies the counters into *st. */
void featstore_stats_get(const featstore *fs, featstore_stats *st);

/* stats.round_trips alone (whether a call went to Redis). */
uint64_t featstore_round_trips(const featstore *fs);

/* Reads a password from the first line of the file at path (a trailing
 * "\n" or "\r\n" dropped) into buf (cap bytes, NUL-terminated).
 * CTR_OK; CTR_EIO (unreadable: err names the file and the reason, never
 * its content); CTR_EINVAL (empty, or longer than cap - 1).  Thread-safe. */
int featstore_password_file(const char *path, char *buf, size_t cap, char *err,
                            size_t errlen);

#endif

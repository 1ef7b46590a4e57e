/*
 * featstore_internal.h - what featstore.c and its Redis Cluster backend
 * (featstore_cluster.c) share; not part of the feature store's interface
 * (featstore.h), and included by those two files only.
 *
 * featstore.c owns the interface: keys, commands, reply decoding, the
 * single-node connection.  featstore_cluster.c runs the same commands on a
 * Redis Cluster: slot map, one connection and breaker per node, pipelines
 * per node (rcluster.h), writes queued for ctr-load.  Both connect (and
 * authenticate) with featstore_connect.
 *
 * Thread-safety: as featstore.h (one featstore_cluster per featstore, used
 * by one thread at a time).
 */
#ifndef CTR_SERVER_FEATSTORE_INTERNAL_H
#define CTR_SERVER_FEATSTORE_INTERNAL_H

#include <stdint.h>

#include "core/base/arena.h"
#include "server/store/breaker.h"
#include "server/store/featstore.h"
#include "server/store/rcluster.h"

struct redisContext;
struct redisReply;

/* A non-blocking connection to host:port (or the unix socket `unix_path`
 * when host is NULL), connected and, when p->password is set,
 * authenticated (AUTH [user] password), by min(deadline_ns, now +
 * p->connect_timeout_ms).  On CTR_OK *out is the context (redisFree).
 * CTR_EBACKEND (refused, timed out, AUTH refused: err says which, never
 * with the password), with *out NULL.  Counts attempts and connects in
 * *st. */
int featstore_connect(const featstore_params *p, const char *host, int port,
                      const char *unix_path, int64_t deadline_ns, featstore_stats *st,
                      struct redisContext **out, char *err, size_t errlen);

/* 1 when r is a WRONGTYPE error reply (the key holds another type: data
 * this service did not write, so malformed, not an outage). */
int featstore_is_wrongtype(const struct redisReply *r);

/* --- The Redis Cluster backend ------------------------------------------- */

typedef struct featstore_cluster featstore_cluster;

/* Checks p->cluster (seeds) and makes the backend; does not connect.
 * Counters go to *st (the featstore's, which outlives the backend).
 * CTR_EINVAL (bad seed list), CTR_ENOMEM. */
int featstore_cluster_open(const featstore_params *p, featstore_stats *st,
                           featstore_cluster **out, char *err, size_t errlen);
void featstore_cluster_close(featstore_cluster *fc);

/* Where featstore_cluster_read sends reads. */
enum {
    FEATSTORE_ROUTE_DEFAULT,        /* replicas with read_replicas, else masters */
    FEATSTORE_ROUTE_MASTER,
    FEATSTORE_ROUTE_REPLICA         /* a replica; its master if none answers */
};

/* n single-key read commands, on the node each key's slot routes to
 * (FEATSTORE_ROUTE_*), within
 * min(deadline_ns, command_timeout_ms).  status[i] CTR_OK: replies[i] is
 * the answer (the caller frees it; never an error reply other than
 * WRONGTYPE); otherwise CTR_EBACKEND or CTR_ETIMEOUT and replies[i] NULL.
 * Returns CTR_OK when every command was answered, else the first failure
 * (err says why); CTR_EINVAL, CTR_ENOMEM (arena: nothing is held).  A
 * deadline already past fails every command with CTR_ETIMEOUT at once. */
int featstore_cluster_read(featstore_cluster *fc, int n, const rcluster_cmd *cmds,
                           int route, int64_t deadline_ns, arena *a,
                           struct redisReply **replies, int *status, char *err,
                           size_t errlen);

/* Reads the slot map from some node: CTR_OK when one answered with a map
 * (kept for the next calls); CTR_EBACKEND / CTR_ETIMEOUT otherwise. */
int featstore_cluster_ping(featstore_cluster *fc, int64_t deadline_ns, char *err,
                           size_t errlen);

/* Queues a write (SET key value): copied at once, sent by flush. */
int featstore_cluster_put(featstore_cluster *fc, const char *key, size_t klen,
                          const void *value, size_t len, char *err, size_t errlen);

/* Sends the queued writes, one pipeline per master, all in flight at once,
 * within command_timeout_ms.  CTR_OK when each was answered OK; otherwise
 * CTR_EBACKEND / CTR_ETIMEOUT (which writes are stored unknown).  The
 * queue is empty afterwards. */
int featstore_cluster_flush(featstore_cluster *fc, char *err, size_t errlen);
int featstore_cluster_pending(const featstore_cluster *fc);

/* The most open of the nodes' breakers; their openings summed. */
breaker_state featstore_cluster_breaker_state(const featstore_cluster *fc);
uint64_t featstore_cluster_breaker_opens(const featstore_cluster *fc);

#endif

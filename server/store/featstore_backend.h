/*
 * featstore_backend.h - what a feature-store backend gives the front end
 * (featstore.c): one table of functions, as core/arch.h does for model
 * architectures.  Internal to server/store/: callers use featstore.h.
 *
 * The front end owns the interface (featstore.h): parameters, keys,
 * commands, and decoding the replies into histories and item features.  A
 * backend owns the connections: where each command goes, connecting and
 * authenticating (rconn.h), timeouts, circuit breakers, the one resend of
 * reads whose reused connection turned out closed, and the write queue of
 * ctr-load.  Two today:
 *
 *   featstore_single_backend    one Redis (featstore_single.c): one
 *                               connection and breaker; a call is all or
 *                               nothing;
 *   featstore_cluster_backend   a Redis Cluster (featstore_cluster.c,
 *                               routing in rcluster.h): a connection and
 *                               breaker per node; a call answers per
 *                               command.
 *
 * A backend counts what it does in the front end's featstore_stats (round
 * trips, failures, timeouts, fast failures, connects, retries, desyncs,
 * and the cluster's counters); the front end counts items and users.
 *
 * Thread-safety: as featstore.h (a backend belongs to one featstore, used
 * by one thread at a time).
 */
#ifndef CTR_SERVER_FEATSTORE_BACKEND_H
#define CTR_SERVER_FEATSTORE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "server/store/breaker.h"
#include "server/store/featstore.h"
#include "server/store/rconn.h"

struct redisReply;

/* Where a backend sends reads (a cluster's choice; one node ignores it). */
typedef enum featstore_route {
    FEATSTORE_ROUTE_DEFAULT,        /* replicas with read_replicas, else masters */
    FEATSTORE_ROUTE_MASTER_FIRST,   /* the master; the replica when the master
                                       cannot answer (the feature-set marker:
                                       during a failover it has not changed) */
    FEATSTORE_ROUTE_MASTER          /* the master only: commands that write
                                       (FCALL of the Redis Functions library)
                                       sent through `read` for their replies */
} featstore_route;

typedef struct featstore_backend {
    /* 1 when a command may only name keys of one hash slot (a cluster):
     * the front end then sends a multi-key command one key at a time. */
    int key_per_command;
    /* Checks the backend's part of p (address or seeds) and makes it; does
     * not connect.  p and *st outlive the backend (p's strings are the
     * front end's copies).  CTR_EINVAL (err says why), CTR_ENOMEM. */
    int (*open)(const featstore_params *p, featstore_stats *st, void **impl, char *err,
                size_t errlen);
    void (*close)(void *impl);

    /* n read commands, each with one key (argv[key_at]), within
     * min(deadline_ns, command_timeout_ms).  status[i] CTR_OK: replies[i]
     * answers cmds[i] (the caller frees it): of a type in cmds[i].expect,
     * or a WRONGTYPE error reply (malformed data, not an outage), never
     * another error reply; a connection out of step (rconn.h) is dropped,
     * counted (stats.desyncs, p->desync_hook) and logged, and fails the
     * commands it answered; otherwise
     * CTR_EBACKEND or CTR_ETIMEOUT and replies[i] NULL.  Returns CTR_OK
     * when every command was answered, else the first failure (err says
     * why); CTR_EINVAL, CTR_ENOMEM (arena: nothing is held).  One node
     * answers all or nothing; a cluster may answer some commands and fail
     * the others (their node failed).  A deadline already past fails at
     * once with CTR_ETIMEOUT and does not count against a breaker. */
    int (*read)(void *impl, int n, const rconn_cmd *cmds, featstore_route route,
                int64_t deadline_ns, arena *a, struct redisReply **replies, int *status,
                char *err, size_t errlen);

    /* featstore_ping (featstore.h). */
    int (*ping)(void *impl, int64_t deadline_ns, char *err, size_t errlen);

    /* cmd (no key: FUNCTION LOAD ...) on the one Redis, or on every master
     * of a cluster (its map read first), each within command_timeout_ms;
     * every reply must be of a type in cmd->expect.  CTR_OK when every node
     * answered so; otherwise CTR_EBACKEND (an error reply, a node that
     * cannot be reached) or CTR_ETIMEOUT, err naming the node and why. */
    int (*each_master)(void *impl, const rconn_cmd *cmd, char *err, size_t errlen);

    /* Queues SET key value (key and value copied at once); sent by flush.
     * CTR_OK, CTR_EBACKEND (one node: cannot connect), CTR_ENOMEM. */
    int (*put)(void *impl, const char *key, size_t klen, const void *value, size_t len,
               char *err, size_t errlen);
    /* featstore_flush and featstore_pending (featstore.h). */
    int (*flush)(void *impl, char *err, size_t errlen);
    int (*pending)(const void *impl);

    /* The breaker's state (a cluster: the most open of its nodes') and the
     * openings so far (a cluster: summed over its nodes). */
    breaker_state (*breaker_state)(const void *impl);
    uint64_t (*breaker_opens)(const void *impl);
} featstore_backend;

extern const featstore_backend featstore_single_backend;    /* featstore_single.c */
extern const featstore_backend featstore_cluster_backend;   /* featstore_cluster.c */

#endif

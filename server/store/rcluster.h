/*
 * rcluster.h - Redis Cluster routing over hiredis 0.14, which has none: key
 * slots, the slot map, redirections, and a pipelined exec of single-key
 * commands across every node a request touches, all nodes in flight at
 * once.
 *
 * Workload: a rank request reads one user key and a few dozen to a few
 * hundred item keys spread over every master (MGET cannot cross slots), with
 * a deadline of a few milliseconds; ctr-load writes millions of keys in
 * batches.  The cluster may reshard (MOVED, ASK) or fail over (a node
 * unreachable until the map is refreshed) under that load.
 *
 * The pieces, each usable alone (rcluster_map.c: slots, map, redirects,
 * grouping, none touching a connection; rcluster.c: the exec):
 *
 *   rcluster_keyslot          CRC16 (XMODEM) of the key mod 16384, hash tags
 *                             honoured, as Redis computes it.
 *   rcluster_map_*            the slot map, built from a CLUSTER SLOTS reply:
 *                             nodes, and for each slot its master and
 *                             replicas; MOVED updates one slot in place.
 *   rcluster_redirect_parse   MOVED / ASK error replies.
 *   rcluster_plan_make        a request's keys grouped by node, each group
 *                             in the caller's order.
 *   rcluster_exec             n single-key commands: routed by the map, one
 *                             pipeline per node written to non-blocking
 *                             sockets and read with one ppoll over all of
 *                             them, MOVED followed (and the map updated), ASK
 *                             followed once with ASKING, replies returned in
 *                             the caller's order; all within one deadline.
 *
 * Connections (rconn.h) stay with the caller (rcluster_links): the feature
 * store owns one connection per node per worker, with its own timeouts, reconnection
 * back-off and health; rcluster_exec asks for the connection of each node
 * it needs and says which ones it had to give up on.
 *
 * A refresh is the caller's: send CLUSTER SLOTS to any reachable node
 * (rconn_command), rcluster_map_parse the reply, swap the maps.  Do it
 * at start, and when rcluster_exec_stats.stale says so (a MOVED was seen, a
 * node failed or a slot had no master), rate-limited: after a failover, the
 * old map routes the failed master's slots to a dead node until then.
 *
 * Reads from replicas (RCLUSTER_READ_REPLICA, RCLUSTER_READ_ANY): a
 * replica serves reads only on a connection that has sent READONLY;
 * rcluster_exec sends it, first in the pipeline, on a link whose readonly
 * flag is 0, and sets the flag when Redis accepts it.  A read that cannot
 * reach its replica (no connection, or the connection broke) is sent again
 * to the slot's master within the same call.  Replicas are asynchronous:
 * a replica may answer with a value a few milliseconds older than its
 * master's.
 *
 * Thread-safety: rcluster_keyslot, rcluster_redirect_parse and the const
 * rcluster_map functions are thread-safe on a map no thread modifies.
 * rcluster_exec modifies the map (MOVED) and uses the links: give each
 * worker its own map and links, or do not share them while an exec runs.
 *
 * Memory: rcluster_map_parse allocates (malloc) the map, freed by
 * rcluster_map_free.  rcluster_plan_make and rcluster_exec take their
 * scratch from the caller's arena (request lifetime).  The replies in
 * rcluster_exec's output are hiredis's (malloc'd by its reader): the caller
 * frees them, with rcluster_replies_free or freeReplyObject each.
 */
#ifndef CTR_SERVER_RCLUSTER_H
#define CTR_SERVER_RCLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "core/base/status.h"
#include "server/store/rconn.h"

struct redisReply;

#define RCLUSTER_SLOTS 16384
#define RCLUSTER_HOST_MAX 64      /* longest host (with its NUL) kept */

/* --- Key slots ----------------------------------------------------------- */

/* The hash slot (0..16383) of key[0..len): CRC16-XMODEM of the key mod
 * 16384, or of the part between the first '{' and the first '}' after it
 * when that part is not empty (a hash tag: "u:{42}:a" and "{42}" share a
 * slot; "{}x" and "x{" hash whole).  Thread-safe. */
int rcluster_keyslot(const char *key, size_t len);

/* The argv index of the key a command is routed by: 3 for FCALL and
 * FCALL_RO (FCALL fn numkeys key ...; the first key, the others must share
 * its slot, as Redis Cluster requires), 1 for the rest; -1 when it has
 * none.  Thread-safe. */
int rcluster_key(const rconn_cmd *c);

/* --- Slot map ------------------------------------------------------------ */

typedef struct rcluster_node {
    char host[RCLUSTER_HOST_MAX];   /* as the cluster announces it */
    int port;
    char id[41];                    /* node id; "" when unknown (a node
                                       learnt from a redirect) */
} rcluster_node;

/* Where reads go.  Writes always go to the master. */
typedef enum rcluster_read {
    RCLUSTER_READ_MASTER,           /* the slot's master */
    RCLUSTER_READ_REPLICA,          /* one of its replicas, chosen by the
                                       caller's salt; the master when it
                                       has none */
    RCLUSTER_READ_ANY,              /* the master or a replica, chosen by
                                       the salt (spreads reads over every
                                       node) */
} rcluster_read;

typedef struct rcluster_map rcluster_map;

/* Builds a map from a CLUSTER SLOTS reply: an array of [start, end, master,
 * replica...], each node [host, port, id, ...].  A node announced with an
 * empty or nil host is at origin_host (the host the command was sent to,
 * as Redis documents); one announced as "?" (unknown endpoint) is left out
 * (its slots become unserved if it is the master).  Slots no entry covers
 * have no master (a cluster being set up, or partly down).
 * On success *out owns a new map (rcluster_map_free).  CTR_EFORMAT (the
 * reply is not a CLUSTER SLOTS answer: an error reply, a bad range, a port
 * out of range...; err says where), CTR_ENOMEM.  Thread-safe. */
int rcluster_map_parse(const struct redisReply *r, const char *origin_host,
                       rcluster_map **out, char *err, size_t errlen);

/* Frees m (NULL is fine). */
void rcluster_map_free(rcluster_map *m);

/* Number of nodes the map knows (masters, replicas, redirect targets);
 * node indices are 0..n-1 and stay valid for the life of the map. */
int rcluster_map_nodes(const rcluster_map *m);

/* Node i (0 <= i < rcluster_map_nodes); the pointer lives with the map
 * (until rcluster_map_free; a MOVED to a new node may add nodes but never
 * moves existing ones). */
const rcluster_node *rcluster_map_node(const rcluster_map *m, int i);

/* The index of host:port, or -1 when the map does not know it. */
int rcluster_map_find(const rcluster_map *m, const char *host, int port);

/* The master of slot, or -1 when no node serves it (or slot is out of
 * range). */
int rcluster_map_master(const rcluster_map *m, int slot);

/* Copies up to max replica indices of slot into out, in CLUSTER SLOTS
 * order; returns how many the slot has (may exceed max). */
int rcluster_map_replicas(const rcluster_map *m, int slot, int *out, int max);

/* The node a command on slot is sent to: the master for
 * RCLUSTER_READ_MASTER; for REPLICA, replica (salt mod replicas), or the
 * master if there is none; for ANY, node (salt mod (1 + replicas)) of
 * master, replicas.  A fixed salt per worker (its index) keeps each
 * worker's reads on one node per slot range while the workers together
 * spread over all of them.  -1 when no node serves slot. */
int rcluster_map_route(const rcluster_map *m, int slot, rcluster_read read,
                       unsigned salt);

/* Slots with a master (16384 when the cluster is fully served). */
int rcluster_map_covered(const rcluster_map *m);

/* The index of host:port, added (with no slot) when the map does not know
 * it: a node an ASK sends one command to.  CTR_EINVAL (bad host or port),
 * CTR_ENOMEM. */
int rcluster_map_add(rcluster_map *m, const char *host, int port);

/* Records a MOVED: slot's master is now host:port, the node added to the
 * map if new (with no replicas known).  Other slots keep their owners until
 * the next refresh.  Returns the node's index, CTR_EINVAL (bad slot, host
 * or port), CTR_ENOMEM. */
int rcluster_map_moved(rcluster_map *m, int slot, const char *host, int port);

/* --- Redirections -------------------------------------------------------- */

typedef enum rcluster_redirect_kind {
    RCLUSTER_MOVED = 1,             /* the slot lives elsewhere for good */
    RCLUSTER_ASK,                   /* the key is being migrated: ask the
                                       target once, after ASKING */
} rcluster_redirect_kind;

typedef struct rcluster_redirect {
    rcluster_redirect_kind kind;
    int slot;
    char host[RCLUSTER_HOST_MAX];   /* "" when the error gives none (":port",
                                       Redis's unknown endpoint): the host of
                                       the node that answered */
    int port;
} rcluster_redirect;

/* Parses the text of an error reply ("MOVED 3999 127.0.0.1:6381", "ASK
 * 3999 [::1]:6381" or without brackets, host after the last ':' being the
 * port).  CTR_OK: *out filled; CTR_ENOTFOUND: the error is not a redirect
 * (WRONGTYPE, CLUSTERDOWN, ...); CTR_EFORMAT: it starts as one but the slot,
 * host or port is malformed.  Thread-safe. */
int rcluster_redirect_parse(const char *str, size_t len, rcluster_redirect *out);

/* --- Grouping ------------------------------------------------------------ */

/* A request's keys grouped by the node each is routed to.  Plain data; the
 * arrays live in the arena given to rcluster_plan_make. */
typedef struct rcluster_plan {
    int n;                  /* keys */
    int *slot;              /* [n] slot of key i */
    int *node;              /* [n] node of key i; -1: no node serves its slot */
    int ngroups;            /* distinct nodes (+1 when some keys have none) */
    int *group_node;        /* [ngroups] the group's node, -1 last */
    int *group_start;       /* [ngroups + 1] group g is order[group_start[g]
                               .. group_start[g + 1]) */
    int *order;             /* [n] key indices, by group; ascending (the
                               caller's order) within each group */
} rcluster_plan;

/* Routes key i (keys[i], lens[i] bytes) with rcluster_map_route(read,
 * salt) and groups the keys; groups come in the order of their first key.
 * CTR_OK, CTR_EINVAL (n < 0), CTR_ENOMEM (arena).  Thread-safe on a map no
 * one modifies. */
int rcluster_plan_make(const rcluster_map *m, int n, const char *const *keys,
                       const size_t *lens, rcluster_read read, unsigned salt,
                       arena *a, rcluster_plan *out, char *err, size_t errlen);

/* --- Pipelined exec across nodes ----------------------------------------- */

/* One connection of the caller's.  rcluster_exec reads conn and
 * readonly, sends on conn, and sets readonly to 1 once Redis accepts
 * READONLY on it. */
typedef struct rcluster_link {
    rconn *conn;                    /* connected (rconn_open) */
    int readonly;                   /* READONLY is in effect on conn */
} rcluster_link;

/* The caller's connections, one per node address. */
typedef struct rcluster_links {
    /* The link to host:port, or NULL when there is none to be had now
     * (down, inside a reconnect back-off...; err says why, and that node's
     * commands fail with CTR_EBACKEND or go to the master, see above).
     * Called at most once per node per rcluster_exec.  A connection that
     * sat idle since its last use should pass rconn_check_idle first. */
    rcluster_link *(*get)(void *ud, const char *host, int port, char *err,
                          size_t errlen);
    /* rcluster_exec gave up on l->conn: it broke (CTR_EBACKEND; rconn_error_of
     * says how) or did not answer in time (CTR_ETIMEOUT, replies may still
     * come, so it is out of step).  The owner must close it (rconn_close)
     * before it is used again; rcluster_exec does not touch l after this
     * call. */
    void (*failed)(void *ud, rcluster_link *l, int status, const char *why);
    void *ud;
} rcluster_links;

/* The answer to command i. */
typedef struct rcluster_reply {
    int status;                     /* CTR_OK: reply is the node's answer,
                                       possibly an error reply that is not a
                                       redirect (WRONGTYPE, CLUSTERDOWN,
                                       TRYAGAIN...: the caller judges);
                                       CTR_EBACKEND: no answer (no node
                                       serves the slot, no connection, the
                                       connection broke, redirected too
                                       often); CTR_ETIMEOUT: none in time */
    struct redisReply *reply;       /* CTR_OK only; the caller frees it */
    int node;                       /* map index of the node that answered
                                       (or failed); -1 when none was tried */
} rcluster_reply;

typedef struct rcluster_exec_stats {
    int nodes;                      /* distinct nodes sent to */
    int rounds;                     /* 1 + rounds of redirected or rerouted
                                       commands */
    int moved;                      /* MOVED replies followed */
    int asked;                      /* ASK replies followed */
    int rerouted;                   /* replica reads sent to the master
                                       instead */
    int failed_nodes;               /* links given up (failed() calls) or
                                       not available (get() NULL) */
    int stale;                      /* refresh the map: a MOVED, a failed
                                       node or an unserved slot was seen */
} rcluster_exec_stats;

/* Most rounds an exec makes: the first, then redirects (stale map ->
 * MOVED -> ASK during a migration needs three). */
#define RCLUSTER_MAX_ROUNDS 4

/* Runs cmds[0..n) on the cluster (single-key commands: rcluster_key
 * says where the key is: argv[1] as in GET key, GETRANGE key 0 99, SET key
 * value; argv[3] in FCALL fn 1 key ...), each on the node
 * rcluster_map_route(m, slot of its key, read, salt) gives (use
 * RCLUSTER_READ_MASTER for writes), pipelined per node, every node in flight at once, until all are
 * answered or deadline_ns (CLOCK_MONOTONIC) passes.  out[i] answers
 * cmds[i].  A MOVED updates m (rcluster_map_moved) and the command is sent
 * to the new owner; an ASK is followed once (ASKING + the command, to the
 * target; a second redirect for that command is its failure).  Commands
 * with read != MASTER are taken to be reads and are rerouted to the
 * master when their replica cannot be reached.
 *
 * Each reply must be of a type its command answers (cmds[i].expect; an
 * error reply always is), and nothing may be left over once a node's
 * replies are in: otherwise that node's connection is out of step
 * (RCONN_DESYNC, given up through links->failed) and every command it
 * answered in this exec fails with CTR_EBACKEND, the answers already read
 * from it included.
 *
 * Returns CTR_OK when every command has an answer; otherwise the first
 * failure among out[] (CTR_EBACKEND or CTR_ETIMEOUT) and out[] says which
 * ones: the answered ones are good (a degraded answer can use them).
 * CTR_EINVAL (n < 0, a command without a key), CTR_ENOMEM (arena; then
 * no reply is held in out[]).  st may be NULL. */
int rcluster_exec(rcluster_map *m, const rcluster_links *links,
                  rcluster_read read, unsigned salt, int n,
                  const rconn_cmd *cmds, int64_t deadline_ns, arena *a,
                  rcluster_reply *out, rcluster_exec_stats *st, char *err,
                  size_t errlen);

/* Frees the replies held in out[0..n) and sets them to NULL. */
void rcluster_replies_free(rcluster_reply *out, int n);

#endif

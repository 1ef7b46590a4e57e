/*
 * hcache.h - the process's cache of users' histories (the decoded ids
 * featstore_get_user returns), kept fresh by Redis's server-assisted
 * client-side caching, so that a rank request for a user seen recently
 * skips the history's Redis round trip.
 *
 * Workload: every rank request looks up one user (2..64 threads at once);
 * a miss reads Redis as before and inserts; writers elsewhere (ctr-load,
 * producers calling FCALL ctr_append*, redis-cli) change a few users'
 * values per second to tens of thousands per second in a backfill.
 *
 * Freshness.  One connection of the cache's own (the link, a thread of its
 * own) asks Redis to broadcast every change of a key under the users'
 * prefixes (CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX
 * <prefix>u: ..., then SUBSCRIBE __redis__:invalidate, RESP2): Redis sends
 * the names of the changed keys after each event-loop round, and a null
 * message on FLUSHDB / FLUSHALL.  Broadcasting, rather than tracking the
 * keys each reading connection read, ties the guarantee to that one
 * connection: a reading connection that Redis closes (CLIENT KILL, a
 * timeout) would otherwise take its tracked keys with it and later writes
 * would invalidate nothing.  What holds:
 *
 *   - a history is never served from the cache once an invalidation of its
 *     key has reached this process's socket: a lookup first checks that the
 *     link has applied everything that arrived (no unread bytes on its
 *     socket, none read and not yet applied), then looks up;
 *   - a read races a write: its reply may be older than an invalidation
 *     that arrives while it is in flight.  hcache_get stamps a miss (the
 *     link's generation and an epoch of the key's hash, which every
 *     invalidation of such a key bumps) and hcache_put inserts only when
 *     the stamp still holds; an invalidation that arrives after the insert
 *     removes the entry;
 *   - the link not yet up, lost (Redis restarted, CLIENT KILL, a network
 *     error; silent for 2 x ping_ms: a hung Redis, a network that drops
 *     without a reset), or tracking refused (Redis before 6, an ACL without CLIENT):
 *     the cache is emptied and bypassed (every lookup is HCACHE_OFF: reads
 *     go to Redis as without a cache) until the link is back, tried again
 *     every retry period (doubling to 2 s); a null invalidation empties it;
 *   - an entry also expires ttl_ms after it was read (a safety net).
 *
 * On loopback Redis writes a round's invalidations before its replies, so
 * a client that appends and then asks for a ranking sees its append; over
 * a network, the invalidation and the writer's reply travel on different
 * connections and a request can overtake the invalidation by the
 * difference of their delays.
 *
 * Memory: max_bytes bounds the entries, each holding a key of up to
 * HCACHE_KEY_MAX bytes and up to max_ids ids; allocated once by
 * hcache_init (pages touched as entries fill), nothing on lookups or
 * inserts.  Least recently used entries are evicted when full.
 *
 * Thread-safety: every function except init, start and free may be called
 * from any thread at once; one mutex per shard, held for a lookup or an
 * insert (a few hundred ns).
 */
#ifndef CTR_SERVER_HCACHE_H
#define CTR_SERVER_HCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "core/base/status.h"

/* Longest key (prefix + "u:" + user id) cached; longer ones are read from
 * Redis every time. */
#define HCACHE_KEY_MAX 192

typedef struct hcache hcache;

typedef struct hcache_params {
    size_t max_bytes;           /* entries' budget (64 MiB) */
    int max_ids;                /* most ids an entry holds: the longest
                                   history a model reads (64) */
    int64_t ttl_ms;             /* an entry expires this long after its read
                                   (60000; 0: never) */
} hcache_params;

/* Where the link connects, and which keys it watches. */
typedef struct hcache_link_params {
    const char *addr;           /* "host:port", "[v6]:port" or a unix
                                   socket path; copied */
    const char *user, *password;/* AUTH, as the feature store's; copied */
    int connect_timeout_ms;     /* connect and set-up (50) */
    const char *const *prefixes;/* the users' key prefixes ("<prefix>u:");
                                   copied; one covered by another is
                                   dropped */
    int nprefixes;              /* 1..16 */
    int retry_ms;               /* first wait before reconnecting (100;
                                   doubles to 2000) */
    int ping_ms;                /* keep-alive: PING after this long without
                                   a message, the link lost when nothing
                                   answers within as long again (1000) */
} hcache_link_params;

/* Counters since init (relaxed reads). */
typedef struct hcache_stats {
    uint64_t hits;              /* lookups answered from the cache */
    uint64_t misses;            /* lookups that read Redis (the link up) */
    uint64_t bypassed;          /* lookups while the link was down */
    uint64_t insertions;
    uint64_t stale_refused;     /* inserts refused: an invalidation of the
                                   key (or a flush) arrived meanwhile */
    uint64_t evictions;         /* entries dropped to make room */
    uint64_t expirations;       /* entries found past their TTL */
    uint64_t invalidations;     /* keys named by invalidation messages */
    uint64_t flushes;           /* whole cache emptied: the link lost or
                                   set up again, FLUSHDB/FLUSHALL */
    uint64_t link_connects;     /* times the link came up */
    uint64_t entries;           /* now */
    int up;                     /* 1: the link is up (lookups may hit) */
    int capacity;               /* entries the budget holds */
} hcache_stats;

/* What hcache_get answers. */
typedef enum hcache_result {
    HCACHE_HIT,                 /* *ids / *n are the history (in the arena) */
    HCACHE_HIT_NONE,            /* cached: the user has no value (no key) */
    HCACHE_MISS,                /* read Redis, then hcache_put with *stamp */
    HCACHE_OFF                  /* read Redis; do not insert (link down,
                                   key too long, out of arena) */
} hcache_result;

/* Taken by a miss, checked by the insert. */
typedef struct hcache_stamp {
    uint64_t gen;
    uint64_t hash;
    uint32_t epoch;
} hcache_stamp;

hcache_params hcache_default_params(void);

/* Allocates the cache (the link is not started: every lookup is
 * HCACHE_OFF until hcache_start's link is up).  CTR_OK; CTR_EINVAL
 * (max_ids < 1, a budget smaller than one entry per shard); CTR_ENOMEM. */
int hcache_init(const hcache_params *p, hcache **out, char *err, size_t errlen);

/* Starts the link's thread (it connects on its own, and again whenever it
 * loses the connection).  CTR_OK; CTR_EINVAL (bad address or prefixes);
 * CTR_ENOMEM; CTR_EIO (no thread). */
int hcache_start(hcache *c, const hcache_link_params *lp, char *err, size_t errlen);

/* Stops the link (if started; within a few ms) and frees c (NULL is fine). */
void hcache_free(hcache *c);

/* The history of the user value at key (klen bytes), its last min(count,
 * keep) ids, keep >= 1.  On HCACHE_HIT *ids (in a; NULL when *n is 0) and
 * *n; on HCACHE_MISS, *stamp for hcache_put. */
hcache_result hcache_get(hcache *c, const char *key, size_t klen, int keep, arena *a,
                         int64_t **ids, int *n, hcache_stamp *stamp);

/* Inserts what a read of key stamped by hcache_get found: ids[0..n), read
 * with `keep` (found = 0: no such key), unless an invalidation of the key,
 * a flush or the link's loss came after the stamp.  Never allocates. */
void hcache_put(hcache *c, const hcache_stamp *stamp, const char *key, size_t klen, int keep,
                const int64_t *ids, int n, int found);

/* Drops key's entry and refuses inserts stamped before (what the link does
 * for each key it is told of). */
void hcache_invalidate(hcache *c, const char *key, size_t klen);

/* Empties the cache and refuses inserts stamped before. */
void hcache_flush(hcache *c);

void hcache_stats_get(const hcache *c, hcache_stats *st);

/* 1 when the link is up.  For tests: waits up to ms for that. */
int hcache_wait_up(const hcache *c, int ms);

#endif

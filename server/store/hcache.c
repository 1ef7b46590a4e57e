/*
 * hcache.c - the users' history cache and its invalidation link, see
 * hcache.h.
 *
 * The table: HC_SHARDS shards, each with its own mutex, a fixed array of
 * entries (key, up to max_ids ids as 32-bit values: the schema's ids are
 * 0..INT32_MAX), a chained hash table over them and an LRU list.  Each
 * shard also keeps HC_EPOCHS counters; an invalidation bumps the one of
 * its key's hash, and an insert is refused when the counter of its key
 * moved since the miss that stamped it.  The link's generation `gen` is
 * odd while the link is up; losing the link, setting it up again or a
 * flush moves it on, so inserts stamped before are refused.
 *
 * The link: a thread with one connection (rconn.h), blocked in poll on
 * its socket and a wake-up eventfd.  A lookup asks whether the link is
 * behind: its socket readable (bytes, or the connection's end: a link
 * Redis closed is not trusted before the thread notices), or bytes read
 * and not yet applied (`reading`, set before each read and cleared once the last
 * whole message is applied).  The link sets `reading` before it reads, so
 * a lookup that sees the socket empty and then `reading` clear knows that
 * everything that had arrived when it looked has been applied.
 */
#include "hcache.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/store/rconn.h"

#define HC_SHARDS 64
#define HC_EPOCHS 64
#define HC_MAX_PREFIXES 16
#define HC_RETRY_MAX_MS 2000
#define HC_NONE 0xffffffffu

/* An entry's bookkeeping; its key and ids live in the shard's data at
 * index * stride. */
typedef struct hc_entry {
    uint64_t hash;
    int64_t expires_ns;         /* 0: never */
    uint32_t chain;             /* next in its bucket, HC_NONE */
    uint32_t prev, next;        /* LRU (head: most recent), HC_NONE */
    uint16_t klen;
    uint8_t used, found;
    int32_t n;                  /* ids held */
    int32_t complete;           /* 1: the whole history (n < the read's keep) */
} hc_entry;

typedef _Atomic uint64_t acount;

typedef struct hc_shard {
    pthread_mutex_t mu;
    hc_entry *e;
    unsigned char *data;
    uint32_t *bucket;           /* nbuckets heads, HC_NONE */
    uint32_t nbuckets;
    uint32_t free_head;         /* free entries chained by .chain */
    uint32_t head, tail;
    uint32_t nused;
    int inited;                 /* mu made */
    uint32_t epoch[HC_EPOCHS];
    acount hits, misses, insertions, refused, evictions, expirations, invalidations;
    char pad[64];
} hc_shard;

struct hcache {
    hcache_params p;
    size_t stride;              /* bytes per entry's data */
    uint32_t per_shard;
    hc_shard shard[HC_SHARDS];
    _Atomic uint64_t gen;       /* odd: the link is up */
    _Atomic int fd;             /* the link's socket, -1 when down */
    _Atomic int reading;        /* the link holds bytes not yet applied */
    acount bypassed, flushes, connects;
    /* The link. */
    int started;
    pthread_t thread;
    int wake;                   /* eventfd: stop */
    _Atomic int stop;
    hcache_link_params lp;
    char *addr, *host, *user, *password;
    int port;
    char *prefix[HC_MAX_PREFIXES];
    int nprefix;
};

static uint64_t bump(acount *a) { return atomic_fetch_add_explicit(a, 1, memory_order_relaxed); }
static uint64_t rd(const acount *a) { return atomic_load_explicit(a, memory_order_relaxed); }

/* FNV-1a, then mixed: the low bits pick the shard, the next the epoch,
 * the rest the bucket. */
static uint64_t hash_key(const char *k, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static hc_shard *shard_of(hcache *c, uint64_t h) { return &c->shard[h % HC_SHARDS]; }
static uint32_t epoch_of(uint64_t h) { return (uint32_t)(h / HC_SHARDS % HC_EPOCHS); }
static uint32_t bucket_of(const hc_shard *s, uint64_t h) {
    return (uint32_t)((h >> 20) & (s->nbuckets - 1));
}
static unsigned char *data_of(const hcache *c, const hc_shard *s, uint32_t i) {
    return s->data + (size_t)i * c->stride;
}

hcache_params hcache_default_params(void) {
    return (hcache_params){.max_bytes = (size_t)64 << 20, .max_ids = 64, .ttl_ms = 60000};
}

/* --- The table (shard lock held) ----------------------------------------- */

static void lru_unlink(hc_shard *s, uint32_t i) {
    hc_entry *e = &s->e[i];
    if (e->prev != HC_NONE) s->e[e->prev].next = e->next;
    else s->head = e->next;
    if (e->next != HC_NONE) s->e[e->next].prev = e->prev;
    else s->tail = e->prev;
    e->prev = e->next = HC_NONE;
}

static void lru_push(hc_shard *s, uint32_t i) {
    hc_entry *e = &s->e[i];
    e->prev = HC_NONE;
    e->next = s->head;
    if (s->head != HC_NONE) s->e[s->head].prev = i;
    s->head = i;
    if (s->tail == HC_NONE) s->tail = i;
}

static uint32_t find(const hcache *c, const hc_shard *s, uint64_t h, const char *key,
                     size_t klen) {
    for (uint32_t i = s->bucket[bucket_of(s, h)]; i != HC_NONE; i = s->e[i].chain)
        if (s->e[i].hash == h && s->e[i].klen == klen &&
            memcmp(data_of(c, s, i), key, klen) == 0)
            return i;
    return HC_NONE;
}

/* Unlinks entry i from its bucket and the LRU and frees it. */
static void drop(hc_shard *s, uint32_t i) {
    hc_entry *e = &s->e[i];
    uint32_t *pp = &s->bucket[bucket_of(s, e->hash)];
    while (*pp != i) pp = &s->e[*pp].chain;
    *pp = e->chain;
    lru_unlink(s, i);
    e->used = 0;
    e->chain = s->free_head;
    s->free_head = i;
    s->nused--;
}

static void clear(hcache *c, hc_shard *s) {
    (void)c;
    while (s->head != HC_NONE) drop(s, s->head);
}

/* --- Init and free -------------------------------------------------------- */

static void free_link_strings(hcache *c) {
    free(c->addr);
    free(c->host);
    free(c->user);
    if (c->password) {
        volatile char *v = c->password;
        while (*v) *v++ = 0;
        free(c->password);
    }
    for (int i = 0; i < c->nprefix; i++) free(c->prefix[i]);
    c->addr = c->host = c->user = c->password = NULL;
    c->nprefix = 0;
}

void hcache_free(hcache *c) {
    if (!c) return;
    if (c->started) {
        atomic_store(&c->stop, 1);
        uint64_t one = 1;
        ssize_t w = write(c->wake, &one, sizeof one);
        (void)w;
        pthread_join(c->thread, NULL);
    }
    if (c->wake >= 0) close(c->wake);
    for (int i = 0; i < HC_SHARDS; i++) {
        hc_shard *s = &c->shard[i];
        if (s->inited) pthread_mutex_destroy(&s->mu);
        free(s->e);
        free(s->data);
        free(s->bucket);
    }
    free_link_strings(c);
    free(c);
}

int hcache_init(const hcache_params *p, hcache **out, char *err, size_t errlen) {
    *out = NULL;
    if (p->max_ids < 1 || p->max_ids > (1 << 20) || p->ttl_ms < 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "history cache: max_ids %d, ttl %lld ms",
                        p->max_ids, (long long)p->ttl_ms);
    size_t stride = (HCACHE_KEY_MAX + 4 * (size_t)p->max_ids + 63) & ~(size_t)63;
    size_t per_entry = stride + sizeof(hc_entry) + 2 * sizeof(uint32_t);
    size_t n = p->max_bytes / per_entry / HC_SHARDS;
    if (n < 1)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "history cache: %zu bytes hold no %d-id entry per shard (%zu bytes "
                        "at least)",
                        p->max_bytes, p->max_ids, per_entry * HC_SHARDS);
    if (n > (1u << 28)) n = 1u << 28;
    hcache *c = calloc(1, sizeof *c);
    if (!c) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    c->p = *p;
    c->stride = stride;
    c->per_shard = (uint32_t)n;
    c->wake = -1;
    atomic_init(&c->gen, 0);
    atomic_init(&c->fd, -1);
    atomic_init(&c->reading, 0);
    atomic_init(&c->stop, 0);
    for (int k = 0; k < HC_SHARDS; k++) {
        hc_shard *s = &c->shard[k];
        uint32_t nb = 1;
        while (nb < n) nb <<= 1;
        s->nbuckets = nb;
        pthread_mutex_init(&s->mu, NULL);
        s->inited = 1;
        s->e = calloc(n, sizeof *s->e);
        s->data = malloc(n * stride);   /* large: pages touched as entries fill */
        s->bucket = malloc(nb * sizeof *s->bucket);
        if (!s->e || !s->data || !s->bucket) {
            hcache_free(c);
            return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        }
        memset(s->bucket, 0xff, nb * sizeof *s->bucket);
        for (uint32_t i = 0; i < n; i++) {
            s->e[i].chain = i + 1 < n ? i + 1 : HC_NONE;
            s->e[i].prev = s->e[i].next = HC_NONE;
        }
        s->free_head = 0;
        s->head = s->tail = HC_NONE;
    }
    *out = c;
    return CTR_OK;
}

/* --- Lookups and inserts --------------------------------------------------- */

/* Whether the link has applied every byte that reached its socket, and
 * the generation is still g: the socket first (one poll, no wait), then
 * `reading` (see the top of the file). */
static int caught_up(hcache *c, uint64_t g) {
    struct pollfd pf = {atomic_load(&c->fd), POLLIN | POLLRDHUP, 0};
    /* Readable: bytes, or the other end closed (a link Redis killed must
     * not be trusted while the thread has yet to notice). */
    if (pf.fd < 0 || poll(&pf, 1, 0) != 0) return 0;
    if (atomic_load(&c->reading)) return 0;
    return atomic_load(&c->gen) == g;
}

hcache_result hcache_get(hcache *c, const char *key, size_t klen, int keep, arena *a,
                         int64_t **ids, int *n, hcache_stamp *stamp) {
    *ids = NULL;
    *n = 0;
    uint64_t g = atomic_load(&c->gen);
    if (!(g & 1) || klen > HCACHE_KEY_MAX || keep < 1) {
        bump(&c->bypassed);
        return HCACHE_OFF;
    }
    int fresh = caught_up(c, g);
    uint64_t h = hash_key(key, klen);
    hc_shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    stamp->gen = g;
    stamp->hash = h;
    stamp->epoch = s->epoch[epoch_of(h)];
    uint32_t i = find(c, s, h, key, klen);
    if (i == HC_NONE || !fresh) {
        pthread_mutex_unlock(&s->mu);
        bump(&s->misses);
        return HCACHE_MISS;
    }
    hc_entry *e = &s->e[i];
    if (e->expires_ns && clock_now_ns() >= e->expires_ns) {
        drop(s, i);
        pthread_mutex_unlock(&s->mu);
        bump(&s->expirations);
        bump(&s->misses);
        return HCACHE_MISS;
    }
    if (!e->found) {
        lru_unlink(s, i);
        lru_push(s, i);
        pthread_mutex_unlock(&s->mu);
        bump(&s->hits);
        return HCACHE_HIT_NONE;
    }
    if (!e->complete && keep > e->n) {   /* read with a shorter keep */
        pthread_mutex_unlock(&s->mu);
        bump(&s->misses);
        return HCACHE_MISS;
    }
    int take = e->n < keep ? e->n : keep;
    int64_t *out = NULL;
    if (take) {
        out = arena_alloc(a, (size_t)take * sizeof *out, 64);
        if (!out) {
            pthread_mutex_unlock(&s->mu);
            bump(&c->bypassed);
            return HCACHE_OFF;
        }
        const unsigned char *d = data_of(c, s, i) + HCACHE_KEY_MAX;
        int32_t v[64];
        for (int k = 0, from = e->n - take; k < take; k += 64) {
            int m = take - k < 64 ? take - k : 64;
            memcpy(v, d + 4 * (size_t)(from + k), 4 * (size_t)m);
            for (int j = 0; j < m; j++) out[k + j] = v[j];
        }
    }
    lru_unlink(s, i);
    lru_push(s, i);
    pthread_mutex_unlock(&s->mu);
    bump(&s->hits);
    *ids = out;
    *n = take;
    return HCACHE_HIT;
}

void hcache_put(hcache *c, const hcache_stamp *stamp, const char *key, size_t klen, int keep,
                const int64_t *ids, int n, int found) {
    if (klen > HCACHE_KEY_MAX || n < 0) return;
    for (int k = 0; k < n; k++)
        if (ids[k] < 0 || ids[k] > INT32_MAX) return;
    hc_shard *s = shard_of(c, stamp->hash);
    pthread_mutex_lock(&s->mu);
    if (atomic_load(&c->gen) != stamp->gen || s->epoch[epoch_of(stamp->hash)] != stamp->epoch) {
        pthread_mutex_unlock(&s->mu);
        bump(&s->refused);
        return;
    }
    uint32_t i = find(c, s, stamp->hash, key, klen);
    if (i != HC_NONE) drop(s, i);
    if (s->free_head == HC_NONE) {   /* full: the least recently used goes */
        drop(s, s->tail);
        bump(&s->evictions);
    }
    i = s->free_head;
    hc_entry *e = &s->e[i];
    s->free_head = e->chain;
    int cap = c->p.max_ids;
    int held = n < cap ? n : cap;
    e->hash = stamp->hash;
    e->expires_ns = c->p.ttl_ms ? clock_now_ns() + c->p.ttl_ms * 1000000 : 0;
    e->klen = (uint16_t)klen;
    e->used = 1;
    e->found = found != 0;
    e->n = found ? held : 0;
    e->complete = !found || (n < keep && n <= cap);
    unsigned char *d = data_of(c, s, i);
    memcpy(d, key, klen);
    for (int k = 0; k < e->n; k++) {
        int32_t v = (int32_t)ids[n - held + k];
        memcpy(d + HCACHE_KEY_MAX + 4 * (size_t)k, &v, 4);
    }
    uint32_t b = bucket_of(s, stamp->hash);
    e->chain = s->bucket[b];
    s->bucket[b] = i;
    lru_push(s, i);
    s->nused++;
    pthread_mutex_unlock(&s->mu);
    bump(&s->insertions);
}

void hcache_invalidate(hcache *c, const char *key, size_t klen) {
    uint64_t h = hash_key(key, klen);
    hc_shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    s->epoch[epoch_of(h)]++;
    uint32_t i = find(c, s, h, key, klen);
    if (i != HC_NONE) drop(s, i);
    pthread_mutex_unlock(&s->mu);
    bump(&s->invalidations);
}

/* Moves the generation on (to `up` or not) and empties every shard: an
 * insert stamped before sees the new generation under its shard's lock,
 * or went in before this shard was emptied. */
static void flush_to(hcache *c, int up) {
    uint64_t g = atomic_load(&c->gen), next;
    do {
        next = g + 1;
        if ((int)(next & 1) != up) next++;
    } while (!atomic_compare_exchange_weak(&c->gen, &g, next));
    for (int k = 0; k < HC_SHARDS; k++) {
        pthread_mutex_lock(&c->shard[k].mu);
        clear(c, &c->shard[k]);
        pthread_mutex_unlock(&c->shard[k].mu);
    }
    bump(&c->flushes);
}

void hcache_flush(hcache *c) { flush_to(c, (int)(atomic_load(&c->gen) & 1)); }

void hcache_stats_get(const hcache *c, hcache_stats *st) {
    memset(st, 0, sizeof *st);
    for (int k = 0; k < HC_SHARDS; k++) {
        hc_shard *s = (hc_shard *)&c->shard[k];
        st->hits += rd(&s->hits);
        st->misses += rd(&s->misses);
        st->insertions += rd(&s->insertions);
        st->stale_refused += rd(&s->refused);
        st->evictions += rd(&s->evictions);
        st->expirations += rd(&s->expirations);
        st->invalidations += rd(&s->invalidations);
        pthread_mutex_lock(&s->mu);
        st->entries += s->nused;
        pthread_mutex_unlock(&s->mu);
    }
    st->bypassed = rd(&c->bypassed);
    st->flushes = rd(&c->flushes);
    st->link_connects = rd(&c->connects);
    st->up = (int)(atomic_load(&c->gen) & 1);
    st->capacity = (int)(c->per_shard * HC_SHARDS);
}

int hcache_wait_up(const hcache *c, int ms) {
    int64_t end = clock_now_ns() + (int64_t)ms * 1000000;
    while (!(atomic_load(&((hcache *)c)->gen) & 1)) {
        if (clock_now_ns() >= end) return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

/* --- The link ---------------------------------------------------------------- */

/* One message of the subscription: ["message", channel, [keys] | nil]. */
static void apply(hcache *c, const redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    const redisReply *kind = r->element[0], *keys = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || kind->len != 7 || memcmp(kind->str, "message", 7))
        return;   /* the subscription's confirmation */
    if (keys->type == REDIS_REPLY_NIL) {   /* FLUSHDB, FLUSHALL */
        hcache_flush(c);
        return;
    }
    if (keys->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        if (k->type == REDIS_REPLY_STRING) hcache_invalidate(c, k->str, k->len);
    }
}

/* Waits up to ms for the wake-up (stop); 1 when stopping. */
static int pause_ms(hcache *c, int ms) {
    struct pollfd pf = {c->wake, POLLIN, 0};
    poll(&pf, 1, ms);
    return atomic_load(&c->stop);
}

/* Connects, asks for the broadcasts and subscribes.  CTR_OK with *out the
 * subscribed connection; else err says why (*refused: Redis answered with
 * an error, as one before 6 or an ACL without CLIENT would). */
static int link_open(hcache *c, rconn **out, int *refused, char *err, size_t errlen) {
    *out = NULL;
    *refused = 0;
    const rconn_params rp = {c->lp.connect_timeout_ms, c->user, c->password};
    int64_t dl = clock_now_ns() + (int64_t)c->lp.connect_timeout_ms * 1000000 * 4;
    rconn *rc = NULL;
    redisReply *r = NULL;
    int st = rconn_open(&rp, c->host ? c->host : c->addr, c->host ? c->port : 0, dl, &rc, err,
                        errlen);
    if (st < 0) return st;
    static const char *const id_argv[] = {"CLIENT", "ID"};
    static const size_t id_len[] = {6, 2};
    st = rconn_command(rc, 2, id_argv, id_len, RCONN_INTEGER, dl, &r, err, errlen);
    if (st < 0) goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        *refused = 1;
        st = ctr_fail(err, errlen, CTR_EBACKEND, "CLIENT ID: %.200s", r->str);
        goto out;
    }
    char id[24];
    snprintf(id, sizeof id, "%lld", r->integer);
    freeReplyObject(r);
    r = NULL;
    const char *argv[6 + 2 * HC_MAX_PREFIXES];
    size_t lens[6 + 2 * HC_MAX_PREFIXES];
    int n = 0;
    static const char *const head[] = {"CLIENT", "TRACKING", "ON", "REDIRECT"};
    for (int i = 0; i < 4; i++) argv[n] = head[i], lens[n++] = strlen(head[i]);
    argv[n] = id, lens[n++] = strlen(id);
    argv[n] = "BCAST", lens[n++] = 5;
    for (int i = 0; i < c->nprefix; i++) {
        argv[n] = "PREFIX", lens[n++] = 6;
        argv[n] = c->prefix[i], lens[n++] = strlen(c->prefix[i]);
    }
    st = rconn_command(rc, n, argv, lens, RCONN_STATUS, dl, &r, err, errlen);
    if (st < 0) goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        *refused = 1;
        st = ctr_fail(err, errlen, CTR_EBACKEND, "CLIENT TRACKING refused: %.200s", r->str);
        goto out;
    }
    freeReplyObject(r);
    r = NULL;
    /* Not rconn_command: invalidations may follow the subscription's reply
     * at once, and stay buffered for link_serve. */
    static const char *const sub[] = {"SUBSCRIBE", "__redis__:invalidate"};
    static const size_t sub_len[] = {9, 20};
    const rconn_cmd sub_cmd = {2, sub, sub_len, RCONN_ARRAY};
    if ((st = rconn_append(rc, &sub_cmd)) < 0 ||
        (st = rconn_send(rc, dl, err, errlen)) < 0 ||
        (st = rconn_recv(rc, dl, RCONN_ARRAY, &r, err, errlen)) < 0)
        goto out;
    if (r->type == REDIS_REPLY_ERROR) {
        *refused = 1;
        st = ctr_fail(err, errlen, CTR_EBACKEND, "SUBSCRIBE refused: %.200s", r->str);
        goto out;
    }
    freeReplyObject(r);
    *out = rc;
    return CTR_OK;
out:
    if (r) freeReplyObject(r);
    rconn_close(rc);
    return st < 0 ? st : CTR_EBACKEND;
}

/* Applies every whole message already read; CTR_EBACKEND when the
 * connection failed (why says why). */
static int apply_buffered(hcache *c, rconn *rc, char *why, size_t whylen) {
    for (;;) {
        redisReply *r;
        if (rconn_take(rc, RCONN_ARRAY, &r) < 0) {
            snprintf(why, whylen, "%s", rconn_why(rc));
            return CTR_EBACKEND;
        }
        if (!r) return CTR_OK;
        apply(c, r);
        freeReplyObject(r);
    }
}

/* Reads and applies messages until the connection fails or stop.  A
 * link that has been quiet for ping_ms sends PING (allowed while
 * subscribed; answered ["pong", ""]); nothing back within another
 * ping_ms counts as lost: a connection that breaks silently (a hung
 * Redis, a network that drops without a reset) would otherwise keep
 * serving what it can no longer invalidate. */
static void link_serve(hcache *c, rconn *rc, char *why, size_t whylen) {
    struct pollfd pf[2] = {{rconn_fd(rc), POLLIN, 0}, {c->wake, POLLIN, 0}};
    static const char *const ping[] = {"PING"};
    static const size_t ping_len[] = {4};
    const rconn_cmd ping_cmd = {1, ping, ping_len, RCONN_ARRAY};
    const int64_t period = (int64_t)c->lp.ping_ms * 1000000;
    int64_t heard = clock_now_ns(), pinged = 0;
    if (apply_buffered(c, rc, why, whylen) < 0) return;   /* after the subscription */
    atomic_store(&c->reading, rconn_buffered(rc) > 0);
    while (!atomic_load(&c->stop)) {
        int64_t now = clock_now_ns();
        if (pinged && now - pinged > period) {
            snprintf(why, whylen, "no answer to PING within %d ms", c->lp.ping_ms);
            return;
        }
        if (!pinged && now - heard >= period) {
            int done = 0;
            if (rconn_append(rc, &ping_cmd) < 0 || rconn_write(rc, &done) < 0) {
                snprintf(why, whylen, "%s", rconn_why(rc));
                return;
            }
            pinged = now;   /* a PING's few bytes fit the socket's buffer */
        }
        int64_t next = pinged ? pinged : heard;
        int wait_ms = (int)((next + period - now) / 1000000) + 1;
        int ready = poll(pf, 2, wait_ms);
        if (ready < 0) {
            if (errno == EINTR) continue;
            snprintf(why, whylen, "poll: %s", strerror(errno));
            return;
        }
        if (!ready || !pf[0].revents) continue;
        heard = clock_now_ns();
        pinged = 0;
        atomic_store(&c->reading, 1);
        if (rconn_read(rc) < 0) {
            snprintf(why, whylen, "%s", rconn_why(rc));
            return;   /* `reading` stays set until the flush */
        }
        if (apply_buffered(c, rc, why, whylen) < 0) return;
        atomic_store(&c->reading, rconn_buffered(rc) > 0);
    }
}

static void *link_main(void *arg) {
    hcache *c = arg;
    pthread_setname_np(pthread_self(), "ctr-hcache");   /* top -H, perf */
    int wait = c->lp.retry_ms, was_up = 0, refused_logged = 0;
    char why[256];
    while (!atomic_load(&c->stop)) {
        rconn *rc;
        int refused;
        if (link_open(c, &rc, &refused, why, sizeof why) < 0) {
            if (refused && !refused_logged)
                log_warn("history cache off: Redis %s: %s (histories are read from Redis; "
                         "asked again every %d ms)",
                         c->addr, why, HC_RETRY_MAX_MS);
            else if (!refused && was_up)
                log_warn("history cache: Redis %s: %s; retrying", c->addr, why);
            refused_logged |= refused;
            was_up = 0;
            if (pause_ms(c, wait)) break;
            wait = wait * 2 > HC_RETRY_MAX_MS ? HC_RETRY_MAX_MS : wait * 2;
            continue;
        }
        refused_logged = 0;
        wait = c->lp.retry_ms;
        atomic_store(&c->fd, rconn_fd(rc));
        atomic_store(&c->reading, 1);   /* until link_serve applied what came */
        flush_to(c, 1);   /* up: lookups may hit from now on */
        bump(&c->connects);
        log_info("history cache: invalidations from Redis %s (broadcast, %d prefix(es))",
                 c->addr, c->nprefix);
        was_up = 1;
        why[0] = '\0';
        link_serve(c, rc, why, sizeof why);
        flush_to(c, 0);   /* down: bypassed until the link is back */
        atomic_store(&c->fd, -1);
        rconn_close(rc);
        atomic_store(&c->reading, 0);
        if (atomic_load(&c->stop)) break;
        log_warn("history cache: invalidation link to Redis %s lost (%s); cache emptied and "
                 "bypassed until it is back",
                 c->addr, why[0] ? why : "closed");
        if (pause_ms(c, wait)) break;
    }
    return NULL;
}

int hcache_start(hcache *c, const hcache_link_params *lp, char *err, size_t errlen) {
    if (c->started) return ctr_fail(err, errlen, CTR_EINVAL, "history cache: started twice");
    if (!lp->addr || !lp->addr[0] || lp->nprefixes < 1 || lp->nprefixes > HC_MAX_PREFIXES ||
        lp->connect_timeout_ms < 1 || lp->retry_ms < 1 || lp->ping_ms < 1)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "history cache: need an address, 1..%d prefixes and positive timeouts",
                        HC_MAX_PREFIXES);
    c->lp = *lp;
    c->addr = strdup(lp->addr);
    int rc = c->addr ? rconn_split_addr(c->addr, &c->host, &c->port, err, errlen)
                     : ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    if (rc < 0) goto fail;
    if ((lp->user && lp->user[0] && !(c->user = strdup(lp->user))) ||
        (lp->password && lp->password[0] && !(c->password = strdup(lp->password)))) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto fail;
    }
    /* Redis refuses prefixes of which one starts another: keep the
     * shortest of such. */
    for (int i = 0; i < lp->nprefixes; i++) {
        const char *p = lp->prefixes[i];
        int covered = !p || !p[0];
        for (int j = 0; j < lp->nprefixes && !covered; j++) {
            const char *q = lp->prefixes[j];
            size_t lq = strlen(q);
            covered = j != i && lq <= strlen(p) && strncmp(p, q, lq) == 0 &&
                      (lq < strlen(p) || j < i);
        }
        if (covered) continue;
        if (!(c->prefix[c->nprefix++] = strdup(p))) {
            rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
            goto fail;
        }
    }
    if (!c->nprefix) {
        rc = ctr_fail(err, errlen, CTR_EINVAL, "history cache: no key prefix");
        goto fail;
    }
    c->lp.addr = c->addr;
    c->lp.prefixes = NULL;
    if ((c->wake = eventfd(0, EFD_CLOEXEC)) < 0) {
        rc = ctr_fail(err, errlen, CTR_EIO, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&c->thread, NULL, link_main, c) != 0) {
        rc = ctr_fail(err, errlen, CTR_EIO, "history cache: cannot start its thread");
        goto fail;
    }
    c->started = 1;
    return CTR_OK;
fail:
    free_link_strings(c);
    return rc;
}

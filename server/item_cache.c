/*
 * item_cache.c - sharded, pinned, LRU cache of item vectors.
 *
 * Workload (see item_cache.h): a few hundred lookups per request from up to
 * 64 threads, nearly all hits once warm, entries of ~4.6 KB.  So the table is
 * cut into shards, each with its own mutex, hash buckets, LRU list and share
 * of the byte budget; a lookup holds its shard's lock for a hash walk, an LRU
 * move and a refcount increment, then the caller reads the vector with no
 * lock at all.
 *
 * Lifetime of an entry: the table owns one reference while the entry is
 * linked, each pin owns one more.  Eviction, expiry and replacement unlink
 * the entry under the shard lock and drop the table's reference; whoever
 * drops the last reference (the evictor, or the last release) frees it.
 * Release therefore never needs the lock.
 *
 * Counters are per shard, bumped while the shard lock is held (so they stay
 * in a cache line the thread already owns) and summed on read.
 */
#include "item_cache.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define IC_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define IC_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define IC_POISON(p, n) ((void)(p), (void)(n))
#define IC_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define IC_ALIGN 64
#define IC_DEFAULT_SHARDS 64
#define IC_MIN_ENTRIES_PER_SHARD 4
/* Entries are carved from chunks of this size and alignment (a huge page). */
#define IC_CHUNK ((size_t)2 << 20)

typedef struct ic_entry {
    struct ic_entry *hnext;        /* bucket chain; free list once unlinked */
    struct ic_entry *prev, *next;  /* LRU list, most recent at head */
    const item_cache *owner;       /* catches a ref released to another cache */
    int64_t id;
    uint64_t expires;              /* clock ms; UINT64_MAX when no TTL */
    atomic_uint refs;              /* 1 for the table while linked + pins */
    /* The vector follows at offset IC_ALIGN. */
} ic_entry;

_Static_assert(sizeof(ic_entry) <= IC_ALIGN, "entry header must fit 64 bytes");

typedef struct ic_shard {
    _Alignas(IC_ALIGN) pthread_mutex_t lock;
    ic_entry **buckets;
    size_t mask;                   /* buckets - 1 */
    ic_entry *head, *tail;         /* LRU */
    size_t bytes;                  /* under lock; mirrored into st_bytes */
    size_t budget;
    atomic_uint_fast64_t hits, misses, insertions, evictions, expirations, invalidations;
    atomic_uint_fast64_t entries, st_bytes;
} ic_shard;

struct item_cache {
    ic_shard *shards;
    unsigned nshards;
    unsigned shard_bits;
    int disabled;
    size_t vec_floats;
    size_t entry_bytes;            /* header + vector, multiple of 64 */
    uint64_t ttl_ms;
    uint64_t (*clock_ms)(void *);
    void *clock_arg;
    /* Entries alive outside the table (evicted while pinned, or private
     * copies of a disabled cache); only for the assert in item_cache_free. */
    atomic_long detached;
    /* Invalidations so far (item_cache_put_at). */
    atomic_uint_fast64_t epoch;
    /* Where entries live (entry_alloc): chunks of IC_CHUNK or more, the
     * unused tail of the newest, and freed entries (chained by hnext). */
    pthread_mutex_t slab_lock;
    void **chunks;
    size_t nchunks, cap_chunks, chunk_bytes;
    char *carve;
    size_t carve_left;
    struct ic_entry *spare;
};

item_cache_params item_cache_default_params(void) {
    return (item_cache_params){
        .max_bytes = (size_t)256 << 20,
        .ttl_ms = 600000,
        .vec_floats = 0,
        .shards = IC_DEFAULT_SHARDS,
        .clock_ms = NULL,
        .clock_arg = NULL,
    };
}

static inline float *entry_vec(ic_entry *e) {
    return (float *)((char *)e + IC_ALIGN);
}

/* splitmix64's finaliser: item ids are often dense or sequential, and both
 * the shard and the bucket index need well-mixed bits. */
static inline uint64_t mix(int64_t id) {
    uint64_t x = (uint64_t)id;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t now_ms(const item_cache *c) {
    if (c->clock_ms) return c->clock_ms(c->clock_arg);
    struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
    /* A few ms of resolution is plenty for TTLs of minutes, and it is a
     * vDSO read without the TSC. */
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void bump(atomic_uint_fast64_t *ctr, uint64_t d) {
    atomic_fetch_add_explicit(ctr, d, memory_order_relaxed);
}

static inline void drop(atomic_uint_fast64_t *ctr, uint64_t d) {
    atomic_fetch_sub_explicit(ctr, d, memory_order_relaxed);
}

static size_t round_pow2(size_t n) {
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Entry memory.  A big cache's entries are spread over gigabytes, and a
 * request touches a few hundred of them at random, once to look each up
 * and once to read its vector: on 4 KB pages each of those is a TLB miss
 * too.  So entries are carved from 2 MB chunks that the kernel is asked to
 * back with huge pages (madvise: transparent huge pages in "madvise" mode,
 * Debian's default), and a freed entry's memory is kept for the next
 * entry rather than returned to the system.  The chunks are freed with the
 * cache; what they hold at most is the most entries alive at once (the
 * budget plus entries pinned after eviction).  Allocation and free happen
 * on misses and evictions only, under one lock. */
static ic_entry *entry_alloc(item_cache *c) {
    ic_entry *e = NULL;
    pthread_mutex_lock(&c->slab_lock);
    if (c->spare) {
        e = c->spare;
        IC_UNPOISON(e, c->entry_bytes);
        c->spare = e->hnext;
    } else {
        if (c->carve_left < c->entry_bytes) {
            if (c->nchunks == c->cap_chunks) {
                size_t cap = c->cap_chunks ? 2 * c->cap_chunks : 16;
                void **grown = realloc(c->chunks, cap * sizeof *grown);
                if (!grown) goto out;
                c->chunks = grown;
                c->cap_chunks = cap;
            }
            char *chunk = aligned_alloc(IC_CHUNK, c->chunk_bytes);
            if (!chunk) goto out;
            madvise(chunk, c->chunk_bytes, MADV_HUGEPAGE);   /* a hint: failure is fine */
            c->chunks[c->nchunks++] = chunk;
            c->carve = chunk;
            c->carve_left = c->chunk_bytes;
        }
        e = (ic_entry *)c->carve;
        c->carve += c->entry_bytes;
        c->carve_left -= c->entry_bytes;
    }
out:
    pthread_mutex_unlock(&c->slab_lock);
    return e;
}

static void entry_free(item_cache *c, ic_entry *e) {
    pthread_mutex_lock(&c->slab_lock);
    e->hnext = c->spare;
    c->spare = e;
    IC_POISON((char *)e + sizeof e->hnext, c->entry_bytes - sizeof e->hnext);
    pthread_mutex_unlock(&c->slab_lock);
}

int item_cache_init(const item_cache_params *p, item_cache **out, char *err,
                    size_t errlen) {
    *out = NULL;
    if (p->vec_floats == 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "item_cache: vec_floats is 0");
    if (p->shards < 1 || p->shards > (1 << 16))
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "item_cache: shards %d outside 1..65536", p->shards);
    if (p->vec_floats > (SIZE_MAX - 2 * IC_ALIGN) / sizeof(float))
        return ctr_fail(err, errlen, CTR_EINVAL, "item_cache: vec_floats too large");

    item_cache *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->vec_floats = p->vec_floats;
    c->entry_bytes = IC_ALIGN + (p->vec_floats * sizeof(float) + IC_ALIGN - 1) /
                                    IC_ALIGN * IC_ALIGN;
    c->ttl_ms = p->ttl_ms;
    c->clock_ms = p->clock_ms;
    c->clock_arg = p->clock_arg;
    c->disabled = p->max_bytes == 0;
    atomic_init(&c->detached, 0);
    c->chunk_bytes = (c->entry_bytes + IC_CHUNK - 1) / IC_CHUNK * IC_CHUNK;
    if (pthread_mutex_init(&c->slab_lock, NULL) != 0) {
        free(c);
        c = NULL;
        goto oom;
    }

    /* Each shard evicts within max_bytes / nshards; a shard too small for a
     * handful of entries would thrash, so small budgets get fewer shards. */
    size_t n = round_pow2((size_t)p->shards);
    while (n > 1 && p->max_bytes / n < IC_MIN_ENTRIES_PER_SHARD * c->entry_bytes)
        n >>= 1;
    if (c->disabled) n = 1;
    c->nshards = (unsigned)n;
    while ((1u << c->shard_bits) < c->nshards) c->shard_bits++;

    c->shards = aligned_alloc(IC_ALIGN, n * sizeof(ic_shard));
    if (!c->shards) goto oom;
    memset(c->shards, 0, n * sizeof(ic_shard));
    size_t budget = p->max_bytes / n;
    size_t per_shard = budget / c->entry_bytes;
    size_t nb = round_pow2(per_shard < 16 ? 16 : per_shard);
    for (size_t i = 0; i < n; i++) {
        ic_shard *s = &c->shards[i];
        s->budget = budget;
        s->mask = nb - 1;
        /* Mutex first so the cleanup below can tell which were made. */
        if (pthread_mutex_init(&s->lock, NULL) != 0) {
            c->nshards = (unsigned)i;
            goto oom;
        }
        if (c->disabled) continue;   /* no table at all */
        s->buckets = calloc(nb, sizeof *s->buckets);
        if (!s->buckets) {
            c->nshards = (unsigned)i + 1;
            goto oom;
        }
    }
    *out = c;
    return CTR_OK;

oom:
    item_cache_free(c);
    return ctr_fail(err, errlen, CTR_ENOMEM, "item_cache: out of memory");
}

void item_cache_free(item_cache *c) {
    if (!c) return;
    for (unsigned i = 0; c->shards && i < c->nshards; i++) {
        ic_shard *s = &c->shards[i];
        for (ic_entry *e = s->head, *next; e; e = next) {
            next = e->next;
            /* Only the table's own reference may remain. */
            assert(atomic_load(&e->refs) == 1 && "item_cache_free with pinned entries");
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    assert(atomic_load(&c->detached) == 0 && "item_cache_free with unreleased refs");
    free(c->shards);
    for (size_t i = 0; i < c->nchunks; i++) {
        IC_UNPOISON(c->chunks[i], c->chunk_bytes);
        free(c->chunks[i]);
    }
    free(c->chunks);
    pthread_mutex_destroy(&c->slab_lock);
    free(c);
}

static inline ic_shard *shard_of(const item_cache *c, uint64_t h) {
    return &c->shards[h & (c->nshards - 1)];
}

static inline ic_entry **bucket_of(const item_cache *c, ic_shard *s, uint64_t h) {
    return &s->buckets[(h >> c->shard_bits) & s->mask];
}

static ic_entry *find(const item_cache *c, ic_shard *s, uint64_t h, int64_t id) {
    for (ic_entry *e = *bucket_of(c, s, h); e; e = e->hnext)
        if (e->id == id) return e;
    return NULL;
}

static void lru_unlink(ic_shard *s, ic_entry *e) {
    if (e->prev) e->prev->next = e->next; else s->head = e->next;
    if (e->next) e->next->prev = e->prev; else s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(ic_shard *s, ic_entry *e) {
    e->prev = NULL;
    e->next = s->head;
    if (s->head) s->head->prev = e; else s->tail = e;
    s->head = e;
}

/* Drops a reference; 1 when it was the last (the caller frees). */
static inline int unref(ic_entry *e) {
    return atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1;
}

/* Unlinks e from its shard (lock held) and drops the table's reference.
 * An entry nobody pins goes onto *dead, to be freed after unlocking. */
static void remove_entry(item_cache *c, ic_shard *s, ic_entry *e, uint64_t h,
                         ic_entry **dead) {
    ic_entry **pp = bucket_of(c, s, h);
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(s, e);
    s->bytes -= c->entry_bytes;
    drop(&s->entries, 1);
    drop(&s->st_bytes, c->entry_bytes);
    if (unref(e)) {
        e->hnext = *dead;
        *dead = e;
    } else {
        atomic_fetch_add_explicit(&c->detached, 1, memory_order_relaxed);
    }
}

static void free_list(item_cache *c, ic_entry *dead) {
    while (dead) {
        ic_entry *next = dead->hnext;
        entry_free(c, dead);
        dead = next;
    }
}

static inline const float *pin(ic_shard *s, ic_entry *e, item_cache_ref *ref) {
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    if (s->head != e) {
        lru_unlink(s, e);
        lru_push_head(s, e);
    }
    ref->entry = e;
    return entry_vec(e);
}

/* A lookup of id (hash h) at clock `now`: the vector, pinned into *ref,
 * or NULL on a miss. */
static const float *get_hashed(item_cache *c, int64_t id, uint64_t h, uint64_t now,
                               item_cache_ref *ref) {
    ref->entry = NULL;
    ic_shard *s = shard_of(c, h);
    ic_entry *dead = NULL;
    const float *v = NULL;

    pthread_mutex_lock(&s->lock);
    ic_entry *e = find(c, s, h, id);
    if (e && now >= e->expires) {
        remove_entry(c, s, e, h, &dead);
        bump(&s->expirations, 1);
        e = NULL;
    }
    if (e) {
        v = pin(s, e, ref);
        bump(&s->hits, 1);
    } else {
        bump(&s->misses, 1);
    }
    pthread_mutex_unlock(&s->lock);

    free_list(c, dead);
    return v;
}

const float *item_cache_get(item_cache *c, int64_t id, item_cache_ref *ref) {
    ref->entry = NULL;
    if (c->disabled) {
        bump(&c->shards[0].misses, 1);
        return NULL;
    }
    return get_hashed(c, id, mix(id), c->ttl_ms ? now_ms(c) : 0, ref);
}

/* Epoch 0 with check 0: no check (item_cache_put). */
static const float *put(item_cache *c, int64_t id, const float *vec, int check,
                        uint64_t epoch, item_cache_ref *ref);

const float *item_cache_put(item_cache *c, int64_t id, const float *vec,
                            item_cache_ref *ref) {
    return put(c, id, vec, 0, 0, ref);
}

const float *item_cache_put_at(item_cache *c, int64_t id, const float *vec, uint64_t epoch,
                               item_cache_ref *ref) {
    return put(c, id, vec, 1, epoch, ref);
}

uint64_t item_cache_epoch(const item_cache *c) {
    return atomic_load_explicit((atomic_uint_fast64_t *)&c->epoch, memory_order_acquire);
}

/* A pinned private copy that is never cached: the caller's only
 * reference, freed by its release. */
static const float *detach(item_cache *c, ic_entry *e, item_cache_ref *ref) {
    atomic_init(&e->refs, 1);
    atomic_fetch_add_explicit(&c->detached, 1, memory_order_relaxed);
    ref->entry = e;
    return entry_vec(e);
}

static const float *put(item_cache *c, int64_t id, const float *vec, int check,
                        uint64_t epoch, item_cache_ref *ref) {
    ref->entry = NULL;
    /* Allocate and copy before taking the lock: the copy is the slow part. */
    ic_entry *e = entry_alloc(c);
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->owner = c;
    e->id = id;
    memcpy(entry_vec(e), vec, c->vec_floats * sizeof(float));

    if (c->disabled) return detach(c, e, ref);

    uint64_t h = mix(id);
    ic_shard *s = shard_of(c, h);
    uint64_t now = c->ttl_ms ? now_ms(c) : 0;
    e->expires = c->ttl_ms ? now + c->ttl_ms : UINT64_MAX;
    atomic_init(&e->refs, 2);   /* the table's and the caller's */
    ic_entry *dead = NULL;
    const float *v;

    pthread_mutex_lock(&s->lock);
    /* Read under the lock: an invalidation bumps the epoch before it takes
     * the shard locks to unlink, so either it sees this entry or this sees
     * its epoch. */
    if (check && atomic_load(&c->epoch) != epoch) {
        pthread_mutex_unlock(&s->lock);
        return detach(c, e, ref);
    }
    ic_entry *old = find(c, s, h, id);
    if (old && now >= old->expires) {
        remove_entry(c, s, old, h, &dead);
        bump(&s->expirations, 1);
        old = NULL;
    }
    if (old) {
        /* Lost a race with another thread's put: use its entry. */
        v = pin(s, old, ref);
        e->hnext = dead;
        dead = e;
    } else {
        ic_entry **b = bucket_of(c, s, h);
        e->hnext = *b;
        *b = e;
        lru_push_head(s, e);
        s->bytes += c->entry_bytes;
        bump(&s->entries, 1);
        bump(&s->st_bytes, c->entry_bytes);
        bump(&s->insertions, 1);
        ref->entry = e;
        v = entry_vec(e);
        /* Evict from the cold end.  The new entry is at the head, so it goes
         * last, and only when the budget cannot hold even one entry; being
         * pinned, it stays valid for the caller either way. */
        while (s->bytes > s->budget && s->tail) {
            ic_entry *victim = s->tail;
            remove_entry(c, s, victim, mix(victim->id), &dead);
            bump(&s->evictions, 1);
        }
    }
    pthread_mutex_unlock(&s->lock);

    free_list(c, dead);
    return v;
}

size_t item_cache_invalidate(item_cache *c, const int64_t *ids, size_t n) {
    atomic_fetch_add(&c->epoch, 1);
    if (c->disabled) return 0;
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t h = mix(ids[i]);
        ic_shard *s = shard_of(c, h);
        ic_entry *dead = NULL;
        pthread_mutex_lock(&s->lock);
        ic_entry *e = find(c, s, h, ids[i]);
        if (e) {
            remove_entry(c, s, e, h, &dead);
            bump(&s->invalidations, 1);
            dropped++;
        }
        pthread_mutex_unlock(&s->lock);
        free_list(c, dead);
    }
    return dropped;
}

size_t item_cache_clear(item_cache *c) {
    atomic_fetch_add(&c->epoch, 1);
    if (c->disabled) return 0;
    size_t dropped = 0;
    for (unsigned i = 0; i < c->nshards; i++) {
        ic_shard *s = &c->shards[i];
        ic_entry *dead = NULL;
        pthread_mutex_lock(&s->lock);
        while (s->head) {
            remove_entry(c, s, s->head, mix(s->head->id), &dead);
            bump(&s->invalidations, 1);
            dropped++;
        }
        pthread_mutex_unlock(&s->lock);
        free_list(c, dead);
    }
    return dropped;
}

void item_cache_release(item_cache *c, item_cache_ref *ref) {
    ic_entry *e = ref->entry;
    if (!e) return;
    ref->entry = NULL;
    assert(e->owner == c && "ref released into a different item_cache");
    (void)c;
    if (unref(e)) {
        /* Only an unlinked entry can lose its last reference here. */
        atomic_fetch_sub_explicit(&c->detached, 1, memory_order_relaxed);
        entry_free(c, e);
    }
}

/* Ids looked up together: their hash slots and entry headers fetched
 * from memory at once, before the lookups walk them one by one. */
#define IC_BATCH 16

size_t item_cache_get_many(item_cache *c, const int64_t *ids, size_t n,
                           const float **vecs, item_cache_ref *refs) {
    /* The hot spot of a warm request's item stage: a lookup is a chain of
     * dependent cache misses (the bucket slot, the entry's header, its LRU
     * neighbours), ~0.5 us each with the vectors of a big cache spread
     * over gigabytes and the forward pass's weights streamed through the
     * caches in between.  So a batch's slots are prefetched first (their
     * addresses need no lock: the bucket arrays never move), then, under
     * each shard's lock, the entry each slot points to, so that the misses
     * of a batch overlap instead of following one another.  (A prefetch of
     * an entry freed meanwhile is harmless: prefetches never fault.)
     * Grouping ids by shard to take each lock once would save ~20 ns a
     * lookup, not worth a sort. */
    if (c->disabled) {
        for (size_t i = 0; i < n; i++) refs[i].entry = NULL, vecs[i] = NULL;
        bump(&c->shards[0].misses, n);
        return 0;
    }
    const uint64_t now = c->ttl_ms ? now_ms(c) : 0;
    uint64_t h[IC_BATCH];
    size_t hits = 0;
    for (size_t b = 0; b < n; b += IC_BATCH) {
        const size_t m = n - b < IC_BATCH ? n - b : IC_BATCH;
        for (size_t i = 0; i < m; i++) {
            h[i] = mix(ids[b + i]);
            ic_shard *s = shard_of(c, h[i]);
            __builtin_prefetch(s, 1);
            __builtin_prefetch(bucket_of(c, s, h[i]), 0);
        }
        for (size_t i = 0; i < m; i++) {
            ic_shard *s = shard_of(c, h[i]);
            pthread_mutex_lock(&s->lock);
            ic_entry *e = *bucket_of(c, s, h[i]);
            if (e) __builtin_prefetch(e, 1);
            pthread_mutex_unlock(&s->lock);
        }
        for (size_t i = 0; i < m; i++) {
            vecs[b + i] = get_hashed(c, ids[b + i], h[i], now, &refs[b + i]);
            hits += vecs[b + i] != NULL;
        }
    }
    return hits;
}

void item_cache_release_many(item_cache *c, item_cache_ref *refs, size_t n) {
    for (size_t i = 0; i < n; i++) item_cache_release(c, &refs[i]);
}

void item_cache_stats_get(const item_cache *c, item_cache_stats *out) {
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < c->nshards; i++) {
        ic_shard *s = &c->shards[i];
#define IC_LOAD(f) atomic_load_explicit(&s->f, memory_order_relaxed)
        out->hits += IC_LOAD(hits);
        out->misses += IC_LOAD(misses);
        out->insertions += IC_LOAD(insertions);
        out->evictions += IC_LOAD(evictions);
        out->expirations += IC_LOAD(expirations);
        out->invalidations += IC_LOAD(invalidations);
        out->entries += IC_LOAD(entries);
        out->bytes += IC_LOAD(st_bytes);
#undef IC_LOAD
    }
}

size_t item_cache_vec_floats(const item_cache *c) {
    return c->vec_floats;
}

size_t item_cache_entry_bytes(const item_cache *c) {
    return c->entry_bytes;
}

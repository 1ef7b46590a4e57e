/*
 * featstore.c - the feature store's front end, see featstore.h: parameters,
 * keys, the commands of each read, and the decoding of their replies into
 * histories and item features (proto/features.h).  Where the commands go
 * is a backend's business (featstore_backend.h: one Redis, or a Redis
 * Cluster), chosen once at open.
 *
 * Workload: per rank request, one history read (three commands on one
 * key) and one read of a few hundred item keys, decoded into the caller's
 * arena; ctr-load's SETs, queued and flushed in batches.
 */
#include "featstore.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "featstore_backend.h"
#include "hcache.h"
#include "proto/features.h"

/* Longest "<prefix>i:<int64>" key beyond the prefix: "i:" and 20 digits
 * with a sign. */
#define ITEM_KEY_EXTRA 24
/* Longest key featstore_get_meta builds. */
#define CONFIG_KEY_MAX 1100

struct featstore {
    featstore_params p;         /* prefix, user, password: the copies below;
                                   addr and cluster: the backend's */
    const featstore_backend *ops;
    void *impl;                 /* the backend's state */
    char *prefix;
    size_t prefix_len;
    char *user, *password;      /* AUTH; NULL when not set */
    arena scratch;              /* reads without the caller's arena */
    hcache *hc;                 /* params.history_cache (one node only) */
    featstore_stats st;
};

void featstore_default_params(featstore_params *p) {
    p->addr = "127.0.0.1:6379";
    p->connect_timeout_ms = 50;
    p->command_timeout_ms = 20;
    p->breaker_base_ms = 100;
    p->breaker_max_ms = 400;
    p->breaker_hook = NULL;
    p->breaker_hook_arg = NULL;
    p->prefix = "ctr:";
    p->max_tags = 5;
    p->mm_dim = 128;
    p->cate = 0;
    p->max_seq = 1000;
    p->cluster = NULL;
    p->read_replicas = 0;
    p->cluster_refresh_ms = 100;
    p->user = NULL;
    p->password = NULL;
    p->desync_hook = NULL;
    p->desync_hook_arg = NULL;
    p->node_hooks = NULL;
    p->history_cache = NULL;
}

/* What every backend needs of p. */
static int check_params(const featstore_params *p, int cluster, char *err, size_t errlen) {
    if (!cluster && (!p->addr || !p->addr[0]))
        return ctr_fail(err, errlen, CTR_EINVAL, "no Redis address");
    if (!p->prefix) return ctr_fail(err, errlen, CTR_EINVAL, "no key prefix");
    if (p->connect_timeout_ms <= 0 || p->command_timeout_ms <= 0 || p->breaker_base_ms <= 0 ||
        p->breaker_max_ms < p->breaker_base_ms)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "timeouts must be positive (connect %d ms, command %d "
                        "ms, breaker %d..%d ms)",
                        p->connect_timeout_ms, p->command_timeout_ms, p->breaker_base_ms,
                        p->breaker_max_ms);
    if (p->max_tags < 0 || p->max_tags > FEATURES_MAX_TAGS || p->mm_dim < 0 ||
        p->mm_dim > FEATURES_MAX_MM || p->max_seq < 0)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "limits out of range (max_tags %d, mm_dim %d, max_seq "
                        "%d)",
                        p->max_tags, p->mm_dim, p->max_seq);
    return CTR_OK;
}

int featstore_open(const featstore_params *p, featstore **out, char *err, size_t errlen) {
    *out = NULL;
    int cluster = p->cluster && p->cluster[0];
    int rc = check_params(p, cluster, err, errlen);
    if (rc < 0) return rc;
    featstore *fs = calloc(1, sizeof *fs);
    if (!fs) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    arena_init(&fs->scratch, 1 << 12);
    fs->p = *p;
    fs->p.addr = fs->p.cluster = NULL;
    fs->p.user = fs->p.password = NULL;
    fs->prefix = strdup(p->prefix);
    if (!fs->prefix || (p->user && p->user[0] && !(fs->user = strdup(p->user))) ||
        (p->password && p->password[0] && !(fs->password = strdup(p->password)))) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto fail;
    }
    fs->p.prefix = fs->prefix;
    fs->prefix_len = strlen(fs->prefix);
    fs->p.user = fs->user;
    fs->p.password = fs->password;
    fs->ops = cluster ? &featstore_cluster_backend : &featstore_single_backend;
    fs->hc = cluster ? NULL : p->history_cache;
    featstore_params bp = fs->p;    /* the address or seeds, for open only */
    bp.addr = p->addr;
    bp.cluster = cluster ? p->cluster : NULL;
    if ((rc = fs->ops->open(&bp, &fs->st, &fs->impl, err, errlen)) < 0) goto fail;
    *out = fs;
    return CTR_OK;

fail:
    featstore_close(fs);
    return rc;
}

/* Overwrites a secret before freeing it, so it does not linger in freed
 * memory (core dumps). */
static void free_secret(char *s) {
    if (!s) return;
    volatile char *v = s;
    while (*v) *v++ = 0;
    free(s);
}

void featstore_close(featstore *fs) {
    if (!fs) return;
    if (fs->impl) fs->ops->close(fs->impl);
    free(fs->user);
    free_secret(fs->password);
    free(fs->prefix);
    arena_free(&fs->scratch);
    free(fs);
}

void featstore_stats_get(const featstore *fs, featstore_stats *st) {
    *st = fs->st;
    st->breaker_opens = fs->ops->breaker_opens(fs->impl);
}

breaker_state featstore_breaker_state(const featstore *fs) {
    return fs->ops->breaker_state(fs->impl);
}

int featstore_pending(const featstore *fs) { return fs->ops->pending(fs->impl); }

uint64_t featstore_round_trips(const featstore *fs) { return fs->st.round_trips; }

int featstore_ping(featstore *fs, int64_t deadline_ns, char *err, size_t errlen) {
    return fs->ops->ping(fs->impl, deadline_ns, err, errlen);
}

/* --- Keys and replies ---------------------------------------------------- */

static void free_replies(redisReply **r, int n) {
    for (int i = 0; i < n; i++)
        if (r[i]) freeReplyObject(r[i]);
}

/* WRONGTYPE: the key exists but holds a hash, list...: a value this
 * service did not write, so it is malformed data, not an outage. */
static int is_wrongtype(const redisReply *r) { return rconn_reply_is(r, "WRONGTYPE"); }

/* Writes the decimal digits of v at p; returns the length. */
static size_t put_int64(char *p, int64_t v) {
    char tmp[24];
    size_t n = 0;
    /* Negate in unsigned arithmetic so INT64_MIN needs no special case. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) p[len++] = '-';
    while (n) p[len++] = tmp[--n];
    return len;
}

/* --- Histories ------------------------------------------------------------ */

static void put_u32le(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Decodes a history read as [STRLEN, GETRANGE 0 7, GETRANGE -(4*keep+8)
 * -1] (a value of `total` bytes, either version of proto/features.h):
 * checks the header (features_user_header: magic, version, a length that
 * fits it) and the kept ids with the one decoder, on a value made of the
 * header and the tail's last ids.  The tail is read 8 bytes longer than
 * the ids kept, so that a value that shrank between the reads (an append
 * cutting it back to its max_seq) shows: its last 4 kept bytes must all be
 * ids, not header.  A value that grew meanwhile (an append) gives its
 * newest ids, which is the history an instant later.  CTR_OK, CTR_EFORMAT
 * or CTR_ENOMEM, with msg saying why. */
static int decode_history(long long total, const redisReply *head, const redisReply *tail,
                          int keep, arena *a, int64_t **ids, int *n, char *msg, size_t msglen) {
    const unsigned char *h = (const unsigned char *)head->str;
    if (head->len < FEATURES_HEADER_SIZE || total < FEATURES_HEADER_SIZE)
        return ctr_fail(msg, msglen, CTR_EFORMAT,
                        "user value of %lld bytes is shorter than its %d-byte header", total,
                        FEATURES_HEADER_SIZE);
    uint32_t count, max_seq;
    int rc = features_user_header(h, (size_t)total, &count, &max_seq, msg, msglen);
    if (rc < 0) return rc;
    size_t kept = count < (uint32_t)keep ? count : (size_t)keep;
    size_t have = tail->len;
    /* The whole value when it is shorter than the tail asked for. */
    if (have < FEATURES_HEADER_SIZE + 4 * kept)
        return ctr_fail(msg, msglen, CTR_EFORMAT, "user value changed while being read");
    unsigned char *v = arena_alloc(a, FEATURES_HEADER_SIZE + 4 * kept, 8);
    if (!v) return ctr_fail(msg, msglen, CTR_ENOMEM, "arena full");
    memcpy(v, h, FEATURES_HEADER_SIZE);
    if (!max_seq) put_u32le(v + 4, (uint32_t)kept);   /* version 1: the count */
    memcpy(v + FEATURES_HEADER_SIZE, tail->str + have - 4 * kept, 4 * kept);
    return features_user_decode(v, FEATURES_HEADER_SIZE + 4 * kept, keep, a, ids, n, msg,
                                msglen);
}

/* <prefix>u:<user_id> in the arena; NULL when it is full. */
static char *user_key(const featstore *fs, const char *user_id, arena *a, size_t *klen) {
    size_t ulen = strlen(user_id);
    *klen = fs->prefix_len + 2 + ulen;
    char *key = arena_alloc(a, *klen, 1);
    if (!key) return NULL;
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, "u:", 2);
    memcpy(key + fs->prefix_len + 2, user_id, ulen);
    return key;
}

/* The cache's side of a read of user_id's history, into *pr: answered
 * (HCACHE_HIT, HCACHE_HIT_NONE: *ids / *n set), or what the read from
 * Redis needs (the key, and the stamp of a miss for the insert).
 * CTR_OK, or CTR_EINVAL / CTR_ENOMEM (no key: nothing to read). */
static int user_probe(featstore *fs, const char *user_id, int keep, arena *a, int64_t **ids,
                      int *n, featstore_user_probe *pr) {
    *ids = NULL;
    *n = 0;
    pr->user_id = user_id;
    pr->key = NULL;
    pr->cached = HCACHE_OFF;
    if (!user_id) return CTR_EINVAL;
    pr->keep = keep < 1 || keep > fs->p.max_seq ? fs->p.max_seq : keep;
    if (!(pr->key = user_key(fs, user_id, a, &pr->klen))) return CTR_ENOMEM;
    if (fs->hc) pr->cached = hcache_get(fs->hc, pr->key, pr->klen, pr->keep, a, ids, n, &pr->stamp);
    return CTR_OK;
}

int featstore_get_user_cached(featstore *fs, const char *user_id, int keep, arena *a,
                              int64_t **ids, int *n, int *status, featstore_user_probe *probe) {
    if (user_probe(fs, user_id, keep, a, ids, n, probe) < 0) return 0;
    switch (probe->cached) {
    case HCACHE_HIT: *status = CTR_OK; return 1;
    case HCACHE_HIT_NONE: *status = CTR_ENOTFOUND; return 1;
    default: return 0;
    }
}

int featstore_get_user(featstore *fs, const char *user_id, int keep, int64_t deadline_ns,
                       arena *a, int64_t **ids, int *n, char *err, size_t errlen) {
    featstore_user_probe pr;
    user_probe(fs, user_id, keep, a, ids, n, &pr);
    if (pr.cached == HCACHE_HIT) return CTR_OK;
    if (pr.cached == HCACHE_HIT_NONE)
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no user %s", user_id);
    return featstore_get_user_read(fs, &pr, deadline_ns, a, ids, n, err, errlen);
}

int featstore_get_user_read(featstore *fs, const featstore_user_probe *pr, int64_t deadline_ns,
                            arena *a, int64_t **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    const char *user_id = pr->user_id, *key = pr->key;
    const size_t klen = pr->klen;
    const int keep = pr->keep;
    if (!user_id) return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    const int insert = pr->cached == HCACHE_MISS;

    /* The length, the header and the last `keep` ids (and 8 bytes more:
     * decode_history), in one round trip.  (A value replaced between the
     * reads shows as a length mismatch, or as a history mixing the two
     * versions for this one request.) */
    char tail[24];
    size_t tlen = (size_t)snprintf(tail, sizeof tail, "-%lld",
                                   (long long)keep * 4 + FEATURES_HEADER_SIZE);
    const char *a0[] = {"STRLEN", key};
    const size_t l0[] = {6, klen};
    const char *a1[] = {"GETRANGE", key, "0", "7"};
    const size_t l1[] = {8, klen, 1, 1};
    const char *a2[] = {"GETRANGE", key, tail, "-1"};
    const size_t l2[] = {8, klen, tlen, 2};
    const rconn_cmd cmds[] = {{2, a0, l0, RCONN_INTEGER}, {4, a1, l1, RCONN_STRING},
                              {4, a2, l2, RCONN_STRING}};
    redisReply *r[3];
    int stv[3];
    int rc = fs->ops->read(fs->impl, 3, cmds, FEATSTORE_ROUTE_DEFAULT, deadline_ns, a, r, stv,
                           err, errlen);
    if (rc < 0) {
        free_replies(r, 3);
        return rc;
    }
    /* Each reply is of its command's type, or WRONGTYPE (featstore_backend.h). */
    for (int i = 0; i < 3; i++) {
        if (is_wrongtype(r[i])) {
            fs->st.users_malformed++;
            free_replies(r, 3);
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "user %s: the key is not a string (WRONGTYPE)", user_id);
        }
    }
    long long total = r[0]->integer;
    if (total == 0) {
        free_replies(r, 3);
        if (insert) hcache_put(fs->hc, &pr->stamp, key, klen, keep, NULL, 0, 0);
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no user %s", user_id);
    }
    char msg[160];
    rc = decode_history(total, r[1], r[2], keep, a, ids, n, msg, sizeof msg);
    free_replies(r, 3);
    if (rc < 0) {
        *ids = NULL;
        *n = 0;
        if (rc == CTR_ENOMEM) return ctr_fail(err, errlen, rc, "%s", msg);
        if (rc == CTR_EFORMAT) fs->st.users_malformed++;
        return ctr_fail(err, errlen, rc, "user %s: %s", user_id, msg);
    }
    if (insert) hcache_put(fs->hc, &pr->stamp, key, klen, keep, *ids, *n, 1);
    return CTR_OK;
}

/* --- Items ------------------------------------------------------------------ */

/* The longest item value the schema allows (max_tags, mm_dim, cate). */
static size_t item_longest(const featstore *fs) {
    return fs->p.cate ? features_item_cate_size(fs->p.max_tags, fs->p.mm_dim)
                      : features_item_size(fs->p.max_tags, fs->p.mm_dim);
}

/* GETRANGE <prefix>i:<id> 0 <longest> for each id, in the arena: one byte
 * more than a valid value can have shows a value that is too long,
 * without reading it.  NULL when the arena is full. */
static rconn_cmd *item_cmds(const featstore *fs, const int64_t *ids, int n, arena *a) {
    char *last = arena_alloc(a, 24, 1);
    const char **argv = arena_alloc(a, (size_t)n * 4 * sizeof *argv, _Alignof(const char *));
    size_t *lens = arena_alloc(a, (size_t)n * 4 * sizeof *lens, _Alignof(size_t));
    rconn_cmd *cmds = arena_alloc(a, (size_t)n * sizeof *cmds, _Alignof(rconn_cmd));
    size_t stride = fs->prefix_len + ITEM_KEY_EXTRA;
    char *keys = arena_alloc(a, (size_t)n * stride, 1);
    if (!last || !argv || !lens || !cmds || !keys) return NULL;
    size_t last_len = (size_t)snprintf(last, 24, "%zu", item_longest(fs));
    for (int i = 0; i < n; i++) {
        char *k = keys + (size_t)i * stride;
        memcpy(k, fs->prefix, fs->prefix_len);
        k[fs->prefix_len] = 'i';
        k[fs->prefix_len + 1] = ':';
        const char **av = argv + 4 * (size_t)i;
        size_t *al = lens + 4 * (size_t)i;
        av[0] = "GETRANGE";
        al[0] = 8;
        av[1] = k;
        al[1] = fs->prefix_len + 2 + put_int64(k + fs->prefix_len + 2, ids[i]);
        av[2] = "0";
        al[2] = 1;
        av[3] = last;
        al[3] = last_len;
        cmds[i] = (rconn_cmd){4, av, al, RCONN_STRING};
    }
    return cmds;
}

/* One item's reply into *it: found, or why not (counted).  CTR_ENOMEM
 * (arena) stops the call; a malformed value is noted in msg and returns
 * CTR_EFORMAT. */
static int decode_item(featstore *fs, const redisReply *e, arena *a, featstore_item *it,
                       char *msg, size_t msglen) {
    memset(it, 0, sizeof *it);
    if (e->type == REDIS_REPLY_STRING && e->len == 0) {
        /* GETRANGE answers "" for an absent key. */
        it->status = CTR_ENOTFOUND;
        fs->st.items_missing++;
        return CTR_OK;
    }
    size_t longest = item_longest(fs);
    features_item f;
    int rc;
    if (e->type != REDIS_REPLY_STRING) {   /* WRONGTYPE */
        rc = ctr_fail(msg, msglen, CTR_EFORMAT, "the key is not a string");
    } else if (e->len > longest) {
        rc = ctr_fail(msg, msglen, CTR_EFORMAT,
                      "value longer than the %zu bytes the schema allows", longest);
    } else {
        rc = features_item_decode(e->str, e->len, fs->p.max_tags, fs->p.mm_dim, a, &f, msg,
                                  msglen);
        if (rc == CTR_OK && fs->p.cate && !f.has_cate)
            rc = ctr_fail(msg, msglen, CTR_EFORMAT, "no category (the model reads one)");
    }
    if (rc == CTR_ENOMEM) return rc;
    if (rc < 0) {
        it->status = CTR_EFORMAT;
        fs->st.items_malformed++;
        return CTR_EFORMAT;
    }
    *it = (featstore_item){.found = 1, .status = CTR_OK, .tags = f.tags,
                           .num_tags = f.num_tags, .mm = f.mm, .mm_dim = f.mm_dim,
                           .has_cate = f.has_cate, .cate = f.cate};
    return CTR_OK;
}

int featstore_get_items(featstore *fs, const int64_t *ids, int n, int64_t deadline_ns,
                        arena *a, featstore_item *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (n < 0) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    if (n == 0) return CTR_OK;
    if (n >= INT_MAX / 4) return ctr_fail(err, errlen, CTR_EINVAL, "too many ids");
    rconn_cmd *cmds = item_cmds(fs, ids, n, a);
    redisReply **r = arena_alloc(a, (size_t)n * sizeof *r, _Alignof(redisReply *));
    int *stv = arena_alloc(a, (size_t)n * sizeof *stv, _Alignof(int));
    if (!cmds || !r || !stv) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");

    int rc = fs->ops->read(fs->impl, n, cmds, FEATSTORE_ROUTE_DEFAULT, deadline_ns, a, r, stv,
                           err, errlen);
    /* A cluster node that failed costs its items only (err keeps why). */
    int answered = 0;
    for (int i = 0; i < n && rc < 0; i++) answered += stv[i] == CTR_OK;
    if (rc < 0 && (!answered || rc == CTR_ENOMEM || rc == CTR_EINVAL)) {
        free_replies(r, n);
        return rc;
    }
    int noted = rc < 0;
    rc = CTR_OK;
    fs->st.items_requested += (uint64_t)n;
    for (int i = 0; i < n; i++) {
        featstore_item *it = &out[i];
        if (stv[i] < 0) {
            memset(it, 0, sizeof *it);
            it->status = stv[i];
            fs->st.items_unavailable++;
            continue;
        }
        char msg[160];
        int drc = decode_item(fs, r[i], a, it, msg, sizeof msg);
        if (drc == CTR_ENOMEM) {
            rc = ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
            break;
        }
        if (drc < 0 && !noted++)
            ctr_fail(err, errlen, CTR_EFORMAT, "item %lld: %s", (long long)ids[i], msg);
    }
    free_replies(r, n);
    return rc;
}

/* --- The feature-set marker ----------------------------------------------- */

int featstore_get_meta(featstore *fs, int64_t deadline_ns, char *buf, size_t cap,
                       size_t *len, char *err, size_t errlen) {
    *len = 0;
    if (cap) buf[0] = '\0';
    char key[CONFIG_KEY_MAX];
    int klen = snprintf(key, sizeof key, "%smeta", fs->prefix);
    if (klen < 0 || (size_t)klen >= sizeof key)
        return ctr_fail(err, errlen, CTR_EINVAL, "key prefix too long");
    char last[16];
    size_t last_len = (size_t)snprintf(last, sizeof last, "%d", FEATSTORE_META_MAX);
    const char *argv[] = {"GETRANGE", key, "0", last};
    const size_t lens[] = {8, (size_t)klen, 1, last_len};
    const rconn_cmd c = {4, argv, lens, RCONN_STRING};
    redisReply *r;
    int stv;
    arena_reset(&fs->scratch);
    int rc = fs->ops->read(fs->impl, 1, &c, FEATSTORE_ROUTE_MASTER_FIRST, deadline_ns,
                           &fs->scratch, &r, &stv, err, errlen);
    if (rc < 0) return rc;
    if (is_wrongtype(r)) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%s is not a string", key);
    }
    if (r->len == 0) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no feature-set marker %s", key);
    }
    if (r->len > FEATSTORE_META_MAX || r->len >= cap) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%s is longer than %d bytes", key,
                        FEATSTORE_META_MAX);
    }
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    *len = r->len;
    freeReplyObject(r);
    return CTR_OK;
}

/* --- Writing -------------------------------------------------------------- */

/* SET <prefix><kind><id> value, queued by the backend. */
static int put(featstore *fs, const char *kind, const char *id, size_t idlen, const void *value,
               size_t len, char *err, size_t errlen) {
    /* The backend copies the key at once, so a stack copy will do; ids are
     * short (user ids are at most 256 bytes). */
    char stack[512];
    size_t kind_len = strlen(kind);
    size_t klen = fs->prefix_len + kind_len + idlen;
    char *key = klen <= sizeof stack ? stack : malloc(klen);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, kind, kind_len);
    memcpy(key + fs->prefix_len + kind_len, id, idlen);
    int rc = fs->ops->put(fs->impl, key, klen, value, len, err, errlen);
    if (key != stack) free(key);
    return rc;
}

int featstore_put_item(featstore *fs, int64_t item_id, const void *value, size_t len, char *err,
                       size_t errlen) {
    char id[24];
    return put(fs, "i:", id, put_int64(id, item_id), value, len, err, errlen);
}

int featstore_put_user(featstore *fs, const char *user_id, const void *value, size_t len,
                       char *err, size_t errlen) {
    if (!user_id) return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    return put(fs, "u:", user_id, strlen(user_id), value, len, err, errlen);
}

int featstore_put_meta(featstore *fs, const void *value, size_t len, char *err, size_t errlen) {
    return put(fs, "meta", "", 0, value, len, err, errlen);
}

int featstore_flush(featstore *fs, char *err, size_t errlen) {
    return fs->ops->flush(fs->impl, err, errlen);
}

/* --- Passwords -------------------------------------------------------------- */

int featstore_password_file(const char *path, char *buf, size_t cap, char *err, size_t errlen) {
    if (cap) buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return ctr_fail(err, errlen, CTR_EIO, "password file \"%s\": %s", path, strerror(errno));
    size_t n = 0;
    int c, too_long = 0;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        if (n + 1 < cap) buf[n++] = (char)c;
        else too_long = 1;
    }
    int rerr = ferror(f);
    fclose(f);
    if (n && buf[n - 1] == '\r') n--;
    if (cap) buf[n] = '\0';
    if (rerr) return ctr_fail(err, errlen, CTR_EIO, "password file \"%s\": read error", path);
    if (too_long) {
        volatile char *v = buf;
        for (size_t i = 0; i < cap; i++) v[i] = 0;
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "password file \"%s\": first line longer than %zu bytes", path,
                        cap ? cap - 1 : 0);
    }
    if (!n)
        return ctr_fail(err, errlen, CTR_EINVAL, "password file \"%s\": empty first line", path);
    return CTR_OK;
}

/* --- Appends and item changes ------------------------------------------------ */

int featstore_load_functions(featstore *fs, const void *src, size_t len, char *err,
                             size_t errlen) {
    const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", src};
    const size_t lens[] = {8, 4, 7, len};
    const rconn_cmd c = {4, argv, lens, RCONN_STRING};
    return fs->ops->each_master(fs->impl, &c, err, errlen);
}

/* "<prefix><kind><id>" in the arena; NULL when full. */
static char *key_of(const featstore *fs, const char *kind, const char *id, size_t idlen,
                    arena *a, size_t *klen) {
    size_t kl = strlen(kind);
    *klen = fs->prefix_len + kl + idlen;
    char *k = arena_alloc(a, *klen, 1);
    if (!k) return NULL;
    memcpy(k, fs->prefix, fs->prefix_len);
    memcpy(k + fs->prefix_len, kind, kl);
    memcpy(k + fs->prefix_len + kl, id, idlen);
    return k;
}

/* The decimal text of v in the arena. */
static const char *int_text(arena *a, int64_t v, size_t *len) {
    char *p = arena_alloc(a, 24, 1);
    if (p) *len = put_int64(p, v);
    return p;
}

/* ctr_append_packed's answer for one user: the ids held, or an error (a
 * key that is not a user value). */
static int append_result(const redisReply *e, int64_t *held, char *msg, size_t msglen) {
    if (e->type == REDIS_REPLY_INTEGER) {
        if (held) *held = e->integer;
        return CTR_OK;
    }
    return ctr_fail(msg, msglen, CTR_EFORMAT, "%.*s",
                    (int)(e->type == REDIS_REPLY_ERROR && e->len < 200 ? e->len : 0),
                    e->type == REDIS_REPLY_ERROR ? e->str : "");
}

/* featstore_append's arguments checked, and every user's ids packed as
 * the value holds them (int32 LE) into *packed.  CTR_OK, or an error. */
static int append_pack(int n, const char *const *users, const int *counts, const int64_t *ids,
                       int max_seq, arena *a, unsigned char **packed, char *err,
                       size_t errlen) {
    if (n < 0 || max_seq < 1 || n > INT_MAX / 8)
        return ctr_fail(err, errlen, CTR_EINVAL, "n = %d, max_seq = %d", n, max_seq);
    if (!n) return CTR_OK;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (!users[i] || counts[i] < 1)
            return ctr_fail(err, errlen, CTR_EINVAL, "user %d: no id or no ids", i);
        total += (size_t)counts[i];
    }
    for (size_t j = 0; j < total; j++)
        if (ids[j] < 0 || ids[j] > INT32_MAX)
            return ctr_fail(err, errlen, CTR_EINVAL, "id %lld outside 0..%ld",
                            (long long)ids[j], (long)INT32_MAX);
    *packed = arena_alloc(a, 4 * total, 8);
    if (!*packed) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    for (size_t j = 0; j < total; j++) put_u32le(*packed + 4 * j, (uint32_t)ids[j]);
    return CTR_OK;
}

/* The FCALL ctr_append_packed commands of users u0..u1-1 into cmds[c],
 * their arguments from argv/lens at *k, their ids from packed at *at.
 * nkeys: the command's key count as text.  CTR_OK or CTR_ENOMEM. */
static int append_command(featstore *fs, const char *const *users, const int *counts, int u0,
                          int u1, const char *nkeys, size_t nkeys_len, const char *mtext,
                          size_t mlen, const unsigned char *packed, size_t *at,
                          const char **argv, size_t *lens, size_t *k, rconn_cmd *cmd,
                          arena *a) {
    const size_t start = *k;
    size_t i = start;
    argv[i] = "FCALL";
    lens[i++] = 5;
    argv[i] = "ctr_append_packed";
    lens[i++] = 17;
    argv[i] = nkeys;
    lens[i++] = nkeys_len;
    for (int u = u0; u < u1; u++, i++)
        if (!(argv[i] = key_of(fs, "u:", users[u], strlen(users[u]), a, &lens[i])))
            return CTR_ENOMEM;
    argv[i] = mtext;
    lens[i++] = mlen;
    for (int u = u0; u < u1; u++, i++) {
        argv[i] = (const char *)packed + 4 * *at;
        lens[i] = 4 * (size_t)counts[u];
        *at += (size_t)counts[u];
    }
    *cmd = (rconn_cmd){(int)(i - start), argv + start, lens + start, RCONN_ARRAY};
    *k = i;
    return CTR_OK;
}

/* Each user's status (and ids held) from command c's answer r, which
 * covers users u0..u1-1.  *noted: whether err already says a failure. */
static void append_statuses(const redisReply *r, int stc, const char *const *users, int u0,
                            int u1, int *status, int64_t *held, int *noted, char *err,
                            size_t errlen) {
    char msg[240];
    for (int u = u0; u < u1; u++) {
        if (stc < 0) {
            status[u] = stc;
            continue;
        }
        /* WRONGTYPE is answered inside the array (a user at a time); the
         * array has one answer per key. */
        if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)(u1 - u0)) {
            status[u] = CTR_EFORMAT;
            if (!(*noted)++)
                ctr_fail(err, errlen, CTR_EFORMAT, "ctr_append_packed answered %s",
                         r->type == REDIS_REPLY_ERROR ? r->str : "another shape");
            continue;
        }
        status[u] = append_result(r->element[u - u0], held ? &held[u] : NULL, msg, sizeof msg);
        if (status[u] < 0 && !(*noted)++)
            ctr_fail(err, errlen, status[u], "user %s: %s", users[u], msg);
    }
}

int featstore_append(featstore *fs, int n, const char *const *users, const int *counts,
                     const int64_t *ids, int max_seq, arena *a, int *status, int64_t *held,
                     char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    unsigned char *packed = NULL;
    int rc = append_pack(n, users, counts, ids, max_seq, a, &packed, err, errlen);
    if (rc < 0 || !n) return rc;
    /* One node: FCALL ctr_append_packed n keys MAX_SEQ blobs, one
     * command.  A cluster: one per key (keys of different slots cannot
     * share one), routed by its key. */
    const int per_key = fs->ops->key_per_command;
    const int ncmd = per_key ? n : 1;
    const size_t argc = per_key ? 6 * (size_t)n : 4 + 2 * (size_t)n;
    const char **argv = arena_alloc(a, argc * sizeof *argv, _Alignof(const char *));
    size_t *lens = arena_alloc(a, argc * sizeof *lens, _Alignof(size_t));
    rconn_cmd *cmds = arena_alloc(a, (size_t)ncmd * sizeof *cmds, _Alignof(rconn_cmd));
    redisReply **r = arena_alloc(a, (size_t)ncmd * sizeof *r, _Alignof(redisReply *));
    int *stv = arena_alloc(a, (size_t)ncmd * sizeof *stv, _Alignof(int));
    size_t mlen = 0, nkeys_len = 0;
    const char *mtext = int_text(a, max_seq, &mlen);
    const char *nkeys = int_text(a, per_key ? 1 : n, &nkeys_len);
    if (!argv || !lens || !cmds || !r || !stv || !mtext || !nkeys)
        return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    size_t k = 0, at = 0;
    for (int c = 0; c < ncmd; c++)
        if (append_command(fs, users, counts, per_key ? c : 0, per_key ? c + 1 : n, nkeys,
                           nkeys_len, mtext, mlen, packed, &at, argv, lens, &k, &cmds[c],
                           a) < 0)
            return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    rc = fs->ops->read(fs->impl, ncmd, cmds, FEATSTORE_ROUTE_MASTER, 0, a, r, stv, err, errlen);
    if (rc < 0 && !per_key) {
        free_replies(r, ncmd);
        for (int i = 0; i < n; i++) status[i] = rc;
        return rc;
    }
    int noted = 0;
    for (int c = 0; c < ncmd; c++)
        append_statuses(r[c], stv[c], users, per_key ? c : 0, per_key ? c + 1 : n, status, held,
                        &noted, err, errlen);
    free_replies(r, ncmd);
    return rc;
}

int featstore_record_item_changes(featstore *fs, const int64_t *ids, int n, long maxlen,
                                  uint64_t floor, uint64_t *gen, char *err, size_t errlen) {
    *gen = 0;
    if (n < 1 || maxlen < 1 || n > INT_MAX / 2)
        return ctr_fail(err, errlen, CTR_EINVAL, "n = %d, maxlen = %ld", n, maxlen);
    arena_reset(&fs->scratch);
    arena *a = &fs->scratch;
    const size_t argc = 6 + (size_t)n;
    const char **argv = arena_alloc(a, argc * sizeof *argv, _Alignof(const char *));
    size_t *lens = arena_alloc(a, argc * sizeof *lens, _Alignof(size_t));
    if (!argv || !lens) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    argv[0] = "FCALL";
    lens[0] = 5;
    argv[1] = "ctr_item_changes";
    lens[1] = 16;
    argv[2] = "1";
    lens[2] = 1;
    argv[3] = key_of(fs, "item-changes", "", 0, a, &lens[3]);
    argv[4] = int_text(a, maxlen, &lens[4]);
    argv[5] = int_text(a, floor > INT64_MAX ? INT64_MAX : (int64_t)floor, &lens[5]);
    for (int i = 0; i < n; i++) argv[6 + i] = int_text(a, ids[i], &lens[6 + i]);
    for (size_t i = 0; i < argc; i++)
        if (!argv[i]) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    const rconn_cmd c = {(int)argc, argv, lens, RCONN_INTEGER};
    redisReply *r;
    int st;
    int rc = fs->ops->read(fs->impl, 1, &c, FEATSTORE_ROUTE_MASTER, 0, a, &r, &st, err, errlen);
    if (rc < 0) return rc;
    if (r->type != REDIS_REPLY_INTEGER || r->integer < 1) {   /* WRONGTYPE */
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%.*s is not an item-change stream",
                        (int)lens[3], argv[3]);
    }
    *gen = (uint64_t)r->integer;
    freeReplyObject(r);
    return CTR_OK;
}

/* "123 45 6" into ids (arena); -1 for anything but decimal ids. */
static int parse_ids(const char *s, size_t len, arena *a, int64_t **out, int *n) {
    int cnt = 0;
    for (size_t i = 0; i < len; i++) cnt += s[i] == ' ';
    int64_t *v = arena_alloc(a, (size_t)(cnt + 1) * sizeof *v, _Alignof(int64_t));
    if (!v) return -1;
    int k = 0;
    size_t i = 0;
    while (i < len) {
        if (s[i] < '0' || s[i] > '9') return -1;
        int64_t x = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (x > (INT64_MAX - 9) / 10) return -1;
            x = x * 10 + (s[i++] - '0');
        }
        v[k++] = x;
        if (i < len && s[i++] != ' ') return -1;
    }
    *out = v;
    *n = k;
    return 0;
}

/* One XRANGE entry [id, [field, value, ...]] into *c. */
static int decode_change(const redisReply *e, arena *a, featstore_change *c) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= sizeof c->id ||
        e->element[1]->type != REDIS_REPLY_ARRAY)
        return -1;
    memset(c, 0, sizeof *c);
    memcpy(c->id, e->element[0]->str, e->element[0]->len);
    c->ms = strtoull(c->id, NULL, 10);
    const redisReply *f = e->element[1];
    int have_gen = 0, have_ids = 0;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) return -1;
        if (k->len == 3 && memcmp(k->str, "gen", 3) == 0) {
            char *end;
            errno = 0;
            c->gen = strtoull(v->str, &end, 10);
            have_gen = end != v->str && *end == '\0' && !errno && c->gen > 0;
        } else if (k->len == 3 && memcmp(k->str, "ids", 3) == 0) {
            if (parse_ids(v->str, v->len, a, &c->ids, &c->n) < 0) return -1;
            have_ids = 1;
        }
    }
    return have_gen && have_ids ? 0 : -1;
}

int featstore_get_item_changes(featstore *fs, const char *after, int max, int64_t deadline_ns,
                               arena *a, featstore_change *out, int *n, char *err,
                               size_t errlen) {
    *n = 0;
    if (max < 1) return ctr_fail(err, errlen, CTR_EINVAL, "max = %d", max);
    size_t klen;
    char *key = key_of(fs, "item-changes", "", 0, a, &klen);
    char *start = arena_alloc(a, 64, 1);
    size_t clen = 0;
    const char *cnt = int_text(a, after && after[0] ? max : 1, &clen);
    if (!key || !start || !cnt) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    size_t slen = after && after[0] ? (size_t)snprintf(start, 64, "(%.48s", after) : 1;
    if (!(after && after[0])) start[0] = '+';
    /* After an entry: XRANGE key (id + COUNT max; the end: XREVRANGE key +
     * - COUNT 1. */
    const char *argv[] = {after && after[0] ? "XRANGE" : "XREVRANGE", key, start,
                          after && after[0] ? "+" : "-", "COUNT", cnt};
    const size_t lens[] = {after && after[0] ? 6u : 9u, klen, slen, 1, 5, clen};
    const rconn_cmd c = {6, argv, lens, RCONN_ARRAY};
    redisReply *r;
    int st;
    int rc = fs->ops->read(fs->impl, 1, &c, FEATSTORE_ROUTE_MASTER_FIRST, deadline_ns, a, &r,
                           &st, err, errlen);
    if (rc < 0) return rc;
    if (is_wrongtype(r)) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%.*s is not a stream", (int)klen, key);
    }
    int k = 0;
    for (size_t i = 0; i < r->elements && k < max; i++, k++) {
        if (decode_change(r->element[i], a, &out[k]) < 0) {
            freeReplyObject(r);
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "%.*s: entry %zu is not an item-change record (gen, ids)",
                            (int)klen, key, i);
        }
    }
    freeReplyObject(r);
    *n = k;
    return CTR_OK;
}

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

static uint32_t get_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32le(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Decodes a history read as [STRLEN, GETRANGE 0 7, GETRANGE -4*keep -1]
 * (a value of `total` bytes): checks the header and the kept ids with the
 * one decoder, on a value made of the header (count set to the ids kept)
 * and the tail's last ids; the length must be what the header's count
 * says.  CTR_OK, CTR_EFORMAT or CTR_ENOMEM, with msg saying why. */
static int decode_history(long long total, const redisReply *head, const redisReply *tail,
                          int keep, arena *a, int64_t **ids, int *n, char *msg, size_t msglen) {
    const unsigned char *h = (const unsigned char *)head->str;
    if (head->len < FEATURES_HEADER_SIZE)
        return ctr_fail(msg, msglen, CTR_EFORMAT,
                        "user value of %lld bytes is shorter than its %d-byte header", total,
                        FEATURES_HEADER_SIZE);
    uint32_t count = get_u32le(h + 4);
    size_t kept = count < (uint32_t)keep ? count : (size_t)keep;
    size_t have = tail->len;
    /* The header's own fields first (magic, version), as a value of no
     * ids. */
    unsigned char h0[FEATURES_HEADER_SIZE];
    memcpy(h0, h, 4);
    memset(h0 + 4, 0, 4);
    int64_t *none;
    int nnone;
    int rc = features_user_decode(h0, sizeof h0, 0, a, &none, &nnone, msg, msglen);
    if (rc < 0) return rc;
    if ((unsigned long long)total != FEATURES_HEADER_SIZE + 4ull * count)
        return ctr_fail(msg, msglen, CTR_EFORMAT, "user value of %lld bytes, its header says %lu ids",
                        total, (unsigned long)count);
    if (have < 4 * kept)
        return ctr_fail(msg, msglen, CTR_EFORMAT, "user value changed while being read");
    unsigned char *v = arena_alloc(a, FEATURES_HEADER_SIZE + 4 * kept, 8);
    if (!v) return ctr_fail(msg, msglen, CTR_ENOMEM, "arena full");
    memcpy(v, h, FEATURES_HEADER_SIZE);
    put_u32le(v + 4, (uint32_t)kept);
    memcpy(v + FEATURES_HEADER_SIZE, tail->str + have - 4 * kept, 4 * kept);
    return features_user_decode(v, FEATURES_HEADER_SIZE + 4 * kept, keep, a, ids, n, msg,
                                msglen);
}

int featstore_get_user(featstore *fs, const char *user_id, int keep, int64_t deadline_ns,
                       arena *a, int64_t **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    if (!user_id) return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    if (keep < 1 || keep > fs->p.max_seq) keep = fs->p.max_seq;
    size_t ulen = strlen(user_id);
    size_t klen = fs->prefix_len + 2 + ulen;
    char *key = arena_alloc(a, klen, 1);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, "u:", 2);
    memcpy(key + fs->prefix_len + 2, user_id, ulen);

    /* The length, the header and the last `keep` ids, in one round trip.
     * (A value replaced between the reads shows as a length mismatch, or
     * as a history mixing the two versions for this one request.) */
    char tail[24];
    size_t tlen = (size_t)snprintf(tail, sizeof tail, "-%lld", (long long)keep * 4);
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

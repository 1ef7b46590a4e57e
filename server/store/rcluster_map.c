/*
 * rcluster_map.c - the data of Redis Cluster routing (rcluster.h): key
 * slots, the slot map, redirections, and a request's keys grouped by node.
 * Nothing here touches a connection; rcluster.c runs commands with it.
 *
 * Workload: the map is read on every rank request (a slot lookup per key,
 * a few hundred keys) and changes only on a refresh or a MOVED, so it is a
 * flat slot -> shard table (16384 shorts, one lookup per key).
 */
#include "rcluster.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>

/* --- Key slots ------------------------------------------------------------ */

/* CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection), one
 * entry per leading byte; tests/server/store/test_rcluster_map.c checks it
 * against the bitwise definition and against Redis's CLUSTER KEYSLOT. */
static const uint16_t crc16_table[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
    0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
    0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
    0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
    0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
    0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
    0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
    0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
    0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
    0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
    0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
    0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
    0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
    0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
    0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
    0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
    0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
    0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
    0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
    0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

static uint16_t crc16(const unsigned char *p, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc16_table[((crc >> 8) ^ p[i]) & 0xff]);
    return crc;
}

int rcluster_key(const rconn_cmd *c) {
    if (c->argc >= 1 && c->argvlen[0] >= 5 && c->argvlen[0] <= 8 &&
        (strncasecmp(c->argv[0], "FCALL", 5) == 0) &&
        (c->argvlen[0] == 5 || (c->argvlen[0] == 8 && strncasecmp(c->argv[0] + 5, "_RO", 3) == 0)))
        /* FCALL fn numkeys key ...: one key (or several in one slot). */
        return c->argc >= 4 && !(c->argvlen[2] == 1 && c->argv[2][0] == '0') ? 3 : -1;
    return c->argc >= 2 ? 1 : -1;
}

int rcluster_keyslot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) {
            key = open + 1;
            len = (size_t)(close - key);
        }
    }
    return crc16((const unsigned char *)key, len) & (RCLUSTER_SLOTS - 1);
}

/* --- Slot map ------------------------------------------------------------- */

typedef struct shard {
    int master;                 /* node index */
    int rep_start, nrep;        /* replicas: m->reps[rep_start ..+nrep) */
} shard;

struct rcluster_map {
    rcluster_node **nodes;      /* one allocation each: pointers stay valid */
    int nnodes, cap_nodes;
    shard *shards;
    int nshards, cap_shards;
    int *reps;
    int nreps, cap_reps;
    int16_t slot_shard[RCLUSTER_SLOTS];   /* -1: no master */
};

void rcluster_map_free(rcluster_map *m) {
    if (!m) return;
    for (int i = 0; i < m->nnodes; i++) free(m->nodes[i]);
    free(m->nodes);
    free(m->shards);
    free(m->reps);
    free(m);
}

int rcluster_map_nodes(const rcluster_map *m) { return m->nnodes; }

const rcluster_node *rcluster_map_node(const rcluster_map *m, int i) {
    return i >= 0 && i < m->nnodes ? m->nodes[i] : NULL;
}

int rcluster_map_find(const rcluster_map *m, const char *host, int port) {
    for (int i = 0; i < m->nnodes; i++)
        if (m->nodes[i]->port == port && strcmp(m->nodes[i]->host, host) == 0)
            return i;
    return -1;
}

/* Grows an array of `size`-byte elements to hold one more; 0 or -1. */
static int grow(void **arr, int *cap, int used, size_t size) {
    if (used < *cap) return 0;
    int ncap = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, (size_t)ncap * size);
    if (!p) return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

/* The index of host:port, added if new (id may be NULL); CTR_EINVAL for a
 * host that does not fit, CTR_ENOMEM. */
static int node_add(rcluster_map *m, const char *host, size_t hlen, int port,
                    const char *id, size_t idlen) {
    if (hlen >= RCLUSTER_HOST_MAX || port < 1 || port > 65535) return CTR_EINVAL;
    for (int i = 0; i < m->nnodes; i++)
        if (m->nodes[i]->port == port && strlen(m->nodes[i]->host) == hlen &&
            memcmp(m->nodes[i]->host, host, hlen) == 0) {
            if (id && idlen < sizeof m->nodes[i]->id && !m->nodes[i]->id[0]) {
                memcpy(m->nodes[i]->id, id, idlen);
                m->nodes[i]->id[idlen] = '\0';
            }
            return i;
        }
    if (m->nnodes == INT16_MAX) return CTR_ENOMEM;
    if (grow((void **)&m->nodes, &m->cap_nodes, m->nnodes, sizeof *m->nodes) < 0)
        return CTR_ENOMEM;
    rcluster_node *n = calloc(1, sizeof *n);
    if (!n) return CTR_ENOMEM;
    memcpy(n->host, host, hlen);
    n->host[hlen] = '\0';
    n->port = port;
    if (id && idlen < sizeof n->id) {
        memcpy(n->id, id, idlen);
        n->id[idlen] = '\0';
    }
    m->nodes[m->nnodes] = n;
    return m->nnodes++;
}

/* The shard whose master is node, added (without replicas) if none is. */
static int shard_of_master(rcluster_map *m, int node) {
    for (int s = 0; s < m->nshards; s++)
        if (m->shards[s].master == node) return s;
    if (m->nshards == INT16_MAX) return CTR_ENOMEM;
    if (grow((void **)&m->shards, &m->cap_shards, m->nshards, sizeof *m->shards) < 0)
        return CTR_ENOMEM;
    m->shards[m->nshards] = (shard){.master = node, .rep_start = m->nreps, .nrep = 0};
    return m->nshards++;
}

static rcluster_map *map_new(void) {
    rcluster_map *m = calloc(1, sizeof *m);
    if (m) memset(m->slot_shard, 0xff, sizeof m->slot_shard);   /* all -1 */
    return m;
}

/* Node element [host, port, id, ...] of a CLUSTER SLOTS entry: its index,
 * -1 for an unknown endpoint ("?"), or a failure (message in err). */
static int parse_node(rcluster_map *m, const redisReply *e, const char *origin,
                      int entry, char *err, size_t errlen) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "CLUSTER SLOTS entry %d: a node is not [host, port, ...]", entry);
    const redisReply *h = e->element[0], *p = e->element[1];
    const char *host;
    size_t hlen;
    if (h->type == REDIS_REPLY_NIL || (h->type == REDIS_REPLY_STRING && h->len == 0)) {
        host = origin ? origin : "";
        hlen = strlen(host);
        if (!hlen)
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "CLUSTER SLOTS entry %d: a node without an address, and "
                            "no origin host to use instead", entry);
    } else if (h->type == REDIS_REPLY_STRING) {
        if (h->len == 1 && h->str[0] == '?') return -1;
        host = h->str;
        hlen = h->len;
    } else {
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "CLUSTER SLOTS entry %d: node host is not a string", entry);
    }
    if (p->type != REDIS_REPLY_INTEGER || p->integer < 1 || p->integer > 65535)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "CLUSTER SLOTS entry %d: node port is not 1..65535", entry);
    const char *id = NULL;
    size_t idlen = 0;
    if (e->elements >= 3 && e->element[2]->type == REDIS_REPLY_STRING) {
        id = e->element[2]->str;
        idlen = e->element[2]->len;
    }
    int rc = node_add(m, host, hlen, (int)p->integer, id, idlen);
    if (rc == CTR_EINVAL)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "CLUSTER SLOTS entry %d: node host longer than %d bytes", entry,
                        RCLUSTER_HOST_MAX - 1);
    if (rc < 0) return ctr_fail(err, errlen, rc, "out of memory");
    return rc;
}

int rcluster_map_parse(const redisReply *r, const char *origin_host, rcluster_map **out,
                       char *err, size_t errlen) {
    *out = NULL;
    if (!r) return ctr_fail(err, errlen, CTR_EFORMAT, "CLUSTER SLOTS: no reply");
    if (r->type == REDIS_REPLY_ERROR)
        return ctr_fail(err, errlen, CTR_EFORMAT, "CLUSTER SLOTS: %.*s",
                        (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
    if (r->type != REDIS_REPLY_ARRAY)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "CLUSTER SLOTS: reply of type %d, not an array", r->type);
    rcluster_map *m = map_new();
    if (!m) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    int rc = CTR_OK;
    for (size_t k = 0; k < r->elements; k++) {
        const redisReply *e = r->element[k];
        int entry = (int)k;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER) {
            rc = ctr_fail(err, errlen, CTR_EFORMAT,
                          "CLUSTER SLOTS entry %d: not [start, end, master, ...]", entry);
            goto fail;
        }
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        if (lo < 0 || hi >= RCLUSTER_SLOTS || lo > hi) {
            rc = ctr_fail(err, errlen, CTR_EFORMAT,
                          "CLUSTER SLOTS entry %d: bad slot range %lld-%lld", entry, lo, hi);
            goto fail;
        }
        for (long long s = lo; s <= hi; s++)
            if (m->slot_shard[s] >= 0) {
                rc = ctr_fail(err, errlen, CTR_EFORMAT,
                              "CLUSTER SLOTS entry %d: slot %lld given twice", entry, s);
                goto fail;
            }
        int master = parse_node(m, e->element[2], origin_host, entry, err, errlen);
        if (master < -1) {
            rc = master;
            goto fail;
        }
        int reps[64], nrep = 0;
        for (size_t j = 3; j < e->elements; j++) {
            int n = parse_node(m, e->element[j], origin_host, entry, err, errlen);
            if (n < -1) {
                rc = n;
                goto fail;
            }
            if (n >= 0 && n != master && nrep < (int)(sizeof reps / sizeof *reps))
                reps[nrep++] = n;
        }
        if (master < 0) continue;   /* unknown endpoint: its slots unserved */
        int known = 0;
        for (int s = 0; s < m->nshards; s++) known |= m->shards[s].master == master;
        int s = shard_of_master(m, master);
        if (s < 0) {
            rc = ctr_fail(err, errlen, s, "out of memory");
            goto fail;
        }
        if (!known) {   /* replicas from the master's first entry */
            for (int j = 0; j < nrep; j++) {
                if (grow((void **)&m->reps, &m->cap_reps, m->nreps, sizeof *m->reps) < 0) {
                    rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
                    goto fail;
                }
                m->reps[m->nreps++] = reps[j];
            }
            m->shards[s].rep_start = m->nreps - nrep;
            m->shards[s].nrep = nrep;
        }
        for (long long x = lo; x <= hi; x++) m->slot_shard[x] = (int16_t)s;
    }
    *out = m;
    return CTR_OK;

fail:
    rcluster_map_free(m);
    return rc;
}

static const shard *slot_shard(const rcluster_map *m, int slot) {
    if (slot < 0 || slot >= RCLUSTER_SLOTS || m->slot_shard[slot] < 0) return NULL;
    return &m->shards[m->slot_shard[slot]];
}

int rcluster_map_master(const rcluster_map *m, int slot) {
    const shard *s = slot_shard(m, slot);
    return s ? s->master : -1;
}

int rcluster_map_replicas(const rcluster_map *m, int slot, int *out, int max) {
    const shard *s = slot_shard(m, slot);
    if (!s) return 0;
    for (int j = 0; j < s->nrep && j < max; j++) out[j] = m->reps[s->rep_start + j];
    return s->nrep;
}

int rcluster_map_route(const rcluster_map *m, int slot, rcluster_read read, unsigned salt) {
    const shard *s = slot_shard(m, slot);
    if (!s) return -1;
    switch (read) {
    case RCLUSTER_READ_REPLICA:
        return s->nrep ? m->reps[s->rep_start + (int)(salt % (unsigned)s->nrep)] : s->master;
    case RCLUSTER_READ_ANY: {
        int k = (int)(salt % (unsigned)(s->nrep + 1));
        return k ? m->reps[s->rep_start + k - 1] : s->master;
    }
    case RCLUSTER_READ_MASTER:
        break;
    }
    return s->master;
}

int rcluster_map_covered(const rcluster_map *m) {
    int n = 0;
    for (int s = 0; s < RCLUSTER_SLOTS; s++) n += m->slot_shard[s] >= 0;
    return n;
}

int rcluster_map_add(rcluster_map *m, const char *host, int port) {
    if (!host || !host[0]) return CTR_EINVAL;
    return node_add(m, host, strlen(host), port, NULL, 0);
}

int rcluster_map_moved(rcluster_map *m, int slot, const char *host, int port) {
    if (slot < 0 || slot >= RCLUSTER_SLOTS || !host || !host[0]) return CTR_EINVAL;
    int node = node_add(m, host, strlen(host), port, NULL, 0);
    if (node < 0) return node;
    int s = shard_of_master(m, node);
    if (s < 0) return s;
    m->slot_shard[slot] = (int16_t)s;
    return node;
}

/* --- Redirections --------------------------------------------------------- */

int rcluster_redirect_parse(const char *str, size_t len, rcluster_redirect *out) {
    size_t i;
    if (len >= 6 && memcmp(str, "MOVED ", 6) == 0) {
        out->kind = RCLUSTER_MOVED;
        i = 6;
    } else if (len >= 4 && memcmp(str, "ASK ", 4) == 0) {
        out->kind = RCLUSTER_ASK;
        i = 4;
    } else {
        return CTR_ENOTFOUND;
    }
    int slot = 0, digits = 0;
    while (i < len && str[i] >= '0' && str[i] <= '9' && digits < 6) {
        slot = slot * 10 + (str[i++] - '0');
        digits++;
    }
    if (!digits || slot >= RCLUSTER_SLOTS || i >= len || str[i] != ' ') return CTR_EFORMAT;
    i++;
    /* The endpoint runs to the end (or to a blank); the port follows its
     * last ':'. */
    size_t end = i;
    while (end < len && str[end] != ' ' && str[end] != '\r' && str[end] != '\n') end++;
    size_t colon = end;
    while (colon > i && str[colon - 1] != ':') colon--;
    if (colon == i) return CTR_EFORMAT;   /* no ':' */
    colon--;                              /* at the ':' */
    int port = 0, pd = 0;
    for (size_t k = colon + 1; k < end; k++) {
        if (str[k] < '0' || str[k] > '9' || pd >= 5) return CTR_EFORMAT;
        port = port * 10 + (str[k] - '0');
        pd++;
    }
    if (!pd || port < 1 || port > 65535) return CTR_EFORMAT;
    size_t hs = i, he = colon;
    if (he > hs && str[hs] == '[') {
        if (str[he - 1] != ']') return CTR_EFORMAT;
        hs++;
        he--;
    }
    if (he - hs >= RCLUSTER_HOST_MAX) return CTR_EFORMAT;
    for (size_t k = hs; k < he; k++)
        if ((unsigned char)str[k] <= ' ' || str[k] == '[' || str[k] == ']') return CTR_EFORMAT;
    memcpy(out->host, str + hs, he - hs);
    out->host[he - hs] = '\0';
    out->slot = slot;
    out->port = port;
    return CTR_OK;
}

/* --- Grouping ------------------------------------------------------------- */

int rcluster_plan_make(const rcluster_map *m, int n, const char *const *keys,
                       const size_t *lens, rcluster_read read, unsigned salt, arena *a,
                       rcluster_plan *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (n < 0 || n == INT_MAX) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    int nn = m->nnodes;
    out->n = n;
    out->slot = arena_alloc(a, (size_t)n * sizeof(int) + 1, _Alignof(int));
    out->node = arena_alloc(a, (size_t)n * sizeof(int) + 1, _Alignof(int));
    out->order = arena_alloc(a, (size_t)n * sizeof(int) + 1, _Alignof(int));
    /* Per node (and one more for "none"): group id, then fill position. */
    int *gid = arena_alloc(a, (size_t)(nn + 1) * sizeof(int), _Alignof(int));
    int *gnode = arena_alloc(a, (size_t)(nn + 1) * sizeof(int), _Alignof(int));
    int *gstart = arena_alloc(a, (size_t)(nn + 2) * sizeof(int), _Alignof(int));
    if (!out->slot || !out->node || !out->order || !gid || !gnode || !gstart)
        return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    for (int j = 0; j <= nn; j++) gid[j] = -1;
    memset(gstart, 0, (size_t)(nn + 2) * sizeof(int));

    int ng = 0, none = 0;
    for (int i = 0; i < n; i++) {
        int s = rcluster_keyslot(keys[i], lens[i]);
        int node = rcluster_map_route(m, s, read, salt);
        out->slot[i] = s;
        out->node[i] = node;
        if (node < 0) {
            none++;
            continue;
        }
        if (gid[node] < 0) {
            gid[node] = ng;
            gnode[ng++] = node;
        }
        gstart[gid[node] + 1]++;
    }
    if (none) {   /* unserved keys form the last group */
        gid[nn] = ng;
        gnode[ng++] = -1;
        gstart[ng] = none;
    }
    for (int g = 0; g < ng; g++) gstart[g + 1] += gstart[g];
    /* Stable fill, each group from its start. */
    int *fill = arena_alloc(a, (size_t)(ng + 1) * sizeof(int), _Alignof(int));
    if (!fill) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    memcpy(fill, gstart, (size_t)ng * sizeof(int));
    for (int i = 0; i < n; i++) {
        int node = out->node[i];
        out->order[fill[gid[node < 0 ? nn : node]]++] = i;
    }
    out->ngroups = ng;
    out->group_node = gnode;
    out->group_start = gstart;
    return CTR_OK;
}


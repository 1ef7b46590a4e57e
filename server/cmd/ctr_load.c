/*
 * ctr_load.c - ctr-load, which fills the feature store: items.jsonl and
 * users.jsonl (the records of proto/records.h) become the binary Redis
 * values of proto/features.h under <prefix>i:<id> and <prefix>u:<id>
 * (deploy/REDIS_SCHEMA.md).
 *
 *   ctr-load --redis HOST:PORT|/path.sock [--items F] [--users F] [--events F]
 *            [--redis-prefix ctr:] [--model M | --max-tags 5 --mm-dim 128]
 *            [--max-seq 1000] [--batch 512] [--redis-timeout-ms 5000]
 *            [--changes-maxlen 1000]
 *
 * Its settings are rows of the programs' one settings table (config.h):
 * the same names as ctr-server's where they mean the same (--prefix and
 * --timeout-ms stay accepted as aliases).
 *
 * Workload: one process, one connection, run when features change: ~92k
 * item lines of ~1.5 kB and up to a few million user lines.  Lines are
 * decoded, checked and encoded one at a time and written as pipelined SETs,
 * --batch per round trip, so a load costs about (lines / batch) round trips
 * and Redis's own write time.  Memory: one line, one batch of encoded values
 * in hiredis's output buffer, and the keys already loaded (to catch an id
 * given twice, jsonl.h): about 60 bytes per item or user, 120 MB for 2M
 * users.
 *
 * Behaviours at the edges (also in --help, the user's manual):
 *   - a bad line is reported on stderr as FILE:LINE: message and skipped;
 *     the other lines are still loaded; exit status 1;
 *   - an item or user given twice is a bad line, and the first is kept, as
 *     in ctr-score.  Integer and string user ids share a key (42 and "42"
 *     are both <prefix>u:42), so giving both is a duplicate too;
 *   - a history longer than --max-seq keeps its most recent --max-seq ids
 *     (counted, not an error): the scorer only uses the most recent ones;
 *   - history ids are not checked against the model's vocabulary (the
 *     scorer treats unknown ones as padding), only against the format's
 *     range 0..2^31-1;
 *   - a Redis failure stops the load at once (exit 1): the values already
 *     written stay, and the last batch may or may not be stored.
 *   - with --model, an item whose features make the model's item vector
 *     overflow (finite but huge embedding values) is a bad line: the
 *     scorer would refuse it anyway;
 *   - after every value is written, the feature-set marker <prefix>meta
 *     (proto/meta.h: schema, counts, load time) is written, so the scorer
 *     can tell a loaded prefix from an empty Redis;
 *   - values are written over whatever the keys held; nothing is deleted,
 *     so a key of an item no longer in the file keeps its old value (load a
 *     new feature version under a new prefix instead, see REDIS_SCHEMA.md);
 *   - the Redis Functions library `ctr` (deploy/redis/ctr.lua, built in) is
 *     loaded first, on every master of a cluster; a Redis that refuses it
 *     (older than 7, an ACL without FUNCTION) stops the run (exit 1);
 *   - items written into a prefix that already holds a feature set (its
 *     marker exists) are recorded on <prefix>item-changes after each batch
 *     (FCALL ctr_item_changes), and the marker carries the last record's
 *     generation, so running servers drop those items' cached vectors;
 *   - histories are written as version 2 user values (max_seq --max-seq,
 *     appendable); events (--events) are appended in file order, a batch's
 *     events of one user in one call (FCALL ctr_append_packed), after the
 *     items and users; an events-only run leaves the marker alone.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/arena.h"
#include "core/engine.h"
#include "core/base/status.h"
#include "proto/features.h"
#include "proto/meta.h"
#include "proto/records.h"
#include "server/store/featstore.h"
#include "server/cmd/config.h"
#include "server/cmd/jsonl.h"
#include "server/cmd/redis_functions.h"

#define PROG "ctr-load"

static const char usage_about[] =
"Loads item features and user histories into Redis for the scoring\n"
"service, as the compact binary values described in deploy/REDIS_SCHEMA.md,\n"
"and appends behaviours to histories.  Give --redis or --redis-cluster, and\n"
"--items, --users, --events, or several.\n"
"\n"
"Items, one JSON object a line:\n"
"  {\"item_id\": 17, \"item_tags\": [up to max_tags ints],\n"
"   \"item_emb_d128\": [mm_dim numbers]}\n"
"or, for a model that reads a category (TIN, with --model):\n"
"  {\"item_id\": 0, \"cate_id\": 5}\n"
"\n";

static const char usage_after[] =
"\n"
"Checks: item ids must be >= 1 (0 is padding), except for a model whose\n"
"ids start at 0 (TIN); tags and cate_id must fit in int32 and\n"
"embedding values be finite float32; with --model, ids, tags and cate_id\n"
"must be within its vocabularies; history ids must be within\n"
"0..2147483647 (0 is padding; ids unknown to the model are padding when\n"
"scoring, so they are not refused here).  An item or user given twice is a\n"
"bad line (the first is kept).  Blank lines are skipped.\n"
"\n"
"First the Redis Functions library `ctr` is loaded (FUNCTION LOAD REPLACE,\n"
"on every master of a cluster): producers append with FCALL ctr_append\n"
"(deploy/REDIS_SCHEMA.md).  Items written into a prefix that already holds\n"
"a feature set are recorded on <prefix>item-changes, so running servers\n"
"drop their cached vectors within a health check.  Histories are written\n"
"as appendable (version 2) values.\n"
"\n"
"When every value is written, the feature-set marker <prefix>meta is\n"
"written (JSON: format, num_tags, mm_dim, items, users, loaded_at,\n"
"model_version, item_changes); the scorer's /readyz is not ready while it\n"
"is missing.  A run of --events alone leaves it as it is.\n"
"\n"
"Output: each bad line is reported on stderr as FILE:LINE: message (at most\n"
"%d per file, then only counted) and skipped; the other lines are still\n"
"loaded.  At the end one line on stdout:\n"
"  " PROG ": items_loaded=N users_loaded=N lines_rejected=N histories_truncated=N\n"
"  events_appended=N item_changes=GEN (redis ADDR, prefix \"P\")\n"
"(item_changes: the generation of the last item-change record, 0 when none)\n"
"(\"Redis Cluster SEEDS\" with --redis-cluster.)\n"
"\n"
"Exit status: 0 every line loaded; 1 some line rejected, or Redis failed\n"
"(the load stops at the failure; the last batch may or may not be stored);\n"
"2 could not start (usage, unreadable file or model).\n";

static void usage(FILE *f) {
    config_usage(f, CONFIG_LOAD, PROG,
                 "--redis HOST:PORT|/PATH.sock | --redis-cluster HOST:PORT[,...]\n"
                 "                [--items ITEMS.jsonl] [--users USERS.jsonl] [--events EVENTS.jsonl]\n"
                 "                [--KEY VALUE]...",
                 usage_about, NULL);
    fprintf(f, usage_after, JSONL_ERRORS_SHOWN);
}

/* --- Loading ------------------------------------------------------------ */

typedef struct options {
    const config_params *cp;        /* the settings */
    int max_tags, mm_dim;           /* the model's, else the settings' */
    int cate;                       /* the model reads a category (TIN) */
    engine_model *eng;              /* --model: items checked against it */
    char model_version[64];
    float *vec;                     /* one item vector, for the check */
} options;

/* A batch of events, one user's ids together (featstore_append). */
typedef struct ev_batch {
    arena a;                        /* users' ids and the call's commands */
    int nev;                        /* events (lines) queued */
    int nu;                         /* distinct users */
    int cap;                        /* table slots (a power of two) */
    int *slot;                      /* [cap] user index + 1; 0: empty */
    const char **user;              /* [batch] copies */
    long *line;                     /* [batch] first line of each user */
    int *count;                     /* [batch] ids per user */
    int *ev_user;                   /* [batch] each event's user */
    int *ev_n;                      /* [batch] each event's ids */
    int64_t **ev_ids;
} ev_batch;

typedef struct loader {
    const options *o;
    featstore *fs;
    int redis_failed;
    long batch_items, batch_users;  /* queued, not yet flushed */
    long items_loaded, users_loaded, truncated;
    /* Item changes: recorded when the prefix already held a feature set. */
    int record_changes;
    int64_t *changed;               /* ids of the items queued since the
                                       last flush */
    int nchanged, cap_changed;
    uint64_t gen;                   /* generation of the last record (or
                                       the marker's, when none was made) */
    ev_batch ev;
    long events_appended, events_rejected;
} loader;



/* Sends the queued SETs; counts them as loaded when Redis took them all,
 * then records the batch's items as changed (when the prefix was loaded
 * before): after their values, so a server that reads the record finds
 * the new values. */
static int flush(loader *ld) {
    char err[256];
    int rc = featstore_flush(ld->fs, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, PROG ": %s; stopping (the last %ld values may or may "
                "not be stored)\n", err, ld->batch_items + ld->batch_users);
        ld->redis_failed = 1;
        return rc;
    }
    ld->items_loaded += ld->batch_items;
    ld->users_loaded += ld->batch_users;
    ld->batch_items = ld->batch_users = 0;
    if (ld->nchanged) {
        rc = featstore_record_item_changes(ld->fs, ld->changed, ld->nchanged,
                                           ld->o->cp->changes_maxlen, ld->gen, &ld->gen, err,
                                           sizeof err);
        if (rc < 0) {
            fprintf(stderr, PROG ": recording %d changed items on %sitem-changes: %s; "
                    "stopping (their values are written, but running servers keep their "
                    "cached vectors up to cache_ttl_s)\n", ld->nchanged, ld->o->cp->redis_prefix, err);
            ld->redis_failed = 1;
            return rc;
        }
        ld->nchanged = 0;
    }
    return CTR_OK;
}

/* Notes an item queued, for the change record of its batch. */
static int note_changed(loader *ld, int64_t id) {
    if (!ld->record_changes) return CTR_OK;
    if (ld->nchanged == ld->cap_changed) {
        int cap = ld->cap_changed ? 2 * ld->cap_changed : 512;
        int64_t *p = realloc(ld->changed, (size_t)cap * sizeof *p);
        if (!p) return CTR_ENOMEM;
        ld->changed = p;
        ld->cap_changed = cap;
    }
    ld->changed[ld->nchanged++] = id;
    return CTR_OK;
}

/* After queueing one value: flush when the batch is full. */
static int queued(loader *ld, int rc, const char *err) {
    if (rc < 0) {
        fprintf(stderr, PROG ": %s; stopping\n", err);
        ld->redis_failed = 1;
        return rc;
    }
    if (featstore_pending(ld->fs) >= ld->o->cp->batch) return flush(ld);
    return CTR_OK;
}

/* A file being loaded: the loader and the keys its lines gave so far. */
typedef struct file_ctx {
    loader *ld;
    jsonl_seen *seen;
} file_ctx;

/* One line's work (jsonl_each_line; ctx: a file_ctx): decode, check,
 * encode, queue.  A bad line is reported with jsonl_error and answered
 * CTR_OK; a negative status stops the load. */
static int item_line(void *ctx, jsonl_source *src, const char *line, size_t len,
                     arena *scratch) {
    loader *ld = ((file_ctx *)ctx)->ld;
    jsonl_seen *seen = ((file_ctx *)ctx)->seen;
    const options *o = ld->o;
    char err[256];
    proto_item it;
    /* The fields the model reads: tags and embedding, or a category. */
    const proto_item_schema sch = {o->cate ? -1 : o->max_tags, o->cate ? -1 : o->mm_dim,
                                   o->cate};
    int st = proto_item_decode_schema(line, len, &sch, scratch, &it, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) { jsonl_error(src, "%s", err); return CTR_OK; }
    engine_item in = {it.item_id, it.tags, it.num_tags, it.mm, it.cate};
    if (o->eng && engine_item_check(o->eng, &in, err, sizeof err) < 0) {
        jsonl_error(src, "%s", err);   /* the model's ids and vocabularies */
        return CTR_OK;
    }
    if (!o->eng && it.item_id < 1) {
        jsonl_error(src, "item_id: %" PRId64 " is not an item id (ids start at 1; 0 is "
                    "padding)", it.item_id);
        return CTR_OK;
    }
    size_t size = it.has_cate ? features_item_cate_size(it.num_tags, it.mm_dim)
                              : features_item_size(it.num_tags, it.mm_dim);
    void *val = size ? arena_alloc(scratch, size, 8) : NULL;
    if (!val) return CTR_ENOMEM;
    size_t vlen;
    if ((it.has_cate ? features_item_encode_cate(it.tags, it.num_tags, it.mm, it.mm_dim,
                                                 it.cate, val, size, &vlen, err, sizeof err)
                     : features_item_encode(it.tags, it.num_tags, it.mm, it.mm_dim, val,
                                            size, &vlen, err, sizeof err)) < 0) {
        jsonl_error(src, "%s", err);
        return CTR_OK;
    }
    if (o->eng) {
        /* The model's first products of this item: exact, and cheap next
         * to parsing the line. */
        if (engine_items_compute(o->eng, 1, &in, o->vec, NULL, err, sizeof err) < 0) {
            jsonl_error(src, "%s", err);
            return CTR_OK;
        }
    }
    char key[24];
    snprintf(key, sizeof key, "%" PRId64, it.item_id);
    long first = jsonl_seen_add(seen, key, jsonl_source_line(src), NULL);
    if (first < 0) return CTR_ENOMEM;
    if (first > 0) {
        jsonl_error(src, "item_id: %s already given on line %ld", key, first);
        return CTR_OK;
    }
    int rc = featstore_put_item(ld->fs, it.item_id, val, vlen, err, sizeof err);
    if (rc == CTR_OK) {
        ld->batch_items++;
        if (note_changed(ld, it.item_id) < 0) return CTR_ENOMEM;
    }
    return queued(ld, rc, err);
}

static int user_line(void *ctx, jsonl_source *src, const char *line, size_t len,
                     arena *scratch) {
    loader *ld = ((file_ctx *)ctx)->ld;
    jsonl_seen *seen = ((file_ctx *)ctx)->seen;
    const options *o = ld->o;
    char err[256];
    proto_user u;
    /* No bound here: a long history is truncated, not refused. */
    int st = proto_user_decode(line, len, -1, scratch, &u, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) { jsonl_error(src, "%s", err); return CTR_OK; }
    const int64_t *seq = u.item_seq;
    int n = u.seq_len;
    if (n > o->cp->max_seq) {
        seq += n - o->cp->max_seq;
        n = o->cp->max_seq;
        ld->truncated++;
    }
    size_t size = features_user_size((size_t)n);
    void *val = arena_alloc(scratch, size, 8);
    if (!val) return CTR_ENOMEM;
    size_t vlen;
    if (features_user_encode_v2(seq, n, (uint32_t)o->cp->max_seq, val, size, &vlen, err,
                                sizeof err) < 0) {
        /* Positions in the message count from the kept part; name the
         * file's position instead. */
        int i = 0;
        while (i < n && seq[i] >= 0 && seq[i] <= INT32_MAX) i++;
        jsonl_error(src, "item_seq[%d]: %" PRId64 " is outside 0..%ld",
                    (int)(seq - u.item_seq) + i, seq[i], (long)INT32_MAX);
        return CTR_OK;
    }
    long first = jsonl_seen_add(seen, u.user_id, jsonl_source_line(src), NULL);
    if (first < 0) return CTR_ENOMEM;
    if (first > 0) {
        jsonl_error(src, "user_id: %s already given on line %ld (integer "
                    "and string ids share a key)", u.user_id, first);
        return CTR_OK;
    }
    int rc = featstore_put_user(ld->fs, u.user_id, val, vlen, err, sizeof err);
    if (rc == CTR_OK) ld->batch_users++;
    return queued(ld, rc, err);
}

/* --- Events ------------------------------------------------------------- */

static uint64_t str_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Sets up the batch's arrays for o->batch events (the batch's arena keeps
 * them; reset with each batch). */
static int ev_begin(loader *ld) {
    ev_batch *b = &ld->ev;
    const int n = ld->o->cp->batch;
    arena_reset(&b->a);
    b->nev = b->nu = 0;
    b->cap = 16;
    while (b->cap < 2 * n) b->cap *= 2;
    b->slot = arena_alloc(&b->a, (size_t)b->cap * sizeof *b->slot, _Alignof(int));
    b->user = arena_alloc(&b->a, (size_t)n * sizeof *b->user, _Alignof(const char *));
    b->line = arena_alloc(&b->a, (size_t)n * sizeof *b->line, _Alignof(long));
    b->count = arena_alloc(&b->a, (size_t)n * sizeof *b->count, _Alignof(int));
    b->ev_user = arena_alloc(&b->a, (size_t)n * sizeof *b->ev_user, _Alignof(int));
    b->ev_n = arena_alloc(&b->a, (size_t)n * sizeof *b->ev_n, _Alignof(int));
    b->ev_ids = arena_alloc(&b->a, (size_t)n * sizeof *b->ev_ids, _Alignof(int64_t *));
    if (!b->slot || !b->user || !b->line || !b->count || !b->ev_user || !b->ev_n || !b->ev_ids)
        return CTR_ENOMEM;
    memset(b->slot, 0, (size_t)b->cap * sizeof *b->slot);
    return CTR_OK;
}

/* Appends the batch: each user's ids in event order, one call.  A user
 * whose key is not a user value is reported (its events are not
 * appended); a Redis failure stops the load. */
static int ev_flush(loader *ld, const char *file) {
    ev_batch *b = &ld->ev;
    if (!b->nev) return CTR_OK;
    int *off = arena_alloc(&b->a, (size_t)(b->nu + 1) * sizeof *off, _Alignof(int));
    int *status = arena_alloc(&b->a, (size_t)b->nu * sizeof *status, _Alignof(int));
    size_t total = 0;
    for (int u = 0; u < b->nu; u++) total += (size_t)b->count[u];
    int64_t *ids = arena_alloc(&b->a, (total ? total : 1) * sizeof *ids, _Alignof(int64_t));
    if (!off || !status || !ids) return CTR_ENOMEM;
    off[0] = 0;
    for (int u = 0; u < b->nu; u++) off[u + 1] = off[u] + b->count[u];
    int *fill = arena_alloc(&b->a, (size_t)b->nu * sizeof *fill, _Alignof(int));
    if (!fill) return CTR_ENOMEM;
    memcpy(fill, off, (size_t)b->nu * sizeof *fill);
    for (int e = 0; e < b->nev; e++)   /* events in order: each user's ids in order */
        for (int j = 0; j < b->ev_n[e]; j++) ids[fill[b->ev_user[e]]++] = b->ev_ids[e][j];
    char err[512];
    int rc = featstore_append(ld->fs, b->nu, b->user, b->count, ids, ld->o->cp->max_seq, &b->a,
                              status, NULL, err, sizeof err);
    if (rc < 0 && rc != CTR_EBACKEND && rc != CTR_ETIMEOUT) return rc;
    if (rc < 0 && !ld->o->cp->redis_cluster[0]) {
        fprintf(stderr, PROG ": %s; stopping (the last %d events may or may not be "
                "appended)\n", err, b->nev);
        ld->redis_failed = 1;
        return rc;
    }
    int failed = 0;
    for (int u = 0; u < b->nu; u++) {
        if (status[u] == CTR_OK) {
            ld->events_appended += b->count[u];
        } else if (status[u] == CTR_EFORMAT) {
            if (ld->events_rejected < JSONL_ERRORS_SHOWN)
                fprintf(stderr, PROG ": %s:%ld: user_id %s: not appended: its key holds "
                        "something that is not a user value\n", file, b->line[u], b->user[u]);
            if (!ld->events_rejected) fprintf(stderr, PROG ": (Redis said: %s)\n", err);
            ld->events_rejected++;
        } else {
            failed = 1;
        }
    }
    if (failed) {   /* a cluster node failed: those users are unknown */
        fprintf(stderr, PROG ": %s; stopping (some of the last %d events may or may not be "
                "appended)\n", err, b->nev);
        ld->redis_failed = 1;
        return rc < 0 ? rc : CTR_EBACKEND;
    }
    return ev_begin(ld);
}

static const char *ev_file;   /* --events, for ev_flush's messages */

static int event_line(void *ctx, jsonl_source *src, const char *line, size_t len,
                      arena *scratch) {
    loader *ld = ((file_ctx *)ctx)->ld;
    const options *o = ld->o;
    ev_batch *b = &ld->ev;
    char err[256];
    proto_user u;
    int st = proto_event_decode(line, len, -1, scratch, &u, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) {
        jsonl_error(src, "%s", err);
        return CTR_OK;
    }
    for (int i = 0; i < u.seq_len; i++)
        if (u.item_seq[i] < 0 || u.item_seq[i] > INT32_MAX) {
            jsonl_error(src, "%s: %" PRId64 " is outside 0..%ld",
                        u.seq_len == 1 && !strstr(line, "item_seq") ? "item_id" : "item_seq",
                        u.item_seq[i], (long)INT32_MAX);
            return CTR_OK;
        }
    /* The user's slot in this batch. */
    const size_t mask = (size_t)b->cap - 1;
    size_t h = (size_t)str_hash(u.user_id) & mask;
    while (b->slot[h] && strcmp(b->user[b->slot[h] - 1], u.user_id) != 0) h = (h + 1) & mask;
    if (!b->slot[h]) {
        size_t ul = strlen(u.user_id) + 1;
        char *copy = arena_alloc(&b->a, ul, 1);
        if (!copy) return CTR_ENOMEM;
        memcpy(copy, u.user_id, ul);
        b->user[b->nu] = copy;
        b->line[b->nu] = jsonl_source_line(src);
        b->count[b->nu] = 0;
        b->slot[h] = ++b->nu;
    }
    const int ui = b->slot[h] - 1;
    int64_t *ids = arena_alloc(&b->a, (size_t)u.seq_len * sizeof *ids, _Alignof(int64_t));
    if (!ids) return CTR_ENOMEM;
    memcpy(ids, u.item_seq, (size_t)u.seq_len * sizeof *ids);
    b->ev_user[b->nev] = ui;
    b->ev_n[b->nev] = u.seq_len;
    b->ev_ids[b->nev++] = ids;
    b->count[ui] += u.seq_len;
    return b->nev >= o->cp->batch ? ev_flush(ld, ev_file) : CTR_OK;
}

/* Feeds every line of src to fn.  Returns CTR_OK when the file was read to
 * its end (bad lines included), or a negative status when the load must
 * stop. */
static int load_lines(loader *ld, jsonl_source *src, jsonl_line_fn fn) {
    file_ctx f = {ld, NULL};
    int rc = jsonl_seen_init(&f.seen);
    if (rc == CTR_OK) rc = jsonl_each_line(src, fn, &f);
    if (rc == CTR_EIO && !ld->redis_failed)   /* the file's, not Redis's (said already) */
        fprintf(stderr, PROG ": %s: read error after line %ld: %s\n", jsonl_source_name(src),
                jsonl_source_line(src), strerror(errno));
    if (rc == CTR_ENOMEM) fprintf(stderr, PROG ": out of memory\n");
    jsonl_seen_free(f.seen);
    return rc;
}

/* The feature-set marker, after every value (proto/meta.h). */
static int write_meta(loader *ld) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    proto_meta m = {PROTO_META_FORMAT, ld->o->max_tags, ld->o->mm_dim, ld->items_loaded,
                    ld->users_loaded, (double)ts.tv_sec + ts.tv_nsec * 1e-9, "", ld->gen};
    snprintf(m.model_version, sizeof m.model_version, "%s", ld->o->model_version);
    proto_buf b;
    proto_buf_init(&b);
    char err[256];
    int rc = proto_meta_encode(&m, &b);
    if (rc == CTR_OK) rc = featstore_put_meta(ld->fs, b.data, b.len, err, sizeof err);
    else snprintf(err, sizeof err, "out of memory");
    proto_buf_free(&b);
    if (rc == CTR_OK) rc = featstore_flush(ld->fs, err, sizeof err);
    if (rc < 0) fprintf(stderr, PROG ": feature-set marker: %s\n", err);
    return rc;
}

/* Before any value: the Redis Functions library (appends and change
 * records call it), and whether the prefix already holds a feature set
 * (then items written are recorded as changed, and the marker's
 * generation is carried on).  CTR_OK, or a failure with a message. */
static int prepare(loader *ld, char *err, size_t errlen) {
    char why[512];
    int rc = featstore_load_functions(ld->fs, redis_functions_lua, redis_functions_lua_len, why,
                                      sizeof why);
    if (rc < 0)
        return ctr_fail(err, errlen, rc, "cannot load the Redis Functions library "
                        REDIS_FUNCTIONS_LIBRARY " (Redis 7 or later, and an ACL allowing "
                        "FUNCTION LOAD, are needed): %s", why);
    char buf[FEATSTORE_META_MAX + 1];
    size_t len;
    rc = featstore_get_meta(ld->fs, 0, buf, sizeof buf, &len, why, sizeof why);
    if (rc == CTR_ENOTFOUND) return CTR_OK;   /* a first load: nothing cached anywhere */
    proto_meta m;
    if (rc == CTR_OK && proto_meta_decode(buf, len, &m, why, sizeof why) == CTR_OK) {
        ld->record_changes = ld->o->cp->items[0] != '\0';
        ld->gen = m.item_changes;
        return CTR_OK;
    }
    if (rc == CTR_OK || rc == CTR_EFORMAT) {
        /* A marker this build cannot read: record the changes anyway. */
        ld->record_changes = ld->o->cp->items[0] != '\0';
        return CTR_OK;
    }
    return ctr_fail(err, errlen, rc, "feature-set marker: %s", why);
}

/* --- main --------------------------------------------------------------- */

/* With --model: loads it and takes the item layout it reads (tag slots and
 * embedding width, or a category) and its version; --max-tags/--mm-dim may
 * only repeat the model's.  0, or -1 with a message printed. */
static int use_model(options *o) {
    const config_params *cp = o->cp;
    char err[1024];
    o->max_tags = cp->max_tags;
    o->mm_dim = cp->mm_dim;
    if (!cp->model_path[0]) return 0;
    if (engine_model_load(cp->model_path, &o->eng, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return -1;
    }
    const engine_schema *sc = engine_model_schema(o->eng);
    if ((config_given(cp, "max_tags") && cp->max_tags != sc->num_tags) ||
        (config_given(cp, "mm_dim") && cp->mm_dim != sc->mm_dim)) {
        fprintf(stderr, PROG ": --max-tags/--mm-dim (%d/%d) disagree with the model's %d tags "
                "and %d-wide embedding; leave them out with --model\n", cp->max_tags,
                cp->mm_dim, sc->num_tags, sc->mm_dim);
        return -1;
    }
    o->max_tags = sc->num_tags;
    o->mm_dim = sc->mm_dim;
    o->cate = sc->cate_vocab > 0;
    snprintf(o->model_version, sizeof o->model_version, "%s", sc->version);
    if (!(o->vec = engine_item_vecs_alloc(o->eng, 1))) {
        fprintf(stderr, PROG ": out of memory\n");
        return -1;
    }
    return 0;
}

/* The feature store the settings name, answering PING.  Exit status 0, or
 * 2 (could not connect: a usage error) or 1 (Redis failed), said on
 * stderr. */
static int open_store(const options *o, featstore **fs) {
    const config_params *cp = o->cp;
    featstore_params p;
    featstore_default_params(&p);
    p.addr = cp->redis[0] ? cp->redis : NULL;
    p.cluster = cp->redis_cluster[0] ? cp->redis_cluster : NULL;
    p.user = cp->redis_user[0] ? cp->redis_user : NULL;
    p.password = cp->redis_password[0] ? cp->redis_password : NULL;
    p.prefix = cp->redis_prefix;
    p.connect_timeout_ms = p.command_timeout_ms = cp->redis_timeout_ms;
    p.max_tags = o->max_tags;
    p.mm_dim = o->mm_dim;
    p.max_seq = cp->max_seq;
    char err[256];
    if (featstore_open(&p, fs, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return 2;
    }
    if (featstore_ping(*fs, 0, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    return 0;
}

/* Loads the opened files into ld's store, then the marker; prints the
 * counts.  The exit status. */
static int run(loader *ld, jsonl_source *si, jsonl_source *su, jsonl_source *se) {
    const config_params *cp = ld->o->cp;
    char err[800];
    int rc = prepare(ld, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    if (si) rc = load_lines(ld, si, item_line);
    if (rc == CTR_OK && su) rc = load_lines(ld, su, user_line);
    if (rc == CTR_OK) rc = flush(ld);
    if (rc == CTR_OK && se) {
        ev_file = cp->events;
        if ((rc = ev_begin(ld)) == CTR_OK) rc = load_lines(ld, se, event_line);
        if (rc == CTR_OK) rc = ev_flush(ld, cp->events);
        if (rc == CTR_ENOMEM) fprintf(stderr, PROG ": out of memory\n");
    }
    if (rc == CTR_OK && (si || su)) rc = write_meta(ld);
    long rejected = (si ? jsonl_source_bad(si) : 0) + (su ? jsonl_source_bad(su) : 0) +
                    (se ? jsonl_source_bad(se) : 0) + ld->events_rejected;
    printf(PROG ": items_loaded=%ld users_loaded=%ld lines_rejected=%ld "
           "histories_truncated=%ld events_appended=%ld item_changes=%llu (%s %s, prefix "
           "\"%s\")\n",
           ld->items_loaded, ld->users_loaded, rejected, ld->truncated, ld->events_appended,
           (unsigned long long)ld->gen, cp->redis_cluster[0] ? "Redis Cluster" : "redis",
           cp->redis_cluster[0] ? cp->redis_cluster : cp->redis, cp->redis_prefix);
    if (ld->truncated)
        fprintf(stderr, PROG ": %ld histories were longer than --max-seq %d and keep their "
                "most recent %d ids\n", ld->truncated, cp->max_seq, cp->max_seq);
    if (fflush(stdout) != 0) rc = CTR_EIO;
    return rc == CTR_OK && !rejected ? 0 : 1;
}

int main(int argc, char **argv) {
    config_params cp = config_prog_params(CONFIG_LOAD);
    char err[1400];
    int rc = config_parse(&cp, argc, argv, NULL, err, sizeof err);
    if (rc == CONFIG_HELP) {
        usage(stdout);
        return 0;
    }
    config_scrub_argv(argc, argv);
    if (rc == CTR_OK && !cp.redis[0] == !cp.redis_cluster[0])
        rc = ctr_fail(err, sizeof err, CTR_EINVAL, "need one of --redis, --redis-cluster");
    if (rc == CTR_OK && !cp.items[0] && !cp.users[0] && !cp.events[0])
        rc = ctr_fail(err, sizeof err, CTR_EINVAL,
                      "need at least one of --items, --users, --events");
    if (rc == CTR_OK) rc = config_redis_auth(&cp, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help'.\n", err);
        memset(&cp, 0, sizeof cp);   /* the password, if read */
        return 2;
    }

    options o = {.cp = &cp};
    loader ld = {.o = &o};
    arena_init(&ld.ev.a, 1 << 16);
    jsonl_source *si = NULL, *su = NULL, *se = NULL;
    int status = 2;
    if (use_model(&o) < 0) goto done;
    /* Open every file before writing anything, so a typo in the last
     * does not leave a half-done load. */
    if ((cp.items[0] && jsonl_source_open(cp.items, PROG, &si, err, sizeof err) < 0) ||
        (cp.users[0] && jsonl_source_open(cp.users, PROG, &su, err, sizeof err) < 0) ||
        (cp.events[0] && jsonl_source_open(cp.events, PROG, &se, err, sizeof err) < 0)) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    /* featstore.h: a write to a connection Redis closed must fail, not
     * kill the process. */
    signal(SIGPIPE, SIG_IGN);
    if ((status = open_store(&o, &ld.fs)) == 0) status = run(&ld, si, su, se);
done:
    featstore_close(ld.fs);
    memset(&cp, 0, sizeof cp);
    free(o.vec);
    engine_model_free(o.eng);
    jsonl_source_close(si);
    jsonl_source_close(su);
    jsonl_source_close(se);
    free(ld.changed);
    arena_free(&ld.ev.a);
    return status;
}

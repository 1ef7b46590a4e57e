/*
 * ctr_load.c - ctr-load, which fills the feature store: items.jsonl and
 * users.jsonl (the records of proto/records.h) become the binary Redis
 * values of proto/features.h under <prefix>i:<id> and <prefix>u:<id>
 * (deploy/REDIS_SCHEMA.md).
 *
 *   ctr-load --redis HOST:PORT|/path.sock [--items F] [--users F]
 *            [--prefix ctr:] [--model M | --max-tags 5 --mm-dim 128]
 *            [--max-seq 1000] [--batch 512] [--timeout-ms 5000]
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
 *     new feature version under a new prefix instead, see REDIS_SCHEMA.md).
 */
#include <errno.h>
#include <getopt.h>
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
#include "server/cmd/jsonl.h"

#define PROG "ctr-load"

static void usage(FILE *f) {
    fprintf(f,
"Usage: " PROG " --redis HOST:PORT|/PATH.sock | --redis-cluster HOST:PORT[,...]\n"
"                [--items ITEMS.jsonl] [--users USERS.jsonl] [--prefix P]\n"
"                [--model M] [--max-tags N] [--mm-dim N] [--max-seq N]\n"
"                [--batch N] [--timeout-ms N] [--redis-user U]\n"
"                [--redis-password-file F | --redis-password P]\n"
"\n"
"Loads item features and user histories into Redis for the scoring\n"
"service, as the compact binary values described in deploy/REDIS_SCHEMA.md.\n"
"Give --items, --users or both.\n"
"\n"
"Options:\n"
"  --redis ADDR     Redis to write to: host:port ([v6addr]:port for IPv6)\n"
"                   or the path of a unix socket (starting with '/')\n"
"  --redis-cluster SEEDS\n"
"                   a Redis Cluster instead, by some of its nodes\n"
"                   (host:port,host:port...): each batch goes out as one\n"
"                   pipeline per master, all at once, MOVED/ASK followed\n"
"  --redis-user U   Redis ACL user (env CTR_REDIS_USER); needs a password\n"
"  --redis-password-file F\n"
"                   Redis password (AUTH) from the first line of F (env\n"
"                   CTR_REDIS_PASSWORD_FILE)\n"
"  --redis-password P\n"
"                   the password itself (env CTR_REDIS_PASSWORD; a flag is\n"
"                   briefly visible to other local users: prefer the file\n"
"                   or the environment).  Never printed.\n"
"  --items FILE     item features, one JSON object a line:\n"
"                     {\"item_id\": 17, \"item_tags\": [up to N ints],\n"
"                      \"item_emb_d128\": [mm-dim numbers]}\n"
"                   or, for a model that reads a category (TIN, with\n"
"                   --model): {\"item_id\": 0, \"cate_id\": 5}\n"
"                   stored as <prefix>i:<item_id>; other fields ignored\n"
"  --users FILE     histories, one JSON object a line:\n"
"                     {\"user_id\": \"u1\" | 42, \"item_seq\": [ids, oldest first]}\n"
"                   stored as <prefix>u:<user_id> (an integer id by its\n"
"                   decimal text, so 42 and \"42\" are the same user)\n"
"  --prefix P       key prefix (default \"ctr:\"); load a new feature version\n"
"                   under a new prefix and point the service at it\n"
"  --model M        model file (QIN, DIN or TIN): write what its schema\n"
"                   reads (tags and embedding, or a category), take\n"
"                   --max-tags and --mm-dim from it, and check item ids\n"
"                   (1..item_vocab-1; TIN: 0..item_vocab-1), tag ids\n"
"                   (0..tag_vocab-1) and cate_id (0..cate_vocab-1),\n"
"                   and refuse items whose features make its item\n"
"                   vector overflow\n"
"  --max-tags N     tag slots per item (default 5); lines with more are bad\n"
"  --mm-dim N       embedding width (default 128); other widths are bad\n"
"  --max-seq N      longest history stored (default 1000); longer ones keep\n"
"                   their most recent N ids\n"
"  --batch N        SETs per pipelined round trip (default 512)\n"
"  --timeout-ms N   most time one connect or one batch may take (default\n"
"                   5000)\n"
"  --help           this text\n"
"\n"
"Checks: item ids must be >= 1 (0 is padding), except for a model whose\n"
"ids start at 0 (TIN); tags and cate_id must fit in int32 and\n"
"embedding values be finite float32; history ids must be within\n"
"0..2147483647 (0 is padding; ids unknown to the model are padding when\n"
"scoring, so they are not refused here).  An item or user given twice is a\n"
"bad line (the first is kept).  Blank lines are skipped.\n"
"\n"
"When every value is written, the feature-set marker <prefix>meta is\n"
"written (JSON: format, num_tags, mm_dim, items, users, loaded_at,\n"
"model_version); the scorer's /readyz is not ready while it is missing.\n"
"\n"
"Output: each bad line is reported on stderr as FILE:LINE: message (at most\n"
"%d per file, then only counted) and skipped; the other lines are still\n"
"loaded.  At the end one line on stdout:\n"
"  " PROG ": items_loaded=N users_loaded=N lines_rejected=N\n"
"  histories_truncated=N (redis ADDR, prefix \"P\")\n"
"(\"Redis Cluster SEEDS\" with --redis-cluster.)\n"
"\n"
"Exit status: 0 every line loaded; 1 some line rejected, or Redis failed\n"
"(the load stops at the failure; the last batch may or may not be stored);\n"
"2 could not start (usage, unreadable file or model).\n",
        JSONL_ERRORS_SHOWN);
}

/* --- Loading ------------------------------------------------------------ */

typedef struct options {
    const char *redis, *cluster, *items, *users, *prefix, *model;
    const char *user, *password, *password_file;
    int max_tags, mm_dim, max_seq, batch, timeout_ms;
    int item_vocab, tag_vocab;      /* from --model; 0: unchecked */
    engine_model *eng;              /* --model: item vectors checked */
    char model_version[64];
    float *vec;                     /* one item vector, for the check */
    int item_id_min;                /* 1, or 0 for a TIN model */
    int cate_vocab;                 /* from --model; 0: no category */
} options;

typedef struct loader {
    const options *o;
    featstore *fs;
    int redis_failed;
    long batch_items, batch_users;  /* queued, not yet flushed */
    long items_loaded, users_loaded, truncated;
} loader;

/* Sends the queued SETs; counts them as loaded when Redis took them all. */
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
    return CTR_OK;
}

/* After queueing one value: flush when the batch is full. */
static int queued(loader *ld, int rc, const char *err) {
    if (rc < 0) {
        fprintf(stderr, PROG ": %s; stopping\n", err);
        ld->redis_failed = 1;
        return rc;
    }
    if (featstore_pending(ld->fs) >= ld->o->batch) return flush(ld);
    return CTR_OK;
}

/* One line's work: decode, check, encode, queue.  A bad line is reported
 * with jsonl_error and answered CTR_OK; a negative status stops the load.
 * scratch is reset before each line; seen holds the keys given so far. */
typedef int (*line_fn)(loader *ld, jsonl_source *src, const char *line, size_t len,
                       arena *scratch, jsonl_seen *seen);

static int item_line(loader *ld, jsonl_source *src, const char *line, size_t len,
                     arena *scratch, jsonl_seen *seen) {
    const options *o = ld->o;
    char err[256];
    proto_item it;
    /* The fields the model reads: tags and embedding, or a category. */
    const proto_item_schema sch = {o->cate_vocab ? -1 : o->max_tags,
                                   o->cate_vocab ? -1 : o->mm_dim, o->cate_vocab > 0};
    int st = proto_item_decode_schema(line, len, &sch, scratch, &it, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) { jsonl_error(src, "%s", err); return CTR_OK; }
    if (it.item_id < o->item_id_min) {
        if (o->item_id_min == 1)
            jsonl_error(src, "item_id: %" PRId64 " is not an item id (ids "
                        "start at 1; 0 is padding)", it.item_id);
        else
            jsonl_error(src, "item_id: %" PRId64 " is not an item id (ids "
                        "start at 0)", it.item_id);
        return CTR_OK;
    }
    if (o->item_vocab && it.item_id >= o->item_vocab) {
        jsonl_error(src, "item_id: %" PRId64 " is outside the model's "
                    "item vocabulary (%d..%d)", it.item_id, o->item_id_min,
                    o->item_vocab - 1);
        return CTR_OK;
    }
    if (it.has_cate && (it.cate < 0 || it.cate >= o->cate_vocab)) {
        jsonl_error(src, "cate_id: %" PRId32 " is outside the model's "
                    "category vocabulary (0..%d)", it.cate, o->cate_vocab - 1);
        return CTR_OK;
    }
    int k = 0;
    while (o->tag_vocab && k < it.num_tags && it.tags[k] >= 0 && it.tags[k] < o->tag_vocab)
        k++;
    if (o->tag_vocab && k < it.num_tags) {
        jsonl_error(src, "item_tags[%d]: %" PRId32 " is outside the "
                    "model's tag vocabulary (0..%d)", k, it.tags[k], o->tag_vocab - 1);
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
        engine_item in = {it.item_id, it.tags, it.num_tags, it.mm, it.cate};
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
    if (rc == CTR_OK) ld->batch_items++;
    return queued(ld, rc, err);
}

static int user_line(loader *ld, jsonl_source *src, const char *line, size_t len,
                     arena *scratch, jsonl_seen *seen) {
    const options *o = ld->o;
    char err[256];
    proto_user u;
    /* No bound here: a long history is truncated, not refused. */
    int st = proto_user_decode(line, len, -1, scratch, &u, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) { jsonl_error(src, "%s", err); return CTR_OK; }
    const int64_t *seq = u.item_seq;
    int n = u.seq_len;
    if (n > o->max_seq) {
        seq += n - o->max_seq;
        n = o->max_seq;
        ld->truncated++;
    }
    size_t size = features_user_size((size_t)n);
    void *val = arena_alloc(scratch, size, 8);
    if (!val) return CTR_ENOMEM;
    size_t vlen;
    if (features_user_encode(seq, n, val, size, &vlen, err, sizeof err) < 0) {
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

/* Feeds every line of src to fn.  Returns CTR_OK when the file was read to
 * its end (bad lines included), or a negative status when the load must
 * stop. */
static int load_lines(loader *ld, jsonl_source *src, line_fn fn) {
    arena scratch;
    arena_init(&scratch, 1 << 16);
    jsonl_seen *seen;
    int rc = jsonl_seen_init(&seen);
    const char *line;
    size_t len;
    int more = 0;
    while (rc == CTR_OK && (more = jsonl_next_line(src, &line, &len)) > 0) {
        arena_reset(&scratch);
        rc = fn(ld, src, line, len, &scratch, seen);
    }
    if (rc == CTR_OK && more < 0) {
        rc = more;
        if (rc == CTR_EIO)
            fprintf(stderr, PROG ": %s: read error after line %ld: %s\n",
                    jsonl_source_name(src), jsonl_source_line(src), strerror(errno));
    }
    if (rc == CTR_ENOMEM) fprintf(stderr, PROG ": out of memory\n");
    jsonl_seen_free(seen);
    arena_free(&scratch);
    return rc;
}

/* The feature-set marker, after every value (proto/meta.h). */
static int write_meta(loader *ld) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    proto_meta m = {PROTO_META_FORMAT, ld->o->max_tags, ld->o->mm_dim, ld->items_loaded,
                    ld->users_loaded, (double)ts.tv_sec + ts.tv_nsec * 1e-9, ""};
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

/* --- main --------------------------------------------------------------- */

/* The AUTH settings: flags, else CTR_REDIS_USER / CTR_REDIS_PASSWORD /
 * CTR_REDIS_PASSWORD_FILE (as ctr-server reads them); a password file is
 * read into buf.  0, or -1 with a message printed (never the password). */
static int redis_auth(options *o, char *buf, size_t cap) {
    const char *e;
    if (!o->user && (e = getenv("CTR_REDIS_USER")) && *e) o->user = e;
    if (!o->password && !o->password_file) {
        if ((e = getenv("CTR_REDIS_PASSWORD")) && *e) o->password = e;
        if ((e = getenv("CTR_REDIS_PASSWORD_FILE")) && *e) o->password_file = e;
    }
    if (o->password && o->password_file) {
        fprintf(stderr, PROG ": give one of --redis-password (CTR_REDIS_PASSWORD), "
                "--redis-password-file (CTR_REDIS_PASSWORD_FILE)\n");
        return -1;
    }
    if (o->password_file) {
        char err[1200];
        if (featstore_password_file(o->password_file, buf, cap, err, sizeof err) < 0) {
            fprintf(stderr, PROG ": %s\n", err);
            return -1;
        }
        o->password = buf;
    }
    if (o->user && !o->password) {
        fprintf(stderr, PROG ": --redis-user needs a password (--redis-password-file, "
                "--redis-password or CTR_REDIS_PASSWORD)\n");
        return -1;
    }
    return 0;
}

static int parse_int(const char *opt, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, PROG ": %s: expected an integer in %d..%d, got \"%s\"\n",
                opt, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv) {
    options o = {.prefix = "ctr:", .max_tags = -1, .mm_dim = -1,
                 .max_seq = 1000, .batch = 512, .timeout_ms = 5000,
                 .item_id_min = 1};
    enum { O_REDIS = 1, O_ITEMS, O_USERS, O_PREFIX, O_MODEL, O_MAX_TAGS,
           O_MM_DIM, O_MAX_SEQ, O_BATCH, O_TIMEOUT, O_HELP, O_CLUSTER, O_USER,
           O_PASSWORD, O_PASSWORD_FILE };
    static const struct option longopts[] = {
        {"redis", required_argument, NULL, O_REDIS},
        {"redis-cluster", required_argument, NULL, O_CLUSTER},
        {"redis-user", required_argument, NULL, O_USER},
        {"redis-password", required_argument, NULL, O_PASSWORD},
        {"redis-password-file", required_argument, NULL, O_PASSWORD_FILE},
        {"items", required_argument, NULL, O_ITEMS},
        {"users", required_argument, NULL, O_USERS},
        {"prefix", required_argument, NULL, O_PREFIX},
        {"model", required_argument, NULL, O_MODEL},
        {"max-tags", required_argument, NULL, O_MAX_TAGS},
        {"mm-dim", required_argument, NULL, O_MM_DIM},
        {"max-seq", required_argument, NULL, O_MAX_SEQ},
        {"batch", required_argument, NULL, O_BATCH},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    char *password_copy = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_REDIS: o.redis = optarg; break;
        case O_CLUSTER: o.cluster = optarg; break;
        case O_USER: o.user = optarg; break;
        case O_PASSWORD:
            /* Copied, then blanked in the argument list (ps). */
            if (!(o.password = password_copy = strdup(optarg))) bad = 1;
            memset(optarg, 0, strlen(optarg));
            break;
        case O_PASSWORD_FILE: o.password_file = optarg; break;
        case O_ITEMS: o.items = optarg; break;
        case O_USERS: o.users = optarg; break;
        case O_PREFIX: o.prefix = optarg; break;
        case O_MODEL: o.model = optarg; break;
        case O_MAX_TAGS:
            bad = parse_int("--max-tags", optarg, 0, FEATURES_MAX_TAGS,
                            &o.max_tags);
            break;
        case O_MM_DIM:
            bad = parse_int("--mm-dim", optarg, 0, FEATURES_MAX_MM, &o.mm_dim);
            break;
        case O_MAX_SEQ:
            bad = parse_int("--max-seq", optarg, 1, INT_MAX, &o.max_seq);
            break;
        case O_BATCH:
            bad = parse_int("--batch", optarg, 1, 1000000, &o.batch);
            break;
        case O_TIMEOUT:
            bad = parse_int("--timeout-ms", optarg, 1, 3600000, &o.timeout_ms);
            break;
        case O_HELP: usage(stdout); return 0;
        default: bad = 1; break;
        }
        if (bad) {
            fprintf(stderr, "Try '" PROG " --help'.\n");
            free(password_copy);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument \"%s\"\nTry '" PROG
                " --help'.\n", argv[optind]);
        return 2;
    }
    char err[256];
    char secret[1024];
    if (redis_auth(&o, secret, sizeof secret) < 0 || (o.redis != NULL) == (o.cluster != NULL) ||
        (!o.items && !o.users)) {
        if ((o.redis != NULL) == (o.cluster != NULL) || (!o.items && !o.users))
            fprintf(stderr, PROG ": need one of --redis, --redis-cluster and at least one "
                    "of --items, --users\nTry '" PROG " --help'.\n");
        free(password_copy);
        return 2;
    }

    if (o.model) {
        engine_model *m;
        if (engine_model_load(o.model, &m, err, sizeof err) < 0) {
            fprintf(stderr, PROG ": %s\n", err);
            return 2;
        }
        const engine_schema *cfg = engine_model_schema(m);
        int tags = cfg->num_tags, mm = cfg->mm_dim;
        o.item_vocab = cfg->item_vocab;
        o.tag_vocab = cfg->tag_vocab;
        snprintf(o.model_version, sizeof o.model_version, "%s", cfg->version);
        o.item_id_min = cfg->item_id_min;
        o.cate_vocab = cfg->cate_vocab;
        o.eng = m;
        o.vec = engine_item_vecs_alloc(m, 1);
        if (!o.vec) {
            fprintf(stderr, PROG ": out of memory\n");
            engine_model_free(m);
            return 2;
        }
        if ((o.max_tags >= 0 && o.max_tags != tags) ||
            (o.mm_dim >= 0 && o.mm_dim != mm)) {
            fprintf(stderr, PROG ": --max-tags/--mm-dim (%d/%d) disagree with "
                    "the model's %d tags and %d-wide embedding; leave them "
                    "out with --model\n", o.max_tags, o.mm_dim, tags, mm);
            free(o.vec);
            engine_model_free(o.eng);
            return 2;
        }
        o.max_tags = tags;
        o.mm_dim = mm;
    }
    if (o.max_tags < 0) o.max_tags = 5;
    if (o.mm_dim < 0) o.mm_dim = 128;

    /* Open both files before writing anything, so a typo in the second
     * does not leave a half-done load. */
    jsonl_source *si = NULL, *su = NULL;
    if ((o.items && jsonl_source_open(o.items, PROG, &si, err, sizeof err) < 0)
        || (o.users &&
            jsonl_source_open(o.users, PROG, &su, err, sizeof err) < 0)) {
        fprintf(stderr, PROG ": %s\n", err);
        jsonl_source_close(si);
        free(o.vec);
        engine_model_free(o.eng);
        return 2;
    }

    /* featstore.h: a write to a connection Redis closed must fail, not
     * kill the process. */
    signal(SIGPIPE, SIG_IGN);
    int status = 2;
    featstore_params p;
    featstore_default_params(&p);
    p.addr = o.redis;
    p.cluster = o.cluster;
    p.user = o.user;
    p.password = o.password;
    p.prefix = o.prefix;
    p.connect_timeout_ms = p.command_timeout_ms = o.timeout_ms;
    p.max_tags = o.max_tags;
    p.mm_dim = o.mm_dim;
    p.max_seq = o.max_seq;
    loader ld = {.o = &o};
    if (featstore_open(&p, &ld.fs, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    status = 1;
    if (featstore_ping(ld.fs, 0, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }

    int rc = CTR_OK;
    if (si) rc = load_lines(&ld, si, item_line);
    if (rc == CTR_OK && su) rc = load_lines(&ld, su, user_line);
    if (rc == CTR_OK) rc = flush(&ld);
    if (rc == CTR_OK) rc = write_meta(&ld);
    long rejected = (si ? jsonl_source_bad(si) : 0) +
                    (su ? jsonl_source_bad(su) : 0);

    printf(PROG ": items_loaded=%ld users_loaded=%ld lines_rejected=%ld "
           "histories_truncated=%ld (%s %s, prefix \"%s\")\n",
           ld.items_loaded, ld.users_loaded, rejected, ld.truncated,
           o.cluster ? "Redis Cluster" : "redis", o.cluster ? o.cluster : o.redis, o.prefix);
    if (ld.truncated)
        fprintf(stderr, PROG ": %ld histories were longer than --max-seq %d "
                "and keep their most recent %d ids\n", ld.truncated,
                o.max_seq, o.max_seq);
    if (fflush(stdout) != 0) rc = CTR_EIO;
    status = rc == CTR_OK && !rejected ? 0 : 1;

done:
    featstore_close(ld.fs);
    memset(secret, 0, sizeof secret);
    if (password_copy) memset(password_copy, 0, strlen(password_copy));
    free(password_copy);
    free(o.vec);
    engine_model_free(o.eng);
    jsonl_source_close(si);
    jsonl_source_close(su);
    return status;
}

/*
 * ctr_score.c - ctr-score, the offline scorer: the engine (core/qin.h) on
 * files instead of HTTP, for batch jobs and for checking the engine end to
 * end against the PyTorch reference (tests/integration/test_ctr_score.sh).
 *
 *   ctr-score --model M --items items.jsonl [--users users.jsonl]
 *             [--max-cand N] [--max-seq N] < requests.jsonl > scores.jsonl
 *
 * Workload: one process, one thread, requests one after another.  Items
 * (~92k lines of ~1.5 kB) and users (up to ~1M lines) are read once at
 * start.  Item vectors [e | A e | B e] are computed the first time an item
 * is used, as candidate or behaviour, and kept for the rest of the run in
 * an array indexed by item id (ids are bounded by the model's item_vocab),
 * so a run that touches every MicroLens item holds ~420 MB of vectors.
 *
 * Behaviours at the edges (also in --help, which is the user's manual):
 *   - a bad line in any file is reported on stderr as FILE:LINE: message
 *     and skipped; good request lines are still scored; the exit status is
 *     1 when any line was bad, 2 when the run could not start;
 *   - a bad request line prints nothing on stdout, so stdout holds only
 *     valid score lines (match them to requests by user_id, or check the
 *     exit status before matching by order);
 *   - blank lines are skipped in every file (but counted for line numbers);
 *   - a request without item_seq takes its user's stored history; a user
 *     missing from users.jsonl is scored with an empty history (a cold
 *     start is normal, not an error): one note at the end says how many;
 *   - integer and string user ids are distinct keys (42 is not "42"), as
 *     they are distinct JSON values;
 *   - in a history, id 0, ids outside the vocabulary and ids without an
 *     items.jsonl line are padding; a candidate like that is a bad line;
 *   - an item id listed twice in items.jsonl, or a user twice in
 *     users.jsonl, is a bad line (the first one is kept).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/qin.h"
#include "core/status.h"
#include "proto/buf.h"
#include "proto/rank.h"
#include "proto/records.h"

#define PROG "ctr-score"
#define ERRORS_SHOWN 50    /* per file; the rest are only counted */

static void usage(FILE *f) {
    fprintf(f,
"Usage: " PROG " --model M --items ITEMS.jsonl [--users USERS.jsonl]\n"
"                 [--max-cand N] [--max-seq N] < REQUESTS.jsonl > SCORES.jsonl\n"
"\n"
"Scores ranking requests offline with a QIN model: one output line per good\n"
"request line, in input order.\n"
"\n"
"Options:\n"
"  --model M        model file (safetensors, as written by tools/convert.py)\n"
"  --items FILE     item features, one JSON object a line:\n"
"                     {\"item_id\": 17, \"item_tags\": [5 ints],\n"
"                      \"item_emb_d128\": [mm_in numbers]}\n"
"                   item_id must be within the model's vocabulary\n"
"                   (1..item_vocab-1) and tags within 0..tag_vocab-1; fewer\n"
"                   tags than the model's are padded; other fields ignored\n"
"  --users FILE     stored histories, one JSON object a line:\n"
"                     {\"user_id\": \"u1\" | 42, \"item_seq\": [ids, oldest first]}\n"
"                   (optional; without it every user is unknown)\n"
"  --max-cand N     most candidates a request may have (default 1024)\n"
"  --max-seq N      most ids a request's item_seq may have (default 65536;\n"
"                   only the last max_len of any history are used)\n"
"  --help           this text\n"
"\n"
"Requests (stdin), one JSON object a line:\n"
"  {\"user_id\": \"u1\" | 42,\n"
"   \"candidates\": [{\"item_id\": 17, \"<context field>\": 3, ...}, ...],\n"
"   \"item_seq\": [ids]}            (optional; replaces the stored history)\n"
"  Context fields are the model's, by name; a missing one is padding (0).\n"
"  \"top_k\" and \"request_id\" are accepted and ignored (all scores are\n"
"  printed, in candidate order).  Unknown fields are refused.\n"
"\n"
"Output (stdout), one line per good request:\n"
"  {\"user_id\": <as given, string or integer>, \"scores\": [p, ...]}\n"
"  p is the click probability of each candidate, in candidate order,\n"
"  printed with 9 significant digits (exact for float32).\n"
"\n"
"Histories: a request without item_seq uses its user's line in --users; a\n"
"user with no line there gets an empty history (noted once on stderr).\n"
"Integer and string user ids are distinct (42 is not \"42\").  In a history,\n"
"id 0, ids outside the vocabulary and ids with no line in --items are\n"
"padding.  A candidate outside the vocabulary or without features, a\n"
"context value outside its vocabulary, or more than --max-cand candidates\n"
"make the request line bad.\n"
"\n"
"Errors: each bad line, in any file, is reported on stderr as\n"
"FILE:LINE: message (at most %d per file, then only counted) and skipped;\n"
"the other lines are still used, and a bad request line prints nothing on\n"
"stdout.  An item or user given twice is a bad line (the first is kept).\n"
"Blank lines are skipped.\n"
"\n"
"Exit status: 0 all lines good; 1 some line bad; 2 could not run (usage,\n"
"unreadable file or model, out of memory, write error).\n",
        ERRORS_SHOWN);
}

/* --- Reporting ---------------------------------------------------------- */

typedef struct source {
    const char *name;     /* as the user gave it */
    long line;            /* current line, 1-based */
    long bad;             /* bad lines so far */
} source;

static void line_error(source *src, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void line_error(source *src, const char *fmt, ...) {
    src->bad++;
    if (src->bad > ERRORS_SHOWN) return;
    fprintf(stderr, PROG ": %s:%ld: ", src->name, src->line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (src->bad == ERRORS_SHOWN)
        fprintf(stderr, PROG ": %s: further errors in this file are only "
                "counted\n", src->name);
}

/* Reads the next line into *buf (getline); 0 at end of file, -1 on a read
 * error.  *len excludes the newline.  Counts lines in src. */
static int next_line(FILE *f, source *src, char **buf, size_t *cap,
                     size_t *len) {
    errno = 0;
    ssize_t n = getline(buf, cap, f);
    if (n < 0) return ferror(f) ? -1 : 0;
    src->line++;
    if (n > 0 && (*buf)[n - 1] == '\n') n--;
    *len = (size_t)n;
    return 1;
}

static int blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* --- Items: features by id, vectors computed on first use --------------- */

typedef struct item_entry {
    proto_item it;        /* features, in items.mem */
    long line;            /* where it was given */
} item_entry;

typedef struct item_table {
    const qin_model *model;
    int vocab;            /* ids 1..vocab-1 */
    item_entry **feat;    /* [vocab]; NULL: no line in items.jsonl */
    float **vec;          /* [vocab]; NULL: not computed yet */
    arena mem;
} item_table;

static int items_init(item_table *t, const qin_model *m) {
    t->model = m;
    t->vocab = qin_model_config(m)->item_vocab;
    t->feat = calloc((size_t)t->vocab, sizeof *t->feat);
    t->vec = calloc((size_t)t->vocab, sizeof *t->vec);
    arena_init(&t->mem, 1 << 20);
    return t->feat && t->vec ? CTR_OK : CTR_ENOMEM;
}

static void items_free(item_table *t) {
    if (t->vec)
        for (int i = 0; i < t->vocab; i++) free(t->vec[i]);
    free(t->vec);
    free(t->feat);
    arena_free(&t->mem);
}

/* Copies a decoded item (in a scratch arena) into the table. */
static int items_add(item_table *t, const proto_item *it, long line) {
    item_entry *e = arena_alloc(&t->mem, sizeof *e, _Alignof(item_entry));
    int32_t *tags = arena_alloc(&t->mem, (size_t)(it->num_tags + 1) *
                                             sizeof *tags, _Alignof(int32_t));
    float *mm = arena_alloc(&t->mem, (size_t)(it->mm_dim + 1) * sizeof *mm,
                            _Alignof(float));
    if (!e || !tags || !mm) return CTR_ENOMEM;
    memcpy(tags, it->tags, (size_t)it->num_tags * sizeof *tags);
    memcpy(mm, it->mm, (size_t)it->mm_dim * sizeof *mm);
    e->it = *it;
    e->it.tags = tags;
    e->it.mm = mm;
    e->line = line;
    t->feat[it->item_id] = e;
    return CTR_OK;
}

/* The vector of item id into *vec, computed on first use.  CTR_ERANGE
 * (outside the vocabulary), CTR_ENOTFOUND (no features), CTR_EINVAL (the
 * engine refused the features) or CTR_ENOMEM, with a message. */
static int items_vec(item_table *t, int64_t id, const float **vec, char *err,
                     size_t errlen) {
    if (id < 1 || id >= t->vocab)
        return ctr_fail(err, errlen, CTR_ERANGE,
                        "%" PRId64 " is outside the model's item vocabulary "
                        "(1..%d)", id, t->vocab - 1);
    if (t->vec[id]) {
        *vec = t->vec[id];
        return CTR_OK;
    }
    const item_entry *e = t->feat[id];
    if (!e)
        return ctr_fail(err, errlen, CTR_ENOTFOUND,
                        "item %" PRId64 " has no line in the items file", id);
    float *v = qin_item_vec_alloc(t->model);
    if (!v) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    qin_item_input in = {id, e->it.tags, e->it.num_tags, e->it.mm};
    char why[200];
    int rc = qin_item_compute(t->model, &in, v, why, sizeof why);
    if (rc < 0) {
        free(v);
        return ctr_fail(err, errlen, rc, "item %" PRId64 " (items line %ld): "
                        "%s", id, e->line, why);
    }
    *vec = t->vec[id] = v;
    return CTR_OK;
}

/* 1 when a history id stands for a real behaviour; the others are padding
 * (the engine's NULL), not errors: histories come from logs that may name
 * items the catalogue has since dropped. */
static int items_known(const item_table *t, int64_t id) {
    return id >= 1 && id < t->vocab && t->feat[id];
}

static int load_items(FILE *f, source *src, item_table *t, char **buf,
                      size_t *cap) {
    const qin_config *c = qin_model_config(t->model);
    arena scratch;
    arena_init(&scratch, 1 << 16);
    size_t len;
    int rc;
    char err[256];
    while ((rc = next_line(f, src, buf, cap, &len)) > 0) {
        if (blank(*buf, len)) continue;
        arena_reset(&scratch);
        proto_item it;
        int st = proto_item_decode(*buf, len, c->num_tags, c->mm_in, &scratch,
                                   &it, err, sizeof err);
        if (st == CTR_ENOMEM) { rc = st; break; }
        if (st < 0) { line_error(src, "%s", err); continue; }
        if (it.item_id < 1 || it.item_id >= t->vocab) {
            line_error(src, "item_id: %" PRId64 " is outside the model's item "
                       "vocabulary (1..%d)", it.item_id, t->vocab - 1);
            continue;
        }
        int k = 0;
        while (k < it.num_tags && it.tags[k] >= 0 && it.tags[k] < c->tag_vocab)
            k++;
        if (k < it.num_tags) {
            line_error(src, "item_tags[%d]: %" PRId32 " is outside the model's "
                       "tag vocabulary (0..%d)", k, it.tags[k],
                       c->tag_vocab - 1);
            continue;
        }
        if (t->feat[it.item_id]) {
            line_error(src, "item_id: %" PRId64 " already given on line %ld",
                       it.item_id, t->feat[it.item_id]->line);
            continue;
        }
        if ((rc = items_add(t, &it, src->line)) < 0) break;
    }
    arena_free(&scratch);
    return rc;
}

/* --- Users: stored histories by id -------------------------------------- */

typedef struct user_entry {
    const char *id;       /* NULL: empty slot */
    int is_int;
    int seq_len;
    const int64_t *seq;   /* the last max_len ids, oldest first */
    long line;
} user_entry;

typedef struct user_map {
    user_entry *slot;     /* open addressing, linear probing */
    size_t cap;           /* a power of two */
    size_t n;
    arena mem;
} user_map;

static uint64_t user_hash(const char *id, int is_int) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)is_int;   /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static int users_init(user_map *u) {
    u->cap = 1024;
    u->n = 0;
    u->slot = calloc(u->cap, sizeof *u->slot);
    arena_init(&u->mem, 1 << 20);
    return u->slot ? CTR_OK : CTR_ENOMEM;
}

static void users_free(user_map *u) {
    free(u->slot);
    arena_free(&u->mem);
}

static user_entry *users_find(user_map *u, const char *id, int is_int) {
    size_t mask = u->cap - 1;
    for (size_t i = user_hash(id, is_int) & mask;; i = (i + 1) & mask) {
        user_entry *e = &u->slot[i];
        if (!e->id) return e;
        if (e->is_int == is_int && strcmp(e->id, id) == 0) return e;
    }
}

static int users_grow(user_map *u) {
    user_map bigger = *u;
    bigger.cap = u->cap * 2;
    bigger.slot = calloc(bigger.cap, sizeof *bigger.slot);
    if (!bigger.slot) return CTR_ENOMEM;
    for (size_t i = 0; i < u->cap; i++)
        if (u->slot[i].id)
            *users_find(&bigger, u->slot[i].id, u->slot[i].is_int) =
                u->slot[i];
    free(u->slot);
    u->slot = bigger.slot;
    u->cap = bigger.cap;
    return CTR_OK;
}

static int load_users(FILE *f, source *src, user_map *u, int max_len,
                      char **buf, size_t *cap) {
    arena scratch;
    arena_init(&scratch, 1 << 16);
    size_t len;
    int rc;
    char err[256];
    while ((rc = next_line(f, src, buf, cap, &len)) > 0) {
        if (blank(*buf, len)) continue;
        arena_reset(&scratch);
        proto_user pu;
        /* No bound on the stored length: only the tail is kept. */
        int st = proto_user_decode(*buf, len, -1, &scratch, &pu, err,
                                   sizeof err);
        if (st == CTR_ENOMEM) { rc = st; break; }
        if (st < 0) { line_error(src, "%s", err); continue; }
        if ((u->n + 1) * 10 > u->cap * 7 && (rc = users_grow(u)) < 0) break;
        user_entry *e = users_find(u, pu.user_id, pu.user_id_is_int);
        if (e->id) {
            line_error(src, "user_id: %s%s%s already given on line %ld",
                       pu.user_id_is_int ? "" : "\"", pu.user_id,
                       pu.user_id_is_int ? "" : "\"", e->line);
            continue;
        }
        int keep = pu.seq_len < max_len ? pu.seq_len : max_len;
        int64_t *seq = arena_alloc(&u->mem, (size_t)(keep + 1) * sizeof *seq,
                                   _Alignof(int64_t));
        char *id = arena_strndup(&u->mem, pu.user_id, strlen(pu.user_id));
        if (!seq || !id) { rc = CTR_ENOMEM; break; }
        if (keep)
            memcpy(seq, pu.item_seq + (pu.seq_len - keep),
                   (size_t)keep * sizeof *seq);
        *e = (user_entry){id, pu.user_id_is_int, keep, seq, src->line};
        u->n++;
    }
    arena_free(&scratch);
    return rc;
}

/* --- Requests ----------------------------------------------------------- */

typedef struct scorer {
    const qin_model *model;
    qin_scratch *scratch;
    item_table *items;
    user_map *users;
    proto_rank_schema schema;
    const char *ctx_name[QIN_MAX_CTX];
    const float **hist;   /* [max_len] */
    const float **cand;   /* [max_cand] */
    float *prob;          /* [max_cand] */
    arena req_mem;        /* one request's decoded fields */
    proto_buf out;        /* one output line */
    long unknown_users;   /* requests whose user has no stored history */
    long first_unknown_line;
} scorer;

/* Scores one request line into s->out; a negative status with a message
 * when the line is bad (or CTR_ENOMEM). */
static int score_line(scorer *s, const char *line, size_t len, long lineno,
                      char *err, size_t errlen) {
    const qin_config *c = qin_model_config(s->model);
    proto_rank_request r;
    arena_reset(&s->req_mem);
    int rc = proto_rank_request_decode(line, len, &s->schema, &s->req_mem, &r,
                                       err, errlen);
    if (rc < 0) return rc;

    const int64_t *seq = r.item_seq;
    int seq_len = r.seq_len;
    if (!r.has_item_seq) {
        const user_entry *u = users_find(s->users, r.user_id,
                                         r.user_id_is_int);
        if (u->id) {
            seq = u->seq;
            seq_len = u->seq_len;
        } else {
            seq = NULL;
            seq_len = 0;
            if (s->unknown_users++ == 0) s->first_unknown_line = lineno;
        }
    }
    /* Only the last max_len behaviours matter to the engine. */
    int first = seq_len > c->max_len ? seq_len - c->max_len : 0;
    int nh = 0;
    char why[200];
    for (int j = first; j < seq_len; j++, nh++) {
        s->hist[nh] = NULL;
        if (items_known(s->items, seq[j]) &&
            (rc = items_vec(s->items, seq[j], &s->hist[nh], why,
                            sizeof why)) < 0)
            return ctr_fail(err, errlen, rc, "item_seq: %s", why);
    }

    for (int i = 0; i < r.num_cand; i++)
        if ((rc = items_vec(s->items, r.cand_id[i], &s->cand[i], why,
                            sizeof why)) < 0)
            return ctr_fail(err, errlen, rc, "candidates[%d].item_id: %s", i,
                            why);

    /* The engine checks these too, but can only say "candidate 3"; here
     * the message can name the field as the request spelled it. */
    for (int i = 0; i < r.num_cand; i++)
        for (int k = 0; k < c->num_ctx; k++) {
            int32_t v = r.ctx[(size_t)i * c->num_ctx + k];
            if (v < 0 || v >= c->ctx_vocab[k])
                return ctr_fail(err, errlen, CTR_ERANGE,
                                "candidates[%d].%s: %" PRId32 " is outside "
                                "the model's vocabulary (0..%d)", i,
                                c->ctx_name[k], v, c->ctx_vocab[k] - 1);
        }

    qin_request q = {s->hist, nh, s->cand, r.ctx, r.num_cand};
    if ((rc = qin_forward(s->model, s->scratch, &q, s->prob, why,
                          sizeof why)) < 0)
        return ctr_fail(err, errlen, rc, "%s", why);

    proto_buf_reset(&s->out);
    rc = proto_rank_scores_encode(r.user_id, r.user_id_is_int, s->prob,
                                  r.num_cand, &s->out);
    proto_buf_putc(&s->out, '\n');
    return rc < 0 || !proto_buf_ok(&s->out) ? CTR_ENOMEM : CTR_OK;
}

static int score_requests(scorer *s, FILE *in, source *src, char **buf,
                          size_t *cap, long *scored) {
    size_t len;
    int rc;
    char err[300];
    while ((rc = next_line(in, src, buf, cap, &len)) > 0) {
        if (blank(*buf, len)) continue;
        int st = score_line(s, *buf, len, src->line, err, sizeof err);
        if (st == CTR_ENOMEM) return st;
        if (st < 0) { line_error(src, "%s", err); continue; }
        if (fwrite(s->out.data, 1, s->out.len, stdout) != s->out.len)
            return CTR_EIO;
        (*scored)++;
    }
    return rc;
}

/* --- Main --------------------------------------------------------------- */

static int parse_count(const char *opt, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > (1 << 20)) {
        fprintf(stderr, PROG ": %s: expected an integer from 1 to %d, got "
                "\"%s\"\n", opt, 1 << 20, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static FILE *open_input(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
    return f;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *items_path = NULL, *users_path = NULL;
    int max_cand = 1024, max_seq = 65536;
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"items", required_argument, NULL, 'i'},
        {"users", required_argument, NULL, 'u'},
        {"max-cand", required_argument, NULL, 'c'},
        {"max-seq", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'm': model_path = optarg; break;
        case 'i': items_path = optarg; break;
        case 'u': users_path = optarg; break;
        case 'c': if (parse_count("--max-cand", optarg, &max_cand)) return 2;
                  break;
        case 's': if (parse_count("--max-seq", optarg, &max_seq)) return 2;
                  break;
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "Try '" PROG " --help'.\n");
            return 2;
        }
    }
    if (optind < argc || !model_path || !items_path) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help'.\n",
                optind < argc ? "unexpected argument" :
                "--model and --items are required");
        return 2;
    }

    /* Everything below is released at `done`, whatever got built. */
    int status = 2, rc;
    char err[256];
    qin_model *model = NULL;
    item_table items = {0};
    user_map users = {0};
    scorer s = {0};
    FILE *f = NULL;
    char *buf = NULL;
    size_t cap = 0;
    source items_src = {items_path, 0, 0};
    source users_src = {users_path, 0, 0};
    source req_src = {"<stdin>", 0, 0};
    long scored = 0;
    arena_init(&s.req_mem, 1 << 16);
    proto_buf_init(&s.out);

    if (qin_model_load(model_path, &model, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s: %s\n", model_path, err);
        goto done;
    }
    const qin_config *c = qin_model_config(model);

    if (items_init(&items, model) < 0 || users_init(&users) < 0) goto oom;
    if (!(f = open_input(items_path))) goto done;
    rc = load_items(f, &items_src, &items, &buf, &cap);
    if (rc == CTR_ENOMEM) goto oom;
    if (rc < 0) {
        fprintf(stderr, PROG ": %s: %s\n", items_path, strerror(errno));
        goto done;
    }
    fclose(f);
    f = NULL;
    if (users_path) {
        if (!(f = open_input(users_path))) goto done;
        rc = load_users(f, &users_src, &users, c->max_len, &buf, &cap);
        if (rc == CTR_ENOMEM) goto oom;
        if (rc < 0) {
            fprintf(stderr, PROG ": %s: %s\n", users_path, strerror(errno));
            goto done;
        }
        fclose(f);
        f = NULL;
    }

    s.model = model;
    s.items = &items;
    s.users = &users;
    for (int k = 0; k < c->num_ctx; k++) s.ctx_name[k] = c->ctx_name[k];
    s.schema = (proto_rank_schema){c->num_ctx, s.ctx_name, max_cand, max_seq};
    s.hist = calloc((size_t)c->max_len, sizeof *s.hist);
    s.cand = calloc((size_t)max_cand, sizeof *s.cand);
    s.prob = calloc((size_t)max_cand, sizeof *s.prob);
    if (!s.hist || !s.cand || !s.prob) goto oom;
    if ((rc = qin_scratch_init(model, max_cand, &s.scratch)) < 0) {
        fprintf(stderr, PROG ": scratch for %d candidates: %s\n", max_cand,
                ctr_strerror(rc));
        goto done;
    }

    rc = score_requests(&s, stdin, &req_src, &buf, &cap, &scored);
    if (rc == CTR_ENOMEM) goto oom;
    if (rc == CTR_EIO || fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": writing the scores: %s\n", strerror(errno));
        goto done;
    }
    if (rc < 0) {
        fprintf(stderr, PROG ": reading the requests: %s\n", strerror(errno));
        goto done;
    }

    if (s.unknown_users)
        fprintf(stderr, PROG ": note: %ld request%s named a user not in %s "
                "(first on line %ld) and %s scored with an empty history\n",
                s.unknown_users, s.unknown_users == 1 ? "" : "s",
                users_path ? users_path : "--users (not given)",
                s.first_unknown_line, s.unknown_users == 1 ? "was" : "were");
    long bad = items_src.bad + users_src.bad + req_src.bad;
    if (bad)
        fprintf(stderr, PROG ": %ld bad line%s (items %ld, users %ld, "
                "requests %ld); %ld request%s scored\n", bad,
                bad == 1 ? "" : "s", items_src.bad, users_src.bad,
                req_src.bad, scored, scored == 1 ? "" : "s");
    status = bad ? 1 : 0;
    goto done;

oom:
    fprintf(stderr, PROG ": out of memory\n");
done:
    if (f) fclose(f);
    free(buf);
    qin_scratch_free(s.scratch);
    free(s.hist);
    free(s.cand);
    free(s.prob);
    arena_free(&s.req_mem);
    proto_buf_free(&s.out);
    items_free(&items);
    users_free(&users);
    qin_model_free(model);
    return status;
}

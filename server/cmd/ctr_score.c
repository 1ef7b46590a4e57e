/*
 * ctr_score.c - ctr-score, the offline scorer: the engine (core/engine.h:
 * QIN, DIN or TIN, as the model file says) on files instead of HTTP, for
 * batch jobs and for checking the engine end to end against the PyTorch
 * references (tests/integration/test_ctr_score.sh).
 *
 *   ctr-score --model M --items items.jsonl [--users users.jsonl]
 *             [--max-cand N] [--max-seq N] [--precision P]
 *             < requests.jsonl > scores.jsonl
 *
 * Workload: one process, one thread, requests one after another.  Items
 * (~92k lines of ~1.5 kB) and users (up to ~1M lines) are read once at
 * start.  Item vectors (engine_items_compute) are computed the first time
 * an item is used, as candidate or behaviour, and kept for the rest of the
 * run in an array indexed by item id (ids are bounded by the model's
 * item_vocab), so a QIN run that touches every MicroLens item holds
 * ~420 MB of vectors.
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
 *   - a user is known by the text of its id: the integer 42 and the string
 *     "42" are the same user, as they are in the feature store (one key,
 *     <prefix>u:42) that ctr-load fills and ctr-server reads, so ctr-score
 *     and ctr-server score the same data the same way; the output still
 *     echoes user_id as the request gave it;
 *   - in a history, ids outside the vocabulary and ids without an
 *     items.jsonl line are padding (QIN, DIN, where id 0 is padding too) or
 *     left out (TIN, where id 0 is an item); a candidate like that is a
 *     bad line;
 *   - an item id listed twice in items.jsonl, or a user twice in
 *     users.jsonl (42 and "42" included), is a bad line (the first one is
 *     kept).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/arena.h"
#include "core/engine.h"
#include "core/base/status.h"
#include "proto/buf.h"
#include "proto/rank.h"
#include "proto/records.h"
#include "server/cmd/jsonl.h"

#define PROG "ctr-score"

static void usage(FILE *f) {
    fprintf(f,
"Usage: " PROG " --model M --items ITEMS.jsonl [--users USERS.jsonl]\n"
"                 [--max-cand N] [--max-seq N] [--precision P]\n"
"                 < REQUESTS.jsonl > SCORES.jsonl\n"
"\n"
"Scores ranking requests offline with a QIN, DIN or TIN model (the model\n"
"file says which): one output line per good request line, in input order.\n"
"\n"
"Options:\n"
"  --model M        model file (safetensors, as written by tools/convert.py)\n"
"  --items FILE     item features, one JSON object a line:\n"
"                     QIN, DIN: {\"item_id\": 17, \"item_tags\": [5 ints],\n"
"                                \"item_emb_d128\": [mm_in numbers]}\n"
"                     TIN:      {\"item_id\": 0, \"cate_id\": 5}\n"
"                   item_id must be within the model's vocabulary\n"
"                   (1..item_vocab-1; TIN: 0..item_vocab-1, 0 is an item),\n"
"                   tags within 0..tag_vocab-1, cate_id within\n"
"                   0..cate_vocab-1; fewer tags than the model's are padded;\n"
"                   fields the model does not read are ignored\n"
"  --users FILE     stored histories, one JSON object a line:\n"
"                     {\"user_id\": \"u1\" | 42, \"item_seq\": [ids, oldest first]}\n"
"                   (optional; without it every user is unknown)\n"
"  --max-cand N     most candidates a request may have (default 1024)\n"
"  --max-seq N      most ids a request's item_seq may have (default 65536;\n"
"                   only the last max_len of any history are used: 64 for\n"
"                   the challenge QIN and DIN, 430 for TIN)\n"
"  --precision P    arithmetic of the dense layers: fp32 (default; exact to\n"
"                   the trained model), bf16 or int8 (faster on CPUs with\n"
"                   AVX512_BF16 / VNNI, not exact: a note on stderr says so;\n"
"                   measured error in bench/README.md)\n"
"  --help           this text\n"
"\n"
"Requests (stdin), one JSON object a line:\n"
"  {\"user_id\": \"u1\" | 42,\n"
"   \"candidates\": [{\"item_id\": 17, \"<context field>\": 3, ...}, ...],\n"
"   \"item_seq\": [ids]}            (optional; replaces the stored history)\n"
"  Context fields are the model's, by name (QIN, DIN: likes_level,\n"
"  views_level; TIN has none); a missing one is padding (0).\n"
"  \"top_k\", \"request_id\", \"deadline_ms\" and \"explain\" are accepted and\n"
"  ignored (all scores are printed, in candidate order); \"model\", when\n"
"  given, must be the model's name (its metadata).  Unknown fields are\n"
"  refused.\n"
"\n"
"Output (stdout), one line per good request:\n"
"  {\"user_id\": <as given, string or integer>, \"scores\": [p, ...]}\n"
"  p is the click probability of each candidate, in candidate order,\n"
"  printed with 9 significant digits (exact for float32).\n"
"\n"
"Histories: a request without item_seq uses its user's line in --users; a\n"
"user with no line there gets an empty history (noted once on stderr).\n"
"A user is known by its id's text: the integer 42 and the string \"42\" are\n"
"the same user, as in ctr-load and ctr-server (the output still echoes\n"
"user_id as the request gave it).  In a history, ids outside the\n"
"vocabulary and ids with no line in --items are padding (QIN, DIN; id 0\n"
"too) or left out of the history (TIN, where id 0 is an item).  A candidate\n"
"outside the vocabulary or without features, a context value outside its\n"
"vocabulary, or more than --max-cand candidates make the request line bad.\n"
"\n"
"Errors: each bad line, in any file, is reported on stderr as\n"
"FILE:LINE: message (at most %d per file, then only counted) and skipped;\n"
"the other lines are still used, and a bad request line prints nothing on\n"
"stdout.  An item or user given twice (42 and \"42\" included) is a bad\n"
"line (the first is kept).  Blank lines are skipped.\n"
"\n"
"Exit status: 0 all lines good; 1 some line bad; 2 could not run (usage,\n"
"unreadable file or model, out of memory, write error).\n",
        JSONL_ERRORS_SHOWN);
}

/* --- Items: features by id, vectors computed on first use --------------- */

typedef struct item_entry {
    proto_item it;        /* features, in items.mem */
    long line;            /* where it was given */
} item_entry;

typedef struct item_table {
    const engine_model *model;
    int lo, vocab;        /* ids lo..vocab-1 */
    item_entry **feat;    /* [vocab]; NULL: no line in items.jsonl */
    float **vec;          /* [vocab]; NULL: not computed yet */
    arena mem;
} item_table;

static int items_init(item_table *t, const engine_model *m) {
    t->model = m;
    t->lo = engine_model_schema(m)->item_id_min;
    t->vocab = engine_model_schema(m)->item_vocab;
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
    if (it->num_tags) memcpy(tags, it->tags, (size_t)it->num_tags * sizeof *tags);
    if (it->mm_dim) memcpy(mm, it->mm, (size_t)it->mm_dim * sizeof *mm);
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
    if (id < t->lo || id >= t->vocab)
        return ctr_fail(err, errlen, CTR_ERANGE,
                        "%" PRId64 " is outside the model's item vocabulary "
                        "(%d..%d)", id, t->lo, t->vocab - 1);
    if (t->vec[id]) {
        *vec = t->vec[id];
        return CTR_OK;
    }
    const item_entry *e = t->feat[id];
    if (!e)
        return ctr_fail(err, errlen, CTR_ENOTFOUND,
                        "item %" PRId64 " has no line in the items file", id);
    float *v = engine_item_vecs_alloc(t->model, 1);
    if (!v) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    engine_item in = {id, e->it.tags, e->it.num_tags, e->it.mm, e->it.cate};
    char why[200];
    int rc = engine_items_compute(t->model, 1, &in, v, NULL, why, sizeof why);
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
    return engine_history_id_ok(t->model, id) && t->feat[id];
}

static int load_items(jsonl_source *src, item_table *t) {
    const engine_schema *c = engine_model_schema(t->model);
    /* The fields this model reads (engine_schema). */
    const proto_item_schema sch = {c->mm_dim ? c->num_tags : -1,
                                   c->mm_dim ? c->mm_dim : -1,
                                   c->cate_vocab > 0};
    arena scratch;
    arena_init(&scratch, 1 << 16);
    const char *line;
    size_t len;
    int rc;
    char err[256];
    while ((rc = jsonl_next_line(src, &line, &len)) > 0) {
        arena_reset(&scratch);
        proto_item it;
        int st = proto_item_decode_schema(line, len, &sch, &scratch, &it, err,
                                          sizeof err);
        if (st == CTR_ENOMEM) { rc = st; break; }
        if (st < 0) { jsonl_error(src, "%s", err); continue; }
        if (it.item_id < t->lo || it.item_id >= t->vocab) {
            jsonl_error(src, "item_id: %" PRId64 " is outside the model's "
                        "item vocabulary (%d..%d)", it.item_id, t->lo,
                        t->vocab - 1);
            continue;
        }
        if (it.has_cate && (it.cate < 0 || it.cate >= c->cate_vocab)) {
            jsonl_error(src, "cate_id: %" PRId32 " is outside the model's "
                        "category vocabulary (0..%d)", it.cate,
                        c->cate_vocab - 1);
            continue;
        }
        int k = 0;
        while (k < it.num_tags && it.tags[k] >= 0 && it.tags[k] < c->tag_vocab)
            k++;
        if (k < it.num_tags) {
            jsonl_error(src, "item_tags[%d]: %" PRId32 " is outside the "
                        "model's tag vocabulary (0..%d)", k, it.tags[k],
                        c->tag_vocab - 1);
            continue;
        }
        if (t->feat[it.item_id]) {
            jsonl_error(src, "item_id: %" PRId64 " already given on line %ld",
                        it.item_id, t->feat[it.item_id]->line);
            continue;
        }
        if ((rc = items_add(t, &it, jsonl_source_line(src))) < 0) break;
    }
    arena_free(&scratch);
    return rc;
}

/* --- Users: stored histories by id -------------------------------------- */

/* One user's stored history: the last max_len ids, oldest first. */
typedef struct user_hist {
    int len;
    int64_t seq[];
} user_hist;

/* Users are keyed by the text of their id (proto_user keeps an integer id
 * as its decimal text), so 42 and "42" are one user, as they are one key in
 * the feature store that ctr-server reads. */
typedef struct user_map {
    jsonl_seen *ids;      /* user_id -> its user_hist */
    arena mem;            /* the histories */
} user_map;

static int users_init(user_map *u) {
    arena_init(&u->mem, 1 << 20);
    return jsonl_seen_init(&u->ids);
}

static void users_free(user_map *u) {
    jsonl_seen_free(u->ids);
    arena_free(&u->mem);
}

/* The stored history of user_id; NULL when it has no line in users.jsonl. */
static const user_hist *users_find(const user_map *u, const char *user_id) {
    const void *h = NULL;
    jsonl_seen_find(u->ids, user_id, &h);
    return h;
}

static int load_users(jsonl_source *src, user_map *u, int max_len) {
    arena scratch;
    arena_init(&scratch, 1 << 16);
    const char *line;
    size_t len;
    int rc;
    char err[256];
    while ((rc = jsonl_next_line(src, &line, &len)) > 0) {
        arena_reset(&scratch);
        proto_user pu;
        /* No bound on the stored length: only the tail is kept. */
        int st = proto_user_decode(line, len, -1, &scratch, &pu, err,
                                   sizeof err);
        if (st == CTR_ENOMEM) { rc = st; break; }
        if (st < 0) { jsonl_error(src, "%s", err); continue; }
        int keep = pu.seq_len < max_len ? pu.seq_len : max_len;
        user_hist *h = arena_alloc(&u->mem, sizeof *h + (size_t)keep *
                                   sizeof h->seq[0], _Alignof(user_hist));
        if (!h) { rc = CTR_ENOMEM; break; }
        h->len = keep;
        if (keep)
            memcpy(h->seq, pu.item_seq + (pu.seq_len - keep),
                   (size_t)keep * sizeof h->seq[0]);
        long first = jsonl_seen_add(u->ids, pu.user_id,
                                    jsonl_source_line(src), h);
        if (first < 0) { rc = CTR_ENOMEM; break; }
        if (first > 0)
            jsonl_error(src, "user_id: %s already given on line %ld (integer "
                        "and string ids share a key)", pu.user_id, first);
    }
    arena_free(&scratch);
    return rc;
}

/* --- Requests ----------------------------------------------------------- */

typedef struct scorer {
    const engine_model *model;
    engine_scratch *scratch;
    item_table *items;
    user_map *users;
    proto_rank_schema schema;
    const char *ctx_name[ENGINE_MAX_CTX];
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
    const engine_schema *c = engine_model_schema(s->model);
    proto_rank_request r;
    arena_reset(&s->req_mem);
    int rc = proto_rank_request_decode(line, len, &s->schema, &s->req_mem, &r,
                                       err, errlen);
    if (rc < 0) return rc;

    const int64_t *seq = r.item_seq;
    int seq_len = r.seq_len;
    if (!r.has_item_seq) {
        const user_hist *u = users_find(s->users, r.user_id);
        if (u) {
            seq = u->seq;
            seq_len = u->len;
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

    /* The request rules, as the engine states them (the message names
     * the field as the request spelled it). */
    if ((rc = engine_request_check(s->model, r.cand_id, r.ctx, r.num_cand, err,
                                   errlen)) < 0)
        return rc;

    engine_request q = {s->hist, nh, s->cand, r.ctx, r.num_cand, NULL};
    if ((rc = engine_forward(s->model, s->scratch, &q, s->prob, why,
                             sizeof why)) < 0)
        return ctr_fail(err, errlen, rc, "%s", why);

    proto_buf_reset(&s->out);
    rc = proto_rank_scores_encode(r.user_id, r.user_id_is_int, s->prob,
                                  r.num_cand, &s->out);
    proto_buf_putc(&s->out, '\n');
    return rc < 0 || !proto_buf_ok(&s->out) ? CTR_ENOMEM : CTR_OK;
}

/* Scores every request line of src onto stdout.  Returns 0 at the end of
 * the input, or the first failure: a read error or CTR_ENOMEM from src, or
 * CTR_EIO when stdout refused a line (its error flag is then set). */
static int score_requests(scorer *s, jsonl_source *src, long *scored) {
    const char *line;
    size_t len;
    int rc;
    char err[300];
    while ((rc = jsonl_next_line(src, &line, &len)) > 0) {
        int st = score_line(s, line, len, jsonl_source_line(src), err,
                            sizeof err);
        if (st == CTR_ENOMEM) return st;
        if (st < 0) { jsonl_error(src, "%s", err); continue; }
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

/* Opens path (NULL: stdin) as a source; NULL, said on stderr, if it can't. */
static jsonl_source *open_input(const char *path) {
    jsonl_source *src;
    char err[300];
    if (jsonl_source_open(path, PROG, &src, err, sizeof err) < 0)
        fprintf(stderr, PROG ": %s\n", err);
    return src;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *items_path = NULL, *users_path = NULL;
    int max_cand = 1024, max_seq = 65536;
    dense_precision precision = DENSE_FP32;
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"items", required_argument, NULL, 'i'},
        {"users", required_argument, NULL, 'u'},
        {"max-cand", required_argument, NULL, 'c'},
        {"max-seq", required_argument, NULL, 's'},
        {"precision", required_argument, NULL, 'p'},
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
        case 'p':
            if (dense_precision_parse(optarg, &precision) < 0) {
                fprintf(stderr, PROG ": --precision: \"%s\" is not one of fp32, bf16, int8\n",
                        optarg);
                return 2;
            }
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
    engine_model *model = NULL;
    item_table items = {0};
    user_map users = {0};
    scorer s = {0};
    jsonl_source *items_src = NULL, *users_src = NULL, *req_src = NULL;
    long scored = 0;
    arena_init(&s.req_mem, 1 << 16);
    proto_buf_init(&s.out);

    engine_params ep = engine_default_params();
    ep.precision = precision;
    if (engine_model_load_with(model_path, &ep, &model, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    if (!dense_precision_exact(precision))
        fprintf(stderr, PROG ": precision %s is not exact (%s): scores differ slightly from "
                "the trained model's\n", dense_precision_name(precision),
                dense_precision_what(precision));
    const engine_schema *c = engine_model_schema(model);

    if (items_init(&items, model) < 0 || users_init(&users) < 0) goto oom;
    if (!(items_src = open_input(items_path))) goto done;
    rc = load_items(items_src, &items);
    if (rc == CTR_ENOMEM) goto oom;
    if (rc < 0) {
        fprintf(stderr, PROG ": %s: %s\n", items_path, strerror(errno));
        goto done;
    }
    if (users_path) {
        if (!(users_src = open_input(users_path))) goto done;
        rc = load_users(users_src, &users, c->max_len);
        if (rc == CTR_ENOMEM) goto oom;
        if (rc < 0) {
            fprintf(stderr, PROG ": %s: %s\n", users_path, strerror(errno));
            goto done;
        }
    }

    s.model = model;
    s.items = &items;
    s.users = &users;
    for (int k = 0; k < c->num_ctx; k++) s.ctx_name[k] = c->ctx_name[k];
    s.schema = (proto_rank_schema){c->num_ctx, s.ctx_name, max_cand, max_seq, c->name};
    s.hist = calloc((size_t)c->max_len, sizeof *s.hist);
    s.cand = calloc((size_t)max_cand, sizeof *s.cand);
    s.prob = calloc((size_t)max_cand, sizeof *s.prob);
    if (!s.hist || !s.cand || !s.prob) goto oom;
    if ((rc = engine_scratch_init(model, max_cand, &s.scratch)) < 0) {
        fprintf(stderr, PROG ": scratch for %d candidates: %s\n", max_cand,
                ctr_strerror(rc));
        goto done;
    }

    if (!(req_src = open_input(NULL))) goto done;
    rc = score_requests(&s, req_src, &scored);
    if (rc == CTR_ENOMEM) goto oom;
    /* Both reading and writing fail with CTR_EIO; stdout's flag tells. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
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
    long items_bad = jsonl_source_bad(items_src);
    long users_bad = users_src ? jsonl_source_bad(users_src) : 0;
    long req_bad = jsonl_source_bad(req_src);
    long bad = items_bad + users_bad + req_bad;
    if (bad)
        fprintf(stderr, PROG ": %ld bad line%s (items %ld, users %ld, "
                "requests %ld); %ld request%s scored\n", bad,
                bad == 1 ? "" : "s", items_bad, users_bad, req_bad, scored,
                scored == 1 ? "" : "s");
    status = bad ? 1 : 0;
    goto done;

oom:
    fprintf(stderr, PROG ": out of memory\n");
done:
    jsonl_source_close(items_src);
    jsonl_source_close(users_src);
    jsonl_source_close(req_src);
    engine_scratch_free(s.scratch);
    free(s.hist);
    free(s.cand);
    free(s.prob);
    arena_free(&s.req_mem);
    proto_buf_free(&s.out);
    items_free(&items);
    users_free(&users);
    engine_model_free(model);
    return status;
}

/*
 * ctr_score.c - ctr-score, the offline scorer: the engine (core/engine.h:
 * QIN, DIN or TIN, as the model file says) on files instead of HTTP, for
 * batch jobs and for checking the engine end to end against the PyTorch
 * references (tests/integration/test_ctr_score.sh).
 *
 *   ctr-score --model M --items items.jsonl [--users users.jsonl]
 *             [--max-candidates N] [--max-seq N] [--precision P]
 *             < requests.jsonl > scores.jsonl
 *
 * Its settings are rows of the programs' one settings table (config.h),
 * named as ctr-server's (--max-cand stays accepted as an alias).
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
#include <assert.h>
#include <errno.h>
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
#include "server/cmd/config.h"
#include "server/cmd/jsonl.h"

#define PROG "ctr-score"

static const char usage_about[] =
"Scores ranking requests offline with a QIN, DIN or TIN model (the model\n"
"file says which): one output line per good request line, in input order.\n"
"\n"
"Items (--items), one JSON object a line:\n"
"  QIN, DIN: {\"item_id\": 17, \"item_tags\": [5 ints], \"item_emb_d128\": [mm_in numbers]}\n"
"  TIN:      {\"item_id\": 0, \"cate_id\": 5}\n"
"item_id within the model's vocabulary (1..item_vocab-1; TIN:\n"
"0..item_vocab-1, 0 is an item), tags within 0..tag_vocab-1, cate_id within\n"
"0..cate_vocab-1.\n"
"\n";

static const char usage_after[] =
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
"vocabulary, or more than --max-candidates candidates make the request line\n"
"bad.\n"
"\n"
"Errors: each bad line, in any file, is reported on stderr as\n"
"FILE:LINE: message (at most %d per file, then only counted) and skipped;\n"
"the other lines are still used, and a bad request line prints nothing on\n"
"stdout.  An item or user given twice (42 and \"42\" included) is a bad\n"
"line (the first is kept).  Blank lines are skipped.\n"
"\n"
"Exit status: 0 all lines good; 1 some line bad; 2 could not run (usage,\n"
"unreadable file or model, out of memory, write error).\n";

static void usage(FILE *f) {
    config_usage(f, CONFIG_SCORE, PROG,
                 "--model M --items ITEMS.jsonl [--users USERS.jsonl] [--KEY VALUE]...\n"
                 "                 < REQUESTS.jsonl > SCORES.jsonl",
                 usage_about, NULL);
    fprintf(f, usage_after, JSONL_ERRORS_SHOWN);
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

/* The vector of item id (within the model's items: the caller checked it
 * with engine_item_check or engine_history_id_ok) into *vec, computed on
 * first use.  CTR_ENOTFOUND (no features), CTR_EINVAL (the engine refused
 * the features) or CTR_ENOMEM, with a message. */
static int items_vec(item_table *t, int64_t id, const float **vec, char *err,
                     size_t errlen) {
    assert(id >= t->lo && id < t->vocab);
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

/* One items.jsonl line (jsonl_each_line; ctx: the item_table). */
static int item_line(void *ctx, jsonl_source *src, const char *line, size_t len,
                     arena *scratch) {
    item_table *t = ctx;
    const engine_schema *c = engine_model_schema(t->model);
    /* The fields this model reads (engine_schema). */
    const proto_item_schema sch = {c->mm_dim ? c->num_tags : -1, c->mm_dim ? c->mm_dim : -1,
                                   c->cate_vocab > 0};
    char err[256];
    proto_item it;
    int st = proto_item_decode_schema(line, len, &sch, scratch, &it, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    engine_item in = {it.item_id, it.tags, it.num_tags, it.mm, it.cate};
    /* The model's ids and vocabularies. */
    if (st < 0 || engine_item_check(t->model, &in, err, sizeof err) < 0) {
        jsonl_error(src, "%s", err);
        return CTR_OK;
    }
    if (t->feat[it.item_id]) {
        jsonl_error(src, "item_id: %" PRId64 " already given on line %ld", it.item_id,
                    t->feat[it.item_id]->line);
        return CTR_OK;
    }
    return items_add(t, &it, jsonl_source_line(src));
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
    int max_len;          /* ids kept of each (the model's max_len) */
} user_map;

static int users_init(user_map *u, int max_len) {
    u->max_len = max_len;
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

/* One users.jsonl line (jsonl_each_line; ctx: the user_map), keeping the
 * last max_len ids of its history. */
static int user_line(void *ctx, jsonl_source *src, const char *line, size_t len,
                     arena *scratch) {
    user_map *u = ctx;
    char err[256];
    proto_user pu;
    /* No bound on the stored length: only the tail is kept. */
    int st = proto_user_decode(line, len, -1, scratch, &pu, err, sizeof err);
    if (st == CTR_ENOMEM) return st;
    if (st < 0) {
        jsonl_error(src, "%s", err);
        return CTR_OK;
    }
    int keep = pu.seq_len < u->max_len ? pu.seq_len : u->max_len;
    user_hist *h = arena_alloc(&u->mem, sizeof *h + (size_t)keep * sizeof h->seq[0],
                               _Alignof(user_hist));
    if (!h) return CTR_ENOMEM;
    h->len = keep;
    if (keep)
        memcpy(h->seq, pu.item_seq + (pu.seq_len - keep), (size_t)keep * sizeof h->seq[0]);
    long first = jsonl_seen_add(u->ids, pu.user_id, jsonl_source_line(src), h);
    if (first < 0) return CTR_ENOMEM;
    if (first > 0)
        jsonl_error(src, "user_id: %s already given on line %ld (integer and string ids "
                    "share a key)", pu.user_id, first);
    return CTR_OK;
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

    for (int i = 0; i < r.num_cand; i++) {
        engine_item id = {.id = r.cand_id[i]};
        if ((rc = engine_item_check(s->model, &id, why, sizeof why)) < 0)
            return ctr_fail(err, errlen, rc, "candidates[%d].%s", i, why);
        if ((rc = items_vec(s->items, r.cand_id[i], &s->cand[i], why, sizeof why)) < 0)
            return ctr_fail(err, errlen, rc, "candidates[%d].item_id: %s", i, why);
    }

    /* The request rules, as the engine states them (the message names
     * the field as the request spelled it). */
    if ((rc = engine_request_check(s->model, r.cand_id, r.ctx, r.num_cand, err,
                                   errlen)) < 0)
        return rc;

    engine_request q = {s->hist, nh, s->cand, r.ctx, r.num_cand, NULL, NULL};
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

/* Opens path (NULL: stdin) as a source; NULL, said on stderr, if it can't. */
static jsonl_source *open_input(const char *path) {
    jsonl_source *src;
    char err[300];
    if (jsonl_source_open(path, PROG, &src, err, sizeof err) < 0)
        fprintf(stderr, PROG ": %s\n", err);
    return src;
}

/* Everything one run holds, released by run_free whatever got built. */
typedef struct run {
    engine_model *model;
    item_table items;
    user_map users;
    scorer s;
    jsonl_source *items_src, *users_src, *req_src;
} run;

static void run_free(run *r) {
    jsonl_source_close(r->items_src);
    jsonl_source_close(r->users_src);
    jsonl_source_close(r->req_src);
    engine_scratch_free(r->s.scratch);
    free(r->s.hist);
    free(r->s.cand);
    free(r->s.prob);
    arena_free(&r->s.req_mem);
    proto_buf_free(&r->s.out);
    items_free(&r->items);
    users_free(&r->users);
    engine_model_free(r->model);
}

/* The model (in the settings' precision), then the items and users files.
 * CTR_OK, or a failure said on stderr (CTR_ENOMEM: not yet said). */
static int run_load(run *r, const config_params *cp) {
    char err[256];
    engine_params ep = engine_default_params();
    dense_precision_parse(cp->precision, &ep.precision);   /* checked by config_parse */
    if (engine_model_load_with(cp->model_path, &ep, &r->model, err, sizeof err) < 0) {
        fprintf(stderr, PROG ": %s\n", err);
        return CTR_EINVAL;
    }
    if (!dense_precision_exact(ep.precision))
        fprintf(stderr, PROG ": precision %s is not exact (%s): scores differ slightly from "
                "the trained model's\n", dense_precision_name(ep.precision),
                dense_precision_what(ep.precision));
    if (items_init(&r->items, r->model) < 0 ||
        users_init(&r->users, engine_model_schema(r->model)->max_len) < 0)
        return CTR_ENOMEM;
    if (!(r->items_src = open_input(cp->items))) return CTR_EIO;
    int rc = jsonl_each_line(r->items_src, item_line, &r->items);
    if (rc < 0 && rc != CTR_ENOMEM) fprintf(stderr, PROG ": %s: %s\n", cp->items, strerror(errno));
    if (rc < 0 || !cp->users[0]) return rc < 0 ? rc : CTR_OK;
    if (!(r->users_src = open_input(cp->users))) return CTR_EIO;
    rc = jsonl_each_line(r->users_src, user_line, &r->users);
    if (rc < 0 && rc != CTR_ENOMEM) fprintf(stderr, PROG ": %s: %s\n", cp->users, strerror(errno));
    return rc < 0 ? rc : CTR_OK;
}

/* The scorer's buffers for max_candidates candidates.  CTR_OK, or a
 * failure (CTR_ENOMEM: not yet said). */
static int run_scorer(run *r, const config_params *cp) {
    const engine_schema *c = engine_model_schema(r->model);
    scorer *s = &r->s;
    s->model = r->model;
    s->items = &r->items;
    s->users = &r->users;
    for (int k = 0; k < c->num_ctx; k++) s->ctx_name[k] = c->ctx_name[k];
    s->schema = (proto_rank_schema){c->num_ctx, s->ctx_name, cp->max_candidates, cp->max_seq,
                                    c->name};
    s->hist = calloc((size_t)c->max_len, sizeof *s->hist);
    s->cand = calloc((size_t)cp->max_candidates, sizeof *s->cand);
    s->prob = calloc((size_t)cp->max_candidates, sizeof *s->prob);
    if (!s->hist || !s->cand || !s->prob) return CTR_ENOMEM;
    int rc = engine_scratch_init(r->model, cp->max_candidates, &s->scratch);
    if (rc < 0)
        fprintf(stderr, PROG ": scratch for %d candidates: %s\n", cp->max_candidates,
                ctr_strerror(rc));
    return rc;
}

/* Scores stdin onto stdout and says what was bad.  The exit status. */
static int run_requests(run *r, const config_params *cp) {
    scorer *s = &r->s;
    long scored = 0;
    if (!(r->req_src = open_input(NULL))) return 2;
    int rc = score_requests(s, r->req_src, &scored);
    if (rc == CTR_ENOMEM) {
        fprintf(stderr, PROG ": out of memory\n");
        return 2;
    }
    /* Both reading and writing fail with CTR_EIO; stdout's flag tells. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, PROG ": writing the scores: %s\n", strerror(errno));
        return 2;
    }
    if (rc < 0) {
        fprintf(stderr, PROG ": reading the requests: %s\n", strerror(errno));
        return 2;
    }
    if (s->unknown_users)
        fprintf(stderr, PROG ": note: %ld request%s named a user not in %s "
                "(first on line %ld) and %s scored with an empty history\n",
                s->unknown_users, s->unknown_users == 1 ? "" : "s",
                cp->users[0] ? cp->users : "--users (not given)", s->first_unknown_line,
                s->unknown_users == 1 ? "was" : "were");
    long items_bad = jsonl_source_bad(r->items_src);
    long users_bad = r->users_src ? jsonl_source_bad(r->users_src) : 0;
    long req_bad = jsonl_source_bad(r->req_src);
    long bad = items_bad + users_bad + req_bad;
    if (bad)
        fprintf(stderr, PROG ": %ld bad line%s (items %ld, users %ld, requests %ld); %ld "
                "request%s scored\n", bad, bad == 1 ? "" : "s", items_bad, users_bad, req_bad,
                scored, scored == 1 ? "" : "s");
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    config_params cp = config_prog_params(CONFIG_SCORE);
    char err[1200];
    int rc = config_parse(&cp, argc, argv, NULL, err, sizeof err);
    if (rc == CONFIG_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc == CTR_OK && (!cp.model_path[0] || !cp.items[0]))
        rc = ctr_fail(err, sizeof err, CTR_EINVAL, "--model and --items are required");
    if (rc < 0) {
        fprintf(stderr, PROG ": %s\nTry '" PROG " --help'.\n", err);
        return 2;
    }
    run r = {0};
    arena_init(&r.s.req_mem, 1 << 16);
    proto_buf_init(&r.s.out);
    int status = 2;
    if ((rc = run_load(&r, &cp)) == CTR_OK) rc = run_scorer(&r, &cp);
    if (rc == CTR_ENOMEM) fprintf(stderr, PROG ": out of memory\n");
    if (rc == CTR_OK) status = run_requests(&r, &cp);
    run_free(&r);
    return status;
}

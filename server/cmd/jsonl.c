/*
 * jsonl.c - JSON Lines input of the offline programs: numbered lines,
 * capped error reports, and the set of keys already given (jsonl.h).
 *
 * Workload: files read once, front to back, by one thread; the key set
 * grows to a few million entries (one per user line).
 */
#include "server/cmd/jsonl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/arena.h"

/* --- Sources ------------------------------------------------------------ */

struct jsonl_source {
    FILE *f;
    const char *name;     /* as the user gave it */
    const char *prog;
    long line;            /* current line, 1-based */
    long bad;             /* bad lines so far */
    char *buf;            /* getline's */
    size_t cap;
};

int jsonl_source_open(const char *path, const char *prog, jsonl_source **out,
                      char *err, size_t errlen) {
    *out = NULL;
    jsonl_source *s = calloc(1, sizeof *s);
    if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    s->f = path ? fopen(path, "r") : stdin;
    if (!s->f) {
        int rc = ctr_fail(err, errlen, CTR_EIO, "%s: %s", path,
                          strerror(errno));
        free(s);
        return rc;
    }
    s->name = path ? path : "<stdin>";
    s->prog = prog;
    *out = s;
    return CTR_OK;
}

void jsonl_source_close(jsonl_source *s) {
    if (!s) return;
    if (s->f != stdin) fclose(s->f);
    free(s->buf);
    free(s);
}

static int blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

int jsonl_next_line(jsonl_source *s, const char **line, size_t *len) {
    for (;;) {
        errno = 0;
        ssize_t n = getline(&s->buf, &s->cap, s->f);
        if (n < 0) {
            if (ferror(s->f)) return CTR_EIO;
            /* glibc's getline fails without setting the error flag when
             * the line outgrows memory: not the end of the file. */
            return errno == ENOMEM ? CTR_ENOMEM : 0;
        }
        s->line++;
        if (n > 0 && s->buf[n - 1] == '\n') s->buf[--n] = '\0';
        if (blank(s->buf, (size_t)n)) continue;
        *line = s->buf;
        *len = (size_t)n;
        return 1;
    }
}

void jsonl_error(jsonl_source *s, const char *fmt, ...) {
    s->bad++;
    if (s->bad > JSONL_ERRORS_SHOWN) return;
    fprintf(stderr, "%s: %s:%ld: ", s->prog, s->name, s->line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (s->bad == JSONL_ERRORS_SHOWN)
        fprintf(stderr, "%s: %s: further errors in this file are only "
                "counted\n", s->prog, s->name);
}

int jsonl_each_line(jsonl_source *s, jsonl_line_fn fn, void *ctx) {
    arena scratch;
    arena_init(&scratch, 1 << 16);
    const char *line;
    size_t len;
    int rc = CTR_OK, more = 0;
    while (rc == CTR_OK && (more = jsonl_next_line(s, &line, &len)) > 0) {
        arena_reset(&scratch);
        rc = fn(ctx, s, line, len, &scratch);
    }
    arena_free(&scratch);
    return rc == CTR_OK && more < 0 ? more : rc;
}

const char *jsonl_source_name(const jsonl_source *s) { return s->name; }
long jsonl_source_line(const jsonl_source *s) { return s->line; }
long jsonl_source_bad(const jsonl_source *s) { return s->bad; }

/* --- Keys already given -------------------------------------------------- */

typedef struct seen_entry {
    const char *key;      /* NULL: empty slot */
    long line;
    const void *value;
} seen_entry;

struct jsonl_seen {
    seen_entry *slot;     /* open addressing, linear probing */
    size_t cap;           /* a power of two */
    size_t n;
    arena mem;            /* the keys */
};

static uint64_t key_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* The slot of key, or the empty slot where it would go. */
static seen_entry *slot_of(seen_entry *slot, size_t cap, const char *key) {
    size_t mask = cap - 1;
    for (size_t i = key_hash(key) & mask;; i = (i + 1) & mask)
        if (!slot[i].key || strcmp(slot[i].key, key) == 0) return &slot[i];
}

int jsonl_seen_init(jsonl_seen **out) {
    *out = NULL;
    jsonl_seen *s = calloc(1, sizeof *s);
    if (!s) return CTR_ENOMEM;
    s->cap = 1024;
    s->slot = calloc(s->cap, sizeof *s->slot);
    if (!s->slot) {
        free(s);
        return CTR_ENOMEM;
    }
    arena_init(&s->mem, 1 << 20);
    *out = s;
    return CTR_OK;
}

void jsonl_seen_free(jsonl_seen *s) {
    if (!s) return;
    free(s->slot);
    arena_free(&s->mem);
    free(s);
}

static int grow(jsonl_seen *s) {
    size_t cap = 2 * s->cap;
    seen_entry *slot = calloc(cap, sizeof *slot);
    if (!slot) return CTR_ENOMEM;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i].key) *slot_of(slot, cap, s->slot[i].key) = s->slot[i];
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
    return CTR_OK;
}

long jsonl_seen_add(jsonl_seen *s, const char *key, long line,
                    const void *value) {
    seen_entry *e = slot_of(s->slot, s->cap, key);
    if (e->key) return e->line;
    /* At most 70% full: linear probing stays short. */
    if ((s->n + 1) * 10 > s->cap * 7) {
        if (grow(s) < 0) return CTR_ENOMEM;
        e = slot_of(s->slot, s->cap, key);
    }
    const char *copy = arena_strndup(&s->mem, key, strlen(key));
    if (!copy) return CTR_ENOMEM;
    *e = (seen_entry){copy, line, value};
    s->n++;
    return 0;
}

long jsonl_seen_find(const jsonl_seen *s, const char *key,
                     const void **value) {
    const seen_entry *e = slot_of(s->slot, s->cap, key);
    if (!e->key) return 0;
    if (value) *value = e->value;
    return e->line;
}

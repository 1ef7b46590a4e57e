/*
 * test_jsonl.c - server/cmd/jsonl.c: line numbers that count blank lines, blank
 * lines skipped, CRLF lines, a last line without a newline, NUL bytes in a
 * line, standard input, a file that cannot be opened, the cap on error
 * reports (checked on the captured stderr), and the set of keys already
 * given, grown well past its first table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unistd.h>

#include "server/cmd/jsonl.h"

static char tmpdir[] = "/tmp/ctr-test-jsonl.XXXXXX";

static int setup(void **state) {
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes len bytes to a file in the temp dir; returns its path (static: a
 * source opened on it keeps the pointer, so no second write_file while it
 * is open). */
static const char *write_file(const char *name, const char *data, size_t len) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

static jsonl_source *open_data(const char *name, const char *data,
                               size_t len) {
    const char *path = write_file(name, data, len);
    jsonl_source *s;
    char err[256];
    if (jsonl_source_open(path, "prog", &s, err, sizeof err) != CTR_OK)
        fail_msg("%s", err);
    return s;
}

static jsonl_source *open_text(const char *name, const char *text) {
    return open_data(name, text, strlen(text));
}

/* The next line must be `want`, on line `lineno`. */
static void expect_line(jsonl_source *s, const char *want, size_t want_len,
                        long lineno) {
    const char *line = NULL;
    size_t len = 0;
    assert_int_equal(jsonl_next_line(s, &line, &len), 1);
    assert_int_equal(len, want_len);
    assert_memory_equal(line, want, want_len);
    assert_int_equal(line[len], '\0');
    assert_int_equal(jsonl_source_line(s), lineno);
}

static void expect_end(jsonl_source *s, long lines) {
    const char *line;
    size_t len;
    assert_int_equal(jsonl_next_line(s, &line, &len), 0);
    assert_int_equal(jsonl_next_line(s, &line, &len), 0);   /* stays at end */
    assert_int_equal(jsonl_source_line(s), lines);
}

static void test_lines_and_blanks(void **state) {
    jsonl_source *s = open_text("a.jsonl",
                                "{\"a\": 1}\n"
                                "\n"
                                "  \t \n"
                                "{\"b\": 2}\n"
                                " x \n"
                                "\n");
    assert_int_equal(jsonl_source_line(s), 0);
    expect_line(s, "{\"a\": 1}", 8, 1);
    expect_line(s, "{\"b\": 2}", 8, 4);   /* lines 2 and 3 were blank */
    expect_line(s, " x ", 3, 5);          /* only blank lines are skipped */
    expect_end(s, 6);                     /* the trailing blank is counted */
    assert_int_equal(jsonl_source_bad(s), 0);
    const char *name = jsonl_source_name(s);
    assert_string_equal(name + strlen(name) - strlen("/a.jsonl"), "/a.jsonl");
    jsonl_source_close(s);

    s = open_text("empty.jsonl", "");
    expect_end(s, 0);
    jsonl_source_close(s);

    s = open_text("blank.jsonl", "\n \r\n\t");
    expect_end(s, 3);
    jsonl_source_close(s);
}

/* jsonl_each_line: every non-blank line to the function with its number,
 * a scratch arena empty at each line, and the function's stop status
 * handed back (the lines after it not read). */
typedef struct each_log {
    int calls;
    long lines[8];
    char first[8];
    int stop_at;                    /* call number that returns CTR_EINVAL */
    void *p0;                       /* the first line's first allocation */
} each_log;

static int each_fn(void *ctx, jsonl_source *s, const char *line, size_t len, arena *scratch) {
    each_log *l = ctx;
    void *p = arena_alloc(scratch, 100, 8);
    assert_non_null(p);
    if (!l->p0) l->p0 = p;
    assert_ptr_equal(p, l->p0);               /* the arena was reset before each line */
    assert_non_null(arena_alloc(scratch, 100, 8));
    l->lines[l->calls] = jsonl_source_line(s);
    l->first[l->calls] = len ? line[0] : '-';
    if (line[0] == 'b') jsonl_error(s, "bad");
    return ++l->calls == l->stop_at ? CTR_EINVAL : CTR_OK;
}

static void test_each_line(void **state) {
    jsonl_source *s = open_text("each.jsonl", "a\n\nb\nc\n");
    each_log l = {0};
    assert_int_equal(jsonl_each_line(s, each_fn, &l), CTR_OK);
    assert_int_equal(l.calls, 3);
    assert_int_equal(l.lines[0], 1);
    assert_int_equal(l.lines[1], 3);
    assert_int_equal(l.lines[2], 4);
    assert_memory_equal(l.first, "abc", 3);
    assert_int_equal(jsonl_source_bad(s), 1);
    jsonl_source_close(s);

    s = open_text("stop.jsonl", "a\nb\nc\n");
    each_log st = {.stop_at = 2};
    assert_int_equal(jsonl_each_line(s, each_fn, &st), CTR_EINVAL);
    assert_int_equal(st.calls, 2);
    assert_int_equal(jsonl_source_line(s), 2);
    jsonl_source_close(s);
}

/* A CRLF line keeps its '\r' (JSON whitespace: the decoders' columns then
 * match the file); a line of only "\r" is blank. */
static void test_crlf(void **state) {
    jsonl_source *s = open_text("crlf.jsonl", "{\"a\": 1}\r\n\r\n[2]\r\n");
    expect_line(s, "{\"a\": 1}\r", 9, 1);
    expect_line(s, "[2]\r", 4, 3);
    expect_end(s, 3);
    jsonl_source_close(s);
}

static void test_last_line_without_newline(void **state) {
    jsonl_source *s = open_text("last.jsonl", "[1]\n[2]");
    expect_line(s, "[1]", 3, 1);
    expect_line(s, "[2]", 3, 2);
    expect_end(s, 2);
    jsonl_source_close(s);

    s = open_text("one.jsonl", "x");
    expect_line(s, "x", 1, 1);
    expect_end(s, 1);
    jsonl_source_close(s);
}

/* len, not strlen: a NUL inside a line reaches the decoder, which refuses
 * it, instead of silently cutting the line short. */
static void test_nul_in_line(void **state) {
    jsonl_source *s = open_data("nul.jsonl", "a\0b\nc\n", 6);
    expect_line(s, "a\0b", 3, 1);
    expect_line(s, "c", 1, 2);
    expect_end(s, 2);
    jsonl_source_close(s);
}

static void test_stdin(void **state) {
    const char *path = write_file("stdin.jsonl", "\n[7]\n", 5);
    assert_non_null(freopen(path, "r", stdin));
    jsonl_source *s;
    char err[256];
    assert_int_equal(jsonl_source_open(NULL, "prog", &s, err, sizeof err),
                     CTR_OK);
    assert_string_equal(jsonl_source_name(s), "<stdin>");
    expect_line(s, "[7]", 3, 2);
    expect_end(s, 2);
    jsonl_source_close(s);   /* leaves stdin open (ASan: no use after free) */
    assert_int_equal(fgetc(stdin), EOF);
    assert_false(ferror(stdin));
}

static void test_open_fails(void **state) {
    char path[300];
    snprintf(path, sizeof path, "%s/missing.jsonl", tmpdir);
    jsonl_source *s = (jsonl_source *)&s;   /* anything but NULL */
    char err[400];
    assert_int_equal(jsonl_source_open(path, "prog", &s, err, sizeof err),
                     CTR_EIO);
    assert_null(s);
    char want[400];
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    assert_string_equal(err, want);
    jsonl_source_close(NULL);
}

/* Runs fn with stderr going to a file; returns what it wrote (malloc'd). */
static char *capture_stderr(void (*fn)(void *), void *arg) {
    FILE *f = tmpfile();
    assert_non_null(f);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fileno(f), 2), 2);
    fn(arg);
    fflush(stderr);
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);
    /* fd 2 shared f's file offset; f's own buffer was never used. */
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* One bad line per line of the file, JSONL_ERRORS_SHOWN + 5 of them. */
static void report_all(void *arg) {
    jsonl_source *s = arg;
    const char *line;
    size_t len;
    while (jsonl_next_line(s, &line, &len) > 0)
        jsonl_error(s, "bad %.*s (%d)", (int)len, line, 7);
}

static void test_error_cap(void **state) {
    enum { N = JSONL_ERRORS_SHOWN + 5 };
    char text[N * 8] = "";
    for (int i = 1; i <= N; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%d\n", i);
    jsonl_source *s = open_text("bad.jsonl", text);
    const char *name = jsonl_source_name(s);
    char *out = capture_stderr(report_all, s);
    assert_int_equal(jsonl_source_bad(s), N);   /* every one counted */

    /* Exactly the first JSONL_ERRORS_SHOWN, then the note, then silence. */
    char want[200], *p = out;
    for (int i = 1; i <= JSONL_ERRORS_SHOWN; i++) {
        snprintf(want, sizeof want, "prog: %s:%d: bad %d (7)\n", name, i, i);
        assert_memory_equal(p, want, strlen(want));
        p += strlen(want);
    }
    snprintf(want, sizeof want, "prog: %s: further errors in this file are "
             "only counted\n", name);
    assert_string_equal(p, want);
    free(out);
    jsonl_source_close(s);
}

/* The cap is per source: a second file reports from its own first error. */
static void one_error(void *arg) {
    jsonl_source *s = arg;
    const char *line;
    size_t len;
    assert_int_equal(jsonl_next_line(s, &line, &len), 1);
    jsonl_error(s, "%s", "first");
}

static void test_error_cap_per_file(void **state) {
    jsonl_source *s = open_text("other.jsonl", "\n\n[1]\n");
    char *out = capture_stderr(one_error, s);
    char want[400];
    snprintf(want, sizeof want, "prog: %s:3: first\n", jsonl_source_name(s));
    assert_string_equal(out, want);
    assert_int_equal(jsonl_source_bad(s), 1);
    free(out);
    jsonl_source_close(s);
}

static void test_seen(void **state) {
    jsonl_seen *s;
    assert_int_equal(jsonl_seen_init(&s), CTR_OK);
    int v1 = 1, v2 = 2;
    assert_int_equal(jsonl_seen_add(s, "42", 3, &v1), 0);
    assert_int_equal(jsonl_seen_add(s, "042", 4, &v2), 0);   /* bytes differ */
    assert_int_equal(jsonl_seen_add(s, "42", 9, &v2), 3);    /* the first */

    const void *v = NULL;
    assert_int_equal(jsonl_seen_find(s, "42", &v), 3);
    assert_ptr_equal(v, &v1);                                /* unchanged */
    assert_int_equal(jsonl_seen_find(s, "042", NULL), 4);
    v = &v1;
    assert_int_equal(jsonl_seen_find(s, "43", &v), 0);
    assert_ptr_equal(v, &v1);                                /* untouched */
    assert_int_equal(jsonl_seen_find(s, "", NULL), 0);

    /* The key is copied: the caller's buffer may change. */
    char key[32] = "u-temp";
    assert_int_equal(jsonl_seen_add(s, key, 10, NULL), 0);
    strcpy(key, "u-other");
    assert_int_equal(jsonl_seen_find(s, "u-temp", &v), 10);
    assert_null(v);
    jsonl_seen_free(s);
    jsonl_seen_free(NULL);
}

/* Far past the first table (1024 slots): every key still found, with its
 * own line and value, after the table has grown many times. */
static void test_seen_grows(void **state) {
    enum { N = 200000 };
    jsonl_seen *s;
    assert_int_equal(jsonl_seen_init(&s), CTR_OK);
    static long values[N];
    char key[32];
    for (long i = 0; i < N; i++) {
        snprintf(key, sizeof key, "%ld", i * 7919);
        values[i] = i;
        assert_int_equal(jsonl_seen_add(s, key, i + 1, &values[i]), 0);
    }
    for (long i = 0; i < N; i++) {
        snprintf(key, sizeof key, "%ld", i * 7919);
        const void *v = NULL;
        assert_int_equal(jsonl_seen_find(s, key, &v), i + 1);
        assert_ptr_equal(v, &values[i]);
        assert_int_equal(jsonl_seen_add(s, key, N + 1, NULL), i + 1);
        snprintf(key, sizeof key, "%ld", i * 7919 + 1);
        assert_int_equal(jsonl_seen_find(s, key, NULL), 0);
    }
    jsonl_seen_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_and_blanks),
        cmocka_unit_test(test_crlf),
        cmocka_unit_test(test_each_line),
        cmocka_unit_test(test_last_line_without_newline),
        cmocka_unit_test(test_nul_in_line),
        cmocka_unit_test(test_stdin),
        cmocka_unit_test(test_open_fails),
        cmocka_unit_test(test_error_cap),
        cmocka_unit_test(test_error_cap_per_file),
        cmocka_unit_test(test_seen),
        cmocka_unit_test(test_seen_grows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_log.c - rate-limited log kinds: the first record printed, the rest
 * counted, one summary per interval (at the next record or the tick);
 * control characters in a record escaped, so a record is one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/log.h"

static char path[] = "/tmp/ctr-test-log.XXXXXX";
static int saved = -1;

/* Sends stderr to a temporary file. */
static void capture(void) {
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    saved = dup(2);
    dup2(fd, 2);
    close(fd);
}

/* Restores stderr; returns the captured text (caller frees). */
static char *release(void) {
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fopen(path, "r");
    static char buf[1 << 16];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = '\0';
    if (f) fclose(f);
    unlink(path);
    strcpy(path, "/tmp/ctr-test-log.XXXXXX");
    return strdup(buf);
}

static int lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_flood(void **state) {
    (void)state;
    static log_limit lim;
    /* The flood must fit in one window: half a second, which a loaded
     * machine's pauses (a sanitizer build: tens to hundreds of ms) do not
     * fill. */
    log_limit_set_interval_ms(500);
    capture();
    for (int i = 0; i < 3000; i++)
        log_limited(&lim, LOG_WARN, "flood", "request %d: Redis down", i);
    char *out = release();
    assert_int_equal(lines(out), 1);
    assert_non_null(strstr(out, "request 0: Redis down"));
    free(out);

    usleep(600000);
    capture();
    log_limit_tick();   /* the interval passed: the summary */
    char *sum = release();
    assert_int_equal(lines(sum), 1);
    assert_non_null(strstr(sum, "flood: 2999 more"));
    free(sum);

    capture();
    log_limited(&lim, LOG_WARN, "flood", "request %d: Redis down", 3000);
    log_limit_tick();   /* nothing counted since: no summary */
    char *again = release();
    assert_int_equal(lines(again), 1);
    assert_non_null(strstr(again, "request 3000"));
    free(again);
}

static void test_kinds_apart(void **state) {
    (void)state;
    static log_limit a, b;
    log_limit_set_interval_ms(10000);
    capture();
    log_limited(&a, LOG_WARN, "a", "first a");
    log_limited(&b, LOG_WARN, "b", "first b");
    log_limited(&a, LOG_WARN, "a", "second a");
    char *out = release();
    assert_int_equal(lines(out), 2);
    assert_null(strstr(out, "second a"));
    free(out);
    log_set_level(LOG_ERROR);   /* below the level: nothing, not even counted */
    static log_limit c;
    capture();
    log_limited(&c, LOG_WARN, "c", "hidden");
    char *none = release();
    assert_int_equal(lines(none), 0);
    free(none);
    log_set_level(LOG_INFO);
}

static void test_escaped(void **state) {
    (void)state;
    static log_limit lim;
    log_limit_set_interval_ms(10000);
    capture();
    /* What a client can put in a user id: a forged record after a newline,
     * a CR, a tab, an ESC sequence, DEL, and a C1 control (U+009B, CSI). */
    log_warn("history of user %s: %s", "u1\n2030-01-01T00:00:00.000Z error FORGED\r\x1b[2J\x7f",
             "tab\there \xc2\x9b\xc3\xa9 end");
    log_limited(&lim, LOG_WARN, "k", "request %s: x", "r\n1");
    char *out = release();
    assert_int_equal(lines(out), 2);
    assert_non_null(strstr(out, "history of user u1\\n2030-01-01T00:00:00.000Z error "
                                "FORGED\\r\\x1b[2J\\x7f: tab\\there \\u009b\xc3\xa9 end\n"));
    assert_non_null(strstr(out, "request r\\n1: x\n"));
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\x1b'));
    free(out);
    /* A record of nothing but control characters is cut whole escapes at
     * LOG_LINE_MAX, never mid-escape. */
    char big[1000];
    memset(big, '\n', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    capture();
    log_warn("%s", big);
    out = release();
    assert_int_equal(lines(out), 1);
    char *msg = strstr(out, "\\n");
    assert_non_null(msg);
    size_t n = strlen(msg) - 1;   /* without the newline */
    assert_true(n < LOG_LINE_MAX && n % 2 == 0);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaped),
        cmocka_unit_test(test_flood),
        cmocka_unit_test(test_kinds_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_modelfile.c - modelfile_read: only regular files (a directory, a
 * FIFO with no writer, refused at once and without allocating their
 * "size"), and a file overwritten in place while it is read (as cp or a
 * shell redirection does: truncated, then written) is refused, never
 * returned half old, half new. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/modelfile.h"

static char dir[] = "/tmp/ctr-test-modelfile.XXXXXX";

static int setup(void **state) {
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_not_regular(void **state) {
    (void)state;
    unsigned char *buf = (unsigned char *)"x";
    size_t len = 7;
    char err[512];
    /* A directory: its ftell "size" was 2^63-1, and malloc'd. */
    assert_int_equal(modelfile_read(dir, &buf, &len, err, sizeof err), CTR_EIO);
    assert_null(buf);
    assert_int_equal(len, 0);
    assert_non_null(strstr(err, "not a regular file (a directory)"));
    /* A FIFO nobody writes to: opening it used to wait for a writer. */
    char fifo[256];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    double t0 = now_s();
    assert_int_equal(modelfile_read(fifo, &buf, &len, err, sizeof err), CTR_EIO);
    assert_true(now_s() - t0 < 5.0);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
    /* Missing: the path and the reason. */
    snprintf(fifo, sizeof fifo, "%s/none", dir);
    assert_int_equal(modelfile_read(fifo, &buf, &len, err, sizeof err), CTR_EIO);
    assert_non_null(strstr(err, "No such file"));
}

static void write_file(const char *path, int byte, size_t n) {
    unsigned char *b = malloc(n);
    assert_non_null(b);
    memset(b, byte, n);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    free(b);
}

static void test_whole_file(void **state) {
    (void)state;
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/whole", dir);
    /* Just written: read again after the clock tick, then returned. */
    write_file(path, 0x5a, 100000);
    unsigned char *buf;
    size_t len;
    assert_int_equal(modelfile_read(path, &buf, &len, err, sizeof err), CTR_OK);
    assert_int_equal(len, 100000);
    assert_int_equal(buf[0], 0x5a);
    assert_int_equal(buf[99999], 0x5a);
    free(buf);
    write_file(path, 0, 0);
    assert_int_equal(modelfile_read(path, &buf, &len, err, sizeof err), CTR_OK);
    assert_int_equal(len, 0);
    free(buf);
}

/* Overwrites the file in place as cp does (truncate, write in chunks),
 * all 0x11 then all 0x22 and so on, until told to stop. */
typedef struct writer {
    const char *path;
    size_t n;
    atomic_int stop;
    atomic_int passes;
} writer;

static void *writer_main(void *arg) {
    writer *w = arg;
    const size_t chunk = 64 << 10;
    unsigned char *b = malloc(chunk);
    if (!b) abort();
    for (int pass = 0; !atomic_load(&w->stop); pass++) {
        int fd = open(w->path, O_WRONLY | O_TRUNC);
        if (fd < 0) abort();
        memset(b, pass % 2 ? 0x22 : 0x11, chunk);
        for (size_t off = 0; off < w->n; off += chunk)
            if (write(fd, b, chunk) != (ssize_t)chunk) abort();
        close(fd);
        atomic_store(&w->passes, pass + 1);
    }
    free(b);
    return NULL;
}

static void test_overwritten_while_read(void **state) {
    (void)state;
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/inplace", dir);
    const size_t n = 8u << 20;
    write_file(path, 0x11, n);
    writer w = {path, n, 0, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer_main, &w), 0);
    int ok = 0, refused = 0, mixed = 0;
    /* Reads while the writer rewrites: at least 40, over at least 20 of
     * its passes (at most 10 s). */
    while (atomic_load(&w.passes) < 1) usleep(1000);
    double t0 = now_s();
    for (int i = 0; (i < 40 || atomic_load(&w.passes) < 20) && now_s() - t0 < 10; i++) {
        unsigned char *buf;
        size_t len;
        int rc = modelfile_read(path, &buf, &len, err, sizeof err);
        if (rc < 0) {
            assert_int_equal(rc, CTR_EIO);
            assert_true(strstr(err, "changed while being read") ||
                        strstr(err, "still being written"));
            assert_non_null(strstr(err, "atomic rename"));
            refused++;
            continue;
        }
        ok++;
        /* A writer paused mid-file leaves it shorter, at rest (the model
         * parser refuses that); never longer, never two passes' bytes. */
        assert_true(len <= n);
        for (size_t k = 1; k < len; k++)
            if (buf[k] != buf[0]) {
                mixed++;
                break;
            }
        free(buf);
    }
    atomic_store(&w.stop, 1);
    pthread_join(t, NULL);
    fprintf(stderr, "# %d reads: %d whole, %d refused, %d mixed; %d writer passes\n",
            ok + refused, ok, refused, mixed, atomic_load(&w.passes));
    assert_int_equal(mixed, 0);
    /* Once the writer has stopped, the file reads whole again. */
    unsigned char *buf;
    size_t len;
    assert_int_equal(modelfile_read(path, &buf, &len, err, sizeof err), CTR_OK);
    assert_int_equal(len, n);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_regular),
        cmocka_unit_test(test_whole_file),
        cmocka_unit_test(test_overwritten_while_read),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

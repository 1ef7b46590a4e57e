/*
 * modelfile.c - metadata and tensor access for the loaders (see
 * modelfile.h).  A model file is untrusted input (tests/fuzz/fuzz_model.c):
 * every value is bounded before it is used in a size.
 */
#include "modelfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "linear.h"

/* A file's identity and state: any write, truncation or replacement between
 * two of these shows as a difference. */
typedef struct file_state {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
} file_state;

static file_state state_of(const struct stat *st) {
    return (file_state){st->st_dev, st->st_ino, st->st_size, st->st_mtim, st->st_ctim};
}

static int same_state(const file_state *a, const file_state *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static int64_t ts_ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int64_t realtime_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ts_ns(t);
}

/* Reads all of fd (a regular file of st->size bytes) into a new buffer.
 * CTR_OK, CTR_ENOMEM, or CTR_EIO with a message. */
static int read_all(int fd, const char *path, off_t size, unsigned char **out, char *err,
                    size_t errlen) {
    unsigned char *b = malloc(size ? (size_t)size : 1);
    if (!b)
        return ctr_fail(err, errlen, CTR_ENOMEM, "%s: out of memory for %lld bytes", path,
                        (long long)size);
    size_t got = 0;
    while (got < (size_t)size) {
        ssize_t n = pread(fd, b + got, (size_t)size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = errno;
            free(b);
            if (n < 0) return ctr_fail(err, errlen, CTR_EIO, "%s: %s", path, strerror(e));
            return ctr_fail(err, errlen, CTR_EIO, "%s: changed while being read (shorter than "
                            "its size); replace model files by atomic rename", path);
        }
        got += (size_t)n;
    }
    *out = b;
    return CTR_OK;
}

int modelfile_read(const char *path, unsigned char **buf, size_t *len, char *err,
                   size_t errlen) {
    *buf = NULL;
    *len = 0;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer before
     * anything could be checked.  The file is checked through this one
     * descriptor, so what is checked is what is read. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return ctr_fail(err, errlen, CTR_EIO, "%s: %s", path, strerror(errno));
    int rc = CTR_OK;
    unsigned char *b = NULL;
    size_t size = 0;
    for (int attempt = 0;; attempt++) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            rc = ctr_fail(err, errlen, CTR_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        if (!S_ISREG(st.st_mode)) {
            rc = ctr_fail(err, errlen, CTR_EIO, "%s: not a regular file (a %s)", path,
                          S_ISDIR(st.st_mode)    ? "directory"
                          : S_ISFIFO(st.st_mode) ? "FIFO"
                          : S_ISSOCK(st.st_mode) ? "socket"
                          : S_ISCHR(st.st_mode)  ? "character device"
                          : S_ISBLK(st.st_mode)  ? "block device"
                                                 : "special file");
            break;
        }
        if ((uint64_t)st.st_size > MODELFILE_MAX_BYTES) {
            rc = ctr_fail(err, errlen, CTR_ETOOBIG, "%s: %lld bytes; at most %llu", path,
                          (long long)st.st_size, (unsigned long long)MODELFILE_MAX_BYTES);
            break;
        }
        const file_state before = state_of(&st);
        size = (size_t)st.st_size;
        const int64_t start_ns = realtime_ns();
        if ((rc = read_all(fd, path, st.st_size, &b, err, errlen)) < 0) break;
        file_state after = before;
        if (fstat(fd, &st) == 0) after = state_of(&st);
        else after.size = -1;
        if (!same_state(&before, &after)) {
            rc = ctr_fail(err, errlen, CTR_EIO, "%s: changed while being read; replace "
                          "model files by atomic rename (write a new file, then mv it over "
                          "the old one)", path);
            break;
        }
        /* File times tick coarsely (a clock tick, a few ms): a write in the
         * tick of the first fstat, during the read, would leave them as
         * they were.  Only a file last written before that tick is known
         * whole; one written just now is read again once the tick has
         * passed. */
        if (ts_ns(before.mtime) < start_ns - MODELFILE_TIME_TICK_NS &&
            ts_ns(before.ctime) < start_ns - MODELFILE_TIME_TICK_NS)
            break;
        free(b);
        b = NULL;
        if (attempt == 2) {
            rc = ctr_fail(err, errlen, CTR_EIO, "%s: still being written (modified during "
                          "each of 3 reads); replace model files by atomic rename", path);
            break;
        }
        struct timespec pause = {0, 2 * MODELFILE_TIME_TICK_NS};
        nanosleep(&pause, NULL);
    }
    close(fd);
    if (rc < 0) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = size;
    return CTR_OK;
}

/* Finds tensor `name` and checks its dtype and shape (as modelfile_tensor
 * says); *t gets it. */
static int tensor_find(const st_file *f, const char *name, const char *dtype, int64_t d0,
                       int64_t d1, const st_tensor **tp, char *err, size_t errlen) {
    const st_tensor *t = *tp = st_find(f, name);
    if (!t) return ctr_fail(err, errlen, CTR_EMODEL, "missing tensor %s", name);
    if (strcmp(t->dtype, dtype) != 0)
        return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: dtype %s, expected %s", name,
                        t->dtype, dtype);
    int want_ndim = d1 < 0 ? 1 : 2;
    if (t->ndim != want_ndim || t->shape[0] != d0 || (d1 >= 0 && t->shape[1] != d1)) {
        char got[96] = "", *w = got;
        for (int i = 0; i < t->ndim && w < got + sizeof got - 24; i++)
            w += snprintf(w, (size_t)(got + sizeof got - w), "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        if (d1 < 0)
            return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: shape [%s], expected [%lld]",
                            name, got, (long long)d0);
        return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: shape [%s], expected [%lld, %lld]",
                        name, got, (long long)d0, (long long)d1);
    }
    return CTR_OK;
}

int modelfile_tensor(const st_file *f, const char *name, int64_t d0, int64_t d1, float **out,
                     char *err, size_t errlen) {
    *out = NULL;
    const st_tensor *t;
    int rc = tensor_find(f, name, "F32", d0, d1, &t, err, errlen);
    if (rc < 0) return rc;
    size_t n = (size_t)(t->end - t->begin) / sizeof(float);
    float *p = linear_falloc(n);
    if (!p) return ctr_fail(err, errlen, CTR_ENOMEM, "tensor %s: out of memory", name);
    memcpy(p, t->data, n * sizeof(float)); /* file data may be unaligned */
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(p[i])) {
            free(p);
            return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: non-finite value at %zu", name,
                            i);
        }
    }
    *out = p;
    return CTR_OK;
}

int modelfile_tensor_i8(const st_file *f, const char *name, int64_t d0, int64_t d1,
                        signed char **out, char *err, size_t errlen) {
    *out = NULL;
    const st_tensor *t;
    int rc = tensor_find(f, name, "I8", d0, d1, &t, err, errlen);
    if (rc < 0) return rc;
    size_t n = (size_t)(t->end - t->begin);
    signed char *p = malloc(n ? n : 1);
    if (!p) return ctr_fail(err, errlen, CTR_ENOMEM, "tensor %s: out of memory", name);
    memcpy(p, t->data, n);
    for (size_t i = 0; i < n; i++) {
        if (p[i] < -127) {
            const int v = p[i];
            free(p);
            return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: %d at %zu, outside -127..127",
                            name, v, i);
        }
    }
    *out = p;
    return CTR_OK;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

int modelfile_meta_int(const st_file *f, const char *key, int lo, int hi, int *out, char *err,
                       size_t errlen) {
    const char *v = st_meta_get(f, key);
    if (!v) return ctr_fail(err, errlen, CTR_EMODEL, "metadata lacks \"%s\"", key);
    if (parse_int(v, lo, hi, out) < 0)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"%s\" = \"%s\": expected an integer in [%d, %d]", key, v, lo,
                        hi);
    return CTR_OK;
}

int modelfile_meta_str(const st_file *f, const char *key, char *dst, size_t cap, char *err,
                       size_t errlen) {
    const char *v = st_meta_get(f, key);
    if (!v) return ctr_fail(err, errlen, CTR_EMODEL, "metadata lacks \"%s\"", key);
    if (strlen(v) >= cap || !*v)
        return ctr_fail(err, errlen, CTR_EMODEL, "metadata \"%s\" must be 1..%zu characters",
                        key, cap - 1);
    strcpy(dst, v);
    return CTR_OK;
}

int modelfile_meta_ints(const st_file *f, const char *key, int max, int lo, int hi, int *out,
                        int *n, char *err, size_t errlen) {
    const char *v = st_meta_get(f, key);
    if (!v) return ctr_fail(err, errlen, CTR_EMODEL, "metadata lacks \"%s\"", key);
    *n = 0;
    const char *s = v;
    while (*s) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        char one[24];
        if (*n >= max || len == 0 || len >= sizeof one) goto bad;
        memcpy(one, s, len);
        one[len] = '\0';
        if (parse_int(one, lo, hi, &out[*n]) < 0) goto bad;
        (*n)++;
        if (!c) break;
        s = c + 1;
    }
    return CTR_OK;
bad:
    return ctr_fail(err, errlen, CTR_EMODEL,
                    "metadata \"%s\" = \"%s\": expected at most %d comma-separated integers "
                    "in [%d, %d]", key, v, max, lo, hi);
}

const char *modelfile_name(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

const char *const modelfile_bn_torch[4] = {"weight", "bias", "running_mean", "running_var"};
const char *const modelfile_bn_tf[4] = {"gamma", "beta", "moving_mean", "moving_variance"};

int modelfile_batch_norm(const st_file *f, const char *prefix, const char *const names[4], int n,
                         double eps, double *scale, double *shift, char *err, size_t errlen) {
    float *t[4] = {NULL, NULL, NULL, NULL}; /* gamma, beta, mean, var */
    char name[4][160];
    int rc = CTR_OK;
    for (int k = 0; k < 4 && rc == CTR_OK; k++)
        if (names[k])
            rc = modelfile_tensor(f, modelfile_name(name[k], sizeof name[k], "%s%s", prefix,
                                                    names[k]),
                                  n, -1, &t[k], err, errlen);
    for (int i = 0; i < n && rc == CTR_OK; i++) {
        if (t[3][i] < 0) {
            rc = ctr_fail(err, errlen, CTR_EMODEL, "%s[%d] < 0", name[3], i);
            break;
        }
        const double s = (t[0] ? (double)t[0][i] : 1.0) / sqrt((double)t[3][i] + eps);
        scale[i] = s;
        shift[i] = t[1] ? (double)t[1][i] - (double)t[2][i] * s : -((double)t[2][i] * s);
    }
    for (int k = 0; k < 4; k++) free(t[k]);
    return rc;
}

int modelfile_no_unexpected(const st_file *f, int (*expected)(const void *ctx, const char *name),
                            const void *ctx, char *err, size_t errlen) {
    for (int i = 0; i < f->num_tensors; i++)
        if (!expected(ctx, f->tensors[i].name))
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "unexpected tensor %s (not part of the declared configuration)",
                            f->tensors[i].name);
    return CTR_OK;
}

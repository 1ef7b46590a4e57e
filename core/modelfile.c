/*
 * modelfile.c - metadata, schema and tensor access for the loaders (see
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

int modelfile_tensor(const st_file *f, const char *name, int64_t d0, int64_t d1, float **out,
                     char *err, size_t errlen) {
    *out = NULL;
    const st_tensor *t = st_find(f, name);
    if (!t) return ctr_fail(err, errlen, CTR_EMODEL, "missing tensor %s", name);
    if (strcmp(t->dtype, "F32") != 0)
        return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: dtype %s, expected F32", name,
                        t->dtype);
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

int modelfile_split(const char *s, char out[][ENGINE_NAME_MAX], int *n) {
    *n = 0;
    if (!*s) return 0;
    for (;;) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        if (*n >= ENGINE_MAX_CTX || len == 0 || len >= ENGINE_NAME_MAX) return -1;
        memcpy(out[*n], s, len);
        out[*n][len] = '\0';
        (*n)++;
        if (!c) return 0;
        s = c + 1;
    }
}

const char *modelfile_name(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

/* Item fields a schema may name, in the order a file lists them. */
enum { F_ID = 1, F_TAGS = 2, F_MM = 4, F_CATE = 8 };

static int item_fields(const char *s, int *mask) {
    char names[ENGINE_MAX_CTX][ENGINE_NAME_MAX];
    int n;
    if (modelfile_split(s, names, &n) < 0) return -1;
    *mask = 0;
    for (int i = 0; i < n; i++) {
        int bit = !strcmp(names[i], "item_id")         ? F_ID
                  : !strcmp(names[i], "item_tags")     ? F_TAGS
                  : !strcmp(names[i], "item_emb_d128") ? F_MM
                  : !strcmp(names[i], "cate_id")       ? F_CATE
                                                       : 0;
        if (!bit || (*mask & bit)) return -1;
        *mask |= bit;
    }
    return 0;
}

int modelfile_schema(const st_file *f, engine_schema *sc, char *err, size_t errlen) {
    int rc;
    memset(sc, 0, sizeof *sc);
    const char *fmt = st_meta_get(f, "format");
    const char *arch = st_meta_get(f, "arch");
    int v1 = fmt && !strcmp(fmt, MODELFILE_FORMAT_QIN1);
    if (!fmt || (!v1 && strcmp(fmt, MODELFILE_FORMAT) != 0))
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"format\" is \"%s\", expected \"" MODELFILE_FORMAT
                        "\" (or \"" MODELFILE_FORMAT_QIN1 "\"); convert checkpoints with "
                        "tools/convert.py", fmt ? fmt : "(none)");
    int a = -1;
    for (int i = 0; i < ENGINE_ARCH_COUNT; i++)
        if (arch && !strcmp(arch, engine_arch_name(i))) a = i;
    if (a < 0 || (v1 && a != ENGINE_ARCH_QIN))
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"arch\" is \"%s\"; this engine serves %s", arch ? arch : "(none)",
                        v1 ? "\"qin\" in a " MODELFILE_FORMAT_QIN1 " file" : "qin, din and tin");
    sc->arch = (engine_arch)a;
    if ((rc = modelfile_meta_str(f, "name", sc->name, sizeof sc->name, err, errlen)) < 0 ||
        (rc = modelfile_meta_str(f, "version", sc->version, sizeof sc->version, err, errlen)) < 0)
        return rc;

    int mask = F_ID | F_TAGS | F_MM;
    if (!v1) {
        const char *fields = st_meta_get(f, "item_fields");
        if (!fields) return ctr_fail(err, errlen, CTR_EMODEL, "metadata lacks \"item_fields\"");
        int want = a == ENGINE_ARCH_TIN ? (F_ID | F_CATE) : (F_ID | F_TAGS | F_MM);
        if (item_fields(fields, &mask) < 0 || mask != want)
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "metadata \"item_fields\" = \"%s\": a %s model reads %s", fields, arch,
                            a == ENGINE_ARCH_TIN ? "item_id,cate_id"
                                                 : "item_id,item_tags,item_emb_d128");
    }
    /* Bounds keep every size product below 2^31 elements and reject
     * nonsense early with a clear message. */
    if ((rc = modelfile_meta_int(f, "max_len", 1, 4096, &sc->max_len, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "item_vocab", 2, INT_MAX, &sc->item_vocab, err, errlen)) < 0)
        return rc;
    sc->item_id_min = a == ENGINE_ARCH_TIN ? 0 : 1;
    if (mask & F_TAGS) {
        if ((rc = modelfile_meta_int(f, "tag_vocab", 1, INT_MAX, &sc->tag_vocab, err, errlen)) <
                0 ||
            (rc = modelfile_meta_int(f, "num_tags", 0, 1024, &sc->num_tags, err, errlen)) < 0)
            return rc;
    }
    if ((mask & F_MM) &&
        (rc = modelfile_meta_int(f, "mm_in", 1, 65536, &sc->mm_dim, err, errlen)) < 0)
        return rc;
    if ((mask & F_CATE) &&
        (rc = modelfile_meta_int(f, "cate_vocab", 1, INT_MAX, &sc->cate_vocab, err, errlen)) < 0)
        return rc;

    const char *fields = st_meta_get(f, "context_fields");
    const char *vocabs = st_meta_get(f, "context_vocab");
    if (!fields || !vocabs)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata lacks \"context_fields\" or \"context_vocab\"");
    int nv;
    if (modelfile_split(fields, sc->ctx_name, &sc->num_ctx) < 0 ||
        modelfile_meta_ints(f, "context_vocab", ENGINE_MAX_CTX, 1, INT_MAX, sc->ctx_vocab, &nv,
                            NULL, 0) < 0 ||
        nv != sc->num_ctx)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata context_fields \"%s\" / context_vocab \"%s\": expected "
                        "two comma-separated lists of the same length (at most %d)",
                        fields, vocabs, ENGINE_MAX_CTX);
    for (int i = 0; i < sc->num_ctx; i++) {
        for (int j = 0; j < i; j++)
            if (!strcmp(sc->ctx_name[i], sc->ctx_name[j]))
                return ctr_fail(err, errlen, CTR_EMODEL, "context field \"%s\" twice",
                                sc->ctx_name[i]);
        if (!strcmp(sc->ctx_name[i], "item_id") || !strcmp(sc->ctx_name[i], "item_tags") ||
            !strcmp(sc->ctx_name[i], "item_emb_d128") || !strcmp(sc->ctx_name[i], "cate_id"))
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "context field \"%s\" clashes with an item field", sc->ctx_name[i]);
    }
    return CTR_OK;
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

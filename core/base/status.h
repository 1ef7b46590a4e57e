/*
 * status.h - the project's one list of status codes.
 *
 * Every fallible function in core/, proto/ and server/ returns one of these:
 * 0 is success, negatives are failures.  Detail for a human goes into a
 * caller-provided message buffer; the code is for the program.
 */
#ifndef CTR_STATUS_H
#define CTR_STATUS_H

#define CTR_STATUS_MAP(X)                                                     \
    X(OK,          0,  "ok")                                                  \
    X(ENOMEM,     -1,  "out of memory")                                       \
    X(EIO,        -2,  "input/output error")                                  \
    X(EFORMAT,    -3,  "malformed file")                                      \
    X(EMODEL,     -4,  "model inconsistent with its configuration")           \
    X(ERANGE,     -5,  "value outside the model's vocabulary")                \
    X(ETOOMANY,   -6,  "too many candidates")                                 \
    X(EINVAL,     -7,  "invalid argument")                                    \
    X(ENOTFOUND,  -8,  "not found")                                           \
    X(EBACKEND,   -9,  "feature store unavailable")                           \
    X(ETIMEOUT,  -10,  "timed out")                                           \
    X(ETOOBIG,   -11,  "input too large")

typedef enum ctr_status {
#define CTR_STATUS_ENUM(name, val, msg) CTR_##name = (val),
    CTR_STATUS_MAP(CTR_STATUS_ENUM)
#undef CTR_STATUS_ENUM
} ctr_status;

/* Static string for a status code; "unknown status" for anything else.
 * Thread-safe. */
const char *ctr_strerror(int status);

/* printf into a caller's message buffer (may be NULL or of length 0);
 * returns `status` so callers can write `return ctr_fail(err, n, CTR_EINVAL,
 * "...")`. */
int ctr_fail(char *err, unsigned long errlen, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#endif

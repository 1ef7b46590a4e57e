/*
 * log.h - one-line log records on stderr: time, level, message.
 *
 * Containers collect stderr, so that is where logs go; one fprintf per
 * record keeps lines whole across threads.  Control characters in a
 * message (a newline in a client's user id, an ESC) are written escaped
 * (\n, \x1b, \u0085), so a record is always one line and a client cannot
 * forge records or send the reader's terminal escape sequences.  A record
 * longer than LOG_LINE_MAX bytes after escaping is cut.  Thread-safe.
 *
 * Rate-limited records: a warning that can fire on every request (Redis
 * down, a malformed value) goes through a log_limit, one per kind (a
 * static at the call site).  The first record of a kind is printed at
 * once; later ones within the interval (10 s by default) are only counted,
 * and one summary line with the count is printed when the interval has
 * passed, at the next record of that kind or at the next log_limit_tick
 * (the server calls it from its main loop), whichever comes first.  So an
 * outage at 3,000 requests a second logs a few lines a minute, not 3,000
 * a second.
 */
#ifndef CTR_LOG_H
#define CTR_LOG_H

#include <stdatomic.h>
#include <stdint.h>

#define LOG_LINE_MAX 2048

typedef enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the least level printed; "debug", "info", "warn", "error".
 * Returns 0, or -1 for an unknown name. */
int log_set_level_name(const char *name);
void log_set_level(log_level l);

void log_msg(log_level l, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* One kind of rate-limited record.  Zero-initialised (a static) is ready. */
typedef struct log_limit {
    atomic_llong window_end_ns;     /* end of the current interval; 0: none */
    atomic_ullong suppressed;       /* records counted, not printed */
    atomic_int registered;          /* known to log_limit_tick */
    const char *kind;               /* set on first use, for the summary */
    log_level level;
} log_limit;

/* Prints the record, or counts it when one of this kind was printed less
 * than the interval ago.  `kind` names it in the summary ("history read").
 * Thread-safe. */
void log_limited(log_limit *l, log_level lv, const char *kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Prints the summary of every kind whose interval has passed with records
 * counted.  Thread-safe; cheap when there is nothing to print. */
void log_limit_tick(void);

/* The interval, in ms (10000 by default; tests shorten it). */
void log_limit_set_interval_ms(int ms);

#endif

/*
 * log.h - one-line log records on stderr: time, level, message.
 *
 * Containers collect stderr, so that is where logs go; one fprintf per
 * record keeps lines whole across threads.  Thread-safe.
 */
#ifndef CTR_LOG_H
#define CTR_LOG_H

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

#endif

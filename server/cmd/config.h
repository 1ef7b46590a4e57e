/*
 * config.h - the settings of the three programs (ctr-server, ctr-load,
 * ctr-score): defaults, config file, environment, command line, --help and
 * the startup dump.
 *
 * One table (config_table.c) lists every setting of every program with the
 * programs that take it; a name means the same thing in each program that
 * has it (--redis, --redis-prefix, --redis-timeout-ms, --max-seq,
 * --max-candidates, --precision ...).  Older spellings stay accepted as
 * aliases and --help says so (ctr-load's --prefix and --timeout-ms,
 * ctr-score's --max-cand).
 *
 * Each setting comes from, in increasing precedence:
 *   1. its built-in default (config_default_params);
 *   2. the config file named by --config FILE or CTR_CONFIG: lines
 *      `key = value`, blank lines and `#` comments (a `#` after blanks ends
 *      a line too); a value may be put in double quotes to keep a `#` or
 *      surrounding blanks;
 *   3. the environment: CTR_<KEY in upper case>, e.g. CTR_PORT, CTR_REDIS.
 *      An empty variable counts as unset (compose files and shells produce
 *      `CTR_X=` placeholders).  Other CTR_* variables are ignored, since
 *      tools share the prefix.  ctr-server reads every setting so; ctr-load
 *      only the Redis AUTH ones (a loader run beside a server must not pick
 *      up the server's CTR_REDIS or CTR_MODEL), ctr-score none;
 *   4. flags: `--key value` or `--key=value`; `-` and `_` are the same in
 *      keys (--redis-prefix).  A boolean flag alone (--skip_scoring) means
 *      true.
 * The config file (1.) is ctr-server's only.
 *
 * Several models: `model` takes a list.  Each entry is PATH (the model is
 * named from its file's metadata) or NAME=PATH; entries are separated by
 * commas, and repeating the setting within one source (flags, or lines of
 * the file) adds entries.  A source that sets `model` replaces the list of
 * a lower one (a flag's models replace the file's).  Per-model settings
 * (redis_prefix, cache_mb, precision, impression_sample) take a plain VALUE for every
 * model, or NAME=VALUE for one model, in the same list form:
 * `--redis-prefix ctr: --redis-prefix tin=ctr-tin:`, or
 * `CTR_REDIS_PREFIX=ctr:,tin=ctr-tin:`; for one model and setting, the
 * highest source (and, within it, the last entry) wins.  A NAME=VALUE
 * entry must name a model being served (config_check_models).  Lists
 * cannot hold a comma inside an entry; blanks around commas are ignored.
 *
 * The table gives each setting its type, range, default, programs and
 * description; parsing, --help and config_dump all read it, so they
 * cannot disagree.  Bad input (unknown key, a number that is not one, a
 * value out of range) is an error naming the setting and where it came from
 * ("cfg.conf:3", "env CTR_PORT", "flag --port"); the caller prints it and
 * exits non-zero.
 *
 * Workload: called once at startup, single-threaded.  Not thread-safe while
 * a params struct is being filled; the filled struct is plain data.
 */
#ifndef CTR_SERVER_CONFIG_H
#define CTR_SERVER_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "core/base/status.h"

/* Capacity of each string setting, NUL included; longer values are an
 * error, never silently cut. */
#define CONFIG_STR_MAX 1024

/* config_parse's answer when --help (or -h) is on the command line. */
#define CONFIG_HELP 1

/* The programs; a setting lists those that take it. */
typedef enum config_prog {
    CONFIG_SERVER = 1,              /* ctr-server */
    CONFIG_LOAD = 2,                /* ctr-load */
    CONFIG_SCORE = 4                /* ctr-score */
} config_prog;

/* Rows of the settings table, all programs (config_given's slots). */
#define CONFIG_MAX_SETTINGS 80

#define CONFIG_MAX_MODELS 8         /* entries of `model` */
#define CONFIG_NAME_MAX 64          /* a model name, NUL included */
#define CONFIG_MAX_OVERRIDES 32     /* NAME=VALUE entries, all settings */

/* One `model` entry. */
typedef struct config_model {
    char name[CONFIG_NAME_MAX];     /* "" for a bare PATH: the file's
                                       metadata names it */
    char path[CONFIG_STR_MAX];
} config_model;

/* One NAME=VALUE entry of a per-model setting, checked when read. */
typedef struct config_override {
    const char *key;                /* the setting ("redis_prefix") */
    char model[CONFIG_NAME_MAX];
    char value[CONFIG_STR_MAX];
    char where[96];                 /* its source, for messages */
} config_override;

typedef struct config_params {
    config_model models[CONFIG_MAX_MODELS];  /* model files (safetensors),
                                                served in this order; the
                                                first is the default */
    int num_models;
    char redis[CONFIG_STR_MAX];     /* "host:port", or a unix socket path
                                       (starts with '/') */
    char redis_cluster[CONFIG_STR_MAX]; /* Redis Cluster seeds "host:port,..."
                                       ("": one node, `redis`) */
    int redis_read_replicas;        /* cluster: reads from replicas */
    int redis_cluster_refresh_ms;   /* cluster: least time between slot-map
                                       refreshes of one connection set */
    char redis_user[256];           /* AUTH user ("": default user) */
    char redis_password[CONFIG_STR_MAX];  /* AUTH password: never printed */
    char redis_password_file[CONFIG_STR_MAX];  /* or read from this file */
    char redis_prefix[CONFIG_STR_MAX];  /* key prefix of every feature
                                           (per model) */
    int redis_connect_timeout_ms;
    int redis_timeout_ms;           /* per command */
    int redis_breaker_base_ms;      /* first open period of a breaker */
    int redis_breaker_max_ms;       /* longest open period */
    int deadline_ms;                /* a request's budget by default */
    int max_deadline_ms;            /* the most a request may ask for */
    char bind[CONFIG_STR_MAX];      /* address to listen on */
    int port;
    int threads;                    /* request worker threads */
    int max_pending;                /* rank requests queued + in work;
                                       0: 4 x threads */
    int worker_nice;                /* nice value of the request workers */
    int max_connections;            /* concurrent connections */
    int max_connections_per_ip;     /* 0: no per-address limit */
    int receive_timeout_ms;         /* a whole request must arrive in this */
    int health_interval_ms;         /* Redis + feature-set check period */
    int score_threads;              /* threads one request's scoring may use */
    int split_min;                  /* fewest candidates worth splitting */
    int split_min_mflops;           /* least work per part of a split */
    char split[16];                 /* "auto", "one", "columns", "candidates" */
    int max_candidates;             /* per request; sizes the scratch */
    size_t max_body_bytes;
    int max_seq;                    /* history entries read per user */
    int cache_mb;                   /* item cache budget, shared by the
                                       models without their own (per
                                       model); 0 disables it */
    int warmup;                     /* score dummy requests at load */
    int cache_ttl_s;                /* item cache TTL; 0 never expires */
    int history_cache_mb;           /* users' history cache; 0: off */
    int history_cache_ttl_s;        /* its entries' TTL; 0 never expires */
    int request_timeout_s;          /* idle keep-alive connection timeout */
    int skip_scoring;               /* BENCHMARK ONLY: scores are all 0 */
    char precision[8];              /* "fp32", "bf16", "int8", "int8x2" */
    char kernel[16];                /* "auto", "onednn", "packed", "openblas" */
    char impression_log[CONFIG_STR_MAX];  /* "redis:KEY", "file:PATH" or ""
                                             (off) */
    double impression_sample;       /* share of answers logged, 0..1 (per
                                       model) */
    char impression_log_redis[CONFIG_STR_MAX];  /* "": the feature store's */
    int impression_log_maxlen;      /* stream entries kept (MAXLEN ~) */
    int impression_queue_mb;        /* records waiting for the sink */
    char log_level[16];             /* "debug", "info", "warn", "error" */
    char config[CONFIG_STR_MAX];    /* the config file read, "" if none */
    /* ctr-load and ctr-score. */
    char model_path[CONFIG_STR_MAX];  /* their one model ("": none) */
    char items[CONFIG_STR_MAX];     /* item features file (JSON Lines) */
    char users[CONFIG_STR_MAX];     /* user histories file (JSON Lines) */
    char events[CONFIG_STR_MAX];    /* ctr-load: behaviours to append */
    int changes_maxlen;             /* ctr-load: <prefix>item-changes cap */
    int batch;                      /* ctr-load: SETs per round trip */
    int max_tags;                   /* ctr-load: tag slots per item */
    int mm_dim;                     /* ctr-load: embedding width */
    config_prog prog;               /* whose settings these are */
    unsigned char given[CONFIG_MAX_SETTINGS];  /* internal: the source that
                                       last set each row (0: default) */
    config_override overrides[CONFIG_MAX_OVERRIDES];  /* NAME=VALUE */
    int num_overrides;
    int source;                     /* internal: the source being read */
    int models_source;              /* internal: the source of models[] */
} config_params;

/* Built-in defaults of ctr-server.  threads and score_threads are the
 * number of online CPUs at the time of the call. */
config_params config_default_params(void);

/* Built-in defaults of prog (config_default_params for CONFIG_SERVER). */
config_params config_prog_params(config_prog prog);

/* Fills *p (which should hold defaults) from the config file, the
 * environment and the command line, in that order of precedence.
 * argv[0] is the program name and is skipped.  envp is a NULL-terminated
 * "NAME=value" array like main's third argument; NULL means the process
 * environment.  Returns CTR_OK; CONFIG_HELP when --help/-h was given
 * (nothing else is parsed; print config_help and exit 0); CTR_EINVAL for
 * bad input or CTR_EIO for an unreadable config file, with a message in err
 * naming the setting and its source.  On error *p is partly filled. */
int config_parse(config_params *p, int argc, char *const argv[],
                 char *const envp[], char *err, size_t errlen);

/* Sets one setting from text, checking it as config_parse does.  `key`
 * accepts '-' for '_'; `where` names the source for messages (e.g. "flag
 * --port"), NULL for none.  CTR_OK or CTR_EINVAL with a message.  The
 * "config" key is accepted here and only records the path. */
int config_set(config_params *p, const char *key, const char *value,
               const char *where, char *err, size_t errlen);

/* A per-model setting's NAME=VALUE text for model (the last entry of the
 * highest source), or NULL when the model has none: the global field then
 * applies.  The text was checked when set (an int setting's is a valid
 * number in range). */
const char *config_model_value(const config_params *p, const char *key, const char *model);

/* CTR_OK when every NAME=VALUE entry names one of the n models; otherwise
 * CTR_EINVAL naming the entry, its source and the models served. */
int config_check_models(const config_params *p, const char *const *names, int n, char *err,
                        size_t errlen);

/* 1 when s[0..len) is a valid model name: 1..63 of [A-Za-z0-9_.-],
 * starting with a letter or digit. */
int config_model_name_ok(const char *s, size_t len);

/* Where the setting `key` of p came from: 0 its default, 1 the config
 * file, 2 the environment, 3 a flag. */
int config_given(const config_params *p, const char *key);

/* The Redis AUTH settings made ready: a redis_password_file is read into
 * redis_password (a trailing CR/LF dropped); redis_password and
 * redis_password_file from one source are refused (from two, the higher
 * source's wins), and so is redis_user without a password.  CTR_OK, or an
 * error with a message that never holds the password. */
int config_redis_auth(config_params *p, char *err, size_t errlen);

/* Blanks the value of every secret flag (--redis-password, any spelling)
 * in argv, so that ps and /proc/PID/cmdline show it only for the moment
 * before this runs.  Call right after config_parse. */
void config_scrub_argv(int argc, char **argv);

/* ctr-server's usage: every setting with its argument, environment
 * variable, default and a description.  prog is the program name for the
 * usage line. */
void config_help(FILE *out, const char *prog);

/* Any program's usage: "Usage: NAME SYNOPSIS", the text `about`, every
 * setting of prog as config_help shows them, then `after` (either text
 * may be NULL). */
void config_usage(FILE *out, config_prog prog, const char *name, const char *synopsis,
                  const char *about, const char *after);

/* The effective settings as `key = value` lines (valid config file
 * syntax), for the startup log.  A secret (redis_password) is never
 * printed: a set one shows as a comment line saying so. */
void config_dump(const config_params *p, FILE *out);

#endif

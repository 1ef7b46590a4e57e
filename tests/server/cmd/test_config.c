/*
 * test_config.c - server/cmd/config.c: defaults, precedence (default < file <
 * env < flag), flag and file syntax, every kind of error with the source it
 * must name, --help listing every setting, and config_dump read back as a
 * config file giving the same settings.  The environment is passed in
 * explicitly, so the CTR_* variables tests/run.sh exports do not leak in.
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

#include "server/cmd/config.h"

/* The settings the service is specified to have; --help and the dump must
 * list each (checked against this independent list, not the table). */
static const char *const keys[] = {
    "model", "redis", "redis_prefix", "redis_connect_timeout_ms", "redis_timeout_ms",
    "bind", "port", "threads", "score_threads", "split_min", "split_min_mflops",
    "max_candidates",
    "max_body_bytes", "max_seq", "precision", "cache_mb", "cache_ttl_s", "request_timeout_s",
    "skip_scoring", "log_level", "redis_cluster", "redis_read_replicas",
    "redis_cluster_refresh_ms", "redis_user", "redis_password", "redis_password_file",
    "warmup",
};
#define NKEYS (sizeof keys / sizeof *keys)

static char *const no_env[] = {NULL};
static char tmpdir[] = "/tmp/ctr-test-config.XXXXXX";

static int setup(void **state) {
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to a file in the temp dir; returns its path (static). */
static const char *write_file(const char *name, const char *text) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* config_parse of prog's defaults over a NULL-terminated argument list
 * (argv[0] added). */
static int vparse(config_prog prog, config_params *p, char *const env[], char *err,
                  size_t errlen, va_list ap) {
    char *argv[64] = {"ctr-score"};
    int argc = 1;
    for (char *a; (a = va_arg(ap, char *)) != NULL;) argv[argc++] = a;
    *p = config_prog_params(prog);
    err[0] = '\0';
    return config_parse(p, argc, argv, env, err, errlen);
}

/* The same for ctr-server. */
static int parse(config_params *p, char *const env[], char *err, size_t errlen, ...) {
    va_list ap;
    va_start(ap, errlen);
    int rc = vparse(CONFIG_SERVER, p, env, err, errlen, ap);
    va_end(ap);
    return rc;
}

static int parse_prog(config_prog prog, config_params *p, char *const env[], char *err,
                      size_t errlen, ...) {
    va_list ap;
    va_start(ap, errlen);
    int rc = vparse(prog, p, env, err, errlen, ap);
    va_end(ap);
    return rc;
}

/* What fn prints, as a malloc'd string. */
static char *capture(void (*fn)(FILE *, const void *), const void *arg) {
    FILE *f = tmpfile();
    assert_non_null(f);
    fn(f, arg);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fclose(f);
    return text;
}

static void help_fn(FILE *f, const void *arg) { config_help(f, arg); }
static void dump_fn(FILE *f, const void *arg) { config_dump(arg, f); }

static void test_defaults(void **state) {
    config_params p = config_default_params();
    assert_int_equal(p.num_models, 1);
    assert_string_equal(p.models[0].path, "demo/model.safetensors");
    assert_string_equal(p.models[0].name, "");
    assert_int_equal(p.warmup, 1);
    assert_int_equal(p.num_overrides, 0);
    assert_string_equal(p.redis, "127.0.0.1:6379");
    assert_string_equal(p.redis_prefix, "ctr:");
    assert_int_equal(p.redis_connect_timeout_ms, 50);
    assert_int_equal(p.redis_timeout_ms, 20);
    assert_string_equal(p.bind, "127.0.0.1");
    assert_int_equal(p.port, 8080);
    assert_int_equal(p.threads, sysconf(_SC_NPROCESSORS_ONLN));
    assert_int_equal(p.score_threads, sysconf(_SC_NPROCESSORS_ONLN));
    assert_int_equal(p.split_min, 32);
    assert_int_equal(p.max_candidates, 512);
    assert_int_equal(p.max_body_bytes, 1 << 20);
    assert_int_equal(p.max_seq, 1000);
    assert_int_equal(p.cache_mb, 256);
    assert_int_equal(p.cache_ttl_s, 600);
    assert_int_equal(p.request_timeout_s, 10);
    assert_int_equal(p.skip_scoring, 0);
    assert_string_equal(p.log_level, "info");
    assert_string_equal(p.precision, "fp32");
    assert_string_equal(p.config, "");

    /* Nothing given: defaults survive parsing. */
    config_params q;
    char err[256];
    assert_int_equal(parse(&q, no_env, err, sizeof err, NULL), CTR_OK);
    assert_int_equal(q.port, 8080);
    assert_string_equal(q.redis, "127.0.0.1:6379");
}

static void test_precedence(void **state) {
    const char *cfg = write_file("prec.conf",
        "# every level sets port; lower levels set what higher ones leave\n"
        "port = 1001\n"
        "redis = file-host:1\n"
        "redis_prefix = file:\n"
        "max_seq = 11\n"
        "\n"
        "   cache_mb=7   # trailing comment\n");
    char cfg_flag[300];
    snprintf(cfg_flag, sizeof cfg_flag, "--config=%s", cfg);
    char *env[] = {"CTR_PORT=2002", "CTR_REDIS=env-host:2", "CTR_MAX_SEQ=22",
                   "CTR_UNRELATED=x", "CTR_BUILD=build/release", "PATH=/bin", NULL};
    config_params p;
    char err[256];
    assert_int_equal(parse(&p, env, err, sizeof err, cfg_flag, "--port", "3003",
                           "--max-seq=33", NULL), CTR_OK);
    assert_int_equal(p.port, 3003);                    /* flag > env > file */
    assert_int_equal(p.max_seq, 33);
    assert_string_equal(p.redis, "env-host:2");        /* env > file */
    assert_string_equal(p.redis_prefix, "file:");      /* file > default */
    assert_int_equal(p.cache_mb, 7);
    assert_int_equal(p.split_min, 32);                 /* default */
    assert_string_equal(p.config, cfg);

    /* Without the flag: env wins over file. */
    assert_int_equal(parse(&p, env, err, sizeof err, cfg_flag, NULL), CTR_OK);
    assert_int_equal(p.port, 2002);
    /* Without env: file wins over default. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, cfg_flag, NULL), CTR_OK);
    assert_int_equal(p.port, 1001);

    /* The config file can come from CTR_CONFIG too; a flag overrides it. */
    char env_cfg[300];
    snprintf(env_cfg, sizeof env_cfg, "CTR_CONFIG=%s", cfg);
    char *env2[] = {env_cfg, NULL};
    assert_int_equal(parse(&p, env2, err, sizeof err, NULL), CTR_OK);
    assert_int_equal(p.port, 1001);
    const char *other = write_file("other.conf", "port = 4004\n");
    assert_int_equal(parse(&p, env2, err, sizeof err, "--config", other, NULL), CTR_OK);
    assert_int_equal(p.port, 4004);
    assert_int_equal(p.max_seq, 1000);

    /* An empty variable is unset. */
    char *env3[] = {"CTR_PORT=", NULL};
    assert_int_equal(parse(&p, env3, err, sizeof err, NULL), CTR_OK);
    assert_int_equal(p.port, 8080);
}

static void test_syntax(void **state) {
    config_params p;
    char err[256];
    /* Both flag forms, dashes for underscores, case-insensitive choices. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis", "/run/redis.sock",
                           "--redis-prefix=", "--log_level", "WARN",
                           "--max_body_bytes=2048", "--bind=0.0.0.0", "--precision", "INT8",
                           NULL), CTR_OK);
    assert_string_equal(p.precision, "int8");
    assert_string_equal(p.redis, "/run/redis.sock");
    assert_string_equal(p.redis_prefix, "");
    assert_string_equal(p.log_level, "warn");
    assert_int_equal(p.max_body_bytes, 2048);
    assert_string_equal(p.bind, "0.0.0.0");

    /* Booleans: alone, with a word after, with =. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--skip_scoring", NULL), CTR_OK);
    assert_int_equal(p.skip_scoring, 1);
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--skip_scoring", "--port", "9",
                           NULL), CTR_OK);
    assert_int_equal(p.skip_scoring, 1);
    assert_int_equal(p.port, 9);
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--skip_scoring", "no", NULL),
                     CTR_OK);
    assert_int_equal(p.skip_scoring, 0);
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--skip-scoring=ON", NULL), CTR_OK);
    assert_int_equal(p.skip_scoring, 1);
    char *env[] = {"CTR_SKIP_SCORING=yes", NULL};
    assert_int_equal(parse(&p, env, err, sizeof err, NULL), CTR_OK);
    assert_int_equal(p.skip_scoring, 1);

    /* File: quotes keep '#' and blanks; comments; CRLF; zero is allowed
     * where documented. */
    const char *cfg = write_file("syntax.conf",
        "redis_prefix = \" a#b \"   # quoted\r\n"
        "model=/models/x#1.safetensors\n"
        "\t# indented comment\n"
        "cache_mb = 0\n"
        "cache_ttl_s = 0\n"
        "skip_scoring = false\n");
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--config", cfg, NULL), CTR_OK);
    assert_string_equal(p.redis_prefix, " a#b ");
    assert_string_equal(p.models[0].path, "/models/x#1.safetensors");   /* # inside a word */
    assert_int_equal(p.cache_mb, 0);
    assert_int_equal(p.cache_ttl_s, 0);

    /* config_set, used directly. */
    p = config_default_params();
    assert_int_equal(config_set(&p, "split-min", "64", NULL, err, sizeof err), CTR_OK);
    assert_int_equal(p.split_min, 64);
    assert_string_equal(p.split, "auto");                /* default */
    const char *splits[] = {"one", "candidates", "columns", "auto"};
    for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
        assert_int_equal(config_set(&p, "split", splits[i], NULL, err, sizeof err), CTR_OK);
        assert_string_equal(p.split, splits[i]);
    }
    assert_int_not_equal(config_set(&p, "split", "halves", NULL, err, sizeof err), CTR_OK);
    assert_non_null(strstr(err, "one"));                 /* the message lists the choices */
    assert_string_equal(p.split, "auto");                /* unchanged by the refusal */
}

/* Expects config_parse to fail with `status` and a message holding each of
 * the given fragments. */
static void expect_error(int status, const char *const *frags, char *const env[], ...) {
    char *argv[16] = {"ctr-score"};
    int argc = 1;
    va_list ap;
    va_start(ap, env);
    for (char *a; (a = va_arg(ap, char *)) != NULL;) argv[argc++] = a;
    va_end(ap);
    config_params p = config_default_params();
    char err[512] = "";
    int rc = config_parse(&p, argc, argv, env, err, sizeof err);
    if (rc != status) fail_msg("status %d, wanted %d (%s)", rc, status, err);
    for (; *frags; frags++)
        if (!strstr(err, *frags)) fail_msg("message \"%s\" lacks \"%s\"", err, *frags);
}

#define FRAGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_errors(void **state) {
    /* Unknown keys: flag and file (env only reads known names). */
    expect_error(CTR_EINVAL, FRAGS("flag --prot", "unknown setting", "prot"), no_env,
                 "--prot", "80", NULL);
    const char *bad_key = write_file("badkey.conf", "port = 1\n\nthreds = 4\n");
    expect_error(CTR_EINVAL, FRAGS("badkey.conf:3", "unknown setting", "threds"), no_env,
                 "--config", bad_key, NULL);

    /* Bad numbers from each source. */
    char *env_bad[] = {"CTR_PORT=80x", NULL};
    expect_error(CTR_EINVAL, FRAGS("env CTR_PORT", "port", "80x", "not a whole number"),
                 env_bad, NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --threads", "threads", "not a whole number"),
                 no_env, "--threads=", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --threads", "not a whole number"), no_env,
                 "--threads", " 4", NULL);
    const char *bad_num = write_file("badnum.conf", "max_candidates = 1e3\n");
    expect_error(CTR_EINVAL, FRAGS("badnum.conf:1", "max_candidates", "1e3"), no_env,
                 "--config", bad_num, NULL);

    /* Out of range, including overflow. */
    expect_error(CTR_EINVAL, FRAGS("flag --port", "port", "70000", "out of range 1..65535"),
                 no_env, "--port", "70000", NULL);
    char *env_range[] = {"CTR_THREADS=0", NULL};
    expect_error(CTR_EINVAL, FRAGS("env CTR_THREADS", "out of range 1..1024"), env_range,
                 NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --max_body_bytes", "out of range"), no_env,
                 "--max_body_bytes", "99999999999999999999999", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --cache_mb", "out of range"), no_env,
                 "--cache_mb=-1", NULL);
    const char *bad_range = write_file("range.conf", "# x\nredis_timeout_ms = 0\n");
    expect_error(CTR_EINVAL, FRAGS("range.conf:2", "redis_timeout_ms", "out of range"),
                 no_env, "--config", bad_range, NULL);

    /* Other bad values. */
    expect_error(CTR_EINVAL, FRAGS("flag --skip_scoring", "not a boolean"), no_env,
                 "--skip_scoring=maybe", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --log_level", "verbose", "debug, info, warn, error"),
                 no_env, "--log_level", "verbose", NULL);
    char *env_prec[] = {"CTR_PRECISION=fp16", NULL};
    expect_error(CTR_EINVAL, FRAGS("env CTR_PRECISION", "fp16", "fp32, bf16, int8"), env_prec,
                 NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --redis", "host:port"), no_env,
                 "--redis", "localhost", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --redis", "1..65535"), no_env,
                 "--redis", "localhost:99999", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --redis", "1..65535"), no_env,
                 "--redis", "localhost:", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --model", "empty"), no_env, "--model=", NULL);
    char long_path[CONFIG_STR_MAX + 10];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = '\0';
    expect_error(CTR_EINVAL, FRAGS("flag --model", "longer than 1023"), no_env,
                 "--model", long_path, NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --bind", "control character"), no_env,
                 "--bind", "0.0.0.0\n", NULL);

    /* Command-line syntax. */
    expect_error(CTR_EINVAL, FRAGS("flag --port", "needs a value"), no_env, "--port", NULL);
    expect_error(CTR_EINVAL, FRAGS("unexpected argument", "model.safetensors"), no_env,
                 "model.safetensors", NULL);
    expect_error(CTR_EINVAL, FRAGS("unexpected argument"), no_env, "-p", "80", NULL);
    expect_error(CTR_EINVAL, FRAGS("unexpected argument"), no_env, "--", NULL);

    /* File syntax and access. */
    const char *no_eq = write_file("noeq.conf", "port 8080\n");
    expect_error(CTR_EINVAL, FRAGS("noeq.conf:1", "key = value"), no_env,
                 "--config", no_eq, NULL);
    const char *no_key = write_file("nokey.conf", " = 3\n");
    expect_error(CTR_EINVAL, FRAGS("nokey.conf:1", "missing key"), no_env,
                 "--config", no_key, NULL);
    const char *quote = write_file("quote.conf", "bind = \"0.0.0.0\n");
    expect_error(CTR_EINVAL, FRAGS("quote.conf:1", "unterminated quote"), no_env,
                 "--config", quote, NULL);
    const char *after = write_file("after.conf", "bind = \"a\" b\n");
    expect_error(CTR_EINVAL, FRAGS("after.conf:1", "after the closing quote"), no_env,
                 "--config", after, NULL);
    const char *nested = write_file("nested.conf", "config = other.conf\n");
    expect_error(CTR_EINVAL, FRAGS("nested.conf:1", "cannot name another"), no_env,
                 "--config", nested, NULL);
    char *huge = malloc(5000);
    memset(huge, 'x', 4999);
    huge[4999] = '\0';
    memcpy(huge, "model = ", 8);
    const char *longline = write_file("long.conf", huge);
    free(huge);
    expect_error(CTR_EINVAL, FRAGS("long.conf:1", "line longer"), no_env,
                 "--config", longline, NULL);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.conf", tmpdir);
    expect_error(CTR_EIO, FRAGS("flag --config", "missing.conf", "cannot read"), no_env,
                 "--config", missing, NULL);
    char env_missing[320];
    snprintf(env_missing, sizeof env_missing, "CTR_CONFIG=%s", missing);
    char *env_cfg[] = {env_missing, NULL};
    expect_error(CTR_EIO, FRAGS("env CTR_CONFIG", "cannot read"), env_cfg, NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --config", "empty"), no_env, "--config=", NULL);

    /* config_set names the key and its source. */
    config_params p = config_default_params();
    char err[256];
    assert_int_equal(config_set(&p, "nope", "1", "test", err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "test: unknown setting \"nope\""));
    assert_int_equal(config_set(&p, "port", "0", NULL, err, sizeof err), CTR_EINVAL);
    assert_string_equal(err, "port: 0 is out of range 1..65535");
    assert_int_equal(p.port, 8080);   /* a refused value changes nothing */
}

static void test_help(void **state) {
    config_params p;
    char err[256];
    /* --help wins wherever it is, even beside bad flags. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--port", "x", "--help", NULL),
                     CONFIG_HELP);
    assert_int_equal(parse(&p, no_env, err, sizeof err, "-h", NULL), CONFIG_HELP);

    char *text = capture(help_fn, "ctr-score");
    assert_non_null(strstr(text, "Usage: ctr-score"));
    assert_non_null(strstr(text, "--config FILE  [env CTR_CONFIG]"));
    for (size_t i = 0; i < NKEYS; i++) {
        char flag[64], env[64];
        snprintf(flag, sizeof flag, "  --%s ", keys[i]);
        for (char *c = flag + 4; *c; c++)   /* shown as flags are typed: --redis-prefix */
            if (*c == '_') *c = '-';
        size_t n = (size_t)snprintf(env, sizeof env, "[env CTR_");
        for (const char *c = keys[i]; *c; c++) env[n++] = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        env[n++] = ']';
        env[n] = '\0';
        const char *at = strstr(text, flag);
        if (!at) fail_msg("--help lacks %s", keys[i]);
        const char *eol = strchr(at, '\n');
        const char *e = strstr(at, env);
        if (!e || e > eol) fail_msg("--help line of %s lacks %s", keys[i], env);
        const char *d = strstr(at, "default: ");
        if (!d || d > eol) fail_msg("--help line of %s lacks its default", keys[i]);
        /* A description line follows. */
        assert_true(eol[1] == ' ' && strlen(eol + 1) > 8);
    }
    assert_non_null(strstr(text, "--port N  [env CTR_PORT]  default: 8080"));
    assert_non_null(strstr(text, "default: demo/model.safetensors"));
    assert_non_null(strstr(text, "Range 1..65535."));
    assert_non_null(strstr(text, "(the number of online CPUs)"));
    assert_non_null(strstr(text, "BENCHMARK ONLY"));
    free(text);
}

static void test_dump_roundtrip(void **state) {
    config_params p;
    char err[256];
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis_prefix", " odd#prefix ",
                           "--model", "/m/model v2.safetensors", "--model",
                           "tin=/m/t#1.safetensors", "--redis-prefix", "tin=ctr-tin:",
                           "--cache-mb", "tin=3", "--port", "9090",
                           "--skip_scoring", "--log_level", "debug", "--cache_mb", "0",
                           "--max_body_bytes", "4096", "--precision", "bf16", NULL), CTR_OK);
    char *text = capture(dump_fn, &p);
    for (size_t i = 0; i < NKEYS; i++) {
        char line[64];
        snprintf(line, sizeof line, "\n%s = ", keys[i]);
        if (!strstr(text, line)) fail_msg("dump lacks %s", keys[i]);
    }
    assert_non_null(strstr(text, "# settings in effect (no config file)"));
    assert_non_null(strstr(text, "\nport = 9090\n"));
    assert_non_null(strstr(text, "\nredis_prefix = \" odd#prefix \"\n"));
    assert_non_null(strstr(text, "skip_scoring = true   # WARNING"));
    assert_non_null(strstr(text, "\nprecision = bf16   # NOT EXACT"));

    /* Read back as a config file: the same settings. */
    const char *path = write_file("dump.conf", text);
    config_params q;
    assert_int_equal(parse(&q, no_env, err, sizeof err, "--config", path, NULL), CTR_OK);
    char *again = capture(dump_fn, &q);
    assert_string_equal(strchr(again, '\n'), strchr(text, '\n'));   /* past line 1 */
    assert_string_equal(q.redis_prefix, " odd#prefix ");
    assert_int_equal(q.num_models, 2);
    assert_string_equal(q.models[0].path, "/m/model v2.safetensors");
    assert_string_equal(q.models[1].name, "tin");
    assert_string_equal(q.models[1].path, "/m/t#1.safetensors");
    assert_string_equal(config_model_value(&q, "redis_prefix", "tin"), "ctr-tin:");
    assert_string_equal(config_model_value(&q, "cache_mb", "tin"), "3");
    assert_int_equal(q.skip_scoring, 1);
    assert_int_equal(q.max_body_bytes, 4096);
    assert_non_null(strstr(again, "(config file: "));
    free(text);
    free(again);
}

/* The Redis password is never printed: not by the dump (a comment says
 * it is set), --help or an error; the seed list is checked. */
static void test_redis_secret_and_seeds(void **state) {
    config_params p;
    char err[256];
    const char *pw = "s3cr#t pass";
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-password", pw, "--redis-user",
                           "scorer", "--redis-cluster", "10.0.0.1:7000, [::1]:7001", NULL),
                     CTR_OK);
    assert_string_equal(p.redis_password, pw);
    assert_string_equal(p.redis_cluster, "10.0.0.1:7000, [::1]:7001");
    char *text = capture(dump_fn, &p);
    assert_null(strstr(text, "s3cr"));
    assert_non_null(strstr(text, "\n# redis_password is set (not shown)\n"));
    assert_non_null(strstr(text, "\nredis_user = scorer\n"));
    /* The dump still reads back (the password is simply not in it). */
    const char *path = write_file("secret.conf", text);
    config_params q;
    assert_int_equal(parse(&q, no_env, err, sizeof err, "--config", path, NULL), CTR_OK);
    assert_string_equal(q.redis_password, "");
    assert_string_equal(q.redis_cluster, p.redis_cluster);
    free(text);
    char *env[] = {"CTR_REDIS_PASSWORD=from-env", NULL};
    assert_int_equal(parse(&p, env, err, sizeof err, NULL), CTR_OK);
    assert_string_equal(p.redis_password, "from-env");
    text = capture(help_fn, "ctr-server");
    assert_null(strstr(text, "from-env"));
    free(text);
    /* A bad value is refused without being repeated. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-password", "ab\001cd", NULL),
                     CTR_EINVAL);
    assert_null(strstr(err, "ab"));
    assert_non_null(strstr(err, "redis_password"));

    const char *bad[] = {"10.0.0.1", "10.0.0.1:7000,", "a:1,,b:2", "/tmp/sock", "::1:7000",
                         "h:0", "h:7000,h"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (parse(&p, no_env, err, sizeof err, "--redis-cluster", bad[i], NULL) != CTR_EINVAL)
            fail_msg("seeds \"%s\" accepted", bad[i]);
        assert_non_null(strstr(err, "seed"));
    }
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-cluster", "", NULL), CTR_OK);
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-cluster-refresh-ms", "0", NULL),
                     CTR_EINVAL);
}

/* Several models and per-model settings, from each source. */
static void test_models(void **state) {
    config_params p;
    char err[512];
    /* Flags: repeated, or comma-separated; bare paths and NAME=PATH. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--model", "qin=/m/q.safetensors",
                           "--model", "/m/d.safetensors, tin=/m/t.safetensors", NULL), CTR_OK);
    assert_int_equal(p.num_models, 3);
    assert_string_equal(p.models[0].name, "qin");
    assert_string_equal(p.models[0].path, "/m/q.safetensors");
    assert_string_equal(p.models[1].name, "");           /* named from metadata */
    assert_string_equal(p.models[1].path, "/m/d.safetensors");
    assert_string_equal(p.models[2].name, "tin");
    /* A path whose '=' follows something that is not a name is a path. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--model", "/m/a=b.safetensors", NULL),
                     CTR_OK);
    assert_string_equal(p.models[0].name, "");
    assert_string_equal(p.models[0].path, "/m/a=b.safetensors");

    /* Per-model values beside the plain one; the last entry of a model
     * wins; other models read the plain one (NULL here). */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-prefix", "ctr:",
                           "--redis-prefix", "tin=t1:", "--redis-prefix", "tin=t2:,din=d:",
                           "--cache-mb", "din=16", "--cache-mb", "100", NULL), CTR_OK);
    assert_string_equal(p.redis_prefix, "ctr:");
    assert_string_equal(config_model_value(&p, "redis_prefix", "tin"), "t2:");
    assert_string_equal(config_model_value(&p, "redis_prefix", "din"), "d:");
    assert_null(config_model_value(&p, "redis_prefix", "qin"));
    assert_string_equal(config_model_value(&p, "cache_mb", "din"), "16");
    assert_null(config_model_value(&p, "cache_mb", "tin"));
    assert_int_equal(p.cache_mb, 100);

    /* Environment and file forms; a higher source's models replace a
     * lower one's list, while NAME=VALUE entries of other models stay. */
    const char *cfg = write_file("models.conf",
                                 "model = qin=/f/q.safetensors\n"
                                 "model = din=/f/d.safetensors\n"
                                 "redis_prefix = din=file-d:\n"
                                 "redis_prefix = tin=file-t:\n");
    char *env[] = {"CTR_MODEL=din=/e/d.safetensors,tin=/e/t.safetensors",
                   "CTR_REDIS_PREFIX=tin=env-t:", NULL};
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--config", cfg, NULL), CTR_OK);
    assert_int_equal(p.num_models, 2);
    assert_string_equal(p.models[1].path, "/f/d.safetensors");
    assert_int_equal(parse(&p, env, err, sizeof err, "--config", cfg, NULL), CTR_OK);
    assert_int_equal(p.num_models, 2);
    assert_string_equal(p.models[0].name, "din");
    assert_string_equal(p.models[0].path, "/e/d.safetensors");
    assert_string_equal(config_model_value(&p, "redis_prefix", "tin"), "env-t:");
    assert_string_equal(config_model_value(&p, "redis_prefix", "din"), "file-d:");
    assert_int_equal(parse(&p, env, err, sizeof err, "--config", cfg, "--model",
                           "/x/only.safetensors", NULL), CTR_OK);
    assert_int_equal(p.num_models, 1);
    assert_string_equal(p.models[0].path, "/x/only.safetensors");

    /* Entries must name models being served. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-prefix", "tni=x:", NULL),
                     CTR_OK);
    const char *names[] = {"qin", "tin"};
    assert_int_equal(config_check_models(&p, names, 2, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "flag --redis-prefix: redis_prefix: \"tni=x:\": no model named "
                                "\"tni\" (serving qin, tin)"));
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-prefix", "tin=x:", NULL),
                     CTR_OK);
    assert_int_equal(config_check_models(&p, names, 2, err, sizeof err), CTR_OK);

    /* Names. */
    assert_true(config_model_name_ok("din-v2.1_b", 10));
    assert_false(config_model_name_ok("-din", 4));
    assert_false(config_model_name_ok("a/b", 3));
    assert_false(config_model_name_ok("", 0));
}

static void test_models_errors(void **state) {
    /* A per-model value is checked as the setting's own. */
    expect_error(CTR_EINVAL, FRAGS("flag --cache-mb", "cache_mb", "\"x\" is not a whole number"),
                 no_env, "--cache-mb", "din=x", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --cache-mb", "out of range"), no_env, "--cache-mb",
                 "din=-3", NULL);
    char *env[] = {"CTR_CACHE_MB=din=1,,tin=2", NULL};
    expect_error(CTR_EINVAL, FRAGS("env CTR_CACHE_MB", "an empty entry"), env, NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --model", "empty file name"), no_env, "--model",
                 "qin=", NULL);
    expect_error(CTR_EINVAL, FRAGS("flag --model", "more than 8 models"), no_env, "--model",
                 "a,b,c,d,e,f,g,h,i", NULL);
    /* Settings that are not per model take no NAME=VALUE. */
    expect_error(CTR_EINVAL, FRAGS("flag --port", "not a whole number"), no_env, "--port",
                 "din=80", NULL);
}

struct usage_arg {
    config_prog prog;
    const char *name;
};
static void usage_fn(FILE *f, const void *arg) {
    const struct usage_arg *u = arg;
    config_usage(f, u->prog, u->name, "SYNOPSIS", "ABOUT\n", "AFTER\n");
}

/* ctr-load and ctr-score: their own defaults, settings named as the
 * server's with the old spellings as aliases, no settings of the other
 * programs, the environment read only for Redis AUTH (ctr-load). */
static void test_programs(void **state) {
    config_params p;
    char err[512];
    char *env[] = {"CTR_REDIS=env-host:1", "CTR_MODEL=/env/m", "CTR_REDIS_USER=loader",
                   "CTR_REDIS_PASSWORD=pw-env", "CTR_CONFIG=/nonexistent", NULL};
    assert_int_equal(parse_prog(CONFIG_LOAD, &p, env, err, sizeof err, "--redis", "h:1",
                                "--prefix", "v2:", "--timeout-ms", "70", "--items", "i.jsonl",
                                NULL), CTR_OK);
    assert_string_equal(p.redis, "h:1");
    assert_string_equal(p.redis_prefix, "v2:");
    assert_int_equal(p.redis_timeout_ms, 70);
    assert_string_equal(p.items, "i.jsonl");
    assert_string_equal(p.model_path, "");          /* CTR_MODEL is the server's */
    assert_string_equal(p.redis_user, "loader");    /* AUTH from the environment */
    assert_string_equal(p.redis_password, "pw-env");
    assert_int_equal(p.batch, 512);
    assert_int_equal(p.max_seq, 1000);
    assert_int_equal(p.max_tags, 5);
    assert_int_equal(config_given(&p, "redis_prefix"), 3);
    assert_int_equal(config_given(&p, "redis_password"), 2);
    assert_int_equal(config_given(&p, "max_tags"), 0);
    assert_int_equal(parse_prog(CONFIG_LOAD, &p, no_env, err, sizeof err, NULL), CTR_OK);
    assert_string_equal(p.redis, "");
    assert_int_equal(p.redis_timeout_ms, 5000);
    /* Not ctr-load's: the server's and ctr-score's settings, the config file. */
    const char *not_load[] = {"--port", "--config", "--max-cand", "--deadline-ms"};
    for (size_t i = 0; i < sizeof not_load / sizeof *not_load; i++) {
        if (parse_prog(CONFIG_LOAD, &p, no_env, err, sizeof err, not_load[i], "1", NULL) !=
            CTR_EINVAL)
            fail_msg("ctr-load took %s", not_load[i]);
        assert_non_null(strstr(err, "unknown setting"));
    }
    assert_int_equal(parse_prog(CONFIG_LOAD, &p, no_env, err, sizeof err, "--batch", "0",
                                NULL), CTR_EINVAL);
    assert_non_null(strstr(err, "out of range 1..1000000"));

    /* ctr-score: max_candidates (alias max_cand), no environment at all. */
    assert_int_equal(parse_prog(CONFIG_SCORE, &p, env, err, sizeof err, "--model", "m",
                                "--max_cand", "3", "--precision", "INT8", NULL), CTR_OK);
    assert_int_equal(p.max_candidates, 3);
    assert_string_equal(p.precision, "int8");
    assert_string_equal(p.redis_password, "");
    assert_int_equal(p.max_seq, 65536);
    assert_int_equal(parse_prog(CONFIG_SCORE, &p, no_env, err, sizeof err, "--redis", "h:1",
                                NULL), CTR_EINVAL);
    assert_int_equal(parse_prog(CONFIG_SCORE, &p, no_env, err, sizeof err, "--max-cand", "0",
                                NULL), CTR_EINVAL);
    assert_non_null(strstr(err, "max_candidates"));
    /* The server keeps its own names: no aliases of the others there. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--prefix", "x", NULL), CTR_EINVAL);

    /* --help of each: its settings only, aliases and variables said. */
    struct usage_arg load = {CONFIG_LOAD, "ctr-load"}, score = {CONFIG_SCORE, "ctr-score"};
    char *text = capture(usage_fn, &load);
    assert_non_null(strstr(text, "Usage: ctr-load SYNOPSIS\n\nABOUT\n"));
    assert_non_null(strstr(text, "  --redis-prefix PREFIX  default: ctr:  (also --prefix)\n"));
    assert_non_null(strstr(text, "  --redis-timeout-ms MS  default: 5000  (also --timeout-ms)\n"));
    assert_non_null(strstr(text, "--redis-user USER  [env CTR_REDIS_USER]"));
    assert_null(strstr(text, "[env CTR_REDIS]"));
    assert_null(strstr(text, "--port"));
    assert_non_null(strstr(text, "AFTER\n"));
    free(text);
    text = capture(usage_fn, &score);
    assert_non_null(strstr(text, "  --max-candidates N  default: 1024  (also --max-cand)\n"));
    assert_null(strstr(text, "[env"));
    assert_null(strstr(text, "--redis"));
    free(text);
}

/* The AUTH settings made ready, written once for every program. */
static void test_redis_auth(void **state) {
    config_params p;
    char err[512];
    const char *file = write_file("pw", "from-file\r\n");
    /* One source with both: refused; the higher of two sources wins. */
    assert_int_equal(parse_prog(CONFIG_LOAD, &p, no_env, err, sizeof err, "--redis-password",
                                "pw-flag", "--redis-password-file", file, NULL), CTR_OK);
    assert_int_equal(config_redis_auth(&p, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "both set"));
    assert_null(strstr(err, "pw-flag"));
    char *env_pw[] = {"CTR_REDIS_PASSWORD=pw-env", NULL};
    assert_int_equal(parse_prog(CONFIG_LOAD, &p, env_pw, err, sizeof err,
                                "--redis-password-file", file, NULL), CTR_OK);
    assert_int_equal(config_redis_auth(&p, err, sizeof err), CTR_OK);
    assert_string_equal(p.redis_password, "from-file");
    char *env_file[64];
    char file_var[300];
    snprintf(file_var, sizeof file_var, "CTR_REDIS_PASSWORD_FILE=%s", file);
    env_file[0] = file_var;
    env_file[1] = NULL;
    assert_int_equal(parse(&p, env_file, err, sizeof err, "--redis-password", "pw-flag", NULL),
                     CTR_OK);
    assert_int_equal(config_redis_auth(&p, err, sizeof err), CTR_OK);
    assert_string_equal(p.redis_password, "pw-flag");
    /* A user needs a password; an unreadable file is named. */
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-user", "u", NULL), CTR_OK);
    assert_int_equal(config_redis_auth(&p, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "needs a password"));
    assert_int_equal(parse(&p, no_env, err, sizeof err, "--redis-password-file",
                           "/nonexistent/pw", NULL), CTR_OK);
    assert_int_equal(config_redis_auth(&p, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "/nonexistent/pw"));

    /* The password's flag value blanked in argv, any spelling; nothing
     * else touched. */
    char a1[] = "--redis-password", a2[] = "s3cret", a3[] = "--redis_password=s3cret",
         a4[] = "--redis-password-file", a5[] = "/f", a6[] = "--port", a7[] = "80";
    char *argv[] = {"prog", a1, a2, a3, a4, a5, a6, a7};
    config_scrub_argv(8, argv);
    assert_int_equal(a2[0], '\0');
    assert_string_equal(a3, "--redis_password=");
    assert_int_equal(a3[17], '\0');
    assert_string_equal(a5, "/f");
    assert_string_equal(a7, "80");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_models_errors),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_programs),
        cmocka_unit_test(test_redis_auth),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_dump_roundtrip),
        cmocka_unit_test(test_redis_secret_and_seeds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * test_degraded.c - the degraded reasons (proto/degraded.h): every label
 * distinct and well formed, and proto/openapi.yaml publishing exactly the
 * map's labels, in its order, as the enum of RankAnswer.degraded, with a
 * line of its description for each.  Reads the YAML file as text (the
 * tests run from the repository root).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/degraded.h"

#define OPENAPI "proto/openapi.yaml"

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

static void test_labels(void **state) {
    (void)state;
    for (int d = 0; d < PROTO_DEGRADED_COUNT; d++) {
        const char *l = proto_degraded_label(d);
        assert_non_null(l);
        assert_true(strlen(l) > 0);
        assert_int_equal(strspn(l, "abcdefghijklmnopqrstuvwxyz_"), strlen(l));
        for (int e = 0; e < d; e++) assert_string_not_equal(l, proto_degraded_label(e));
    }
    assert_null(proto_degraded_label(PROTO_DEGRADED_COUNT));
    assert_null(proto_degraded_label((proto_degraded)-1));
}

/* The words of the flow sequence after "enum:" in RankAnswer's degraded
 * property, as one string "a,b,c" (spaces and line breaks dropped). */
static void openapi_enum(const char *yaml, char *out, size_t cap) {
    const char *schema = strstr(yaml, "\n    RankAnswer:");
    assert_non_null(schema);
    const char *prop = strstr(schema, "\n        degraded:");
    assert_non_null(prop);
    const char *next = strstr(prop + 1, "\n        unscored:");   /* the next property */
    const char *e = strstr(prop, "enum: [");
    assert_non_null(e);
    assert_true(!next || e < next);
    const char *end = strchr(e, ']');
    assert_non_null(end);
    size_t n = 0;
    for (const char *p = e + strlen("enum: ["); p < end; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && n + 1 < cap) out[n++] = *p;
    out[n] = '\0';
}

static void test_openapi(void **state) {
    (void)state;
    char *yaml = read_file(OPENAPI);
    assert_non_null(yaml);
    char have[1024], want[1024] = "";
    openapi_enum(yaml, have, sizeof have);
    for (int d = 0; d < PROTO_DEGRADED_COUNT; d++) {
        if (d) strcat(want, ",");
        strcat(want, proto_degraded_label(d));
    }
    if (strcmp(have, want) != 0)
        fail_msg(OPENAPI ": RankAnswer.degraded enum is [%s]; proto/degraded.h has [%s]", have,
                 want);
    /* Each label explained in the property's description ("- label:"). */
    const char *prop = strstr(strstr(yaml, "\n    RankAnswer:"), "\n        degraded:");
    for (int d = 0; d < PROTO_DEGRADED_COUNT; d++) {
        char line[128];
        snprintf(line, sizeof line, "- %s:", proto_degraded_label(d));
        const char *at = strstr(prop, line);
        if (!at || at > strstr(prop, "enum: ["))
            fail_msg(OPENAPI ": the degraded description does not explain %s",
                     proto_degraded_label(d));
    }
    free(yaml);
}

/* The parser bites: a list that differs is told apart. */
static void test_parser(void **state) {
    (void)state;
    const char *yaml = "x:\n    RankAnswer:\n      properties:\n        degraded:\n"
                       "          items:\n            enum: [a, b,\n                   c]\n"
                       "        unscored:\n          enum: [z]\n";
    char have[64];
    openapi_enum(yaml, have, sizeof have);
    assert_string_equal(have, "a,b,c");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labels),
        cmocka_unit_test(test_openapi),
        cmocka_unit_test(test_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_cpu.c - CPU features and code-path switches: the features as the
 * compiler's own check reports them, each path's default from the CPU and
 * the environment, cpu_path_set within what the CPU has, and the names the
 * map gives.  The environment test runs first: a path reads its variable
 * once, on the first question. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"

static void test_defaults_from_environment(void **state) {
    (void)state;
    /* Nothing has asked yet: the variables decide. */
    setenv("CTR_DENSE_OPENBLAS", "1", 1);
    setenv("CTR_QNN_OPENBLAS", "0", 1); /* "0" keeps the default */
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 0);
    assert_int_equal(cpu_path_on(CPU_PATH_QNN_DENSE), 1);
    /* Read once: a later change of the environment changes nothing. */
    unsetenv("CTR_DENSE_OPENBLAS");
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 0);
    unsetenv("CTR_QNN_OPENBLAS");
    /* The AVX-512 paths: on exactly where the CPU has AVX-512F. */
    assert_int_equal(cpu_path_on(CPU_PATH_VMATH_AVX512), cpu_has(CPU_AVX512F));
    assert_int_equal(cpu_path_on(CPU_PATH_EXPLAIN_AVX512), cpu_has(CPU_AVX512F));
    assert_int_equal(cpu_path_on(CPU_PATH_DIN_AVX512), cpu_has(CPU_AVX512F));
}

static void test_features(void **state) {
    (void)state;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    assert_int_equal(cpu_has(CPU_AVX512F), !!__builtin_cpu_supports("avx512f"));
    assert_int_equal(cpu_has(CPU_AVX512BW), !!__builtin_cpu_supports("avx512bw"));
    assert_int_equal(cpu_has(CPU_AVX512VNNI), !!__builtin_cpu_supports("avx512vnni"));
    assert_int_equal(cpu_has(CPU_AVX512BF16), !!__builtin_cpu_supports("avx512bf16"));
#endif
    assert_int_equal(cpu_has(CPU_ANY), 1);
    assert_int_equal(cpu_has(CPU_FEATURE_COUNT), 0);
    assert_string_equal(cpu_feature_name(CPU_AVX512VNNI), "avx512vnni");
    assert_string_equal(cpu_feature_name(CPU_FEATURE_COUNT), "unknown");
    /* The description names exactly the features the CPU has. */
    const char *d = cpu_describe();
    int any = 0;
    for (int f = 0; f < CPU_FEATURE_COUNT; f++) {
        const char *name = cpu_feature_name((cpu_feature)f);
        const char *at = strstr(d, name);
        /* as a whole word */
        int listed = at && (at[strlen(name)] == ' ' || at[strlen(name)] == '\0');
        assert_int_equal(listed, cpu_has((cpu_feature)f));
        any |= listed;
    }
    if (!any) assert_string_equal(d, "none");
    assert_ptr_equal(cpu_describe(), d);
}

static void test_set(void **state) {
    (void)state;
    const int avx = cpu_has(CPU_AVX512F);
    assert_int_equal(cpu_path_set(CPU_PATH_VMATH_AVX512, 0), 0);
    assert_int_equal(cpu_path_on(CPU_PATH_VMATH_AVX512), 0);
    /* On only where the CPU can run it. */
    assert_int_equal(cpu_path_set(CPU_PATH_VMATH_AVX512, 1), avx);
    assert_int_equal(cpu_path_on(CPU_PATH_VMATH_AVX512), avx);
    /* A path any CPU runs. */
    assert_int_equal(cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 1), 1);
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 1);
    assert_int_equal(cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 0), 0);
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 0);
    cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 1);
    /* Outside the map: off, and setting it does nothing. */
    assert_int_equal(cpu_path_on(CPU_PATH_COUNT), 0);
    assert_int_equal(cpu_path_set(CPU_PATH_COUNT, 1), 0);
}

static void test_names(void **state) {
    (void)state;
    assert_string_equal(cpu_path_name(CPU_PATH_LINEAR_ONEDNN), "LINEAR_ONEDNN");
    assert_string_equal(cpu_path_env(CPU_PATH_LINEAR_ONEDNN), "CTR_DENSE_OPENBLAS");
    assert_string_equal(cpu_path_env(CPU_PATH_QNN_DENSE), "CTR_QNN_OPENBLAS");
    assert_null(cpu_path_env(CPU_PATH_VMATH_AVX512));
    for (int p = 0; p < CPU_PATH_COUNT; p++)
        assert_true(strlen(cpu_path_what((cpu_path)p)) > 20);
    assert_string_equal(cpu_path_name(CPU_PATH_COUNT), "unknown");
    assert_null(cpu_path_env(CPU_PATH_COUNT));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_from_environment),
        cmocka_unit_test(test_features),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_params: the job parameter table (daemon/engine/params.h) against
 * everything that restates it: schema/job.schema.json (names, required,
 * types, ranges, defaults, enum values), schema/store.sql (a column per
 * parameter), svdllmctl's usage (a flag per parameter, enum values as
 * listed) and the README's `svdllmctl submit` usage (a flag per
 * parameter); and the table itself (defaults pass the checks, the key
 * fields are named). Argument: the svdllmctl binary. Run from the source
 * root. The store's round trip of every entry is in test_store.c. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "params.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "test_params: cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n - 1, f)) > 0)
        if ((n += k) + 1 == cap)
            buf = realloc(buf, cap *= 2);
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

static int number_is(json_t *v, double want) { return json_is_number(v) && json_number_value(v) == want; }

static void check_schema_field(const struct params_field *f, json_t *prop) {
    const char *type = json_string_value(json_object_get(prop, "type"));
    json_t *def = json_object_get(prop, "default");
    int failures = sv_test_failures;
    switch (f->type) {
    case PARAMS_PATH:
        SV_ASSERT_STR_CONTAINS(type, "string");
        SV_CHECK(number_is(json_object_get(prop, "maxLength"), PATH_MAX - 1));
        break;
    case PARAMS_ENUM: {
        json_t *e = json_object_get(prop, "enum");
        SV_ASSERT_EQ(json_array_size(e), f->n_names);
        for (int i = 0; i < f->n_names; i++)
            SV_ASSERT_STR_CONTAINS(json_string_value(json_array_get(e, (size_t)i)), f->names[i]);
        SV_ASSERT_STR_CONTAINS(json_string_value(def), f->names[(int)f->def]);
        break;
    }
    case PARAMS_INT:
    case PARAMS_NUMBER:
        SV_ASSERT_STR_CONTAINS(type, f->type == PARAMS_INT ? "integer" : "number");
        SV_CHECK(number_is(json_object_get(prop, f->min_open ? "exclusiveMinimum" : "minimum"), f->min));
        SV_CHECK(number_is(json_object_get(prop, f->max_open ? "exclusiveMaximum" : "maximum"), f->max));
        SV_CHECK(f->required ? def == NULL : number_is(def, f->def));
        break;
    case PARAMS_BOOL:
        SV_ASSERT_STR_CONTAINS(type, "boolean");
        SV_CHECK(json_is_boolean(def) && json_is_true(def) == (f->def != 0));
        break;
    }
    if (sv_test_failures > failures)
        fprintf(stderr, "  (job.schema.json property '%s')\n", f->name);
}

static void test_schema(void) {
    json_error_t je;
    json_t *root = json_load_file("schema/job.schema.json", 0, &je);
    SV_CHECK(root != NULL);
    json_t *props = json_object_get(root, "properties"), *req = json_object_get(root, "required");
    /* The daemon's own job fields, not engine parameters: they are in the
     * schema and the store but not in the table. */
    static const char *const daemon_fields[] = {"keep_checkpoints"};
    const size_t n_daemon = sizeof daemon_fields / sizeof daemon_fields[0];
    SV_ASSERT_EQ(json_object_size(props), params_n_fields + n_daemon);
    size_t n_req = 0;
    for (size_t i = 0; i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        json_t *prop = json_object_get(props, f->name);
        if (!prop) {
            fprintf(stderr, "test_params: '%s' is in the table but not in job.schema.json\n", f->name);
            SV_CHECK(prop != NULL);
            continue;
        }
        check_schema_field(f, prop);
        int listed = 0;
        for (size_t k = 0; k < json_array_size(req); k++)
            listed |= strcmp(json_string_value(json_array_get(req, k)), f->name) == 0;
        SV_ASSERT_EQ(listed, f->required);
        n_req += f->required;
    }
    SV_ASSERT_EQ(json_array_size(req), n_req);
    const char *key;
    json_t *v;
    json_object_foreach(props, key, v) {
        int own = 0;
        for (size_t k = 0; k < n_daemon; k++)
            own |= strcmp(key, daemon_fields[k]) == 0;
        if (own)
            continue;
        if (!params_field_find(key))
            fprintf(stderr, "test_params: '%s' is in job.schema.json but not in the table\n", key);
        SV_CHECK(params_field_find(key) != NULL);
    }
    json_decref(root);
}

static void test_store_sql(void) {
    char *sql = slurp("schema/store.sql"), pat[96];
    SV_CHECK(sql != NULL);
    for (size_t i = 0; sql && i < params_n_fields; i++) {
        const char *col = params_fields[i].column;
        snprintf(pat, sizeof pat, "\n    %s ", col);
        int found = strstr(sql, pat) != NULL;
        snprintf(pat, sizeof pat, "ADD COLUMN %s ", col);
        found |= strstr(sql, pat) != NULL;
        if (!found)
            fprintf(stderr, "test_params: store.sql has no column '%s' (parameter '%s')\n", col, params_fields[i].name);
        SV_CHECK(found);
    }
    free(sql);
}

/* Every flag in text (and, for an enum, "--flag a|b|c"); where names the text. */
static void check_flags(const char *text, const char *where) {
    char pat[256];
    for (size_t i = 0; text && i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        if (f->type == PARAMS_ENUM && strcmp(where, "svdllmctl submit --help") == 0) {
            /* One option per line there, its values in the help text. */
            for (int k = 0; k < f->n_names; k++) {
                if (!strstr(text, f->names[k]))
                    fprintf(stderr, "test_params: %s lacks '%s' (a value of %s)\n", where, f->names[k], f->flag);
                SV_CHECK(strstr(text, f->names[k]) != NULL);
            }
            snprintf(pat, sizeof pat, "%s", f->flag);
        } else {
            snprintf(pat, sizeof pat, "%s", f->flag);
        }
        if (!strstr(text, pat))
            fprintf(stderr, "test_params: %s lacks '%s' (parameter '%s')\n", where, pat, f->name);
        SV_CHECK(strstr(text, pat) != NULL);
    }
}

static void test_svdllmctl(const char *ctl) {
    char cmd[4200], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' submit --help 2>&1", ctl);
    FILE *p = popen(cmd, "r");
    SV_CHECK(p != NULL);
    if (!p)
        return;
    size_t cap = 1 << 16, n = 0, k;
    out = malloc(cap);
    while (out && n + 1 < cap && (k = fread(out + n, 1, cap - n - 1, p)) > 0)
        n += k;
    pclose(p);
    if (!out)
        return;
    out[n] = '\0';
    /* The options block of svdllmctl submit --help, up to its exit status. */
    char *from = strstr(out, "Options:"), *to = from ? strstr(from, "Exit status") : NULL;
    SV_CHECK(from && to);
    if (from && to) {
        *to = '\0';
        check_flags(from, "svdllmctl submit --help");
    }
    free(out);
}

static void test_readme(void) {
    char *md = slurp("README.md");
    char *from = md ? strstr(md, "\n    svdllmctl submit ") : NULL, *to = from ? strstr(from + 1, "\n    svdllmctl status") : NULL;
    SV_CHECK(from && to);
    if (from && to) {
        *to = '\0';
        check_flags(from, "README's submit usage");
    }
    free(md);
}

static void test_table(void) {
    struct compress_params p;
    struct sv_err err = {0};
    memset(&p, 0xff, sizeof p);
    params_defaults(&p);
    /* What a submit gives the required fields, and calibration for the default method. */
    params_field_set(&p, params_field_find("model"), 0, "/m");
    params_field_set(&p, params_field_find("out"), 0, "/o");
    params_field_set(&p, params_field_find("ratio"), 0.4, NULL);
    params_field_set(&p, params_field_find("calib"), 0, "/c");
    SV_ASSERT_EQ(params_values_check(&p, &err), 0);
    SV_ASSERT_EQ(p.method, METHOD_AUTO);
    SV_ASSERT_EQ(p.nsamples, 32);
    SV_ASSERT_EQ(p.seqlen, 128);
    SV_CHECK(p.alpha == 0 && params_alpha(&p) == 0.5);
    SV_CHECK(!p.calib_first && !p.dense && !p.overwrite && !p.centered);
    for (size_t i = 0; i < params_n_fields; i++) {
        const struct params_field *f = &params_fields[i];
        SV_CHECK(f->flag && strncmp(f->flag, "--", 2) == 0 && f->column && f->help);
        SV_CHECK(f->key == PARAMS_KEY_NO || f->key_name);
        SV_CHECK(params_field_find(f->name) == f);
        if (f->type == PARAMS_INT || f->type == PARAMS_NUMBER) { /* one past a bound is refused */
            char why[128];
            SV_ASSERT_EQ(params_field_range(f, f->max + 1, why, sizeof why), -EINVAL);
            SV_ASSERT_EQ(params_field_range(f, NAN, why, sizeof why), -EINVAL);
            SV_ASSERT_EQ(params_field_range(f, f->min - 1, why, sizeof why), -EINVAL);
        }
    }
    params_field_set(&p, params_field_find("nsamples"), 65537, NULL);
    SV_ASSERT_EQ(params_values_check(&p, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "nsamples 65537 is outside [1, 65536]");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_params SVDLLMCTL\n");
        return 2;
    }
    test_table();
    test_schema();
    test_store_sql();
    test_svdllmctl(argv[1]);
    test_readme();
    return sv_test_result("params");
}

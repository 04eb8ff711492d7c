/* test_svg: client/svg.c, the sweep's plot writer, read back as a reader of
 * the picture would. Each document must be well-formed XML (a strict little
 * checker below: one root, balanced tags, quoted attributes, only the five
 * entities and character references), carry its title and axis labels as
 * text, and put every point where the axes say it is: a point's position,
 * interpolated from the two outermost tick labels of each axis (linearly, or
 * in log10 on a log axis), must give back its value. Also: the log-scale
 * switch (a span over 10x), points with a non-finite coordinate left out,
 * escaping of hostile names, the refusals, and the atomic save.
 *
 *   test_svg                 run the checks
 *   test_svg --write FILE    write the sample plot (tests/test_svg_render.sh) */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "svg.h"

/* ---- A strict XML well-formedness check ------------------------------------------- */

static int entity_ok(const char *s, const char **end) {
    static const char *const named[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (strncmp(s, named[i], strlen(named[i])) == 0) {
            *end = s + strlen(named[i]);
            return 1;
        }
    if (s[1] == '#') {
        const char *p = s + 2;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p > s + 2 && *p == ';') {
            *end = p + 1;
            return 1;
        }
    }
    return 0;
}

static int name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == ':' || c == '.';
}

/* Returns NULL when doc is well-formed, else a static reason. */
static const char *xml_check(const char *doc) {
    static char why[128];
    const char *p = doc;
    char stack[64][32];
    int depth = 0, roots = 0;
    if (strncmp(p, "<?xml ", 6) == 0) {
        p = strstr(p, "?>");
        if (!p)
            return "unterminated declaration";
        p += 2;
    }
    while (*p) {
        if (*p == '<') {
            bool closing = p[1] == '/';
            const char *n = p + 1 + closing, *e = n;
            while (name_char(*e))
                e++;
            if (e == n || e - n >= 32)
                return "bad element name";
            if (closing) {
                if (depth == 0 || strncmp(stack[depth - 1], n, (size_t)(e - n)) != 0 ||
                    stack[depth - 1][e - n] != '\0') {
                    snprintf(why, sizeof why, "</%.*s> does not close <%s>", (int)(e - n), n,
                             depth ? stack[depth - 1] : "(nothing)");
                    return why;
                }
                depth--;
                while (*e == ' ')
                    e++;
                if (*e != '>')
                    return "junk in closing tag";
                p = e + 1;
                continue;
            }
            if (depth == 0 && roots++ > 0)
                return "more than one root element";
            char name[32];
            snprintf(name, sizeof name, "%.*s", (int)(e - n), n);
            p = e;
            for (;;) {   /* attributes */
                while (*p == ' ' || *p == '\n')
                    p++;
                if (*p == '/' && p[1] == '>') {
                    p += 2;
                    break;
                }
                if (*p == '>') {
                    if (depth == 64)
                        return "too deep";
                    snprintf(stack[depth++], sizeof stack[0], "%s", name);
                    p++;
                    break;
                }
                const char *a = p;
                while (name_char(*p))
                    p++;
                if (p == a || *p != '=' || p[1] != '"')
                    return "attribute without name=\"value\"";
                p += 2;
                while (*p && *p != '"') {
                    const char *end;
                    if (*p == '<')
                        return "'<' in an attribute value";
                    if (*p == '&') {
                        if (!entity_ok(p, &end))
                            return "bad entity in an attribute value";
                        p = end;
                        continue;
                    }
                    p++;
                }
                if (!*p)
                    return "unterminated attribute value";
                p++;
            }
            continue;
        }
        if (depth == 0 && *p != ' ' && *p != '\n')
            return "text outside the root element";
        if (*p == '&') {
            const char *end;
            if (!entity_ok(p, &end))
                return "bad entity in text";
            p = end;
            continue;
        }
        if ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\t')
            return "control character";
        p++;
    }
    if (depth)
        return "unclosed element";
    if (roots != 1)
        return "no root element";
    return NULL;
}

/* ---- Reading the picture back ----------------------------------------------------- */

/* Attribute name of the tag starting at tag, as a number; NAN if absent. */
static double attr_num(const char *tag, const char *name) {
    char key[64];
    snprintf(key, sizeof key, " %s=\"", name);
    const char *end = strchr(tag, '>');
    const char *a = strstr(tag, key);
    if (!a || (end && a > end))
        return NAN;
    return strtod(a + strlen(key), NULL);
}

/* The text content of the first <text class="cls" ...>, copied to buf. */
static const char *text_of(const char *doc, const char *cls, char *buf, size_t n) {
    char key[64];
    snprintf(key, sizeof key, "<text class=\"%s\"", cls);
    const char *t = strstr(doc, key);
    if (!t)
        return NULL;
    const char *s = strchr(t, '>') + 1, *e = strstr(s, "</text>");
    snprintf(buf, n, "%.*s", (int)(e - s), s);
    return buf;
}

static int count(const char *doc, const char *needle) {
    int n = 0;
    for (const char *p = doc; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

struct tick {
    double value, pos;
};

/* The outermost ticks of one axis (class tick-x: position x; tick-y: y). */
static int ticks(const char *doc, const char *cls, struct tick *lo, struct tick *hi) {
    char key[64];
    snprintf(key, sizeof key, "<text class=\"%s\"", cls);
    int n = 0;
    for (const char *t = doc; (t = strstr(t, key)); t++) {
        struct tick k = {attr_num(t, "data-value"), attr_num(t, strcmp(cls, "tick-x") == 0 ? "x" : "y")};
        /* The label shows the value it stands for. */
        const char *s = strchr(t, '>') + 1;
        SV_ASSERT_NEAR_REL(strtod(s, NULL), k.value, 1e-9);
        if (n == 0 || k.value < lo->value)
            *lo = k;
        if (n == 0 || k.value > hi->value)
            *hi = k;
        n++;
    }
    return n;
}

/* Every point's position, read against the tick labels, gives its value. */
static int check_points(const char *doc, bool ylog) {
    struct tick x0, x1, y0, y1;
    SV_CHECK(ticks(doc, "tick-x", &x0, &x1) >= 2);
    SV_CHECK(ticks(doc, "tick-y", &y0, &y1) >= 2);
    const char *frame = strstr(doc, "<rect class=\"frame\"");
    SV_CHECK(frame != NULL);
    if (!frame)
        return 0;
    double fx = attr_num(frame, "x"), fy = attr_num(frame, "y");
    double fw = attr_num(frame, "width"), fh = attr_num(frame, "height");
    int n = 0;
    for (const char *c = doc; (c = strstr(c, "<circle class=\"point\"")); c++, n++) {
        double cx = attr_num(c, "cx"), cy = attr_num(c, "cy"), x = attr_num(c, "data-x"), y = attr_num(c, "data-y");
        double want_cx = x0.pos + (x - x0.value) / (x1.value - x0.value) * (x1.pos - x0.pos);
        double want_cy = ylog ? y0.pos + (log10(y) - log10(y0.value)) / (log10(y1.value) - log10(y0.value)) *
                                             (y1.pos - y0.pos)
                              : y0.pos + (y - y0.value) / (y1.value - y0.value) * (y1.pos - y0.pos);
        SV_CHECK(fabs(cx - want_cx) < 0.05);
        SV_CHECK(fabs(cy - want_cy) < 0.05);
        SV_CHECK(cx > fx && cx < fx + fw && cy > fy && cy < fy + fh);   /* inside the plot, not on its edge */
    }
    return n;
}

static char *render(const struct svg_plot *p, int *ret) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    struct sv_err err = {0};
    *ret = svg_plot_write(f, p, &err);
    fclose(f);
    if (*ret < 0)
        SV_ASSERT_STR_CONTAINS(err.msg, "plot:");
    return buf;
}

/* ---- Cases ------------------------------------------------------------------------ */

static const double kept[3] = {79.3, 59.3, 39.5};
static const double ppl_a[3] = {84.0, 147.3, 291.3}, ppl_b[3] = {77.8, 130.3, 250.8}, ppl_c[3] = {84.6, 146.0, 280.3};

static struct svg_plot sample(struct svg_series *s, struct svg_mark *m) {
    s[0] = (struct svg_series){"svdllm", kept, ppl_a, 3};
    s[1] = (struct svg_series){"svdllm-update", kept, ppl_b, 3};
    s[2] = (struct svg_series){"rom", kept, ppl_c, 3};
    *m = (struct svg_mark){"original", 100, 44.83};
    return (struct svg_plot){.title = "tinystories-656K: perplexity", .x_label = "decoder-linear parameters kept (%)",
                             .y_label = "perplexity", .series = s, .n_series = 3, .marks = m, .n_marks = 1};
}

static void test_linear(void) {
    struct svg_series s[3];
    struct svg_mark m;
    struct svg_plot p = sample(s, &m);
    struct svg_layout L;
    SV_ASSERT_EQ(svg_layout_compute(&p, &L, NULL), 0);
    SV_CHECK(!L.y.log);   /* 44.83 .. 291.3: 6.5x */
    int r;
    char *doc = render(&p, &r), buf[256];
    SV_ASSERT_EQ(r, 0);
    const char *why = xml_check(doc);
    if (why)
        fprintf(stderr, "not well-formed: %s\n", why);
    SV_CHECK(why == NULL);
    SV_ASSERT_STR_CONTAINS(text_of(doc, "x-label", buf, sizeof buf), "decoder-linear parameters kept (%)");
    SV_CHECK(strcmp(text_of(doc, "y-label", buf, sizeof buf), "perplexity") == 0);
    SV_ASSERT_STR_CONTAINS(doc, "<title>tinystories-656K: perplexity</title>");
    SV_ASSERT_EQ(check_points(doc, false), 9);
    SV_ASSERT_EQ(count(doc, "<polyline"), 3);
    SV_ASSERT_EQ(count(doc, "class=\"legend-label\""), 4);
    /* The original's diamond is centred on its value. */
    const char *mk = strstr(doc, "<g class=\"mark\"");
    SV_CHECK(mk && attr_num(mk, "data-x") == 100 && attr_num(mk, "data-y") == 44.83);
    const char *d = mk ? strstr(mk, "<path d=\"M ") : NULL;
    if (d) {
        double px, py;
        SV_ASSERT_EQ(sscanf(d, "<path d=\"M %lf %lf", &px, &py), 2);
        SV_CHECK(fabs(px - svg_axis_map(&L.x, 100)) < 0.01);
        SV_CHECK(fabs(py + 7 - svg_axis_map(&L.y, 44.83)) < 0.01);
    }
    /* Larger values are higher up (smaller y) and further right. */
    SV_CHECK(svg_axis_map(&L.y, 291.3) < svg_axis_map(&L.y, 44.83));
    SV_CHECK(svg_axis_map(&L.x, 100) > svg_axis_map(&L.x, 39.5));
    free(doc);
}

static void test_log(void) {
    static const double y[3] = {30, 400, 5000};
    struct svg_series s[1] = {{"asvd", kept, y, 3}};
    struct svg_mark m = {"original", 100, 20};
    struct svg_plot p = {.x_label = "kept", .y_label = "perplexity", .series = s, .n_series = 1, .marks = &m,
                         .n_marks = 1};
    struct svg_layout L;
    SV_ASSERT_EQ(svg_layout_compute(&p, &L, NULL), 0);
    SV_CHECK(L.y.log);   /* 20 .. 5000 */
    /* Equal ratios, equal distances. */
    SV_CHECK(fabs((svg_axis_map(&L.y, 10) - svg_axis_map(&L.y, 100)) -
                  (svg_axis_map(&L.y, 100) - svg_axis_map(&L.y, 1000))) < 1e-6);
    int r;
    char *doc = render(&p, &r), buf[256];
    SV_ASSERT_EQ(r, 0);
    SV_CHECK(xml_check(doc) == NULL);
    SV_CHECK(strcmp(text_of(doc, "y-label", buf, sizeof buf), "perplexity (log scale)") == 0);
    SV_CHECK(strstr(doc, "<text class=\"title\"") == NULL);   /* no title given */
    SV_ASSERT_STR_CONTAINS(doc, "data-value=\"1000\"");
    SV_ASSERT_EQ(check_points(doc, true), 3);
    free(doc);
}

static void test_gaps_and_escaping(void) {
    static const double x[4] = {80, 60, 40, 20}, y[4] = {5, NAN, 7, 8};
    /* A hostile name: markup characters, a control character, a stray UTF-8
     * continuation byte and a good two-byte character. */
    struct svg_series s[1] = {{"a<b>&\"c'\x01\x80\xc3\xa9", x, y, 4}};
    struct svg_plot p = {.title = "t&t", .x_label = "x <kept>", .y_label = "y", .series = s, .n_series = 1};
    int r;
    char *doc = render(&p, &r);
    SV_ASSERT_EQ(r, 0);
    const char *why = xml_check(doc);
    if (why)
        fprintf(stderr, "not well-formed: %s\n", why);
    SV_CHECK(why == NULL);
    SV_ASSERT_STR_CONTAINS(doc, "a&lt;b&gt;&amp;&quot;c&#39;??\xc3\xa9");
    SV_ASSERT_STR_CONTAINS(doc, "x &lt;kept&gt;");
    SV_ASSERT_EQ(check_points(doc, false), 3);   /* the NaN point is left out */
    SV_ASSERT_EQ(count(doc, "<polyline"), 1);    /* 80 alone, then 40-20 joined */
    free(doc);
    /* One ratio only: a single x value still gets a usable axis. */
    static const double x1[1] = {60}, y1[1] = {12};
    struct svg_series s1[1] = {{"svd", x1, y1, 1}};
    struct svg_plot p1 = {.x_label = "x", .y_label = "y", .series = s1, .n_series = 1};
    doc = render(&p1, &r);
    SV_ASSERT_EQ(r, 0);
    SV_ASSERT_EQ(check_points(doc, false), 1);
    free(doc);
}

static void test_refusals(void) {
    static const double x[1] = {NAN}, y[1] = {1};
    struct svg_series s[1] = {{"m", x, y, 1}};
    struct svg_plot p = {.x_label = "x", .y_label = "y", .series = s, .n_series = 1};
    struct sv_err err = {0};
    struct svg_layout L;
    SV_ASSERT_EQ(svg_layout_compute(&p, &L, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "no point with finite coordinates");
    p.marks = &(struct svg_mark){"original", 100, 3};
    p.n_marks = 1;
    p.width = 100;
    SV_ASSERT_EQ(svg_layout_compute(&p, &L, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "below 320x240");
    p.width = 0;
    p.y_label = NULL;
    SV_ASSERT_EQ(svg_layout_compute(&p, &L, &err), -EINVAL);
    SV_ASSERT_STR_CONTAINS(err.msg, "axis labels");
    int r;
    free(render(&p, &r));
    SV_ASSERT_EQ(r, -EINVAL);
}

static void test_save(void) {
    char dir[] = "/tmp/test_svg.XXXXXX", path[64], tmp[80];
    SV_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/p.svg", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct svg_series s[3];
    struct svg_mark m;
    struct svg_plot p = sample(s, &m);
    struct sv_err err = {0};
    SV_ASSERT_EQ(svg_plot_save(path, &p, &err), 0);
    struct stat st;
    SV_CHECK(stat(path, &st) == 0 && st.st_size > 1000);
    SV_CHECK(access(tmp, F_OK) < 0);
    char bad[96];
    snprintf(bad, sizeof bad, "%s/missing/p.svg", dir);
    SV_ASSERT_EQ(svg_plot_save(bad, &p, &err), -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "missing/p.svg.tmp");
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write") == 0) {
        struct svg_series s[3];
        struct svg_mark m;
        struct svg_plot p = sample(s, &m);
        struct sv_err err = {0};
        if (svg_plot_save(argv[2], &p, &err) < 0) {
            fprintf(stderr, "test_svg: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    test_linear();
    test_log();
    test_gaps_and_escaping();
    test_refusals();
    test_save();
    return sv_test_result("test_svg");
}

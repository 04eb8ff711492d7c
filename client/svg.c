/* svg: see svg.h. The picture is plain SVG 1.1 (no scripts, no CSS
 * classes that carry style: every colour is an attribute), so any browser or
 * image viewer shows it the same way; fonts are generic families. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svg.h"

/* Okabe-Ito: distinguishable with the common colour-vision deficiencies. */
static const char *const palette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                      "#E69F00", "#56B4E9", "#000000", "#F0E442"};
#define N_PALETTE (sizeof palette / sizeof palette[0])
#define MARK_COLOR "#222222"
#define PAD 0.03     /* the axis runs 3 % past its outer ticks, so edge points stay clear of it */
#define MAX_TICKS 64

/* ---- Axes -------------------------------------------------------------------------- */

static double fwd(const struct svg_axis *a, double v) {
    return a->log ? log10(v) : v;
}

double svg_axis_map(const struct svg_axis *a, double v) {
    double lo = fwd(a, a->lo), hi = fwd(a, a->hi);
    return a->p_lo + (fwd(a, v) - lo) / (hi - lo) * (a->p_hi - a->p_lo);
}

/* The smallest 1, 2 or 5 x 10^k >= x (x > 0). */
static double nice_up(double x) {
    double e = pow(10, floor(log10(x)));
    double m = x / e;
    return (m <= 1 + 1e-9 ? 1 : m <= 2 + 1e-9 ? 2 : m <= 5 + 1e-9 ? 5 : 10) * e;
}

/* The largest 1, 2 or 5 x 10^k <= x (x > 0). */
static double nice_down(double x) {
    double e = pow(10, floor(log10(x)));
    double m = x / e;
    return (m >= 5 - 1e-9 ? 5 : m >= 2 - 1e-9 ? 2 : 1) * e;
}

/* Tick values of an axis whose data span [dmin, dmax]; sets *a's range. */
static size_t axis_ticks(struct svg_axis *a, double dmin, double dmax, double *ticks) {
    size_t n = 0;
    if (a->log) {
        double lo = nice_down(dmin), hi = nice_up(dmax);
        if (hi <= lo)
            hi = nice_up(lo * 1.0001);
        int d0 = (int)floor(log10(lo) + 1e-9), d1 = (int)ceil(log10(hi) - 1e-9);
        bool fine = d1 - d0 <= 3;   /* few decades: 2x and 5x ticks too */
        for (int d = d0; d <= d1 && n < MAX_TICKS; d++)
            for (int m = 1; m <= 5 && n < MAX_TICKS; m += m == 1 ? 1 : 3) {
                if (m != 1 && !fine)
                    continue;
                double v = m * pow(10, d);
                if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9))
                    ticks[n++] = v;
            }
        double l0 = log10(lo), l1 = log10(hi), pad = (l1 - l0) * PAD;
        a->lo = pow(10, l0 - pad);
        a->hi = pow(10, l1 + pad);
        return n;
    }
    if (dmax - dmin < 1e-12 * fmax(1, fabs(dmax))) {   /* one value: a range around it */
        double w = fmax(1, fabs(dmin) * 0.1);
        dmin -= w;
        dmax += w;
    }
    double step = nice_up((dmax - dmin) / 5);
    double lo = floor(dmin / step + 1e-9) * step, hi = ceil(dmax / step - 1e-9) * step;
    for (long k = lround(lo / step); k <= lround(hi / step) && n < MAX_TICKS; k++)
        ticks[n++] = (double)k * step;
    double pad = (hi - lo) * PAD;
    a->lo = lo - pad;
    a->hi = hi + pad;
    return n;
}

static void tick_label(char *buf, size_t n, const struct svg_axis *a, double v, double step) {
    if (a->log) {
        snprintf(buf, n, "%g", v);
        return;
    }
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", dec, fabs(v) < step * 1e-6 ? 0.0 : v);
}

struct range {
    double xmin, xmax, ymin, ymax;
    size_t n;
    bool y_pos;   /* every finite y > 0: a log axis is possible */
};

static void range_add(struct range *r, double x, double y) {
    if (!isfinite(x) || !isfinite(y))
        return;
    if (r->n == 0) {
        r->xmin = r->xmax = x;
        r->ymin = r->ymax = y;
    }
    r->xmin = fmin(r->xmin, x);
    r->xmax = fmax(r->xmax, x);
    r->ymin = fmin(r->ymin, y);
    r->ymax = fmax(r->ymax, y);
    r->y_pos &= y > 0;
    r->n++;
}

static int layout_ticks(const struct svg_plot *p, struct svg_layout *ret, double *xt, size_t *nxt, double *yt,
                        size_t *nyt, struct sv_err *err) {
    if (!p->x_label || !p->y_label)
        return sv_err_set(err, -EINVAL, "plot: both axis labels are required");
    struct svg_layout L = {.width = p->width ? p->width : 820, .height = p->height ? p->height : 500};
    if (L.width < 320 || L.height < 240)
        return sv_err_set(err, -EINVAL, "plot: size %dx%d is below 320x240", L.width, L.height);
    struct range r = {.y_pos = true};
    for (size_t s = 0; s < p->n_series; s++)
        for (size_t i = 0; i < p->series[s].n; i++)
            range_add(&r, p->series[s].x[i], p->series[s].y[i]);
    for (size_t m = 0; m < p->n_marks; m++)
        range_add(&r, p->marks[m].x, p->marks[m].y);
    if (r.n == 0)
        return sv_err_set(err, -EINVAL, "plot: no point with finite coordinates");
    L.left = 84;
    L.top = p->title ? 44 : 20;
    L.right = L.width - 200;   /* the legend sits right of the plot, never over a line */
    L.bottom = L.height - 58;
    L.x = (struct svg_axis){.p_lo = L.left, .p_hi = L.right};
    L.y = (struct svg_axis){.p_lo = L.bottom, .p_hi = L.top, .log = r.y_pos && r.ymax > 10 * r.ymin};
    *nxt = axis_ticks(&L.x, r.xmin, r.xmax, xt);
    *nyt = axis_ticks(&L.y, r.ymin, r.ymax, yt);
    *ret = L;
    return 0;
}

int svg_layout_compute(const struct svg_plot *p, struct svg_layout *ret, struct sv_err *err) {
    double xt[MAX_TICKS], yt[MAX_TICKS];
    size_t nx, ny;
    return layout_ticks(p, ret, xt, &nx, yt, &ny, err);
}

/* ---- Output ------------------------------------------------------------------------ */

/* Text content or attribute value: XML-escaped; control characters and
 * bytes that are not well-formed UTF-8 become '?', so the document always
 * parses. */
static void put_text(FILE *f, const char *s) {
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    while (*u) {
        unsigned c = *u;
        if (c == '&')
            fputs("&amp;", f);
        else if (c == '<')
            fputs("&lt;", f);
        else if (c == '>')
            fputs("&gt;", f);
        else if (c == '"')
            fputs("&quot;", f);
        else if (c == '\'')
            fputs("&#39;", f);
        else if (c < 0x20 || c == 0x7f)
            fputc('?', f);
        else if (c >= 0x80) {
            int len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
            int ok = len > 0;
            for (int k = 1; ok && k < len; k++)
                ok = (u[k] & 0xc0) == 0x80;
            /* overlong 3/4-byte forms, surrogates, > U+10FFFF */
            if (ok && len == 3 && ((c == 0xe0 && u[1] < 0xa0) || (c == 0xed && u[1] >= 0xa0)))
                ok = 0;
            if (ok && len == 4 && ((c == 0xf0 && u[1] < 0x90) || (c == 0xf4 && u[1] >= 0x90)))
                ok = 0;
            if (!ok) {
                fputc('?', f);
                u++;
                continue;
            }
            fwrite(u, 1, (size_t)len, f);
            u += len;
            continue;
        } else
            fputc((int)c, f);
        u++;
    }
}

static void text_el(FILE *f, const char *cls, double x, double y, const char *anchor, const char *extra,
                    const char *s) {
    fprintf(f, "<text class=\"%s\" x=\"%.2f\" y=\"%.2f\" text-anchor=\"%s\"%s>", cls, x, y, anchor, extra);
    put_text(f, s);
    fputs("</text>\n", f);
}

static void diamond(FILE *f, double x, double y, double r, const char *color) {
    fprintf(f, "<path d=\"M %.2f %.2f L %.2f %.2f L %.2f %.2f L %.2f %.2f Z\" fill=\"%s\" stroke=\"#ffffff\" stroke-width=\"1\"/>\n",
            x, y - r, x + r, y, x, y + r, x - r, y, color);
}

int svg_plot_write(FILE *f, const struct svg_plot *p, struct sv_err *err) {
    struct svg_layout L;
    double xt[MAX_TICKS], yt[MAX_TICKS];
    size_t nxt, nyt;
    int r = layout_ticks(p, &L, xt, &nxt, yt, &nyt, err);
    if (r < 0)
        return r;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Liberation Sans, Arial, sans-serif\" "
               "font-size=\"13\">\n",
            L.width, L.height, L.width, L.height);
    if (p->title) {
        fputs("<title>", f);
        put_text(f, p->title);
        fputs("</title>\n", f);
    }
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", L.width, L.height);
    if (p->title)
        text_el(f, "title", L.width / 2.0, 26, "middle", " font-size=\"15\" font-weight=\"bold\"", p->title);

    /* Grid and tick labels. */
    char lab[64];
    double xstep = nxt > 1 ? xt[1] - xt[0] : 1, ystep = nyt > 1 ? yt[1] - yt[0] : 1;
    fputs("<g class=\"grid\" stroke=\"#dddddd\" stroke-width=\"1\">\n", f);
    for (size_t i = 0; i < nxt; i++) {
        double px = svg_axis_map(&L.x, xt[i]);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", px, L.top, px, L.bottom);
    }
    for (size_t i = 0; i < nyt; i++) {
        double py = svg_axis_map(&L.y, yt[i]);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", L.left, py, L.right, py);
    }
    fputs("</g>\n", f);
    fprintf(f, "<rect class=\"frame\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" "
               "stroke=\"#444444\" stroke-width=\"1\"/>\n",
            L.left, L.top, L.right - L.left, L.bottom - L.top);
    fputs("<g class=\"ticks\" fill=\"#333333\">\n", f);
    for (size_t i = 0; i < nxt; i++) {
        double px = svg_axis_map(&L.x, xt[i]);
        tick_label(lab, sizeof lab, &L.x, xt[i], xstep);
        char extra[96];
        snprintf(extra, sizeof extra, " data-value=\"%.9g\"", xt[i]);
        text_el(f, "tick-x", px, L.bottom + 18, "middle", extra, lab);
    }
    for (size_t i = 0; i < nyt; i++) {
        double py = svg_axis_map(&L.y, yt[i]);
        tick_label(lab, sizeof lab, &L.y, yt[i], ystep);
        char extra[96];
        snprintf(extra, sizeof extra, " data-value=\"%.9g\" dominant-baseline=\"middle\"", yt[i]);
        text_el(f, "tick-y", L.left - 8, py, "end", extra, lab);
    }
    fputs("</g>\n", f);

    /* Axis labels. */
    text_el(f, "x-label", (L.left + L.right) / 2, L.height - 16, "middle", "", p->x_label);
    char rot[96];
    double ly = (L.top + L.bottom) / 2;
    snprintf(rot, sizeof rot, " transform=\"rotate(-90 %.2f %.2f)\"", 22.0, ly);
    if (L.y.log) {
        size_t n = strlen(p->y_label) + 16;
        char *s = malloc(n);
        if (!s)
            return sv_err_set(err, -ENOMEM, "out of memory");
        snprintf(s, n, "%s (log scale)", p->y_label);
        text_el(f, "y-label", 22, ly, "middle", rot, s);
        free(s);
    } else
        text_el(f, "y-label", 22, ly, "middle", rot, p->y_label);

    /* Series: a polyline per run of finite points, then the markers. */
    for (size_t s = 0; s < p->n_series; s++) {
        const struct svg_series *se = &p->series[s];
        const char *color = palette[s % N_PALETTE];
        fputs("<g class=\"series\" data-name=\"", f);
        put_text(f, se->name);
        fprintf(f, "\" stroke=\"%s\" fill=\"%s\">\n", color, color);
        for (size_t i = 0; i < se->n;) {
            while (i < se->n && !(isfinite(se->x[i]) && isfinite(se->y[i])))
                i++;
            size_t j = i;
            while (j < se->n && isfinite(se->x[j]) && isfinite(se->y[j]))
                j++;
            if (j - i >= 2) {
                fputs("<polyline fill=\"none\" stroke-width=\"2\" points=\"", f);
                for (size_t k = i; k < j; k++)
                    fprintf(f, "%s%.2f,%.2f", k > i ? " " : "", svg_axis_map(&L.x, se->x[k]),
                            svg_axis_map(&L.y, se->y[k]));
                fputs("\"/>\n", f);
            }
            i = j;
        }
        for (size_t i = 0; i < se->n; i++) {
            if (!isfinite(se->x[i]) || !isfinite(se->y[i]))
                continue;
            fprintf(f, "<circle class=\"point\" cx=\"%.2f\" cy=\"%.2f\" r=\"4\" stroke=\"#ffffff\" stroke-width=\"1\" "
                       "data-x=\"%.9g\" data-y=\"%.9g\"><title>",
                    svg_axis_map(&L.x, se->x[i]), svg_axis_map(&L.y, se->y[i]), se->x[i], se->y[i]);
            put_text(f, se->name);
            fprintf(f, ": %.4g, %.4g</title></circle>\n", se->x[i], se->y[i]);
        }
        fputs("</g>\n", f);
    }
    for (size_t m = 0; m < p->n_marks; m++) {
        const struct svg_mark *mk = &p->marks[m];
        if (!isfinite(mk->x) || !isfinite(mk->y))
            continue;
        double px = svg_axis_map(&L.x, mk->x), py = svg_axis_map(&L.y, mk->y);
        fprintf(f, "<g class=\"mark\" data-x=\"%.9g\" data-y=\"%.9g\">\n", mk->x, mk->y);
        diamond(f, px, py, 7, MARK_COLOR);
        text_el(f, "mark-label", px - 10, py - 10, "end", " fill=\"#222222\"", mk->name);
        fputs("</g>\n", f);
    }

    /* Legend, right of the plot. */
    double lx = L.right + 18, y = L.top + 14;
    fputs("<g class=\"legend\">\n", f);
    for (size_t s = 0; s < p->n_series; s++, y += 22) {
        const char *color = palette[s % N_PALETTE];
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"2\"/>\n", lx, y,
                lx + 26, y, color);
        fprintf(f, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"4\" fill=\"%s\"/>\n", lx + 13, y, color);
        text_el(f, "legend-label", lx + 34, y, "start", " dominant-baseline=\"middle\"", p->series[s].name);
    }
    for (size_t m = 0; m < p->n_marks; m++, y += 22) {
        diamond(f, lx + 13, y, 7, MARK_COLOR);
        text_el(f, "legend-label", lx + 34, y, "start", " dominant-baseline=\"middle\"", p->marks[m].name);
    }
    fputs("</g>\n</svg>\n", f);
    if (fflush(f) != 0 || ferror(f))
        return sv_err_set(err, -EIO, "plot: write failed");
    return 0;
}

int svg_plot_save(const char *path, const struct svg_plot *p, struct sv_err *err) {
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp)
        return sv_err_set(err, -ENOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    int r = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        r = sv_err_set(err, -errno, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if ((r = svg_plot_write(f, p, err)) == -EIO)
        sv_err_prefix(err, "%s", tmp);
    if (r == 0 && fsync(fileno(f)) < 0)
        r = sv_err_set(err, -errno, "%s: fsync: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && r == 0)
        r = sv_err_set(err, -errno, "%s: %s", tmp, strerror(errno));
    if (r == 0 && rename(tmp, path) < 0)
        r = sv_err_set(err, -errno, "%s: rename to '%s': %s", tmp, path, strerror(errno));
    if (r < 0)
        unlink(tmp);
out:
    free(tmp);
    return r;
}

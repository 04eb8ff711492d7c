/* svg: a line plot written as one standalone SVG file (svdllmctl sweep's
 * picture of perplexity against parameters kept).
 *
 * The caller hands over series of (x, y) points and single labelled marks;
 * svg_layout_compute() decides the axes (linear with 1-2-5 ticks, or log10
 * with decade ticks when the finite y values span more than a factor of 10)
 * and svg_plot_write() draws grid, axes, tick labels, axis labels, one
 * polyline with markers per series, the marks and a legend. Every point is
 * a <circle class="point"> with data-x/data-y holding its value, and every
 * tick label a <text class="tick-x|tick-y"> with data-value, so a test can
 * read the picture back. Points with a non-finite coordinate (a failed job)
 * are left out and break their line. Pure code: no globals, no logging. */
#ifndef SVG_H
#define SVG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "sv_err.h"

struct svg_series {
    const char *name;          /* legend text (escaped on output) */
    const double *x, *y;       /* n points, joined in this order */
    size_t n;
};

struct svg_mark {              /* one labelled point, e.g. the original model */
    const char *name;
    double x, y;
};

struct svg_plot {
    const char *title;         /* drawn above the plot; may be NULL */
    const char *x_label, *y_label;
    const struct svg_series *series;
    size_t n_series;
    const struct svg_mark *marks;
    size_t n_marks;
    int width, height;         /* pixels; 0 = 820 x 500 */
};

/* One axis: value lo maps to pixel p_lo, hi to p_hi (for y, p_lo > p_hi:
 * SVG's y grows downwards). log: the mapping is linear in log10(value). */
struct svg_axis {
    double lo, hi;
    bool log;
    double p_lo, p_hi;
};

struct svg_layout {
    int width, height;
    double left, top, right, bottom;   /* the plot area, in pixels */
    struct svg_axis x, y;
};

/* Axes for p: ranges over every finite point of every series and mark,
 * rounded out to tick values. -EINVAL (message says why) when there is no
 * finite point, a label is missing or the size is below 320 x 240. */
int svg_layout_compute(const struct svg_plot *p, struct svg_layout *ret, struct sv_err *err);

/* Pixel of value v on axis a. */
double svg_axis_map(const struct svg_axis *a, double v);

/* Writes the whole document to f. Returns 0, or a negative errno with err
 * set (layout refused, write error). */
int svg_plot_write(FILE *f, const struct svg_plot *p, struct sv_err *err);

/* svg_plot_write() to path through path.tmp, fsync and rename, so a reader
 * never sees half a picture. */
int svg_plot_save(const char *path, const struct svg_plot *p, struct sv_err *err);

#endif

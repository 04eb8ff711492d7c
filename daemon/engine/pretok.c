/* pretok: Split (PCRE2) and ByteLevel pre-tokenization.
 *
 * Design note. tokenizer.json regexes are written for the Rust library,
 * which compiles them with Oniguruma. PCRE2 (UTF + UCP) reads the same syntax
 * for everything the Llama 3 / Qwen / GPT-2 patterns use (\p{L}, \p{N},
 * (?i:...), (?!\S), {1,3}, classes), with a few escapes that mean something
 * else; translate_onig() rewrites those to their Oniguruma meaning:
 *   \s \S  Oniguruma: the Unicode White_Space property. PCRE2's UCP \s also
 *          takes U+180E, so we spell \p{White_Space} out;
 *   \h \H  Oniguruma: a hex digit; PCRE2: horizontal space;
 *   \uHHHH Oniguruma (Ruby syntax) code point; PCRE2 wants \x{HHHH};
 * and refuses by name what has no safe equivalent here: \w \W \b \B (the two
 * engines' word sets differ), \G and \K, nested classes and && intersections.
 * ^ and $ are line anchors in Oniguruma, hence PCRE2_MULTILINE (+
 * ALT_CIRCUMFLEX, so ^ also matches after a final \n) with LF newlines only.
 *
 * Matching walks the text as JavaScript's matchAll and the Rust library's
 * find_iter do: leftmost match from the current position; after an empty
 * match the search resumes one code point further. The pieces between and of
 * the matches are handed out according to the Split behaviour.
 *
 * ByteLevel's table is GPT-2's bytes_to_unicode(): the printable Latin-1
 * bytes (! .. ~, ¡ .. ¬, ® .. ÿ) stand for themselves, the other 68 bytes
 * (0..32, 127..160, 173), in order, for U+0100 .. U+0143. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pretok.h"

#include <errno.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

struct pretok_split {
    pcre2_code *re;
    enum pretok_behavior behavior;
};

struct pretok_md {
    pcre2_match_data *md;
};

/* GPT-2's pattern, as the Rust library's ByteLevel compiles it. */
static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct buf {
    char *p;
    size_t n, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = 2 * (b->n + n) + 64;
        char *p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Rewrites an Oniguruma pattern for PCRE2 (see the design note). */
static int translate_onig(const char *pat, size_t len, struct buf *out, const char *what, struct sv_err *err) {
    int in_class = 0, r = 0;
    size_t class_start = 0;  /* index just past '[' or '[^' */
    for (size_t i = 0; i < len && r == 0; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[++i];
            switch (e) {
            case 's': r = buf_add(out, "\\p{White_Space}", 15); break;
            case 'S': r = buf_add(out, "\\P{White_Space}", 15); break;
            case 'h': r = in_class ? buf_add(out, "0-9A-Fa-f", 9) : buf_add(out, "[0-9A-Fa-f]", 11); break;
            case 'H':
                if (in_class)
                    return sv_err_set(err, -ENOTSUP, "%s: regex escape \\H inside a character class not supported",
                                      what);
                r = buf_add(out, "[^0-9A-Fa-f]", 12);
                break;
            case 'w': case 'W': case 'b': case 'B': case 'G': case 'K':
                return sv_err_set(err, -ENOTSUP,
                                  "%s: regex escape \\%c not supported (Oniguruma and PCRE2 disagree on it)", what, e);
            case 'u':
                if (i + 4 < len && is_hex(pat[i + 1]) && is_hex(pat[i + 2]) && is_hex(pat[i + 3]) &&
                    is_hex(pat[i + 4])) {
                    char x[12] = "\\x{";
                    memcpy(x + 3, pat + i + 1, 4);
                    x[7] = '}';
                    r = buf_add(out, x, 8);
                    i += 4;
                    break;
                }
                return sv_err_set(err, -ENOTSUP, "%s: regex escape \\u without four hex digits", what);
            default: {
                char two[2] = {'\\', e};
                r = buf_add(out, two, 2);
            }
            }
            continue;
        }
        if (in_class) {
            if (c == '[') {
                if (i + 1 < len && pat[i + 1] == ':') {  /* POSIX [:alpha:]: the same in both */
                    const char *end = NULL;
                    for (size_t k = i + 2; k + 1 < len; k++)
                        if (pat[k] == ':' && pat[k + 1] == ']') {
                            end = pat + k + 2;
                            break;
                        }
                    if (!end)
                        return sv_err_set(err, -EINVAL, "%s: regex has an unterminated [: class", what);
                    r = buf_add(out, pat + i, (size_t)(end - (pat + i)));
                    i = (size_t)(end - pat) - 1;
                    continue;
                }
                return sv_err_set(err, -ENOTSUP, "%s: regex nested character class not supported", what);
            }
            if (c == '&' && i + 1 < len && pat[i + 1] == '&')
                return sv_err_set(err, -ENOTSUP, "%s: regex class intersection && not supported", what);
            if (c == ']' && i > class_start)
                in_class = 0;
        } else if (c == '[') {
            in_class = 1;
            class_start = i + 1;
            if (class_start < len && pat[class_start] == '^')
                class_start++;
        }
        r = buf_add(out, &c, 1);
    }
    return r < 0 ? sv_err_set(err, r, "%s: out of memory", what) : 0;
}

static int compile(struct pretok_split **ret, const char *pat, size_t len, int literal, enum pretok_behavior behavior,
                   const char *what, struct sv_err *err) {
    struct buf tr = {0};
    int r = 0;
    struct pretok_split *sp = NULL;
    pcre2_compile_context *cc = NULL;
    uint32_t opts = PCRE2_UTF;
    if (literal) {
        opts |= PCRE2_LITERAL;
        if ((r = buf_add(&tr, pat, len)) < 0) {
            r = sv_err_set(err, r, "%s: out of memory", what);
            goto out;
        }
    } else {
        opts |= PCRE2_UCP | PCRE2_MULTILINE | PCRE2_ALT_CIRCUMFLEX;
        if ((r = translate_onig(pat, len, &tr, what, err)) < 0)
            goto out;
        if (!tr.p && (r = buf_add(&tr, "", 0)) < 0) {
            r = sv_err_set(err, r, "%s: out of memory", what);
            goto out;
        }
    }
    sp = calloc(1, sizeof *sp);
    cc = pcre2_compile_context_create(NULL);
    if (!sp || !cc) {
        r = sv_err_set(err, -ENOMEM, "%s: out of memory", what);
        goto out;
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int code;
    PCRE2_SIZE off;
    sp->re = pcre2_compile((PCRE2_SPTR)tr.p, tr.n, opts, &code, &off, cc);
    if (!sp->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        r = sv_err_set(err, -EINVAL, "%s: regex does not compile (PCRE2: %s at offset %zu of '%.80s')", what,
                       (const char *)msg, (size_t)off, tr.p);
        goto out;
    }
    /* Without JIT (not built, or no executable memory) the interpreter gives
     * the same matches, only slower. */
    (void)pcre2_jit_compile(sp->re, PCRE2_JIT_COMPLETE);
    sp->behavior = behavior;
    *ret = sp;
    sp = NULL;
out:
    pretok_split_free(sp);
    pcre2_compile_context_free(cc);
    free(tr.p);
    return r;
}

int pretok_split_new(struct pretok_split **ret, const char *pattern, size_t len, int literal,
                     enum pretok_behavior behavior, const char *what, struct sv_err *err) {
    return compile(ret, pattern, len, literal, behavior, what, err);
}

int pretok_split_new_gpt2(struct pretok_split **ret, const char *what, struct sv_err *err) {
    return compile(ret, gpt2_pattern, sizeof gpt2_pattern - 1, 0, PRETOK_ISOLATED, what, err);
}

void pretok_split_free(struct pretok_split *sp) {
    if (!sp)
        return;
    pcre2_code_free(sp->re);
    free(sp);
}

int pretok_md_new(struct pretok_md **ret) {
    struct pretok_md *m = calloc(1, sizeof *m);
    /* One ovector pair: only the whole match is used, for any pattern. */
    if (!m || !(m->md = pcre2_match_data_create(1, NULL))) {
        free(m);
        return -ENOMEM;
    }
    *ret = m;
    return 0;
}

void pretok_md_free(struct pretok_md *md) {
    if (!md)
        return;
    pcre2_match_data_free(md->md);
    free(md);
}

static size_t cp_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

int pretok_split_run(const struct pretok_split *sp, struct pretok_md *md, const char *s, size_t n,
                     pretok_piece_fn fn, void *ctx, struct sv_err *err) {
    size_t pos = 0, last = 0;
    int r = 0;
    while (pos <= n) {
        int rc = pcre2_match(sp->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return sv_err_set(err, -EINVAL, "pre_tokenizer regex failed at byte %zu: %s", pos, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md->md);
        size_t ms = ov[0], me = ov[1];
        if (ms < last || me < ms || me > n)  /* only \K could do this, and it is refused */
            return sv_err_set(err, -EINVAL, "pre_tokenizer regex gave a match outside the text");
        if (ms > last && sp->behavior != PRETOK_MATCHES_ONLY && (r = fn(ctx, s + last, ms - last)) < 0)
            return r;
        if (me > ms && sp->behavior != PRETOK_REMOVED && (r = fn(ctx, s + ms, me - ms)) < 0)
            return r;
        last = me;
        if (me == ms) {
            if (me >= n)
                break;
            pos = me + cp_len((unsigned char)s[me]);
        } else {
            pos = me;
        }
    }
    if (last < n && sp->behavior != PRETOK_MATCHES_ONLY && (r = fn(ctx, s + last, n - last)) < 0)
        return r;
    return 0;
}

/* The code point GPT-2's table gives byte b. */
static unsigned byte_cp(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
        return b;
    if (b <= 32)
        return 256 + b;
    if (b <= 160)
        return 256 + 33 + (b - 127);
    return 256 + 33 + 34;  /* 173, the soft hyphen */
}

size_t pretok_bytes_to_unicode(const char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned cp = byte_cp((unsigned char)s[i]);
        if (cp < 0x80) {
            out[k++] = (char)cp;
        } else {
            out[k++] = (char)(0xc0 | (cp >> 6));
            out[k++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    return k;
}

/* The byte GPT-2's table maps to code point cp, or -1. */
static int cp_byte(unsigned cp) {
    if (cp < 256)
        return byte_cp(cp) == cp ? (int)cp : -1;
    if (cp <= 256 + 32)
        return (int)(cp - 256);
    if (cp <= 256 + 33 + 33)
        return (int)(cp - 256 - 33 + 127);
    return cp == 256 + 33 + 34 ? 173 : -1;
}

long pretok_unicode_to_bytes(const char *s, size_t n, char *out) {
    long k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        unsigned cp;
        if (c < 0x80) {
            cp = c;
            i++;
        } else if ((c & 0xe0) == 0xc0 && i + 1 < n) {
            cp = ((unsigned)(c & 0x1f) << 6) | ((unsigned char)s[i + 1] & 0x3f);
            i += 2;
        } else {
            return -1;
        }
        int b = cp_byte(cp);
        if (b < 0)
            return -1;
        out[k++] = (char)b;
    }
    return k;
}

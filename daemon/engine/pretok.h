/* pretok: the regex and byte-level parts of a tokenizer.json pre-tokenizer,
 * for byte-level BPE (GPT-2, Llama 3, Qwen): the Split pre-tokenizer with the
 * file's own regex (PCRE2), and ByteLevel's byte <-> unicode table and its
 * GPT-2 regex. tok.c owns the pipeline; this file only cuts and maps text.
 *
 * Every function takes valid UTF-8 (tok.c replaces ill-formed sequences
 * first). A compiled struct pretok_split is immutable and may be used by any
 * number of threads at once, each with its own struct pretok_md. */
#ifndef PRETOK_H
#define PRETOK_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

/* What Split keeps (the tokenizers library's SplitDelimiterBehavior, and its
 * invert flag folded in): */
enum pretok_behavior {
    PRETOK_ISOLATED,      /* gaps and matches, each its own piece */
    PRETOK_REMOVED,       /* gaps only; the matches are dropped */
    PRETOK_MATCHES_ONLY,  /* invert + Removed: matches only, gaps dropped */
};

struct pretok_split;
struct pretok_md;  /* per-thread match state */

/* Compiles an Oniguruma-syntax pattern (what the Rust library compiles) for
 * PCRE2, or a literal string when literal is set. what names the object in
 * error messages ("tokenizer 'x.json': pre_tokenizer Split"). Oniguruma
 * escapes whose meaning differs in PCRE2 are rewritten (\s, \S, \h, \H) or
 * refused by name (\w, \W, \b, \B, \G, nested classes, &&). */
int pretok_split_new(struct pretok_split **ret, const char *pattern, size_t len, int literal,
                     enum pretok_behavior behavior, const char *what, struct sv_err *err);
/* ByteLevel's own regex (use_regex = true), with Isolated behaviour. */
int pretok_split_new_gpt2(struct pretok_split **ret, const char *what, struct sv_err *err);
void pretok_split_free(struct pretok_split *sp);

int pretok_md_new(struct pretok_md **ret);
void pretok_md_free(struct pretok_md *md);

/* Cuts s[0..n) into pieces and calls fn on each non-empty one, left to right;
 * stops at (and returns) the first negative value fn returns. Returns -EINVAL
 * on a PCRE2 matching error (match limit), with err naming it. */
typedef int (*pretok_piece_fn)(void *ctx, const char *s, size_t n);
int pretok_split_run(const struct pretok_split *sp, struct pretok_md *md, const char *s, size_t n,
                     pretok_piece_fn fn, void *ctx, struct sv_err *err);

/* ByteLevel: each byte becomes one code point of the GPT-2 table (1 or 2
 * bytes of UTF-8), so out needs room for 2 * n bytes. Returns the length. */
size_t pretok_bytes_to_unicode(const char *s, size_t n, char *out);
/* The inverse, for pieces of a byte-level vocab: writes the bytes to out
 * (room for n bytes) and returns their count, or -1 if s holds a code point
 * outside the table. */
long pretok_unicode_to_bytes(const char *s, size_t n, char *out);

#endif

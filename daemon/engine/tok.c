/* tok: BPE tokenizers read from a Hugging Face tokenizer.json, producing the
 * same ids as the tokenizers library: SentencePiece-style (Llama 2, Mistral)
 * and byte-level (GPT-2, Llama 3, Qwen).
 *
 * Design note. The goal is token-for-token equality with the `tokenizers`
 * library (what the Transformers fast tokenizers run), because perplexities
 * are only comparable across tools when the token streams are identical. So
 * this file mirrors that library's steps, in its order (checked against the
 * pure-JavaScript @huggingface/tokenizers, tests/ref/gen_tok_ref.mjs):
 *
 *   0. text that is not valid UTF-8 (the library only takes valid strings):
 *      for byte-level files and anything using a regex or NFC, each maximal
 *      ill-formed subsequence becomes one U+FFFD, as a UTF-8 decoder hands the
 *      library its string (WHATWG / Unicode "maximal subpart" rule). For
 *      SentencePiece-style files the bytes are kept: a stray byte is a
 *      one-byte symbol that is never in the vocab, so it goes to byte fallback
 *      (<0xNN>) or unk like an unknown character;
 *   1. added tokens (added_tokens: special or not) are cut out of the raw text
 *      first, leftmost-longest, those with normalized=false on the raw text,
 *      those with normalized=true on each normalized section; lstrip/rstrip
 *      eat the Unicode white space next to them. A section that is a token
 *      becomes its id and skips everything below;
 *   2. normalizer, on each other section: Prepend (only to a non-empty
 *      section), Replace(String) and NFC (utf8proc), in the file's order;
 *   3. pre-tokenizer: none (the section is one word), Metaspace (split=false:
 *      replace ' ', prepend the replacement unless already there; "first" only
 *      for the section at the start of the text), or a Sequence of Split
 *      (the file's regex, PCRE2; pretok.c) and ByteLevel (add_prefix_space;
 *      GPT-2 regex when use_regex; bytes mapped through GPT-2's table);
 *   4. BPE model (models/bpe/model.rs merge_word) on each word: the word is
 *      cut into Unicode scalars; a scalar in the vocab becomes that piece; one
 *      that is not becomes its <0xNN> byte pieces when byte_fallback is on and
 *      every one of those exists; otherwise an unk (consecutive unks fused
 *      into one with fuse_unk; dropped without an unk_token). Byte and unk
 *      symbols go through the merges like any other symbol, as in the library.
 *      ignore_merges takes a word that is itself a piece whole;
 *   5. merges (models/bpe/word.rs merge_all): a min-heap of candidate
 *      adjacent pairs keyed by (rank, position of the left symbol) over a
 *      doubly linked list of symbols. Popped entries are checked lazily: a
 *      dead left symbol, a missing right neighbour, or a current pair whose
 *      merge yields a different id than the entry means it is stale. Each
 *      merge pushes the (at most two) new pairs it creates. O(n log n), so a
 *      whole 1 MB file as one word takes well under a second;
 *   6. post-processor: TemplateProcessing's special tokens in front of $A
 *      when the caller asks for BOS (alone or in a Sequence); ByteLevel adds
 *      none (it only moves offsets).
 *
 * One library quirk is kept on purpose because it changes ids: a character
 * handled by byte fallback does not flush a pending unk, so the unk lands
 * after those byte pieces (only reachable when a vocab has some but not all
 * <0xNN> pieces).
 *
 * Also as in the library: special tokens after $A (an EOS) are not added,
 * since the API only asks for BOS. tok_vocab_size is one past the largest id
 * of the vocab and added_tokens, i.e. the rows an embedding table needs.
 * jansson refuses NUL bytes in object keys, so a vocab with a "\u0000" piece
 * is refused. Anything else the library can do (other models, normalizers,
 * pre-tokenizers, Split behaviours, single_word tokens) is refused by name.
 *
 * Decoding (tok_decode, at the end of this file) runs the file's "decoder"
 * steps on the list of piece strings as the Rust library does; a decoder we
 * do not implement does not stop tok_new (encoding does not need it), only
 * tok_decode, by name.
 *
 * A struct tok is immutable after tok_new, so any number of threads may call
 * tok_encode and tok_decode on it at once; each call has its own scratch state. */
#include "tok.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "pretok.h"

/* The largest real tokenizer.json files (250k-piece vocabularies) are ~20 MB;
 * anything far beyond that is not a tokenizer and would only exhaust memory. */
#define TOK_FILE_MAX ((long long)512 << 20)
/* Symbol positions are int32; the normalized text must fit. */
#define TOK_TEXT_MAX ((size_t)INT32_MAX - 1)
/* Longest piece quoted in an error message. */
#define TOK_QUOTE_MAX 80
/* Pre-tokenizer steps in a Sequence; real files have one or two. */
#define TOK_PRE_MAX 8

enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_NFC };

struct norm_step {
    enum norm_kind kind;
    char *pat;   /* Replace: the string matched; unused otherwise */
    size_t pat_len;
    char *with;  /* Prepend: the prefix; Replace: the replacement; NFC: NULL */
    size_t with_len;
};

enum pre_kind { PRE_SPLIT, PRE_BYTELEVEL };

struct pre_step {
    enum pre_kind kind;
    struct pretok_split *sp;  /* Split's regex; ByteLevel's GPT-2 regex, or NULL without use_regex */
    int add_prefix_space;     /* ByteLevel */
};

struct added_tok {
    char *s;  /* content (for normalized tokens: the normalized content) */
    size_t len;
    int32_t id;
    int lstrip, rstrip;
    uint32_t order;  /* index in added_tokens */
    int raw;         /* s is the content as written (not a normalized form) */
};

/* Added tokens of one kind (normalized or not), ordered by first byte and,
 * within one first byte, longest first, so the first hit is the longest. */
struct added_set {
    struct added_tok *a;
    size_t n;
    uint32_t lo[256], hi[256];  /* a[lo[b]..hi[b]) start with byte b */
};

struct vocab_slot {
    const char *s;  /* into tok->arena; NULL marks an empty slot */
    uint32_t len;
    int32_t id;
};

struct merge_slot {
    uint64_t key;  /* (left id << 32) | right id */
    uint32_t rank;
    int32_t new_id;  /* -1 marks an empty slot */
};

struct tok {
    char *path;

    char *arena;  /* all vocab piece strings, back to back */
    struct vocab_slot *vocab;
    size_t vocab_mask;  /* table size - 1 (power of two) */
    size_t n_vocab;

    struct merge_slot *merges;
    size_t merge_mask;
    size_t n_merges;

    int32_t ascii_id[128];  /* vocab id of each one-byte character, or -1 */
    int32_t byte_id[256];   /* id of "<0xNN>", or -1 */
    int byte_fallback, fuse_unk, ignore_merges;
    char *unk_token;  /* NULL when the model has none */
    int32_t unk_id;   /* -1 when unk_token is not in the vocab (an error only if needed) */

    struct norm_step *steps;
    size_t n_steps;
    int metaspace;  /* the pre-tokenizer is a Metaspace with split=false */
    char *ms_rep;
    size_t ms_rep_len;
    int ms_prepend;  /* 0 never, 1 always, 2 first */

    struct pre_step pre[TOK_PRE_MAX];
    size_t n_pre;
    int byte_level;  /* a ByteLevel pre-tokenizer maps bytes to GPT-2's table */
    int valid_utf8;  /* step 0 replaces ill-formed UTF-8 (byte-level, regex, NFC) */

    struct added_set raw, norm;  /* added tokens with normalized false / true */
    struct added_tok *whole;     /* every added token by its content, for step 1's section check */
    size_t n_whole;

    const char **piece;  /* id -> piece string (vocab or added token), NULL if none */
    uint32_t *piece_len;

    int32_t *bos;  /* ids in front of $A in the "single" template */
    size_t n_bos;
    int vocab_size;

    /* Decoding (tok_decode): the file's decoder steps, or why it is refused. */
    struct dec_step *dec;
    size_t n_dec;
    int dec_join_space;     /* no decoder: pieces joined by ' ', as the library does */
    char *dec_refused;      /* non-NULL: the decoder is not supported, and why */
    unsigned char *special; /* per id: an added token with special = true */
};

static int parse_decoder(struct tok *t, json_t *root, struct sv_err *err);
static void dec_free(struct tok *t);

static int fail(const struct tok *t, struct sv_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Every message names the file, as the convention asks. */
static int fail(const struct tok *t, struct sv_err *err, int code, const char *fmt, ...) {
    if (!err)
        return code;
    char what[SV_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return sv_err_set(err, code, "tokenizer '%s': %s", t->path, what);
}

static int quote_len(size_t n) {
    return n > TOK_QUOTE_MAX ? TOK_QUOTE_MAX : (int)n;
}

/* ---- hash tables ------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;  /* FNV-1a: pieces are short */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key) {
    key *= 0x9e3779b97f4a7c15ull;
    return key ^ (key >> 31);
}

static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    return cap;
}

static int32_t vocab_find(const struct tok *t, const char *s, size_t n) {
    if (!t->vocab)
        return -1;
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        const struct vocab_slot *v = &t->vocab[i];
        if (!v->s)
            return -1;
        if (v->len == n && memcmp(v->s, s, n) == 0)
            return v->id;
    }
}

/* A later duplicate of a piece replaces the earlier one, as a JSON object
 * would; jansson already keeps only the last, so this is belt and braces. */
static void vocab_put(struct tok *t, const char *s, size_t n, int32_t id) {
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        struct vocab_slot *v = &t->vocab[i];
        if (!v->s) {
            v->s = s;
            v->len = (uint32_t)n;
            v->id = id;
            t->n_vocab++;
            return;
        }
        if (v->len == n && memcmp(v->s, s, n) == 0) {
            v->id = id;
            return;
        }
    }
}

static const struct merge_slot *merge_find(const struct tok *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->new_id < 0)
            return NULL;
        if (m->key == key)
            return m;
    }
}

/* The library collects merges into a hash map, so when a pair is listed twice
 * the later entry (its rank and result) wins. */
static void merge_put(struct tok *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = hash_pair(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        struct merge_slot *m = &t->merges[i];
        if (m->new_id < 0 || m->key == key) {
            if (m->new_id < 0)
                t->n_merges++;
            m->key = key;
            m->rank = rank;
            m->new_id = new_id;
            return;
        }
    }
}

/* ---- loading ---------------------------------------------------------- */

static const char *type_of(json_t *obj) {
    return json_string_value(json_object_get(obj, "type"));
}

/* Copies a JSON string (which may hold NUL bytes) into a new buffer. */
static char *dup_json_string(json_t *s, size_t *ret_len) {
    size_t n = json_string_length(s);
    char *p = malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, json_string_value(s), n);
    p[n] = '\0';
    *ret_len = n;
    return p;
}

static int add_step(struct tok *t, enum norm_kind kind, json_t *pat, json_t *with, struct sv_err *err) {
    struct norm_step *st = realloc(t->steps, (t->n_steps + 1) * sizeof *st);
    if (!st)
        return fail(t, err, -ENOMEM, "out of memory");
    t->steps = st;
    st = &t->steps[t->n_steps];
    memset(st, 0, sizeof *st);
    st->kind = kind;
    if (pat && !(st->pat = dup_json_string(pat, &st->pat_len)))
        return fail(t, err, -ENOMEM, "out of memory");
    t->n_steps++;  /* counted now so tok_free releases a half-built step */
    if (!(st->with = dup_json_string(with, &st->with_len)))
        return fail(t, err, -ENOMEM, "out of memory");
    return 0;
}

static int parse_normalizer(struct tok *t, json_t *n, struct sv_err *err) {
    if (!n || json_is_null(n))
        return 0;
    const char *type = type_of(n);
    if (!json_is_object(n) || !type)
        return fail(t, err, -EINVAL, "normalizer has no 'type'");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return fail(t, err, -EINVAL, "normalizer Sequence has no 'normalizers' array");
        size_t i;
        json_t *sub;
        json_array_foreach(list, i, sub) {
            int r = parse_normalizer(t, sub, err);
            if (r < 0)
                return r;
        }
        return 0;
    }
    if (strcmp(type, "Prepend") == 0) {
        json_t *p = json_object_get(n, "prepend");
        if (!json_is_string(p))
            return fail(t, err, -EINVAL, "normalizer Prepend has no 'prepend' string");
        return add_step(t, NORM_PREPEND, NULL, p, err);
    }
    if (strcmp(type, "Replace") == 0) {
        json_t *pattern = json_object_get(n, "pattern");
        json_t *content = json_object_get(n, "content");
        json_t *s = json_object_get(pattern, "String");
        if (json_object_get(pattern, "Regex"))
            return fail(t, err, -ENOTSUP, "normalizer Replace with a Regex pattern not supported");
        if (!json_is_string(s) || !json_is_string(content))
            return fail(t, err, -EINVAL, "normalizer Replace needs pattern.String and content strings");
        if (json_string_length(s) == 0)
            return fail(t, err, -EINVAL, "normalizer Replace has an empty pattern");
        return add_step(t, NORM_REPLACE, s, content, err);
    }
    if (strcmp(type, "NFC") == 0) {
        struct norm_step *st = realloc(t->steps, (t->n_steps + 1) * sizeof *st);
        if (!st)
            return fail(t, err, -ENOMEM, "out of memory");
        t->steps = st;
        memset(&t->steps[t->n_steps], 0, sizeof *st);
        t->steps[t->n_steps++].kind = NORM_NFC;
        t->valid_utf8 = 1;
        return 0;
    }
    return fail(t, err, -ENOTSUP, "normalizer type '%s' not supported", type);
}

static int parse_split(struct tok *t, json_t *p, size_t idx, struct sv_err *err) {
    json_t *pattern = json_object_get(p, "pattern");
    json_t *re = json_object_get(pattern, "Regex"), *str = json_object_get(pattern, "String");
    if (!json_is_string(re) && !json_is_string(str))
        return fail(t, err, -EINVAL, "pre_tokenizer %zu (Split) has no pattern.Regex or pattern.String string", idx);
    const char *beh = json_string_value(json_object_get(p, "behavior"));
    if (!beh)
        return fail(t, err, -EINVAL, "pre_tokenizer %zu (Split) has no 'behavior'", idx);
    int invert = json_is_true(json_object_get(p, "invert"));
    enum pretok_behavior b;
    /* As the library's NormalizedString::split: Isolated keeps every piece
     * whichever side invert puts the matches on; Removed drops the matches,
     * or with invert the gaps. */
    if (strcmp(beh, "Isolated") == 0)
        b = PRETOK_ISOLATED;
    else if (strcmp(beh, "Removed") == 0)
        b = invert ? PRETOK_MATCHES_ONLY : PRETOK_REMOVED;
    else
        return fail(t, err, -ENOTSUP, "pre_tokenizer %zu (Split) behavior '%s' not supported", idx, beh);
    char what[SV_ERR_MSG_MAX / 2];
    snprintf(what, sizeof what, "tokenizer '%.200s': pre_tokenizer %zu (Split)", t->path, idx);
    json_t *pat = re ? re : str;
    struct pre_step *st = &t->pre[t->n_pre];
    memset(st, 0, sizeof *st);
    st->kind = PRE_SPLIT;
    int r = pretok_split_new(&st->sp, json_string_value(pat), json_string_length(pat), !re, b, what, err);
    if (r < 0)
        return r;
    t->n_pre++;
    return 0;
}

static int parse_bytelevel(struct tok *t, json_t *p, size_t idx, struct sv_err *err) {
    json_t *aps = json_object_get(p, "add_prefix_space");
    /* The Rust library defaults it to true, tokenizers.js to false; real
     * files always say. */
    if (!json_is_boolean(aps))
        return fail(t, err, -EINVAL, "pre_tokenizer %zu (ByteLevel) has no boolean 'add_prefix_space'", idx);
    json_t *ur = json_object_get(p, "use_regex");
    struct pre_step *st = &t->pre[t->n_pre];
    memset(st, 0, sizeof *st);
    st->kind = PRE_BYTELEVEL;
    st->add_prefix_space = json_is_true(aps);
    if (!json_is_false(ur)) {  /* both default to true */
        char what[SV_ERR_MSG_MAX / 2];
        snprintf(what, sizeof what, "tokenizer '%.200s': pre_tokenizer %zu (ByteLevel)", t->path, idx);
        int r = pretok_split_new_gpt2(&st->sp, what, err);
        if (r < 0)
            return r;
    }
    t->n_pre++;
    t->byte_level = 1;
    return 0;
}

/* Split and ByteLevel, alone or in a (nested) Sequence, in order. */
static int parse_pre_steps(struct tok *t, json_t *p, struct sv_err *err) {
    const char *type = type_of(p);
    if (!json_is_object(p) || !type)
        return fail(t, err, -EINVAL, "pre_tokenizer %zu has no 'type'", t->n_pre);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return fail(t, err, -EINVAL, "pre_tokenizer Sequence has no 'pretokenizers' array");
        size_t i;
        json_t *sub;
        json_array_foreach(list, i, sub) {
            int r = parse_pre_steps(t, sub, err);
            if (r < 0)
                return r;
        }
        return 0;
    }
    if (t->n_pre == TOK_PRE_MAX)
        return fail(t, err, -E2BIG, "pre_tokenizer has more than %d steps", TOK_PRE_MAX);
    if (strcmp(type, "Split") == 0)
        return parse_split(t, p, t->n_pre, err);
    if (strcmp(type, "ByteLevel") == 0)
        return parse_bytelevel(t, p, t->n_pre, err);
    if (strcmp(type, "Metaspace") == 0)
        return fail(t, err, -ENOTSUP, "pre_tokenizer Metaspace inside a Sequence not supported");
    return fail(t, err, -ENOTSUP, "pre_tokenizer type '%s' not supported", type);
}

static int parse_pretokenizer(struct tok *t, json_t *p, struct sv_err *err) {
    if (!p || json_is_null(p))
        return 0;
    const char *type = type_of(p);
    if (!json_is_object(p) || !type)
        return fail(t, err, -EINVAL, "pre_tokenizer has no 'type'");
    if (strcmp(type, "Metaspace") != 0) {
        int r = parse_pre_steps(t, p, err);
        if (r == 0 && t->n_pre)
            t->valid_utf8 = 1;  /* PCRE2 and the byte table need code points */
        return r;
    }

    json_t *rep = json_object_get(p, "replacement");
    if (!json_is_string(rep) || json_string_length(rep) == 0)
        return fail(t, err, -EINVAL, "pre_tokenizer Metaspace has no 'replacement' string");
    /* The library defaults split to true; splitting at every replacement
     * character would turn one word into many, which we do not do. */
    json_t *split = json_object_get(p, "split");
    if (!json_is_false(split))
        return fail(t, err, -ENOTSUP, "pre_tokenizer Metaspace with split=true not supported");
    json_t *scheme = json_object_get(p, "prepend_scheme");
    if (json_is_string(scheme)) {
        const char *s = json_string_value(scheme);
        if (strcmp(s, "always") == 0)
            t->ms_prepend = 1;
        else if (strcmp(s, "first") == 0)
            t->ms_prepend = 2;  /* only the section at the start of the text */
        else if (strcmp(s, "never") == 0)
            t->ms_prepend = 0;
        else
            return fail(t, err, -ENOTSUP, "pre_tokenizer Metaspace prepend_scheme '%s' not supported", s);
    } else {
        /* Files written before prepend_scheme existed say add_prefix_space. */
        t->ms_prepend = json_is_true(json_object_get(p, "add_prefix_space"));
    }
    if (!(t->ms_rep = dup_json_string(rep, &t->ms_rep_len)))
        return fail(t, err, -ENOMEM, "out of memory");
    t->metaspace = 1;
    return 0;
}

/* A merge is "a b" (split at the one space) or ["a", "b"]. */
static int merge_parts(json_t *m, const char **a, size_t *alen, const char **b, size_t *blen) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return -1;
        *a = s;
        *alen = (size_t)(sp - s);
        *b = sp + 1;
        *blen = n - *alen - 1;
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

static int parse_merges(struct tok *t, json_t *merges, struct sv_err *err) {
    size_t n = json_array_size(merges);
    if (n > INT32_MAX)
        return fail(t, err, -E2BIG, "model has %zu merges", n);
    t->merge_mask = table_size(n) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges)
        return fail(t, err, -ENOMEM, "out of memory for %zu merges", n);
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].new_id = -1;

    char *joined = NULL;
    size_t joined_cap = 0;
    int r = 0;
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t alen, blen;
        if (merge_parts(m, &a, &alen, &b, &blen) < 0) {
            r = fail(t, err, -EINVAL, "merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
            goto out;
        }
        int32_t ia = vocab_find(t, a, alen), ib = vocab_find(t, b, blen);
        if (ia < 0 || ib < 0) {
            const char *bad = ia < 0 ? a : b;
            size_t badlen = ia < 0 ? alen : blen;
            r = fail(t, err, -EINVAL, "merge %zu ('%.*s' '%.*s'): piece '%.*s' is not in the vocab", i,
                     quote_len(alen), a, quote_len(blen), b, quote_len(badlen), bad);
            goto out;
        }
        if (alen + blen + 1 > joined_cap) {
            size_t cap = 2 * (alen + blen) + 16;
            char *p = realloc(joined, cap);
            if (!p) {
                r = fail(t, err, -ENOMEM, "out of memory");
                goto out;
            }
            joined = p;
            joined_cap = cap;
        }
        memcpy(joined, a, alen);
        memcpy(joined + alen, b, blen);
        int32_t inew = vocab_find(t, joined, alen + blen);
        if (inew < 0) {
            r = fail(t, err, -EINVAL, "merge %zu ('%.*s' '%.*s'): merged piece '%.*s' is not in the vocab", i,
                     quote_len(alen), a, quote_len(blen), b, quote_len(alen + blen), joined);
            goto out;
        }
        merge_put(t, ia, ib, (uint32_t)i, inew);
    }
out:
    free(joined);
    return r;
}

static int parse_vocab(struct tok *t, json_t *vocab, struct sv_err *err) {
    const char *key;
    size_t klen, total = 0;
    json_t *v;
    json_object_keylen_foreach(vocab, key, klen, v) {
        if (klen > UINT32_MAX || total + klen + 1 < total)
            return fail(t, err, -E2BIG, "vocab pieces too long");
        total += klen + 1;
    }
    size_t n = json_object_size(vocab);
    t->arena = malloc(total ? total : 1);
    t->vocab_mask = table_size(n) - 1;
    t->vocab = calloc(t->vocab_mask + 1, sizeof *t->vocab);
    if (!t->arena || !t->vocab)
        return fail(t, err, -ENOMEM, "out of memory for %zu vocab pieces", n);

    char *p = t->arena;
    int32_t max_id = -1;
    json_object_keylen_foreach(vocab, key, klen, v) {
        if (!json_is_integer(v))
            return fail(t, err, -EINVAL, "vocab piece '%.*s' has a non-integer id", quote_len(klen), key);
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= INT32_MAX)
            return fail(t, err, -EINVAL, "vocab piece '%.*s' has id %lld, outside [0, %d)", quote_len(klen),
                        key, (long long)id, INT32_MAX);
        memcpy(p, key, klen);
        p[klen] = '\0';
        vocab_put(t, p, klen, (int32_t)id);
        p += klen + 1;
        if (id > max_id)
            max_id = (int32_t)id;
    }
    t->vocab_size = max_id + 1;
    return 0;
}

static int parse_model(struct tok *t, json_t *model, struct sv_err *err) {
    if (!json_is_object(model))
        return fail(t, err, -EINVAL, "no 'model' object");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    const char *type = type_of(model);
    /* Old files omit the type; the library then recognizes BPE by its merges. */
    if (!type && !merges)
        return fail(t, err, -EINVAL, "model has no 'type'");
    if (type && strcmp(type, "BPE") != 0)
        return fail(t, err, -ENOTSUP, "model type '%s' not supported (only SentencePiece-style BPE)", type);
    if (!json_is_object(vocab))
        return fail(t, err, -EINVAL, "model has no 'vocab' object");
    if (!json_is_array(merges))
        return fail(t, err, -EINVAL, "model has no 'merges' array");

    /* Dropout makes tokenization random; 0 is the same as none. */
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
        return fail(t, err, -ENOTSUP, "model dropout %g not supported", json_number_value(dropout));
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        json_t *a = json_object_get(model, affixes[i]);
        if (a && !json_is_null(a) && !(json_is_string(a) && json_string_length(a) == 0))
            return fail(t, err, -ENOTSUP, "model %s not supported", affixes[i]);
    }
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

    int r = parse_vocab(t, vocab, err);
    if (r < 0)
        return r;
    r = parse_merges(t, merges, err);
    if (r < 0)
        return r;

    json_t *unk = json_object_get(model, "unk_token");
    t->unk_id = -1;
    if (json_is_string(unk)) {
        size_t n;
        if (!(t->unk_token = dup_json_string(unk, &n)))
            return fail(t, err, -ENOMEM, "out of memory");
        t->unk_id = vocab_find(t, t->unk_token, n);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = vocab_find(t, name, 6);
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        t->ascii_id[c] = vocab_find(t, &ch, 1);
    }
    return 0;
}

/* The id(s) of one special token of the template: from the post-processor's
 * own table (what the library uses), else added_tokens, else the vocab. */
static int special_ids(struct tok *t, json_t *root, json_t *pp, const char *name, struct sv_err *err) {
    json_t *ids = json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_int_t one = -1;
    if (!json_is_array(ids)) {
        size_t i;
        json_t *at;
        json_array_foreach(json_object_get(root, "added_tokens"), i, at) {
            const char *c = json_string_value(json_object_get(at, "content"));
            if (c && strcmp(c, name) == 0 && json_is_integer(json_object_get(at, "id")))
                one = json_integer_value(json_object_get(at, "id"));
        }
        if (one < 0)
            one = vocab_find(t, name, strlen(name));
        if (one < 0)
            return fail(t, err, -EINVAL, "post_processor special token '%s' has no id", name);
    }
    size_t n = json_is_array(ids) ? json_array_size(ids) : 1;
    if (n > 64)
        return fail(t, err, -EINVAL, "post_processor special token '%s' has %zu ids", name, n);
    int32_t *b = realloc(t->bos, (t->n_bos + n + 1) * sizeof *b);
    if (!b)
        return fail(t, err, -ENOMEM, "out of memory");
    t->bos = b;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_array(ids) ? json_array_get(ids, i) : NULL;
        json_int_t id = v ? (json_is_integer(v) ? json_integer_value(v) : -1) : one;
        if (id < 0 || id >= INT32_MAX)
            return fail(t, err, -EINVAL, "post_processor special token '%s' has a bad id", name);
        t->bos[t->n_bos++] = (int32_t)id;
    }
    return 0;
}

/* Only the special tokens in front of $A matter: the API adds a BOS, never an
 * EOS, and sequence B is never used. */
static int parse_template(struct tok *t, json_t *root, json_t *pp, struct sv_err *err) {
    json_t *single = json_object_get(pp, "single");
    if (!json_is_array(single))
        return fail(t, err, -EINVAL, "post_processor TemplateProcessing has no 'single' template");
    size_t i;
    json_t *piece;
    json_array_foreach(single, i, piece) {
        if (json_object_get(piece, "Sequence"))
            return 0;
        const char *name = json_string_value(json_object_get(json_object_get(piece, "SpecialToken"), "id"));
        if (!name)
            return fail(t, err, -EINVAL, "post_processor template item %zu is neither SpecialToken nor Sequence",
                        i);
        int r = special_ids(t, root, pp, name, err);
        if (r < 0)
            return r;
    }
    return fail(t, err, -EINVAL, "post_processor 'single' template has no Sequence");
}

/* ByteLevel only trims offsets, which ids do not carry; a Sequence runs its
 * processors in order, so each TemplateProcessing in it adds its tokens. */
static int parse_post_one(struct tok *t, json_t *root, json_t *pp, int depth, struct sv_err *err) {
    const char *type = type_of(pp);
    if (!json_is_object(pp) || !type)
        return fail(t, err, -EINVAL, "post_processor has no 'type'");
    if (strcmp(type, "ByteLevel") == 0)
        return 0;
    if (strcmp(type, "TemplateProcessing") == 0)
        return parse_template(t, root, pp, err);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(pp, "processors");
        if (!json_is_array(list))
            return fail(t, err, -EINVAL, "post_processor Sequence has no 'processors' array");
        if (depth > 4)
            return fail(t, err, -EINVAL, "post_processor Sequences nested too deep");
        size_t i;
        json_t *sub;
        json_array_foreach(list, i, sub) {
            int r = parse_post_one(t, root, sub, depth + 1, err);
            if (r < 0)
                return r;
        }
        return 0;
    }
    return fail(t, err, -ENOTSUP, "post_processor type '%s' not supported", type);
}

static int parse_postprocessor(struct tok *t, json_t *root, struct sv_err *err) {
    json_t *pp = json_object_get(root, "post_processor");
    if (!pp || json_is_null(pp))
        return 0;
    return parse_post_one(t, root, pp, 0, err);
}

/* ---- added tokens ----------------------------------------------------- */

static int normalize(const struct tok *t, const char *text, size_t len, char **ret, size_t *ret_len);

static int set_push(struct added_tok **a, size_t *n, size_t *cap, const char *s, size_t len, int32_t id,
                    int lstrip, int rstrip, uint32_t order, int raw) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 16;
        struct added_tok *p = realloc(*a, c * sizeof *p);
        if (!p)
            return -ENOMEM;
        *a = p;
        *cap = c;
    }
    struct added_tok *x = &(*a)[*n];
    if (!(x->s = malloc(len + 1)))
        return -ENOMEM;
    memcpy(x->s, s, len);
    x->s[len] = '\0';
    x->len = len;
    x->id = id;
    x->lstrip = lstrip;
    x->rstrip = rstrip;
    x->order = order;
    x->raw = raw;
    (*n)++;
    return 0;
}

/* Matching order: by first byte, then longest first; among equal contents
 * the later entry first, since the later one wins (a map keyed by content). */
static int added_cmp(const void *pa, const void *pb) {
    const struct added_tok *a = pa, *b = pb;
    unsigned char fa = (unsigned char)a->s[0], fb = (unsigned char)b->s[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    int c = memcmp(a->s, b->s, a->len);
    if (c)
        return c;
    return a->order > b->order ? -1 : a->order < b->order;
}

/* Lookup order for whole_find: by length, then bytes, later entry first. */
static int whole_cmp(const void *pa, const void *pb) {
    const struct added_tok *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    int c = memcmp(a->s, b->s, a->len);
    if (c)
        return c;
    return a->order > b->order ? -1 : a->order < b->order;
}

/* Sorts, drops the earlier duplicates of a content, and indexes by first byte. */
static void set_finish(struct added_set *set) {
    if (set->n)
        qsort(set->a, set->n, sizeof *set->a, added_cmp);
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (k && set->a[k - 1].len == set->a[i].len && memcmp(set->a[k - 1].s, set->a[i].s, set->a[i].len) == 0) {
            free(set->a[i].s);
            continue;
        }
        set->a[k++] = set->a[i];
    }
    set->n = k;
    memset(set->lo, 0, sizeof set->lo);
    memset(set->hi, 0, sizeof set->hi);
    for (size_t i = 0; i < set->n; i++) {
        unsigned char b = (unsigned char)set->a[i].s[0];
        if (set->lo[b] == set->hi[b])
            set->lo[b] = (uint32_t)i;
        set->hi[b] = (uint32_t)i + 1;
    }
}

static void set_free(struct added_tok *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(a[i].s);
    free(a);
}

static int parse_added(struct tok *t, json_t *root, struct sv_err *err) {
    json_t *list = json_object_get(root, "added_tokens");
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return fail(t, err, -EINVAL, "'added_tokens' is not an array");
    size_t cap_raw = 0, cap_norm = 0, cap_whole = 0, i;
    json_t *at;
    json_array_foreach(list, i, at) {
        json_t *c = json_object_get(at, "content"), *id = json_object_get(at, "id");
        if (!json_is_string(c) || !json_is_integer(id))
            return fail(t, err, -EINVAL, "added token %zu has no string 'content' and integer 'id'", i);
        const char *s = json_string_value(c);
        size_t len = json_string_length(c);
        json_int_t v = json_integer_value(id);
        if (v < 0 || v >= INT32_MAX)
            return fail(t, err, -EINVAL, "added token '%.*s' has id %lld, outside [0, %d)", quote_len(len), s,
                        (long long)v, INT32_MAX);
        /* The embedding table covers added tokens past the model vocab. */
        if (v >= t->vocab_size)
            t->vocab_size = (int)v + 1;
        if (json_is_true(json_object_get(at, "single_word")))
            return fail(t, err, -ENOTSUP, "added token '%.*s': single_word=true not supported", quote_len(len), s);
        int special = json_is_true(json_object_get(at, "special"));
        json_t *nj = json_object_get(at, "normalized");
        int normalized = json_is_boolean(nj) ? json_is_true(nj) : !special;
        int lstrip = json_is_true(json_object_get(at, "lstrip")), rstrip = json_is_true(json_object_get(at, "rstrip"));
        if (len == 0)
            continue;  /* matches nothing */
        int r = set_push(&t->whole, &t->n_whole, &cap_whole, s, len, (int32_t)v, 0, 0, (uint32_t)i, 1);
        if (r == 0 && (!normalized || t->n_steps == 0)) {
            r = set_push(&t->raw.a, &t->raw.n, &cap_raw, s, len, (int32_t)v, lstrip, rstrip, (uint32_t)i, 1);
        } else if (r == 0) {
            /* Matched in normalized text, so by its normalized form. */
            char *ns = NULL;
            size_t nn = 0;
            r = normalize(t, s, len, &ns, &nn);
            if (r == 0 && nn)
                r = set_push(&t->norm.a, &t->norm.n, &cap_norm, ns, nn, (int32_t)v, lstrip, rstrip, (uint32_t)i, 0);
            if (r == 0 && nn)
                r = set_push(&t->whole, &t->n_whole, &cap_whole, ns, nn, (int32_t)v, 0, 0, (uint32_t)i, 0);
            free(ns);
        }
        if (r < 0)
            return fail(t, err, r, "out of memory for added token %zu", i);
    }
    set_finish(&t->raw);
    set_finish(&t->norm);
    /* whole keeps duplicates' raw flags for the piece table; sort only. */
    if (t->n_whole)
        qsort(t->whole, t->n_whole, sizeof *t->whole, whole_cmp);
    return 0;
}

/* The id of the added token whose content is exactly s[0..n), or -1. */
static int32_t whole_find(const struct tok *t, const char *s, size_t n) {
    size_t lo = 0, hi = t->n_whole;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct added_tok *a = &t->whole[mid];
        int c = a->len != n ? (a->len < n ? -1 : 1) : memcmp(a->s, s, n);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* lo is the first entry >= s, i.e. the latest of equal contents. */
    if (lo < t->n_whole && t->whole[lo].len == n && memcmp(t->whole[lo].s, s, n) == 0)
        return t->whole[lo].id;
    return -1;
}

/* id -> piece: the vocab, then the added tokens' contents over it. */
static int build_pieces(struct tok *t, struct sv_err *err) {
    size_t n = (size_t)t->vocab_size;
    t->piece = calloc(n ? n : 1, sizeof *t->piece);
    t->piece_len = calloc(n ? n : 1, sizeof *t->piece_len);
    if (!t->piece || !t->piece_len)
        return fail(t, err, -ENOMEM, "out of memory for %zu pieces", n);
    for (size_t i = 0; t->vocab && i <= t->vocab_mask; i++) {
        const struct vocab_slot *v = &t->vocab[i];
        if (v->s && v->id >= 0 && (size_t)v->id < n) {
            t->piece[v->id] = v->s;
            t->piece_len[v->id] = v->len;
        }
    }
    /* The latest entry for an id wins, as in the library's id -> token map. */
    uint32_t *best = calloc(n ? n : 1, sizeof *best);
    if (!best)
        return fail(t, err, -ENOMEM, "out of memory for %zu pieces", n);
    for (size_t i = 0; i < t->n_whole; i++) {
        const struct added_tok *a = &t->whole[i];
        if (!a->raw || (t->piece[a->id] && best[a->id] > a->order + 1))
            continue;
        t->piece[a->id] = a->s;
        t->piece_len[a->id] = (uint32_t)a->len;
        best[a->id] = a->order + 1;
    }
    free(best);
    return 0;
}

static int load_json(struct tok *t, json_t **ret, struct sv_err *err) {
    FILE *f = fopen(t->path, "rb");
    if (!f)
        return fail(t, err, -errno, "cannot open: %s", strerror(errno));
    struct stat st;
    int r = 0;
    if (fstat(fileno(f), &st) < 0) {
        r = fail(t, err, -errno, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if ((long long)st.st_size > TOK_FILE_MAX) {
        r = fail(t, err, -E2BIG, "file of %lld bytes is larger than %lld", (long long)st.st_size, TOK_FILE_MAX);
        goto out;
    }
    json_error_t jerr;
    json_t *root = json_loadf(f, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        r = fail(t, err, -EINVAL, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        r = fail(t, err, -EINVAL, "not a JSON object");
        goto out;
    }
    *ret = root;
out:
    fclose(f);
    return r;
}

int tok_new(struct tok **ret, const char *tokenizer_json_path, struct sv_err *err) {
    if (!ret || !tokenizer_json_path)
        return sv_err_set(err, -EINVAL, "tok_new: no path");
    struct tok *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(tokenizer_json_path))) {
        free(t);
        return sv_err_set(err, -ENOMEM, "tokenizer '%s': out of memory", tokenizer_json_path);
    }
    t->unk_id = -1;
    json_t *root = NULL;
    int r = load_json(t, &root, err);
    if (r < 0)
        goto out;
    r = parse_model(t, json_object_get(root, "model"), err);
    if (r < 0)
        goto out;
    r = parse_normalizer(t, json_object_get(root, "normalizer"), err);
    if (r < 0)
        goto out;
    r = parse_pretokenizer(t, json_object_get(root, "pre_tokenizer"), err);
    if (r < 0)
        goto out;
    r = parse_added(t, root, err);  /* after the normalizer: normalized tokens are matched by their normalized form */
    if (r < 0)
        goto out;
    r = parse_postprocessor(t, root, err);
    if (r < 0)
        goto out;
    r = build_pieces(t, err);
    if (r < 0)
        goto out;
    r = parse_decoder(t, root, err);
    if (r < 0)
        goto out;
    /* A BOS id must name a row of the embedding table like any other id
     * (found by fuzzing: post_processor ids were taken as given). */
    for (size_t b = 0; b < t->n_bos && r == 0; b++)
        if (t->bos[b] >= t->vocab_size)
            r = fail(t, err, -EINVAL, "post_processor BOS id %d is outside the vocabulary (%d ids)", (int)t->bos[b],
                     t->vocab_size);
out:
    json_decref(root);
    if (r < 0) {
        tok_free(t);
        return r;
    }
    *ret = t;
    return 0;
}

void tok_free(struct tok *t) {
    if (!t)
        return;
    for (size_t i = 0; i < t->n_steps; i++) {
        free(t->steps[i].pat);
        free(t->steps[i].with);
    }
    free(t->steps);
    for (size_t i = 0; i < t->n_pre; i++)
        pretok_split_free(t->pre[i].sp);
    set_free(t->raw.a, t->raw.n);
    set_free(t->norm.a, t->norm.n);
    set_free(t->whole, t->n_whole);
    dec_free(t);
    free(t->piece);
    free(t->piece_len);
    free(t->ms_rep);
    free(t->unk_token);
    free(t->bos);
    free(t->merges);
    free(t->vocab);
    free(t->arena);
    free(t->path);
    free(t);
}

int tok_vocab_size(const struct tok *t) {
    return t->vocab_size;
}

int tok_bos_id(const struct tok *t) {
    return t->n_bos ? t->bos[0] : -1;
}

/* ---- encoding --------------------------------------------------------- */

/* First occurrence of pat (non-empty) in [p, end), or NULL; memmem is a GNU
 * extension, and the patterns here are short. */
static const char *find(const char *p, const char *end, const char *pat, size_t pat_len) {
    while ((size_t)(end - p) >= pat_len) {
        const char *c = memchr(p, pat[0], (size_t)(end - p) - pat_len + 1);
        if (!c)
            return NULL;
        if (memcmp(c, pat, pat_len) == 0)
            return c;
        p = c + 1;
    }
    return NULL;
}

/* Replaces every non-overlapping occurrence of pat, left to right, as the
 * library's Replace does with a String pattern. Takes ownership of *s. */
static int replace_all(char **s, size_t *n, const char *pat, size_t pat_len, const char *with, size_t with_len) {
    size_t count = 0;
    for (const char *p = *s, *end = *s + *n; (p = find(p, end, pat, pat_len)); p += pat_len)
        count++;
    if (count == 0)
        return 0;
    size_t out_len = *n - count * pat_len;
    if (with_len && count > (TOK_TEXT_MAX - out_len) / with_len)
        return -E2BIG;
    out_len += count * with_len;
    char *out = malloc(out_len + 1);
    if (!out)
        return -ENOMEM;
    const char *p = *s, *end = *s + *n;
    char *o = out;
    for (const char *hit; (hit = find(p, end, pat, pat_len)); p = hit + pat_len) {
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        memcpy(o, with, with_len);
        o += with_len;
    }
    memcpy(o, p, (size_t)(end - p));
    free(*s);
    *s = out;
    *n = out_len;
    return 0;
}

static int prepend(char **s, size_t *n, const char *with, size_t with_len) {
    if (*n == 0 || with_len == 0)  /* the library never prepends to an empty text */
        return 0;
    if (with_len > TOK_TEXT_MAX - *n)
        return -E2BIG;
    char *out = malloc(*n + with_len + 1);
    if (!out)
        return -ENOMEM;
    memcpy(out, with, with_len);
    memcpy(out + with_len, *s, *n);
    free(*s);
    *s = out;
    *n += with_len;
    return 0;
}

/* NFC, line by line: '\n' is a starter that composes with nothing, so
 * NFC(a "\n" b) = NFC(a) "\n" NFC(b); and a line with no code point from
 * U+0300 up (lead bytes below 0xCC) is already NFC, since every character
 * below U+0300 has NFC_Quick_Check=Yes and combining class 0. So only lines
 * that can change go through utf8proc. */
static int nfc(char **s, size_t *n) {
    const char *p = *s, *end = *s + *n;
    char *out = NULL;
    size_t k = 0, cap = 0;
    int r = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl + 1 : end;
        int plain = 1;
        for (const char *q = p; q < eol && plain; q++)
            plain = (unsigned char)*q < 0xcc;
        utf8proc_uint8_t *mapped = NULL;
        const char *src = p;
        size_t m = (size_t)(eol - p);
        if (!plain) {
            utf8proc_ssize_t got = utf8proc_map((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)m, &mapped,
                                                UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (got < 0) {  /* only NOMEM or invalid UTF-8, which step 0 rules out */
                r = got == UTF8PROC_ERROR_NOMEM ? -ENOMEM : -EILSEQ;
                break;
            }
            src = (const char *)mapped;
            m = (size_t)got;
        }
        if (!plain || out) {  /* nothing to copy while every line so far is unchanged */
            if (!out) {
                cap = *n + m + 64;
                if (!(out = malloc(cap))) {
                    free(mapped);
                    r = -ENOMEM;
                    break;
                }
                k = (size_t)(p - *s);
                memcpy(out, *s, k);
            }
            if (k + m > TOK_TEXT_MAX) {
                free(mapped);
                r = -E2BIG;
                break;
            }
            if (k + m + 1 > cap) {
                size_t c = 2 * (k + m) + 64;
                char *o = realloc(out, c);
                if (!o) {
                    free(mapped);
                    r = -ENOMEM;
                    break;
                }
                out = o;
                cap = c;
            }
            memcpy(out + k, src, m);
            k += m;
        }
        free(mapped);
        p = eol;
    }
    if (r < 0) {
        free(out);
        return r;
    }
    if (out) {
        free(*s);
        *s = out;
        *n = k;
    }
    return 0;
}

/* The normalizer steps on one section; *ret is malloc'ed. */
static int normalize(const struct tok *t, const char *text, size_t len, char **ret, size_t *ret_len) {
    if (len > TOK_TEXT_MAX)
        return -E2BIG;
    char *s = malloc(len + 1);
    if (!s)
        return -ENOMEM;
    if (len)
        memcpy(s, text, len);
    size_t n = len;
    int r = 0;
    for (size_t i = 0; i < t->n_steps && r == 0; i++) {
        const struct norm_step *st = &t->steps[i];
        if (st->kind == NORM_PREPEND)
            r = prepend(&s, &n, st->with, st->with_len);
        else if (st->kind == NORM_REPLACE)
            r = replace_all(&s, &n, st->pat, st->pat_len, st->with, st->with_len);
        else
            r = nfc(&s, &n);
    }
    if (r < 0) {
        free(s);
        return r;
    }
    *ret = s;
    *ret_len = n;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s (Unicode 6.0 table 3-7:
 * no overlongs, no surrogates, nothing past U+10FFFF), or 0 if s[0] does not
 * start one. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xc2 || c > 0xf4)
        return 0;
    size_t need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n < need)
        return 0;
    unsigned lo = 0x80, hi = 0xbf;  /* allowed range of the second byte */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return need;
}

/* The word being merged: symbols in a doubly linked list over arrays, so a
 * merge is O(1) and a symbol keeps its index (its heap position key). */
struct word {
    int32_t *id;
    int32_t *prev, *next;  /* -1 at the ends */
    uint32_t *len;         /* bytes covered; 0 once merged into its left neighbour */
    size_t n;
};

static void word_add(struct word *w, int32_t id, uint32_t len) {
    size_t i = w->n++;
    w->id[i] = id;
    w->len[i] = len;
    w->prev[i] = (int32_t)i - 1;
    w->next[i] = -1;
    if (i > 0)
        w->next[i - 1] = (int32_t)i;
}

/* Min-heap entry: key = rank << 32 | left position, so the lowest rank pops
 * first and, among equal ranks, the leftmost. */
struct cand {
    uint64_t key;
    int32_t new_id;
};

struct heap {
    struct cand *a;
    size_t n, cap;
};

static void sift_down(struct heap *h, size_t i) {
    struct cand x = h->a[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->a[c + 1].key < h->a[c].key)
            c++;
        if (h->a[c].key >= x.key)
            break;
        h->a[i] = h->a[c];
        i = c;
    }
    h->a[i] = x;
}

static int heap_push(struct heap *h, uint32_t rank, size_t pos, int32_t new_id) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        struct cand *a = realloc(h->a, cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        h->a = a;
        h->cap = cap;
    }
    struct cand x = {((uint64_t)rank << 32) | pos, new_id};
    size_t i = h->n++;
    while (i > 0 && h->a[(i - 1) / 2].key > x.key) {
        h->a[i] = h->a[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->a[i] = x;
    return 0;
}

static struct cand heap_pop(struct heap *h) {
    struct cand top = h->a[0];
    h->a[0] = h->a[--h->n];
    if (h->n)
        sift_down(h, 0);
    return top;
}

/* Pushes the merge of symbol pos with its right neighbour, if there is one. */
static int push_pair(const struct tok *t, struct heap *h, const struct word *w, int32_t pos) {
    if (pos < 0 || w->next[pos] < 0)
        return 0;
    const struct merge_slot *m = merge_find(t, w->id[pos], w->id[w->next[pos]]);
    return m ? heap_push(h, m->rank, (size_t)pos, m->new_id) : 0;
}

/* h is scratch kept across words (emptied here). */
static int merge_all(const struct tok *t, struct word *w, struct heap *hp) {
    struct heap h = *hp;
    int r = 0;
    h.n = 0;
    /* Start with every adjacent pair that has a merge, heapified in O(n). */
    if (w->n > 1) {
        if (h.cap < w->n) {
            struct cand *a = realloc(h.a, w->n * sizeof *a);
            if (!a)
                return -ENOMEM;
            h.a = a;
            h.cap = w->n;
            *hp = h;
        }
        for (size_t i = 0; i + 1 < w->n; i++) {
            const struct merge_slot *m = merge_find(t, w->id[i], w->id[i + 1]);
            if (m)
                h.a[h.n++] = (struct cand){((uint64_t)m->rank << 32) | i, m->new_id};
        }
        for (size_t i = h.n / 2; i-- > 0;)
            sift_down(&h, i);
    }
    while (h.n > 0) {
        struct cand top = heap_pop(&h);
        int32_t pos = (int32_t)(top.key & 0xffffffffu);
        if (w->len[pos] == 0)
            continue;  /* the left symbol was merged away */
        int32_t right = w->next[pos];
        if (right < 0)
            continue;
        const struct merge_slot *m = merge_find(t, w->id[pos], w->id[right]);
        if (!m || m->new_id != top.new_id)
            continue;  /* stale: the pair here changed since the push */
        w->id[pos] = top.new_id;
        w->len[pos] += w->len[right];
        w->len[right] = 0;
        w->next[pos] = w->next[right];
        if (w->next[pos] >= 0)
            w->prev[w->next[pos]] = pos;
        if ((r = push_pair(t, &h, w, w->prev[pos])) < 0 || (r = push_pair(t, &h, w, pos)) < 0)
            break;
    }
    *hp = h;  /* heap_push may have grown it */
    return r;
}

/* Cuts the normalized text into initial symbols (model.rs merge_word). */
static int split_word(const struct tok *t, const char *s, size_t n, struct word *w, struct sv_err *err) {
    int unk_pending = 0;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t cl = utf8_len(u, n - i);
        int32_t id = -1;
        if (cl == 1)
            id = t->ascii_id[u[0]];
        else if (cl > 1)
            id = vocab_find(t, s + i, cl);
        else
            cl = 1;  /* a stray byte: its own symbol, never in the vocab */
        if (id >= 0) {
            if (unk_pending) {
                word_add(w, t->unk_id, unk_len);
                unk_pending = 0;
            }
            word_add(w, id, (uint32_t)cl);
            i += cl;
            continue;
        }
        if (t->byte_fallback) {
            size_t k = 0;
            while (k < cl && t->byte_id[u[k]] >= 0)
                k++;
            if (k == cl) {
                for (k = 0; k < cl; k++)
                    word_add(w, t->byte_id[u[k]], 1);
                i += cl;
                continue;
            }
        }
        if (t->unk_token) {
            if (t->unk_id < 0)
                return fail(t, err, -EINVAL, "unk_token '%s' is not in the vocab", t->unk_token);
            if (unk_pending && t->fuse_unk) {
                unk_len += (uint32_t)cl;
            } else {
                if (unk_pending)
                    word_add(w, t->unk_id, unk_len);
                unk_pending = 1;
                unk_len = (uint32_t)cl;
            }
        }
        /* Without an unk_token the library drops the character. */
        i += cl;
    }
    if (unk_pending)
        word_add(w, t->unk_id, unk_len);
    return 0;
}

/* Step 0 for files that need code points: each maximal ill-formed
 * subsequence (a bad lead byte, or a good lead byte with fewer continuation
 * bytes than it needs) becomes one U+FFFD. *ret is NULL when s is already
 * well-formed, else a malloc'ed copy. */
static int make_valid_utf8(const char *s, size_t n, char **ret, size_t *ret_n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t cl = utf8_len(u + i, n - i);
        if (!cl)
            break;
        i += cl;
    }
    *ret = NULL;
    if (i == n)
        return 0;
    if (n > TOK_TEXT_MAX / 3)
        return -E2BIG;
    char *out = malloc(3 * n + 1);
    if (!out)
        return -ENOMEM;
    memcpy(out, s, i);
    size_t k = i;
    while (i < n) {
        size_t cl = utf8_len(u + i, n - i);
        if (cl) {
            memcpy(out + k, s + i, cl);
            k += cl;
            i += cl;
            continue;
        }
        /* How far the bytes at i go as the start of a sequence. */
        unsigned c = u[i];
        size_t need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
        size_t got = 1;
        if (need > 1) {
            unsigned lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
            unsigned hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
            while (got < need && i + got < n && u[i + got] >= lo && u[i + got] <= hi) {
                got++;
                lo = 0x80;
                hi = 0xbf;
            }
        }
        memcpy(out + k, "\xef\xbf\xbd", 3);
        k += 3;
        i += got;
    }
    *ret = out;
    *ret_n = k;
    return 0;
}

struct buf {
    char *p;
    size_t cap;
};

static int buf_reserve(struct buf *b, size_t n) {
    if (n <= b->cap)
        return 0;
    size_t cap = n + n / 2 + 64;
    char *p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Words repeat (Zipf), and a word's pieces depend on the word alone, so one
 * encode call remembers the ids of short words it has merged, as the library's
 * BPE cache does. Owned by one call, so no locking. */
#define WCACHE_KEY_MAX 64
#define WCACHE_SLOTS_MAX ((size_t)1 << 18)

struct wslot {
    uint64_t h;
    uint32_t koff, klen;  /* klen 0: empty */
    uint32_t voff, vlen;
};

struct wcache {
    struct wslot *slots;
    size_t mask, used;
    struct buf keys;
    size_t keys_n;
    int32_t *vals;
    size_t vals_n, vals_cap;
};

static void wcache_free(struct wcache *c) {
    free(c->slots);
    free(c->keys.p);
    free(c->vals);
}

static const struct wslot *wcache_get(const struct wcache *c, uint64_t h, const char *s, size_t n) {
    if (!c->slots)
        return NULL;
    for (size_t i = h & c->mask;; i = (i + 1) & c->mask) {
        const struct wslot *w = &c->slots[i];
        if (!w->klen)
            return NULL;
        if (w->h == h && w->klen == n && memcmp(c->keys.p + w->koff, s, n) == 0)
            return w;
    }
}

static void wcache_place(struct wcache *c, const struct wslot *x) {
    size_t i = x->h & c->mask;
    while (c->slots[i].klen)
        i = (i + 1) & c->mask;
    c->slots[i] = *x;
}

/* Best effort: a full or out-of-memory cache only stops remembering. */
static void wcache_put(struct wcache *c, uint64_t h, const char *s, size_t n, const int32_t *ids, size_t k) {
    if (!c->slots || 2 * (c->used + 1) > c->mask + 1) {
        size_t cap = c->slots ? 2 * (c->mask + 1) : 4096;
        if (cap > WCACHE_SLOTS_MAX)
            return;
        struct wslot *ns = calloc(cap, sizeof *ns);
        if (!ns)
            return;
        struct wslot *old = c->slots;
        size_t old_n = old ? c->mask + 1 : 0;
        c->slots = ns;
        c->mask = cap - 1;
        for (size_t i = 0; i < old_n; i++)
            if (old[i].klen)
                wcache_place(c, &old[i]);
        free(old);
    }
    if (buf_reserve(&c->keys, c->keys_n + n) < 0 || c->keys_n + n > UINT32_MAX)
        return;
    if (c->vals_n + k > c->vals_cap) {
        size_t cap = 2 * (c->vals_n + k) + 1024;
        int32_t *v = cap <= UINT32_MAX ? realloc(c->vals, cap * sizeof *v) : NULL;
        if (!v)
            return;
        c->vals = v;
        c->vals_cap = cap;
    }
    struct wslot x = {h, (uint32_t)c->keys_n, (uint32_t)n, (uint32_t)c->vals_n, (uint32_t)k};
    memcpy(c->keys.p + c->keys_n, s, n);
    c->keys_n += n;
    memcpy(c->vals + c->vals_n, ids, k * sizeof *ids);
    c->vals_n += k;
    wcache_place(c, &x);
    c->used++;
}

/* One tok_encode call's state: the output and the scratch it reuses. */
struct enc {
    const struct tok *t;
    struct sv_err *err;
    int32_t *ids;
    size_t n, cap;
    struct word w;
    size_t wcap;
    struct heap h;
    struct pretok_md *md;
    struct buf pre_in[TOK_PRE_MAX], pre_out[TOK_PRE_MAX];  /* ByteLevel: prefixed text, mapped piece */
    struct buf ms;  /* Metaspace's rewritten word */
    struct wcache cache;
    size_t section;  /* index of the raw section being encoded */
};

static int emit(struct enc *e, int32_t id) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 1024;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p)
            return fail(e->t, e->err, -ENOMEM, "out of memory for %zu tokens", cap);
        e->ids = p;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return 0;
}

/* Steps 4-5 on one word. */
static int model_word(struct enc *e, const char *s, size_t n) {
    const struct tok *t = e->t;
    if (n == 0)
        return 0;
    if (t->ignore_merges) {  /* a word that is a piece is taken whole */
        int32_t whole = vocab_find(t, s, n);
        if (whole >= 0)
            return emit(e, whole);
    }
    uint64_t h = 0;
    if (n <= WCACHE_KEY_MAX) {
        h = hash_bytes(s, n);
        const struct wslot *hit = wcache_get(&e->cache, h, s, n);
        for (uint32_t i = 0; hit && i < hit->vlen; i++) {
            int r = emit(e, e->cache.vals[hit->voff + i]);
            if (r < 0)
                return r;
        }
        if (hit)
            return 0;
    }
    struct word *w = &e->w;
    if (n > e->wcap) {
        int32_t *id = realloc(w->id, n * sizeof *id);
        if (id)
            w->id = id;
        int32_t *prev = id ? realloc(w->prev, n * sizeof *prev) : NULL;
        if (prev)
            w->prev = prev;
        int32_t *next = prev ? realloc(w->next, n * sizeof *next) : NULL;
        if (next)
            w->next = next;
        uint32_t *len = next ? realloc(w->len, n * sizeof *len) : NULL;
        if (!len)
            return fail(t, e->err, -ENOMEM, "out of memory for %zu symbols", n);
        w->len = len;
        e->wcap = n;
    }
    w->n = 0;
    int r = split_word(t, s, n, w, e->err);
    if (r < 0)
        return r;
    if ((r = merge_all(t, w, &e->h)) < 0)
        return fail(t, e->err, r, "out of memory merging %zu symbols", w->n);
    size_t first = e->n;
    for (size_t i = 0; i < w->n; i++)
        if (w->len[i] && (r = emit(e, w->id[i])) < 0)
            return r;
    if (n <= WCACHE_KEY_MAX)
        wcache_put(&e->cache, h, s, n, e->ids + first, e->n - first);
    return 0;
}

static int pre_steps(struct enc *e, const char *s, size_t n, size_t depth);

struct pre_ctx {
    struct enc *e;
    size_t depth;
};

static int on_split_piece(void *ctx, const char *s, size_t n) {
    struct pre_ctx *c = ctx;
    return pre_steps(c->e, s, n, c->depth + 1);
}

/* ByteLevel's mapping of one piece, then the steps after it. */
static int bytelevel_piece(struct enc *e, const char *s, size_t n, size_t depth) {
    struct buf *b = &e->pre_out[depth];
    if (n > TOK_TEXT_MAX / 2 || buf_reserve(b, 2 * n) < 0)
        return fail(e->t, e->err, -ENOMEM, "out of memory mapping %zu bytes", n);
    size_t k = pretok_bytes_to_unicode(s, n, b->p);
    return pre_steps(e, b->p, k, depth + 1);
}

static int on_bytelevel_piece(void *ctx, const char *s, size_t n) {
    struct pre_ctx *c = ctx;
    return bytelevel_piece(c->e, s, n, c->depth);
}

/* Step 3: pre-tokenizer step depth on one piece, down to the model. */
static int pre_steps(struct enc *e, const char *s, size_t n, size_t depth) {
    const struct tok *t = e->t;
    if (depth == t->n_pre)
        return model_word(e, s, n);
    const struct pre_step *st = &t->pre[depth];
    struct pre_ctx c = {e, depth};
    if (st->kind == PRE_SPLIT)
        return pretok_split_run(st->sp, e->md, s, n, on_split_piece, &c, e->err);
    if (st->add_prefix_space && !(n && s[0] == ' ')) {
        struct buf *b = &e->pre_in[depth];
        if (n > TOK_TEXT_MAX - 1 || buf_reserve(b, n + 1) < 0)
            return fail(t, e->err, -ENOMEM, "out of memory for %zu bytes", n);
        b->p[0] = ' ';
        memcpy(b->p + 1, s, n);
        s = b->p;
        n++;
    }
    if (st->sp)
        return pretok_split_run(st->sp, e->md, s, n, on_bytelevel_piece, &c, e->err);
    return bytelevel_piece(e, s, n, depth);
}

/* A normalized piece of text with no added token in it. */
static int encode_words(struct enc *e, const char *s, size_t n) {
    const struct tok *t = e->t;
    if (!t->metaspace)
        return pre_steps(e, s, n, 0);
    /* Metaspace (split=false): one word, spaces replaced, maybe prefixed. */
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++)
        spaces += s[i] == ' ';
    if (spaces && (TOK_TEXT_MAX - n) / spaces < t->ms_rep_len)
        return fail(t, e->err, -E2BIG, "text of %zu bytes is too long", n);
    size_t m = n + spaces * (t->ms_rep_len - 1) + t->ms_rep_len;
    if (buf_reserve(&e->ms, m) < 0)
        return fail(t, e->err, -ENOMEM, "out of memory for %zu bytes", m);
    char *o = e->ms.p + t->ms_rep_len;  /* room for the prefix */
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(o, t->ms_rep, t->ms_rep_len);
            o += t->ms_rep_len;
        } else {
            *o++ = s[i];
        }
    }
    char *w = e->ms.p + t->ms_rep_len;
    size_t wn = (size_t)(o - w);
    int want = t->ms_prepend == 1 || (t->ms_prepend == 2 && e->section == 0);
    if (want && !(wn >= t->ms_rep_len && memcmp(w, t->ms_rep, t->ms_rep_len) == 0)) {
        w = e->ms.p;
        memcpy(w, t->ms_rep, t->ms_rep_len);
        wn += t->ms_rep_len;
    }
    return pre_steps(e, w, wn, 0);
}

/* A cut of text into added tokens (id >= 0) and text between them. */
struct sect {
    size_t start, len;
    int32_t id;
};

struct sects {
    struct sect *a;
    size_t n, cap;
};

static int sect_add(struct sects *v, size_t start, size_t len, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 16;
        struct sect *p = realloc(v->a, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        v->a = p;
        v->cap = cap;
    }
    v->a[v->n++] = (struct sect){start, len, id};
    return 0;
}

/* Unicode White_Space (what lstrip/rstrip eat), for the code point at s. */
static size_t white_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if ((c >= 0x09 && c <= 0x0d) || c == 0x20)
        return 1;
    if (c == 0xc2 && n >= 2 && (s[1] == 0x85 || s[1] == 0xa0))
        return 2;
    if (n >= 3 && c == 0xe1 && s[1] == 0x9a && s[2] == 0x80)  /* U+1680 */
        return 3;
    if (n >= 3 && c == 0xe2 && s[1] == 0x80 &&
        (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))  /* U+2000-200A, 2028, 2029, 202F */
        return 3;
    if (n >= 3 && c == 0xe2 && s[1] == 0x81 && s[2] == 0x9f)  /* U+205F */
        return 3;
    if (n >= 3 && c == 0xe3 && s[1] == 0x80 && s[2] == 0x80)  /* U+3000 */
        return 3;
    return 0;
}

static void trim_start(const char *s, struct sect *x) {
    while (x->len) {
        size_t w = white_len((const unsigned char *)s + x->start, x->len);
        if (!w)
            break;
        x->start += w;
        x->len -= w;
    }
}

static void trim_end(const char *s, struct sect *x) {
    while (x->len) {
        size_t k = x->len - 1;  /* back to the start of the last code point */
        while (k > 0 && k + 4 > x->len && ((unsigned char)s[x->start + k] & 0xc0) == 0x80)
            k--;
        size_t w = white_len((const unsigned char *)s + x->start + k, x->len - k);
        if (!w || k + w != x->len)
            break;
        x->len = k;
    }
}

/* Step 1 at one level: leftmost-longest matches of set in s[0..n). */
static int split_added(const struct added_set *set, const char *s, size_t n, struct sects *out) {
    out->n = 0;
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        const struct added_tok *hit = NULL;
        for (uint32_t k = set->lo[b]; k < set->hi[b]; k++) {
            const struct added_tok *a = &set->a[k];
            if (a->len <= n - i && memcmp(a->s, s + i, a->len) == 0) {
                hit = a;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        if ((i > last && sect_add(out, last, i - last, -1) < 0) || sect_add(out, i, hit->len, hit->id) < 0)
            return -ENOMEM;
        i += hit->len;
        last = i;
    }
    if (last < n && sect_add(out, last, n - last, -1) < 0)
        return -ENOMEM;
    /* lstrip / rstrip: the token eats the white space beside it. */
    for (size_t i = 0; i < out->n; i++) {
        if (out->a[i].id < 0)
            continue;
        const struct added_tok *a = NULL;
        unsigned char fb = (unsigned char)s[out->a[i].start];
        for (uint32_t k = set->lo[fb]; k < set->hi[fb] && !a; k++)
            if (set->a[k].len == out->a[i].len && memcmp(set->a[k].s, s + out->a[i].start, set->a[k].len) == 0)
                a = &set->a[k];
        if (a && a->lstrip && i > 0 && out->a[i - 1].id < 0)
            trim_end(s, &out->a[i - 1]);
        if (a && a->rstrip && i + 1 < out->n && out->a[i + 1].id < 0)
            trim_start(s, &out->a[i + 1]);
    }
    return 0;
}

/* Steps 2-5 on one raw section that is not an added token. */
static int encode_section(struct enc *e, const char *s, size_t n) {
    const struct tok *t = e->t;
    char *ns = NULL;
    size_t nn = n;
    int r = 0;
    struct sects sub = {0};
    if (t->n_steps) {
        if ((r = normalize(t, s, n, &ns, &nn)) < 0) {
            r = r == -E2BIG ? fail(t, e->err, r, "text of %zu bytes is too long (at most %zu after normalization)",
                                   n, TOK_TEXT_MAX)
                            : fail(t, e->err, r, "out of memory normalizing %zu bytes", n);
            goto out;
        }
        s = ns;
    }
    if (nn == 0)
        goto out;
    if (!t->norm.n) {
        int32_t id = t->n_whole ? whole_find(t, s, nn) : -1;
        r = id >= 0 ? emit(e, id) : encode_words(e, s, nn);
        goto out;
    }
    if ((r = split_added(&t->norm, s, nn, &sub)) < 0) {
        r = fail(t, e->err, r, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < sub.n && r == 0; i++) {
        const struct sect *x = &sub.a[i];
        if (x->id >= 0)
            r = emit(e, x->id);
        else if (x->len) {
            int32_t id = whole_find(t, s + x->start, x->len);
            r = id >= 0 ? emit(e, id) : encode_words(e, s + x->start, x->len);
        }
    }
out:
    free(sub.a);
    free(ns);
    return r;
}

int tok_encode(const struct tok *t, const char *text, size_t len, int add_bos, int32_t **ret_ids, size_t *ret_n,
               struct sv_err *err) {
    if (!t || (!text && len) || !ret_ids || !ret_n)
        return sv_err_set(err, -EINVAL, "tok_encode: invalid arguments");
    if (len > TOK_TEXT_MAX)
        return fail(t, err, -E2BIG, "text of %zu bytes is too long (at most %zu after normalization)", len,
                    TOK_TEXT_MAX);
    struct enc e = {.t = t, .err = err};
    struct sects sec = {0};
    char *clean = NULL;
    const char *s = text ? text : "";
    size_t n = len;
    int r = 0;
    if (t->valid_utf8) {
        size_t cn = 0;
        if ((r = make_valid_utf8(s, n, &clean, &cn)) < 0) {
            r = fail(t, err, r, r == -E2BIG ? "text of %zu bytes is too long" : "out of memory for %zu bytes", n);
            goto out;
        }
        if (clean) {
            s = clean;
            n = cn;
        }
    }
    if (t->n_pre && pretok_md_new(&e.md) < 0) {
        r = fail(t, err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t b = 0; add_bos && b < t->n_bos && r == 0; b++)
        r = emit(&e, t->bos[b]);
    if (r == 0 && (r = split_added(&t->raw, s, n, &sec)) < 0)
        r = fail(t, err, r, "out of memory");
    for (size_t i = 0; i < sec.n && r == 0; i++) {
        const struct sect *x = &sec.a[i];
        e.section = i;
        if (x->id >= 0)
            r = emit(&e, x->id);
        else if (x->len) {
            int32_t id = t->n_whole ? whole_find(t, s + x->start, x->len) : -1;
            r = id >= 0 ? emit(&e, id) : encode_section(&e, s + x->start, x->len);
        }
    }
    if (r == 0 && !e.ids && !(e.ids = malloc(sizeof *e.ids)))  /* an empty result is still an array */
        r = fail(t, err, -ENOMEM, "out of memory");
    if (r == 0) {
        *ret_ids = e.ids;
        *ret_n = e.n;
        e.ids = NULL;
    }
out:
    free(e.ids);
    free(e.w.id);
    free(e.w.prev);
    free(e.w.next);
    free(e.w.len);
    free(e.h.a);
    for (size_t d = 0; d < TOK_PRE_MAX; d++) {
        free(e.pre_in[d].p);
        free(e.pre_out[d].p);
    }
    free(e.ms.p);
    wcache_free(&e.cache);
    pretok_md_free(e.md);
    free(sec.a);
    free(clean);
    return r;
}

int tok_piece_borrow(const struct tok *t, int32_t id, const char **ret, size_t *ret_len) {
    if (!t || id < 0 || id >= t->vocab_size || !t->piece[id])
        return -ENOENT;
    *ret = t->piece[id];
    *ret_len = t->piece_len[id];
    return 0;
}

int tok_is_byte_level(const struct tok *t) {
    return t->byte_level;
}

/* ---- decoding --------------------------------------------------------- */

/* The decoder runs as the library's decode does (tokenizer.rs decode, and
 * each decoder's decode_chain): ids -> piece strings (unknown ids dropped,
 * special tokens dropped on request), then each step of the file's
 * "decoder" on the list of strings, then the strings joined. */

enum dec_kind { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };

struct dec_step {
    enum dec_kind kind;
    char *pat, *with;      /* Replace: String pattern -> content; Strip, Metaspace: pat = the character */
    size_t pat_len, with_len;
    size_t start, stop;    /* Strip: at most this many characters cut at each end */
    int first_drop;        /* Metaspace: prepend_scheme != never (drop every replacement of token 0) */
};

static void dec_free(struct tok *t) {
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].pat);
        free(t->dec[i].with);
    }
    free(t->dec);
    free(t->dec_refused);
    free(t->special);
    t->dec = NULL;
    t->n_dec = 0;
}

/* Records why decoding is refused; tok_new still succeeds (encoding does not
 * need the decoder), tok_decode returns -ENOTSUP with this text. */
static int dec_refuse(struct tok *t, const char *fmt, const char *what) {
    char msg[160];
    snprintf(msg, sizeof msg, fmt, what);
    free(t->dec_refused);
    t->dec_refused = strdup(msg);
    return t->dec_refused ? 0 : -ENOMEM;
}

/* One character (one code point of UTF-8) from a JSON string, or -1. */
static int one_char(json_t *s, char **ret, size_t *ret_len) {
    if (!json_is_string(s))
        return -1;
    size_t n = json_string_length(s);
    const unsigned char *u = (const unsigned char *)json_string_value(s);
    if (n == 0 || utf8_len(u, n) != n)
        return -1;
    *ret = dup_json_string(s, ret_len);
    return *ret ? 0 : -ENOMEM;
}

static int dec_add(struct tok *t, json_t *d, int depth) {
    const char *ty = type_of(d);
    if (!ty)
        return dec_refuse(t, "decoder %s has no type", "");
    if (strcmp(ty, "Sequence") == 0) {
        json_t *list = json_object_get(d, "decoders"), *x;
        size_t i;
        if (depth > 0 || !json_is_array(list))
            return dec_refuse(t, "decoder %s: only one Sequence with a 'decoders' array is supported", ty);
        json_array_foreach(list, i, x) {
            int r = dec_add(t, x, depth + 1);
            if (r < 0 || t->dec_refused)
                return r;
        }
        return 0;
    }
    struct dec_step st = {0};
    int r = 0;
    if (strcmp(ty, "ByteLevel") == 0) {
        st.kind = DEC_BYTELEVEL;
    } else if (strcmp(ty, "ByteFallback") == 0) {
        st.kind = DEC_BYTEFALLBACK;
    } else if (strcmp(ty, "Fuse") == 0) {
        st.kind = DEC_FUSE;
    } else if (strcmp(ty, "Replace") == 0) {
        json_t *pat = json_object_get(json_object_get(d, "pattern"), "String"), *c = json_object_get(d, "content");
        if (!json_is_string(pat) || json_string_length(pat) == 0 || !json_is_string(c))
            return dec_refuse(t, "decoder %s: only a non-empty String pattern and a string content are supported",
                              ty);
        st.kind = DEC_REPLACE;
        st.pat = dup_json_string(pat, &st.pat_len);
        st.with = dup_json_string(c, &st.with_len);
        if (!st.pat || !st.with)
            r = -ENOMEM;
    } else if (strcmp(ty, "Strip") == 0) {
        json_t *a = json_object_get(d, "start"), *b = json_object_get(d, "stop");
        st.kind = DEC_STRIP;
        if ((r = one_char(json_object_get(d, "content"), &st.pat, &st.pat_len)) == -1 || !json_is_integer(a) ||
            !json_is_integer(b) || json_integer_value(a) < 0 || json_integer_value(b) < 0)
            return dec_refuse(t, "decoder %s needs a one-character 'content' and integer 'start' and 'stop' >= 0",
                              ty);
        st.start = (size_t)json_integer_value(a);
        st.stop = (size_t)json_integer_value(b);
    } else if (strcmp(ty, "Metaspace") == 0) {
        json_t *ps = json_object_get(d, "prepend_scheme"), *ap = json_object_get(d, "add_prefix_space");
        st.kind = DEC_METASPACE;
        if ((r = one_char(json_object_get(d, "replacement"), &st.pat, &st.pat_len)) == -1)
            return dec_refuse(t, "decoder %s needs a one-character 'replacement'", ty);
        /* Older files say add_prefix_space instead of prepend_scheme. */
        st.first_drop = json_is_string(ps) ? strcmp(json_string_value(ps), "never") != 0
                                           : !json_is_boolean(ap) || json_is_true(ap);
    } else {
        return dec_refuse(t, "decoder type '%s' not supported", ty);
    }
    struct dec_step *n = r < 0 ? NULL : realloc(t->dec, (t->n_dec + 1) * sizeof *n);
    if (!n) {
        free(st.pat);
        free(st.with);
        return -ENOMEM;
    }
    t->dec = n;
    t->dec[t->n_dec++] = st;
    return 0;
}

static int parse_decoder(struct tok *t, json_t *root, struct sv_err *err) {
    t->special = calloc((size_t)t->vocab_size + 1, 1);
    if (!t->special)
        return fail(t, err, -ENOMEM, "out of memory");
    size_t i;
    json_t *at;
    json_array_foreach(json_object_get(root, "added_tokens"), i, at) {
        json_int_t id = json_integer_value(json_object_get(at, "id"));
        if (json_is_true(json_object_get(at, "special")) && id >= 0 && id < t->vocab_size)
            t->special[id] = 1;
    }
    json_t *d = json_object_get(root, "decoder");
    int r = 0;
    if (!d || json_is_null(d))
        t->dec_join_space = 1;
    else
        r = dec_add(t, d, 0);
    return r < 0 ? fail(t, err, r, "out of memory for the decoder") : 0;
}

/* The list of strings a decoder step works on. */
struct strv {
    char **s;
    size_t *n;
    size_t count, cap;
};

static void strv_free(struct strv *v) {
    for (size_t i = 0; i < v->count; i++)
        free(v->s[i]);
    free(v->s);
    free(v->n);
    memset(v, 0, sizeof *v);
}

/* Appends a copy of s[0..n) (own = 0) or s itself (own = 1). */
static int strv_push(struct strv *v, char *s, size_t n, int own) {
    if (v->count == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        char **ns = realloc(v->s, cap * sizeof *ns);
        if (ns)
            v->s = ns;
        size_t *nn = ns ? realloc(v->n, cap * sizeof *nn) : NULL;
        if (!nn) {
            if (own)
                free(s);
            return -ENOMEM;
        }
        v->n = nn;
        v->cap = cap;
    }
    char *c = s;
    if (!own) {
        c = malloc(n + 1);
        if (!c)
            return -ENOMEM;
        memcpy(c, s, n);
        c[n] = '\0';
    }
    v->s[v->count] = c;
    v->n[v->count++] = n;
    return 0;
}

/* All strings of v concatenated, as one new malloc'ed string. */
static int strv_join(const struct strv *v, const char *sep, size_t sep_len, char **ret, size_t *ret_len) {
    size_t total = 0;
    for (size_t i = 0; i < v->count; i++) {
        if (v->n[i] > TOK_TEXT_MAX - total - sep_len)
            return -E2BIG;
        total += v->n[i] + (i ? sep_len : 0);
    }
    char *out = malloc(total + 1), *o = out;
    if (!out)
        return -ENOMEM;
    for (size_t i = 0; i < v->count; i++) {
        if (i) {
            memcpy(o, sep, sep_len);
            o += sep_len;
        }
        memcpy(o, v->s[i], v->n[i]);
        o += v->n[i];
    }
    *o = '\0';
    *ret = out;
    *ret_len = total;
    return 0;
}

/* ByteLevel: every string back through GPT-2's table (a string with a
 * character outside it stays as its UTF-8 bytes), all concatenated, then read
 * as UTF-8 with each maximal ill-formed subsequence as U+FFFD (Rust's
 * from_utf8_lossy). One string out. */
static int dec_bytelevel(struct strv *v) {
    size_t total = 0;
    for (size_t i = 0; i < v->count; i++)
        total += v->n[i];
    char *bytes = malloc(total + 1);
    if (!bytes)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < v->count; i++) {
        long m = pretok_unicode_to_bytes(v->s[i], v->n[i], bytes + k);
        if (m < 0) {
            memcpy(bytes + k, v->s[i], v->n[i]);
            m = (long)v->n[i];
        }
        k += (size_t)m;
    }
    char *valid = NULL;
    size_t vn = 0;
    int r = make_valid_utf8(bytes, k, &valid, &vn);
    if (r < 0) {
        free(bytes);
        return r;
    }
    if (valid) {
        free(bytes);
        bytes = valid;
        k = vn;
    } else {
        bytes[k] = '\0';
    }
    strv_free(v);
    return strv_push(v, bytes, k, 1);
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* ByteFallback: a run of "<0xHH>" strings becomes its bytes when they are
 * valid UTF-8, else one U+FFFD per byte (the Rust library's rule; the
 * JavaScript port would replace maximal subparts instead). */
static int dec_flush_bytes(struct strv *out, const unsigned char *b, size_t nb) {
    if (!nb)
        return 0;
    size_t i = 0;
    while (i < nb) {
        size_t cl = utf8_len(b + i, nb - i);
        if (!cl)
            break;
        i += cl;
    }
    if (i == nb)
        return strv_push(out, (char *)b, nb, 0);
    for (size_t j = 0; j < nb; j++) {
        int r = strv_push(out, "\xef\xbf\xbd", 3, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

static int dec_bytefallback(struct strv *v) {
    struct strv out = {0};
    unsigned char *run = malloc(v->count + 1);
    size_t nb = 0;
    int r = run ? 0 : -ENOMEM;
    for (size_t i = 0; i < v->count && r == 0; i++) {
        const char *s = v->s[i];
        int hi = v->n[i] == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' ? hexval(s[3]) : -1;
        int lo = hi >= 0 ? hexval(s[4]) : -1;
        if (lo >= 0) {
            run[nb++] = (unsigned char)(hi * 16 + lo);
            continue;
        }
        r = dec_flush_bytes(&out, run, nb);
        nb = 0;
        char *moved = v->s[i];
        v->s[i] = NULL;
        if (r == 0)
            r = strv_push(&out, moved, v->n[i], 1);
        else
            free(moved);
    }
    if (r == 0)
        r = dec_flush_bytes(&out, run, nb);
    free(run);
    strv_free(v);
    if (r < 0) {
        strv_free(&out);
        return r;
    }
    *v = out;
    return 0;
}

static int dec_fuse(struct strv *v) {
    char *s;
    size_t n;
    int r = strv_join(v, "", 0, &s, &n);
    if (r < 0)
        return r;
    strv_free(v);
    return strv_push(v, s, n, 1);
}

/* Strip: at most start leading and stop trailing copies of one character,
 * from every string. */
static void dec_strip(struct strv *v, const struct dec_step *st) {
    for (size_t i = 0; i < v->count; i++) {
        char *s = v->s[i];
        size_t n = v->n[i], a = 0, b = n;
        for (size_t k = 0; k < st->start && b - a >= st->pat_len && memcmp(s + a, st->pat, st->pat_len) == 0; k++)
            a += st->pat_len;
        for (size_t k = 0; k < st->stop && b - a >= st->pat_len && memcmp(s + b - st->pat_len, st->pat, st->pat_len) == 0;
             k++)
            b -= st->pat_len;
        memmove(s, s + a, b - a);
        s[b - a] = '\0';
        v->n[i] = b - a;
    }
}

/* Metaspace: the replacement character becomes ' ', except in the first
 * string, where (prepend_scheme other than never) it is dropped. */
static int dec_metaspace(struct strv *v, const struct dec_step *st) {
    for (size_t i = 0; i < v->count; i++) {
        int r = replace_all(&v->s[i], &v->n[i], st->pat, st->pat_len, " ", (i == 0 && st->first_drop) ? 0 : 1);
        if (r < 0)
            return r;
        v->s[i][v->n[i]] = '\0';
    }
    return 0;
}

int tok_decode(const struct tok *t, const int32_t *ids, size_t n, int flags, char **ret_text, size_t *ret_len,
               struct sv_err *err) {
    if (t->dec_refused)
        return fail(t, err, -ENOTSUP, "cannot decode: %s", t->dec_refused);
    struct strv v = {0};
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size || !t->piece[id])
            continue;   /* the library drops ids it has no token for */
        if ((flags & TOK_DECODE_SKIP_SPECIAL) && t->special[id])
            continue;
        r = strv_push(&v, (char *)t->piece[id], t->piece_len[id], 0);
    }
    for (size_t k = 0; k < t->n_dec && r == 0; k++) {
        const struct dec_step *st = &t->dec[k];
        switch (st->kind) {
        case DEC_BYTELEVEL: r = dec_bytelevel(&v); break;
        case DEC_BYTEFALLBACK: r = dec_bytefallback(&v); break;
        case DEC_FUSE: r = dec_fuse(&v); break;
        case DEC_STRIP: dec_strip(&v, st); break;
        case DEC_METASPACE: r = dec_metaspace(&v, st); break;
        case DEC_REPLACE:
            for (size_t i = 0; i < v.count && r == 0; i++) {
                r = replace_all(&v.s[i], &v.n[i], st->pat, st->pat_len, st->with, st->with_len);
                if (r == 0)
                    v.s[i][v.n[i]] = '\0';
            }
            break;
        }
    }
    char *out = NULL;
    size_t out_len = 0;
    if (r == 0)
        r = strv_join(&v, " ", t->dec_join_space ? 1 : 0, &out, &out_len);
    strv_free(&v);
    if (r < 0)
        return fail(t, err, r, "decoding %zu ids: %s", n, r == -E2BIG ? "text too long" : "out of memory");
    *ret_text = out;
    *ret_len = out_len;
    return 0;
}

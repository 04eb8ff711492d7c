/* tok: SentencePiece-style BPE read from a Hugging Face tokenizer.json.
 *
 * Design note. The goal is token-for-token equality with the `tokenizers`
 * library (what LlamaTokenizerFast runs), because perplexities are only
 * comparable across tools when the token streams are identical. So this file
 * mirrors that library's steps rather than SentencePiece's or llama2.c's:
 *
 *   1. normalizer: a list of Prepend / Replace(String) steps applied in order
 *      to the whole text (Prepend only when the text is non-empty);
 *   2. pre-tokenizer: none, or a Metaspace with split=false (replace ' ',
 *      then prepend the replacement unless the text already starts with it);
 *      either way the whole normalized text is ONE word;
 *   3. BPE model (models/bpe/model.rs merge_word): the word is cut into
 *      Unicode scalars; a scalar in the vocab becomes that piece; one that is
 *      not becomes its <0xNN> byte pieces when byte_fallback is on and every
 *      one of those exists; otherwise an unk (consecutive unks fused into one
 *      with fuse_unk; dropped without an unk_token). Byte and unk symbols go
 *      through the merges like any other symbol, as in the library;
 *   4. merges (models/bpe/word.rs merge_all): a min-heap of candidate
 *      adjacent pairs keyed by (rank, position of the left symbol) over a
 *      doubly linked list of symbols. Popped entries are checked lazily: a
 *      dead left symbol, a missing right neighbour, or a current pair whose
 *      merge yields a different id than the entry means it is stale. Each
 *      merge pushes the (at most two) new pairs it creates. O(n log n), so a
 *      whole 1 MB file as one word takes well under a second;
 *   5. post-processor: TemplateProcessing's special tokens in front of $A
 *      when the caller asks for BOS.
 *
 * One library quirk is kept on purpose because it changes ids: a character
 * handled by byte fallback does not flush a pending unk, so the unk lands
 * after those byte pieces (only reachable when a vocab has some but not all
 * <0xNN> pieces).
 *
 * Input that is not valid UTF-8 (the library only takes valid strings): each
 * byte that does not start a well-formed sequence is a one-byte symbol that is
 * never in the vocab, so it goes to byte fallback or unk like an unknown
 * character.
 *
 * Also as in the library: ignore_merges takes a word that is itself a piece
 * whole; special tokens after $A (an EOS) are not added, since the API only
 * asks for BOS. tok_vocab_size is one past the largest id of the vocab and
 * added_tokens, i.e. the rows an embedding table needs. jansson refuses NUL
 * bytes in object keys, so a vocab with a "\u0000" piece is refused.
 *
 * A struct tok is immutable after tok_new, so any number of threads may call
 * tok_encode on it at once. */
#include "tok.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The largest real tokenizer.json files (250k-piece vocabularies) are ~20 MB;
 * anything far beyond that is not a tokenizer and would only exhaust memory. */
#define TOK_FILE_MAX ((long long)512 << 20)
/* Symbol positions are int32; the normalized text must fit. */
#define TOK_TEXT_MAX ((size_t)INT32_MAX - 1)
/* Longest piece quoted in an error message. */
#define TOK_QUOTE_MAX 80

enum norm_kind { NORM_PREPEND, NORM_REPLACE };

struct norm_step {
    enum norm_kind kind;
    char *pat;   /* Replace: the string matched; unused for Prepend */
    size_t pat_len;
    char *with;  /* Prepend: the prefix; Replace: the replacement */
    size_t with_len;
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
    int metaspace;  /* a Metaspace pre-tokenizer (split=false) follows the normalizer */
    char *ms_rep;
    size_t ms_rep_len;
    int ms_prepend;

    int32_t *bos;  /* ids in front of $A in the "single" template */
    size_t n_bos;
    int vocab_size;
};

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
    return fail(t, err, -ENOTSUP, "normalizer type '%s' not supported", type);
}

/* Names the byte-level part of a refused pre-tokenizer, which is the common
 * case (GPT-2, LLaMA 3, Qwen): "byte-level BPE" tells the user what it is. */
static int refuse_pretokenizer(struct tok *t, json_t *p, const char *type, struct sv_err *err) {
    if (strcmp(type, "ByteLevel") == 0)
        return fail(t, err, -ENOTSUP, "pre_tokenizer type 'ByteLevel': byte-level BPE not supported");
    if (strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *sub;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, sub) {
            const char *st = type_of(sub);
            if (st && strcmp(st, "ByteLevel") == 0)
                return fail(t, err, -ENOTSUP,
                            "pre_tokenizer Sequence with 'ByteLevel': byte-level BPE not supported");
        }
        return fail(t, err, -ENOTSUP, "pre_tokenizer type 'Sequence' not supported");
    }
    if (strcmp(type, "Split") == 0)
        return fail(t, err, -ENOTSUP,
                    "pre_tokenizer type 'Split': regex pre-tokenization (byte-level BPE) not supported");
    return fail(t, err, -ENOTSUP, "pre_tokenizer type '%s' not supported", type);
}

static int parse_pretokenizer(struct tok *t, json_t *p, struct sv_err *err) {
    if (!p || json_is_null(p))
        return 0;
    const char *type = type_of(p);
    if (!json_is_object(p) || !type)
        return fail(t, err, -EINVAL, "pre_tokenizer has no 'type'");
    if (strcmp(type, "Metaspace") != 0)
        return refuse_pretokenizer(t, p, type, err);

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
        /* "first" and "always" agree here: the text is never cut into
         * several pieces before the pre-tokenizer sees it. */
        if (strcmp(s, "first") == 0 || strcmp(s, "always") == 0)
            t->ms_prepend = 1;
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
static int parse_postprocessor(struct tok *t, json_t *root, struct sv_err *err) {
    json_t *pp = json_object_get(root, "post_processor");
    if (!pp || json_is_null(pp))
        return 0;
    const char *type = type_of(pp);
    if (!json_is_object(pp) || !type)
        return fail(t, err, -EINVAL, "post_processor has no 'type'");
    if (strcmp(type, "ByteLevel") == 0)
        return fail(t, err, -ENOTSUP, "post_processor type 'ByteLevel': byte-level BPE not supported");
    if (strcmp(type, "TemplateProcessing") != 0)
        return fail(t, err, -ENOTSUP, "post_processor type '%s' not supported", type);

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
    r = parse_postprocessor(t, root, err);
    if (r < 0)
        goto out;

    /* Added tokens may sit past the model vocab; the embedding table covers them. */
    size_t i;
    json_t *at;
    json_array_foreach(json_object_get(root, "added_tokens"), i, at) {
        json_t *id = json_object_get(at, "id");
        if (json_is_integer(id) && json_integer_value(id) >= t->vocab_size && json_integer_value(id) < INT32_MAX)
            t->vocab_size = (int)json_integer_value(id) + 1;
    }
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
        else
            r = replace_all(&s, &n, st->pat, st->pat_len, st->with, st->with_len);
    }
    if (r == 0 && t->metaspace) {
        r = replace_all(&s, &n, " ", 1, t->ms_rep, t->ms_rep_len);
        if (r == 0 && t->ms_prepend && !(n >= t->ms_rep_len && memcmp(s, t->ms_rep, t->ms_rep_len) == 0))
            r = prepend(&s, &n, t->ms_rep, t->ms_rep_len);
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

static int merge_all(const struct tok *t, struct word *w) {
    struct heap h = {0};
    int r = 0;
    /* Start with every adjacent pair that has a merge, heapified in O(n). */
    if (w->n > 1) {
        h.cap = w->n;
        h.a = malloc(h.cap * sizeof *h.a);
        if (!h.a)
            return -ENOMEM;
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
    free(h.a);
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

int tok_encode(const struct tok *t, const char *text, size_t len, int add_bos, int32_t **ret_ids, size_t *ret_n,
               struct sv_err *err) {
    if (!t || (!text && len) || !ret_ids || !ret_n)
        return sv_err_set(err, -EINVAL, "tok_encode: invalid arguments");
    char *s = NULL;
    size_t n = 0;
    struct word w = {0};
    int32_t *ids = NULL;
    int r = normalize(t, text, len, &s, &n);
    if (r < 0) {
        r = r == -E2BIG ? fail(t, err, r, "text of %zu bytes is too long (at most %zu after normalization)", len,
                               TOK_TEXT_MAX)
                        : fail(t, err, r, "out of memory normalizing %zu bytes", len);
        goto out;
    }

    size_t nb = add_bos ? t->n_bos : 0;
    /* Every symbol covers at least one byte, so n bounds the output. */
    ids = malloc((nb + n + 1) * sizeof *ids);
    if (!ids) {
        r = fail(t, err, -ENOMEM, "out of memory for %zu tokens", n);
        goto out;
    }
    if (nb)
        memcpy(ids, t->bos, nb * sizeof *ids);
    size_t k = nb;

    int32_t whole = (t->ignore_merges && n) ? vocab_find(t, s, n) : -1;
    if (whole >= 0) {
        ids[k++] = whole;  /* ignore_merges: a word that is a piece is taken whole */
    } else if (n) {
        w.id = malloc(n * sizeof *w.id);
        w.prev = malloc(n * sizeof *w.prev);
        w.next = malloc(n * sizeof *w.next);
        w.len = malloc(n * sizeof *w.len);
        if (!w.id || !w.prev || !w.next || !w.len) {
            r = fail(t, err, -ENOMEM, "out of memory for %zu symbols", n);
            goto out;
        }
        if ((r = split_word(t, s, n, &w, err)) < 0)
            goto out;
        if ((r = merge_all(t, &w)) < 0) {
            r = fail(t, err, r, "out of memory merging %zu symbols", w.n);
            goto out;
        }
        for (size_t i = 0; i < w.n; i++)
            if (w.len[i])
                ids[k++] = w.id[i];
    }
    *ret_ids = ids;
    *ret_n = k;
    ids = NULL;
out:
    free(ids);
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.len);
    free(s);
    return r;
}

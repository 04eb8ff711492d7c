/* test_tok: token-for-token equality with the reference ids (made with the
 * tokenizers library's rules, see tests/data/reference/reference-values.json,
 * and by @huggingface/tokenizers for the Llama 3 / Qwen3 / Llama 2 files, see
 * tests/data/reference/tok/manifest.json) on whole files, small hand-checked
 * cases of the BPE, Split, ByteLevel and added-token rules, and the errors a
 * user sees for tokenizers we do not support. Run from the source root. */
#include "tok.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"
#include "mono.h"
#include "pretok.h"
#include "sha256.h"

static char tmpdir[] = "/tmp/test_tok.XXXXXX";

static char *read_all(const char *path, size_t *ret_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) {
                free(buf);
                buf = NULL;
            }
            buf = b;
        }
    }
    fclose(f);
    *ret_len = n;
    return buf;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* Reads int32 little-endian ids, independent of the host's byte order. */
static int32_t *read_ids(const char *path, size_t *ret_n) {
    size_t len;
    unsigned char *b = (unsigned char *)read_all(path, &len);
    if (!b)
        return NULL;
    size_t n = len / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; ids && i < n; i++)
        ids[i] = (int32_t)((uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
                           (uint32_t)b[4 * i + 3] << 24);
    free(b);
    *ret_n = n;
    return ids;
}

static void print_window(const char *label, const int32_t *ids, size_t n, size_t at) {
    size_t lo = at >= 8 ? at - 8 : 0, hi = at + 8 < n ? at + 8 : n;
    fprintf(stderr, "  %s [%zu..%zu):", label, lo, hi);
    for (size_t i = lo; i < hi; i++)
        fprintf(stderr, i == at ? " [%d]" : " %d", ids[i]);
    fprintf(stderr, "\n");
}

/* Whole file as one string, BOS first, against the reference ids. */
static void check_file(const char *tok_path, const char *text_path, const char *ref_path, size_t want_n) {
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = tok_new(&t, tok_path, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    size_t len = 0, ref_n = 0;
    char *text = read_all(text_path, &len);
    int32_t *ref = read_ids(ref_path, &ref_n);
    SV_CHECK(text && ref);
    SV_ASSERT_EQ(ref_n, want_n);
    if (!text || !ref)
        goto out;

    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = mono_now();
    r = tok_encode(t, text, len, 1, &ids, &n, &err);
    double dt = mono_now() - t0;
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        SV_ASSERT_EQ(n, ref_n);
        size_t i = 0, m = n < ref_n ? n : ref_n;
        while (i < m && ids[i] == ref[i])
            i++;
        if (i < m || n != ref_n) {
            fprintf(stderr, "%s on %s: first difference at token %zu (got %zu tokens, want %zu)\n", tok_path,
                    text_path, i, n, ref_n);
            print_window("got ", ids, n, i);
            print_window("want", ref, ref_n, i);
        }
        SV_ASSERT_EQ(i, ref_n);
        printf("%-44s %-48s %8zu tokens  %6.3f s  %9.0f tokens/s\n", tok_path, text_path, n, dt,
               dt > 0 ? (double)n / dt : 0.0);
    } else {
        fprintf(stderr, "  %s\n", err.msg);
    }
    free(ids);
out:
    free(text);
    free(ref);
    tok_free(t);
}

/* Writes a small tokenizer.json into tmpdir and loads it. */
static int load_json(const char *name, const char *json, struct tok **t, struct sv_err *err) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    write_file(path, json);
    *t = NULL;
    return tok_new(t, path, err);
}

static void expect_refused(const char *name, const char *json, int code, const char *needle) {
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = load_json(name, json, &t, &err);
    SV_ASSERT_EQ(r, code);
    SV_ASSERT_EQ(err.code, code);
    SV_CHECK(t == NULL);
    SV_ASSERT_STR_CONTAINS(err.msg, needle);
    SV_ASSERT_STR_CONTAINS(err.msg, name);  /* names the file */
    tok_free(t);
}

/* Encodes text (without BOS) and compares with want[0..want_n). */
static void expect_ids(const struct tok *t, const char *text, size_t len, const int32_t *want, size_t want_n,
                       int line) {
    int32_t *ids = NULL;
    size_t n = 0;
    struct sv_err err = {0};
    int r = tok_encode(t, text, len, 0, &ids, &n, &err);
    sv_test_checks++;
    int ok = r == 0 && n == want_n && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    if (!ok) {
        sv_test_failures++;
        fprintf(stderr, "%s:%d: encoding '%.*s': r=%d (%s), got", __FILE__, line, (int)len, text, r, err.msg);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, ", want");
        for (size_t i = 0; i < want_n; i++)
            fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
}

#define EXPECT_IDS(t, text, ...) do { static const int32_t want_[] = {__VA_ARGS__}; \
    expect_ids((t), (text), sizeof(text) - 1, want_, sizeof want_ / sizeof want_[0], __LINE__); } while (0)

/* A toy SentencePiece-style tokenizer: "▁" is E2 96 81. Merge ranks:
 * 0 "a b", 1 "b c", 2 "▁ a", 3 "ab c", 4 "a bc", 5 "x x", 6 "xx x". */
#define TOY_HEAD "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\"}, " \
    "{\"id\": 1, \"content\": \"<s>\"}, {\"id\": 20, \"content\": \"<extra>\"}],"
#define TOY_NORM "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [" \
    "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, " \
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
#define TOY_POST "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [" \
    "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, " \
    "{\"SpecialToken\": {\"id\": \"</s>\", \"type_id\": 0}}], " \
    "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
#define TOY_VOCAB "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"a\": 2, \"b\": 3, \"c\": 4, \"\\u2581\": 5, " \
    "\"ab\": 6, \"bc\": 7, \"\\u2581a\": 8, \"abc\": 9, \"x\": 10, \"xx\": 11, \"xxx\": 12, " \
    "\"<0x0A>\": 13, \"<0xC3>\": 14, \"<0xA9>\": 15, \"<0xFF>\": 16}"
#define TOY_MERGES "\"merges\": [\"a b\", [\"b\", \"c\"], \"\\u2581 a\", \"ab c\", \"a bc\", \"x x\", \"xx x\"]"

static void test_toy(void) {
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = load_json("toy.json",
                      TOY_HEAD TOY_NORM "\"pre_tokenizer\": null," TOY_POST
                      "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, "
                      "\"byte_fallback\": true, " TOY_VOCAB ", " TOY_MERGES "}}",
                      &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    SV_ASSERT_EQ(tok_bos_id(t), 1);
    SV_ASSERT_EQ(tok_vocab_size(t), 21);  /* the added token id 20 counts */

    /* "▁abc": ▁a (rank 2) loses to a b (rank 0); then ab c (3) -> abc. */
    EXPECT_IDS(t, "abc", 5, 9);
    /* All "x x" (rank 5) before any "xx x" (rank 6), left to right. */
    EXPECT_IDS(t, "xxx", 5, 12);
    EXPECT_IDS(t, "xxxx", 5, 11, 11);
    EXPECT_IDS(t, "xxxxx", 5, 11, 12);
    /* "▁a▁a": ▁a (rank 2) twice; spaces become ▁. */
    EXPECT_IDS(t, "a a", 8, 8);
    EXPECT_IDS(t, " ", 5, 5);
    /* Byte fallback: \n -> <0x0A>, é -> <0xC3><0xA9>; a lone 0xFF byte is its own symbol. */
    EXPECT_IDS(t, "a\nb", 8, 13, 3);
    EXPECT_IDS(t, "\xc3\xa9", 5, 14, 15);
    EXPECT_IDS(t, "\xff" "a", 5, 16, 2);
    /* 'd', 'e' have no piece and 0x64/0x65 no byte piece: one fused unk; the
     * truncated sequence C3 (followed by 'a') is a stray byte with a byte piece. */
    EXPECT_IDS(t, "dea", 5, 0, 2);
    EXPECT_IDS(t, "\xc3" "a", 5, 14, 2);
    /* The library's order: a byte-fallback character does not flush a pending
     * unk, so 'd' and 'e' fuse into one unk that lands after <0x0A>. */
    EXPECT_IDS(t, "d\ne", 5, 13, 0);
    /* Added tokens are cut out of the text, as the library does by default.
     * These say neither special nor normalized, so they are normalized ones:
     * matched in the normalized text by their normalized form "\u2581<s>",
     * or as a whole section. <extra> has no vocab piece. */
    EXPECT_IDS(t, "<s>", 1);
    EXPECT_IDS(t, "a <s>b", 8, 1, 3);
    EXPECT_IDS(t, "a<s>b", 8, 0, 3);  /* no "\u2581<s>" in "\u2581a<s>b": '<' 's' '>' are one fused unk */
    EXPECT_IDS(t, "<extra><s>", 20, 1);
    EXPECT_IDS(t, "<s", 5, 0);  /* not a token: '<' 's' fuse into one unk */

    int32_t *ids = NULL;
    size_t n = 0;
    SV_ASSERT_EQ(tok_encode(t, "", 0, 1, &ids, &n, &err), 0);
    SV_ASSERT_EQ(n, 1);
    if (n == 1)
        SV_ASSERT_EQ(ids[0], 1);
    free(ids);
    SV_ASSERT_EQ(tok_encode(t, "", 0, 0, &ids, &n, &err), 0);
    SV_ASSERT_EQ(n, 0);
    free(ids);
    SV_ASSERT_EQ(tok_encode(t, "ab", 2, 1, &ids, &n, &err), 0);
    SV_ASSERT_EQ(n, 3);
    if (n == 3) {
        SV_ASSERT_EQ(ids[0], 1);  /* BOS only: the </s> after $A is not added */
        SV_ASSERT_EQ(ids[2], 6);
    }
    free(ids);
    SV_ASSERT_EQ(tok_encode(t, NULL, 3, 1, &ids, &n, &err), -EINVAL);
    tok_free(t);
}

/* Same vocabulary, other options. */
static void test_toy_variants(void) {
    struct sv_err err = {0};
    struct tok *t = NULL;

    /* No fuse_unk, no byte_fallback, no post-processor. */
    int r = load_json("nofuse.json",
                      TOY_HEAD TOY_NORM "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", " TOY_VOCAB
                      ", " TOY_MERGES "}}",
                      &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        SV_ASSERT_EQ(tok_bos_id(t), -1);
        EXPECT_IDS(t, "dea", 5, 0, 0, 2);
        EXPECT_IDS(t, "\xc3\xa9" "b", 5, 0, 3);
        int32_t *ids = NULL;
        size_t n = 9;
        SV_ASSERT_EQ(tok_encode(t, "", 0, 1, &ids, &n, &err), 0);
        SV_ASSERT_EQ(n, 0);
        free(ids);
    } else {
        fprintf(stderr, "  %s\n", err.msg);
    }
    tok_free(t);

    /* No unk_token: unknown characters vanish, as in the library. */
    r = load_json("nounk.json", TOY_HEAD TOY_NORM "\"model\": {\"type\": \"BPE\", " TOY_VOCAB ", " TOY_MERGES "}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0)
        EXPECT_IDS(t, "adb", 5, 6);  /* 'd' vanishes before merging, so a b -> ab */
    tok_free(t);

    /* unk_token missing from the vocab: loads, fails only when an unk is needed. */
    r = load_json("badunk.json",
                  TOY_HEAD TOY_NORM "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<nope>\", " TOY_VOCAB
                  ", " TOY_MERGES "}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_IDS(t, "ab", 5, 6);
        int32_t *ids = NULL;
        size_t n = 0;
        SV_ASSERT_EQ(tok_encode(t, "d", 1, 0, &ids, &n, &err), -EINVAL);
        SV_ASSERT_STR_CONTAINS(err.msg, "<nope>");
    }
    tok_free(t);

    /* Metaspace(prepend_scheme first, split false) instead of the normalizer:
     * the same ids, except that a leading space is not doubled. */
    r = load_json("metaspace.json",
                  TOY_HEAD "\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": "
                  "\"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}, "
                  "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, " TOY_VOCAB
                  ", " TOY_MERGES "}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_IDS(t, "abc", 5, 9);
        EXPECT_IDS(t, "a a", 8, 8);
        EXPECT_IDS(t, " a", 8);  /* the Prepend normalizer would give 5 8 */
    } else {
        fprintf(stderr, "  %s\n", err.msg);
    }
    tok_free(t);

    /* ignore_merges: a word that is itself a piece is taken whole, even when
     * the merges cannot build it; otherwise merging goes on as usual. */
    r = load_json("ignore.json",
                  TOY_HEAD "\"model\": {\"type\": \"BPE\", \"ignore_merges\": true, " TOY_VOCAB
                  ", \"merges\": [\"x x\"]}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_IDS(t, "xxx", 12);
        EXPECT_IDS(t, "xxxx", 11, 11);
    }
    tok_free(t);

    /* Equal ranks: the leftmost pair first, so xx|x rather than x|xx. */
    r = load_json("tie.json", TOY_HEAD "\"model\": {\"type\": \"BPE\", " TOY_VOCAB ", \"merges\": [\"x x\"]}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_IDS(t, "xxx", 11, 10);
        EXPECT_IDS(t, "xxxxx", 11, 11, 10);
    }
    tok_free(t);
}

static void test_errors(void) {
    struct sv_err err = {0};
    struct tok *t = NULL;

    expect_refused("nopattern.json",
                   "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\"}, "
                   "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}]}, "
                   "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   -EINVAL, "pre_tokenizer 0 (Split) has no pattern");
    expect_refused("unigram.json",
                   "{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0.0]]}}", -ENOTSUP,
                   "model type 'Unigram'");
    expect_refused("wordpiece.json",
                   "{\"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"vocab\": {\"[UNK]\": 0}}}",
                   -ENOTSUP, "model type 'WordPiece'");
    expect_refused("nfkc.json",
                   "{\"normalizer\": {\"type\": \"NFKC\"}, "
                   "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   -ENOTSUP, "normalizer type 'NFKC' not supported");
    expect_refused("malformed.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}", -EINVAL,
                   "invalid JSON at line 1");
    expect_refused("badmerge.json",
                   "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                   "\"merges\": [\"a b\", \"a zz\"]}}",
                   -EINVAL, "piece 'zz' is not in the vocab");
    expect_refused("badmerged.json",
                   "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                   -EINVAL, "merged piece 'ab' is not in the vocab");
    expect_refused("badmergeform.json",
                   "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b c\"]}}",
                   -EINVAL, "merge 0");
    expect_refused("badid.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}",
                   -EINVAL, "vocab piece 'a' has id -3");
    expect_refused("bosrange.json",
                   "{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
                   "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
                   "\"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [5000], \"tokens\": [\"<s>\"]}}}, "
                   "\"model\": {\"type\": \"BPE\", \"vocab\": {\"<s>\": 0, \"a\": 1}, \"merges\": []}}",
                   -EINVAL, "post_processor BOS id 5000 is outside the vocabulary (2 ids)");
    expect_refused("dropout.json",
                   "{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   -ENOTSUP, "dropout");

    char path[256];
    snprintf(path, sizeof path, "%s/does-not-exist.json", tmpdir);
    int r = tok_new(&t, path, &err);
    SV_ASSERT_EQ(r, -ENOENT);
    SV_ASSERT_STR_CONTAINS(err.msg, "does-not-exist.json");
    SV_ASSERT_STR_CONTAINS(err.msg, "No such file");
    tok_free(NULL);  /* free accepts NULL */
}

#define BPE_AB "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \",\": 2, \" \": 3, \"ab\": 4}, " \
    "\"merges\": [\"a b\"]}}"
#define SPLIT(pattern, behavior, invert) "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": " pattern \
    ", \"behavior\": \"" behavior "\", \"invert\": " invert "}, " BPE_AB

/* What the byte-level parts refuse, by name. */
static void test_errors_bytelevel(void) {
    expect_refused("merged.json", SPLIT("{\"Regex\": \",\"}", "MergedWithPrevious", "false"), -ENOTSUP,
                   "behavior 'MergedWithPrevious' not supported");
    expect_refused("contiguous.json", SPLIT("{\"Regex\": \",\"}", "Contiguous", "false"), -ENOTSUP,
                   "behavior 'Contiguous' not supported");
    expect_refused("wordclass.json", SPLIT("{\"Regex\": \"\\\\w+\"}", "Isolated", "false"), -ENOTSUP,
                   "regex escape \\w not supported");
    expect_refused("boundary.json", SPLIT("{\"Regex\": \"\\\\bx\"}", "Isolated", "false"), -ENOTSUP,
                   "regex escape \\b not supported");
    expect_refused("nested.json", SPLIT("{\"Regex\": \"[a[b]]\"}", "Isolated", "false"), -ENOTSUP,
                   "nested character class");
    expect_refused("badregex.json", SPLIT("{\"Regex\": \"(a\"}", "Isolated", "false"), -EINVAL,
                   "regex does not compile (PCRE2: missing closing parenthesis");
    expect_refused("digits.json",
                   "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", "
                   "\"individual_digits\": true}]}, " BPE_AB,
                   -ENOTSUP, "pre_tokenizer type 'Digits' not supported");
    expect_refused("noprefix.json", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": true}, " BPE_AB,
                   -EINVAL, "(ByteLevel) has no boolean 'add_prefix_space'");
    expect_refused("metaseq.json",
                   "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Metaspace\", "
                   "\"replacement\": \"_\", \"split\": false}]}, " BPE_AB,
                   -ENOTSUP, "Metaspace inside a Sequence");
    expect_refused("roberta.json",
                   "{\"post_processor\": {\"type\": \"RobertaProcessing\", \"sep\": [\"a\", 0], \"cls\": [\"b\", 1]}, "
                   BPE_AB, -ENOTSUP, "post_processor type 'RobertaProcessing' not supported");
    expect_refused("singleword.json",
                   "{\"added_tokens\": [{\"id\": 9, \"content\": \"<x>\", \"single_word\": true}], " BPE_AB, -ENOTSUP,
                   "added token '<x>': single_word=true not supported");
    expect_refused("addedid.json", "{\"added_tokens\": [{\"id\": -1, \"content\": \"<x>\"}], " BPE_AB, -EINVAL,
                   "added token '<x>' has id -1");
}

/* Split's behaviours on "a,b", with the merge a b -> ab: pieces never merge
 * across a cut, so ids show exactly where the text was cut. */
static void test_split_rules(void) {
    static const struct {
        const char *name, *json;
        int32_t want[4];
        size_t n;
    } cases[] = {
        {"isolated.json", SPLIT("{\"Regex\": \",\"}", "Isolated", "false"), {0, 2, 1}, 3},
        {"removed.json", SPLIT("{\"Regex\": \",\"}", "Removed", "false"), {0, 1}, 2},
        /* invert: the matches are the pieces; Removed then drops the gaps,
         * Isolated keeps everything either way. */
        {"inv-removed.json", SPLIT("{\"Regex\": \",\"}", "Removed", "true"), {2}, 1},
        {"inv-isolated.json", SPLIT("{\"Regex\": \",\"}", "Isolated", "true"), {0, 2, 1}, 3},
        /* A String pattern is literal: "." matches only a dot, so nothing is cut. */
        {"literal.json", SPLIT("{\"String\": \".\"}", "Isolated", "false"), {0, 2, 1}, 3},
        /* \h is Oniguruma's hex digit (PCRE2: horizontal space): cuts at 'a' and 'b', not ','. */
        {"hex.json", SPLIT("{\"Regex\": \"\\\\h\"}", "Removed", "false"), {2}, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct sv_err err = {0};
        struct tok *t = NULL;
        int r = load_json(cases[c].name, cases[c].json, &t, &err);
        SV_ASSERT_EQ(r, 0);
        if (r < 0) {
            fprintf(stderr, "  %s\n", err.msg);
            continue;
        }
        expect_ids(t, "a,b", 3, cases[c].want, cases[c].n, __LINE__);
        tok_free(t);
    }
    /* A space-isolating Split leaves "ab" whole (so it merges) and keeps the
     * pieces of "a b" apart; a regex that matches empty cuts at each match. */
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = load_json("space.json", SPLIT("{\"Regex\": \" \"}", "Isolated", "false"), &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_IDS(t, "ab", 4);
        EXPECT_IDS(t, "a b", 0, 3, 1);
        EXPECT_IDS(t, "ab ab", 4, 3, 4);
    }
    tok_free(t);
    r = load_json("empty.json", SPLIT("{\"Regex\": \"x*\"}", "Removed", "false"), &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0)
        EXPECT_IDS(t, "ab", 0, 1);  /* empty matches at 0, 1, 2 cut "a" | "b" (matchAll's walk) */
    tok_free(t);
}

/* A toy byte-level tokenizer: GPT-2's table maps ' ' to 'Ġ' (U+0120), '\n'
 * to 'Ċ' (U+010A), and the two bytes of 'é' (C3 A9) to 'Ã' 'Â©'. */
#define BL_VOCAB "\"vocab\": {\"\\u0120\": 0, \"a\": 1, \"\\u0120a\": 2, \"\\u010a\": 3, \"\\u00c3\": 4, " \
    "\"\\u00a9\": 5, \"\\u00c3\\u00a9\": 6, \"\\u00ef\": 7, \"\\u00bf\": 8, \"\\u00bd\": 9, \"b\": 10}"
#define BL_MERGES "\"merges\": [\"\\u0120 a\", \"\\u00c3 \\u00a9\"]"

static void test_bytelevel_toy(void) {
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = load_json("bl.json",
                      "{\"added_tokens\": [{\"id\": 11, \"content\": \"<e>\", \"special\": true, \"lstrip\": true, "
                      "\"rstrip\": false, \"normalized\": false}, {\"id\": 12, \"content\": \"<r>\", \"special\": true, "
                      "\"rstrip\": true, \"normalized\": false}], "
                      "\"normalizer\": {\"type\": \"NFC\"}, "
                      "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"use_regex\": false}, "
                      "\"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true}, "
                      "\"model\": {\"type\": \"BPE\", " BL_VOCAB ", " BL_MERGES "}}",
                      &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    SV_ASSERT_EQ(tok_is_byte_level(t), 1);
    SV_ASSERT_EQ(tok_bos_id(t), -1);  /* the ByteLevel post-processor adds no token */
    SV_ASSERT_EQ(tok_vocab_size(t), 13);
    const char *p = NULL;
    size_t pl = 0;
    SV_ASSERT_EQ(tok_piece_borrow(t, 2, &p, &pl), 0);
    SV_CHECK(pl == 3 && memcmp(p, "\xc4\xa0" "a", 3) == 0);
    SV_ASSERT_EQ(tok_piece_borrow(t, 11, &p, &pl), 0);
    SV_CHECK(pl == 3 && memcmp(p, "<e>", 3) == 0);
    SV_ASSERT_EQ(tok_piece_borrow(t, 13, &p, &pl), -ENOENT);

    EXPECT_IDS(t, "a", 2);        /* add_prefix_space: " a" -> "Ġa" */
    EXPECT_IDS(t, " a", 2);       /* ... but never a second space */
    EXPECT_IDS(t, "\xc3\xa9", 0, 6);   /* é: Ġ Ã © -> Ġ Ã© */
    EXPECT_IDS(t, "e\xcc\x81", 0, 6);  /* NFC makes e + U+0301 into é first */
    EXPECT_IDS(t, "\n", 0, 3);
    /* Ill-formed UTF-8 reads as U+FFFD (EF BF BD -> ï ¿ ½): the lone FF, and
     * the truncated E2 82 as one. */
    EXPECT_IDS(t, "\xff", 0, 7, 8, 9);
    EXPECT_IDS(t, "\xe2\x82" "a", 0, 7, 8, 9, 1);
    /* Added tokens first: lstrip eats the spaces before <e>, rstrip those
     * after <r>; each text section gets its own prefix space. */
    EXPECT_IDS(t, "a  <e>a", 2, 11, 2);
    EXPECT_IDS(t, "a<r> \n a", 2, 12, 2);
    EXPECT_IDS(t, "<e><r>", 11, 12);
    tok_free(t);
}

/* Byte-level BPE loses nothing: on the Llama 3 file (no normalizer), the
 * pieces of the ids, mapped back through GPT-2's table, are the input bytes,
 * for random well-formed text built from chunks that stress the regex, the
 * added tokens and the table. Random ill-formed bytes must still encode. */
static void test_bytelevel_roundtrip(void) {
    static const char *const chunks[] = {
        " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "n't", "a", "The", " world", "123", "4567", "\xc3\xa9",
        "e\xcc\x81", "\xe4\xb8\xad\xe6\x96\x87", "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "\xe2\x80\x8d", "\xc2\x85",
        "\xef\xbb\xbf", "\xe3\x80\x80", "!?", "...", "<|", "|>", "<|begin_of_text|>", "<|eot_id|>", "\x00", "\x7f",
    };
    struct sv_err err = {0};
    struct tok *t = NULL;
    int r = tok_new(&t, "tests/data/tokenizers/llama3/tokenizer.json", &err);
    SV_ASSERT_EQ(r, 0);
    if (r < 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return;
    }
    uint64_t seed = 12345;
    char text[2048], back[8192];
    int bad = 0;
    for (int it = 0; it < 300 && !bad; it++) {
        size_t n = 0;
        int pieces = 1 + (int)((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 58);
        for (int k = 0; k < pieces; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const char *c = chunks[(seed >> 33) % (sizeof chunks / sizeof chunks[0])];
            size_t cl = c[0] ? strlen(c) : 1;  /* the NUL chunk is one byte */
            memcpy(text + n, c, cl);
            n += cl;
        }
        int32_t *ids = NULL;
        size_t m = 0, k = 0;
        if (tok_encode(t, text, n, 1, &ids, &m, &err) < 0) {
            fprintf(stderr, "  %s\n", err.msg);
            bad = 1;
            break;
        }
        for (size_t i = 0; i < m && !bad; i++) {
            const char *p;
            size_t pl;
            if (ids[i] < 0 || ids[i] >= tok_vocab_size(t) || tok_piece_borrow(t, ids[i], &p, &pl) < 0) {
                bad = 1;
                break;
            }
            if (ids[i] >= 128000) {  /* an added token: its content as written */
                memcpy(back + k, p, pl);
                k += pl;
                continue;
            }
            long b = pretok_unicode_to_bytes(p, pl, back + k);
            if (b < 0)
                bad = 1;
            else
                k += (size_t)b;
        }
        if (bad || k != n || memcmp(back, text, n) != 0) {
            fprintf(stderr, "  round trip %d: %zu bytes in, %zu out\n", it, n, k);
            bad = 1;
        }
        free(ids);
    }
    SV_ASSERT_EQ(bad, 0);
    /* Random bytes: mostly ill-formed; every id must be a real one. */
    for (int it = 0; it < 200; it++) {
        size_t n = (size_t)(it * 7 % 500);
        for (size_t i = 0; i < n; i++)
            text[i] = (char)((seed = seed * 6364136223846793005ull + 1442695040888963407ull) >> 56);
        int32_t *ids = NULL;
        size_t m = 0;
        r = tok_encode(t, text, n, 0, &ids, &m, &err);
        if (r < 0)
            break;
        for (size_t i = 0; i < m && r == 0; i++)
            if (ids[i] < 0 || ids[i] >= tok_vocab_size(t))
                r = -1;
        free(ids);
        if (r < 0)
            break;
    }
    SV_ASSERT_EQ(r, 0);
    tok_free(t);
}

/* The bundled tokenizers: ids, sizes, and an empty text. */
static void test_bundled_basics(void) {
    static const struct {
        const char *path;
        int vocab;
    } cases[] = {{"tests/data/stories260K-hf/tokenizer.json", 512}, {"tests/data/tinystories-656K/tokenizer.json", 2048}};
    for (size_t c = 0; c < 2; c++) {
        struct sv_err err = {0};
        struct tok *t = NULL;
        int r = tok_new(&t, cases[c].path, &err);
        SV_ASSERT_EQ(r, 0);
        if (r < 0) {
            fprintf(stderr, "  %s\n", err.msg);
            continue;
        }
        SV_ASSERT_EQ(tok_vocab_size(t), cases[c].vocab);
        SV_ASSERT_EQ(tok_bos_id(t), 1);
        int32_t *ids = NULL;
        size_t n = 0;
        SV_ASSERT_EQ(tok_encode(t, "", 0, 1, &ids, &n, &err), 0);
        SV_ASSERT_EQ(n, 1);
        if (n >= 1)
            SV_ASSERT_EQ(ids[0], 1);
        free(ids);
        tok_free(t);
    }
}

/* Prints ids[lo..hi) with their pieces, the mismatch at `at` in brackets. */
static void print_pieces(const struct tok *t, const char *label, const int32_t *ids, size_t n, size_t at) {
    size_t lo = at >= 6 ? at - 6 : 0, hi = at + 6 < n ? at + 6 : n;
    fprintf(stderr, "  %s [%zu..%zu):", label, lo, hi);
    for (size_t i = lo; i < hi; i++) {
        const char *p = "?";
        size_t pl = 1;
        if (tok_piece_borrow(t, ids[i], &p, &pl) < 0) {
            p = "?";
            pl = 1;
        }
        fprintf(stderr, i == at ? " [%d '%.*s']" : " %d '%.*s'", ids[i], (int)pl, p);
    }
    fprintf(stderr, "\n");
}

/* Applies one manifest patch ([path, value] pairs) to a parsed tokenizer.json. */
static int apply_patch(json_t *root, json_t *set) {
    size_t i;
    json_t *op;
    json_array_foreach(set, i, op) {
        json_t *path = json_array_get(op, 0), *value = json_array_get(op, 1);
        json_t *o = root;
        size_t n = json_array_size(path);
        for (size_t k = 0; o && k + 1 < n; k++) {
            json_t *key = json_array_get(path, k);
            o = json_is_string(key) ? json_object_get(o, json_string_value(key))
                                    : json_array_get(o, (size_t)json_integer_value(key));
        }
        json_t *last = json_array_get(path, n - 1);
        if (!o || !n)
            return -1;
        if (json_is_string(last) ? json_object_set(o, json_string_value(last), value)
                                 : json_array_set(o, (size_t)json_integer_value(last), value))
            return -1;
    }
    return 0;
}

/* The variant's patched tokenizer.json in tmpdir (written once). */
static int variant_file(json_t *variants, const char *name, const char *base_path, char *out, size_t outlen) {
    snprintf(out, outlen, "%s/variant-%s.json", tmpdir, name);
    if (access(out, R_OK) == 0)
        return 0;
    json_error_t jerr;
    json_t *root = json_load_file(base_path, 0, &jerr);
    json_t *set = json_object_get(json_object_get(variants, name), "set");
    int r = root && set && apply_patch(root, set) == 0 && json_dump_file(root, out, JSON_COMPACT) == 0 ? 0 : -1;
    json_decref(root);
    return r;
}

/* Token-for-token equality with @huggingface/tokenizers on every tokenizer x
 * text of tests/data/reference/tok/manifest.json (tests/ref/gen_tok_ref.mjs). */
static void test_reference_ids(void) {
    json_error_t jerr;
    json_t *man = json_load_file("tests/data/reference/tok/manifest.json", 0, &jerr);
    SV_CHECK(man != NULL);
    if (!man) {
        fprintf(stderr, "  manifest: %s\n", jerr.text);
        return;
    }
    json_t *variants = json_object_get(man, "variants"), *cases = json_object_get(man, "cases");
    SV_CHECK(json_array_size(cases) >= 20);
    char loaded[512] = "";  /* the file t was loaded from */
    struct tok *t = NULL;
    char vpath[512];
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *tpath = json_string_value(json_object_get(c, "tokenizer"));
        const char *variant = json_string_value(json_object_get(c, "variant"));
        const char *text_path = json_string_value(json_object_get(c, "text"));
        const char *ids_path = json_string_value(json_object_get(c, "ids"));
        const char *want_sha = json_string_value(json_object_get(c, "text_sha256"));
        size_t bytes = (size_t)json_integer_value(json_object_get(c, "bytes"));
        size_t want_n = (size_t)json_integer_value(json_object_get(c, "n_ids"));
        SV_CHECK(tpath && text_path && ids_path && want_sha);
        if (!tpath || !text_path || !ids_path || !want_sha)
            continue;
        if (variant) {
            SV_ASSERT_EQ(variant_file(variants, variant, tpath, vpath, sizeof vpath), 0);
            tpath = vpath;
        }
        if (strcmp(loaded, tpath) != 0) {
            tok_free(t);
            t = NULL;
            struct sv_err err = {0};
            double t0 = mono_now();
            int r = tok_new(&t, tpath, &err);
            SV_ASSERT_EQ(r, 0);
            if (r < 0) {
                fprintf(stderr, "  %s\n", err.msg);
                loaded[0] = '\0';
                continue;
            }
            printf("loaded %-40s %-18s in %.3f s\n", tpath, variant ? variant : "", mono_now() - t0);
            snprintf(loaded, sizeof loaded, "%s", tpath);
        }
        size_t len = 0, ref_n = 0;
        char *text = read_all(text_path, &len);
        int32_t *ref = read_ids(ids_path, &ref_n);
        SV_CHECK(text && ref && len >= bytes);
        SV_ASSERT_EQ(ref_n, want_n);
        if (!text || !ref || len < bytes) {
            free(text);
            free(ref);
            continue;
        }
        struct sha256 h;
        uint8_t dig[32];
        char hex[65];
        sha256_init(&h);
        sha256_update(&h, text, bytes);
        sha256_final(&h, dig);
        sha256_hex(dig, hex);
        SV_CHECK(strcmp(hex, want_sha) == 0);  /* the text the reference saw */

        int32_t *ids = NULL;
        size_t n = 0;
        struct sv_err err = {0};
        double t0 = mono_now();
        int r = tok_encode(t, text, bytes, 1, &ids, &n, &err);
        double dt = mono_now() - t0;
        SV_ASSERT_EQ(r, 0);
        if (r == 0) {
            size_t k = 0, m = n < ref_n ? n : ref_n;
            while (k < m && ids[k] == ref[k])
                k++;
            if (k < m || n != ref_n) {
                fprintf(stderr, "%s%s%s on %s (%zu bytes): first difference at token %zu (got %zu tokens, want %zu)\n",
                        tpath, variant ? " variant " : "", variant ? variant : "", text_path, bytes, k, n, ref_n);
                print_pieces(t, "got ", ids, n, k);
                print_pieces(t, "want", ref, ref_n, k);
            }
            SV_ASSERT_EQ(k, ref_n);
            SV_ASSERT_EQ(n, ref_n);
            printf("  %-18s %-44s %7zu bytes %7zu tokens  %.3f s  %6.2f MB/s\n", variant ? variant : "",
                   text_path, bytes, n, dt, dt > 0 ? (double)bytes / dt / 1e6 : 0.0);
        } else {
            fprintf(stderr, "  %s\n", err.msg);
        }
        free(ids);
        free(text);
        free(ref);
    }
    tok_free(t);
    json_decref(man);
}

/* Decodes ids and compares with want (bytes), printing both on a mismatch. */
static void expect_text(const struct tok *t, const int32_t *ids, size_t n, int flags, const char *want, int line) {
    char *text = NULL;
    size_t len = 0;
    struct sv_err err = {0};
    int r = tok_decode(t, ids, n, flags, &text, &len, &err);
    sv_test_checks++;
    if (r != 0 || len != strlen(want) || memcmp(text, want, len) != 0) {
        sv_test_failures++;
        fprintf(stderr, "%s:%d: decode: r=%d (%s), got '%.*s', want '%s'\n", __FILE__, line, r, err.msg, (int)len,
                text ? text : "", want);
    }
    free(text);
}

#define EXPECT_TEXT(t, flags, want, ...) do { static const int32_t ids_[] = {__VA_ARGS__}; \
    expect_text((t), ids_, sizeof ids_ / sizeof ids_[0], (flags), (want), __LINE__); } while (0)

/* Hand-checked decoder rules on toy files: the Llama 2 decoder chain
 * (Replace, ByteFallback with a valid and an invalid byte run, Fuse, Strip),
 * special tokens kept or skipped, ids with no piece dropped, Metaspace, no
 * decoder, and an unsupported decoder refused by name at decode time only. */
static void test_decode_toy(void) {
    struct sv_err err = {0};
    struct tok *t = NULL;
#define TOY_DEC_MODEL "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": true, " \
    TOY_VOCAB ", " TOY_MERGES "}"
    int r = load_json("dec-llama2.json",
                      "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true}, "
                      "{\"id\": 1, \"content\": \"<s>\", \"special\": true}, "
                      "{\"id\": 20, \"content\": \"<extra>\", \"special\": false}]," TOY_NORM
                      "\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
                      "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"}, "
                      "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
                      "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}," TOY_DEC_MODEL "}",
                      &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_TEXT(t, 0, "a bc", 8, 5, 7);                      /* "▁a" "▁" "bc": the first space stripped */
        EXPECT_TEXT(t, 0, "<s> a bc", 1, 8, 5, 7);               /* kept: Strip sees "<s>" first */
        EXPECT_TEXT(t, TOK_DECODE_SKIP_SPECIAL, "a bc", 1, 8, 5, 7);
        EXPECT_TEXT(t, TOK_DECODE_SKIP_SPECIAL, "a<extra>", 8, 20);   /* not special: kept */
        EXPECT_TEXT(t, 0, "\xc3\xa9\n", 14, 15, 13);            /* C3 A9 0A: valid, its bytes */
        EXPECT_TEXT(t, 0, "x\xef\xbf\xbd\xef\xbf\xbd" "c", 10, 14, 16, 4);  /* C3 FF: one U+FFFD per byte */
        EXPECT_TEXT(t, 0, "xc", 10, 17, -5, 999, 4);            /* no piece: dropped */
        EXPECT_TEXT(t, 0, "");
        /* decode(encode(x)) == x on a text with spaces, byte fallback and a newline. */
        static const char text[] = "ab c\xc3\xa9 \n xx";
        int32_t *ids = NULL;
        size_t n = 0;
        SV_ASSERT_EQ(tok_encode(t, text, sizeof text - 1, 1, &ids, &n, &err), 0);
        expect_text(t, ids, n, TOK_DECODE_SKIP_SPECIAL, text, __LINE__);
        free(ids);
    }
    tok_free(t);

    r = load_json("dec-metaspace.json",
                  "{\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": "
                  "\"first\", \"split\": false}," TOY_DEC_MODEL "}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_TEXT(t, 0, "a a", 8, 8);       /* every "▁" of the first token dropped, later ones ' ' */
        EXPECT_TEXT(t, 0, "ab ", 6, 5);
    }
    tok_free(t);
    r = load_json("dec-never.json",
                  "{\"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": "
                  "\"never\"}," TOY_DEC_MODEL "}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0)
        EXPECT_TEXT(t, 0, " a a", 8, 8);
    tok_free(t);
    r = load_json("dec-none.json", "{" TOY_DEC_MODEL "}", &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0)
        EXPECT_TEXT(t, 0, "ab c <0x0A>", 6, 4, 13);   /* no decoder: pieces joined by ' ' */
    tok_free(t);
    r = load_json("dec-wordpiece.json", "{\"decoder\": {\"type\": \"WordPiece\", \"prefix\": \"##\"}," TOY_DEC_MODEL "}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);   /* encoding does not need the decoder */
    if (r == 0) {
        static const int32_t one[] = {2};
        char *text = NULL;
        size_t len = 0;
        struct sv_err e2 = {0};
        SV_ASSERT_EQ(tok_decode(t, one, 1, 0, &text, &len, &e2), -ENOTSUP);
        SV_ASSERT_STR_CONTAINS(e2.msg, "decoder type 'WordPiece' not supported");
        SV_ASSERT_STR_CONTAINS(e2.msg, "dec-wordpiece.json");
        SV_CHECK(text == NULL);
    }
    tok_free(t);
#undef TOY_DEC_MODEL

    /* ByteLevel: Ġ (U+0120) is the space byte, é (U+00E9) byte E9; a piece
     * with a character outside the table ("€") stays as its UTF-8 bytes; an
     * incomplete sequence at the end is one U+FFFD (maximal subpart). */
    r = load_json("dec-bytelevel.json",
                  "{\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true}, \"model\": {\"type\": "
                  "\"BPE\", \"vocab\": {\"a\": 0, \"\\u0120b\": 1, \"\\u00c3\": 2, \"\\u00a9\": 3, \"\\u20ac\": 4, "
                  "\"\\u00e2\\u0124\": 5}, \"merges\": []}}",
                  &t, &err);
    SV_ASSERT_EQ(r, 0);
    if (r == 0) {
        EXPECT_TEXT(t, 0, "a b\xc3\xa9", 0, 1, 2, 3);
        EXPECT_TEXT(t, 0, "a\xe2\x82\xac" "a", 0, 4, 0);
        EXPECT_TEXT(t, 0, "a\xef\xbf\xbd", 0, 5);   /* E2 84: cut short */
    }
    tok_free(t);
}

/* decode(ids) equals @huggingface/tokenizers' decode of the same reference
 * ids (tests/ref/gen_decode_ref.mjs), keeping and skipping special tokens,
 * for every tokenizer x text of the manifest: the text itself where the
 * reference gives it back (decode.json's equals_text), else its bytes (the
 * stress texts: NFC, special tokens skipped, stripped spaces, added prefix
 * spaces, U+FFFD for the invalid bytes) or its sha256 (long texts). */
static void test_reference_decode(void) {
    json_error_t jerr;
    json_t *man = json_load_file("tests/data/reference/tok/manifest.json", 0, &jerr);
    json_t *dec = json_load_file("tests/data/reference/tok/decode.json", 0, &jerr);
    SV_CHECK(man && dec);
    json_t *variants = json_object_get(man, "variants"), *mcases = json_object_get(man, "cases");
    json_t *dcases = json_object_get(dec, "cases");
    SV_ASSERT_EQ(json_array_size(dcases), json_array_size(mcases));
    char loaded[512] = "", vpath[512];
    struct tok *t = NULL;
    size_t i, n_equal = 0, n_cases = 0;
    json_t *c;
    json_array_foreach(dcases, i, c) {
        json_t *mc = json_array_get(mcases, i);
        const char *tpath = json_string_value(json_object_get(mc, "tokenizer"));
        const char *variant = json_string_value(json_object_get(mc, "variant"));
        const char *ids_path = json_string_value(json_object_get(c, "ids"));
        const char *text_path = json_string_value(json_object_get(c, "text"));
        SV_CHECK(tpath && ids_path && text_path && strcmp(ids_path, json_string_value(json_object_get(mc, "ids"))) == 0);
        if (!tpath || !ids_path || !text_path)
            continue;
        if (variant && variant_file(variants, variant, tpath, vpath, sizeof vpath) == 0)
            tpath = vpath;
        if (strcmp(loaded, tpath) != 0) {
            tok_free(t);
            t = NULL;
            struct sv_err err = {0};
            if (tok_new(&t, tpath, &err) < 0) {
                SV_CHECK(!"tok_new");
                fprintf(stderr, "  %s\n", err.msg);
                loaded[0] = '\0';
                continue;
            }
            snprintf(loaded, sizeof loaded, "%s", tpath);
        }
        size_t n = 0, len = 0, bytes = (size_t)json_integer_value(json_object_get(c, "bytes"));
        int32_t *ids = read_ids(ids_path, &n);
        char *text = read_all(text_path, &len);
        for (int skip = 0; skip < 2 && ids && text; skip++) {
            json_t *want = json_object_get(c, skip ? "skip_special" : "keep_special");
            char *got = NULL;
            size_t got_len = 0;
            struct sv_err err = {0};
            int r = tok_decode(t, ids, n, skip ? TOK_DECODE_SKIP_SPECIAL : 0, &got, &got_len, &err);
            SV_ASSERT_EQ(r, 0);
            if (r < 0) {
                fprintf(stderr, "  %s\n", err.msg);
                continue;
            }
            n_cases++;
            struct sha256 h;
            uint8_t dig[32];
            char hex[65];
            sha256_init(&h);
            sha256_update(&h, got, got_len);
            sha256_final(&h, dig);
            sha256_hex(dig, hex);
            const char *want_sha = json_string_value(json_object_get(want, "sha256"));
            const char *file = json_string_value(json_object_get(want, "file"));
            int eq_text = json_is_true(json_object_get(want, "equals_text"));
            /* The exact bytes to show a difference against, where we have them. */
            size_t ref_len = 0;
            char *ref = file ? read_all(file, &ref_len) : NULL;
            if (!ref && eq_text && len == bytes && got_len == bytes) {
                ref = malloc(bytes ? bytes : 1);
                if (ref)
                    memcpy(ref, text, bytes);
                ref_len = bytes;
            }
            int ok = want_sha && strcmp(hex, want_sha) == 0 &&
                     got_len == (size_t)json_integer_value(json_object_get(want, "bytes"));
            SV_CHECK(ok);
            if (!ok) {
                size_t k = 0;
                while (ref && k < ref_len && k < got_len && got[k] == ref[k])
                    k++;
                fprintf(stderr, "%s%s%s: decode of %s (%s special): %zu bytes, sha256 %s; want %lld bytes, %s",
                        tpath, variant ? " variant " : "", variant ? variant : "", ids_path, skip ? "skipping" : "keeping",
                        got_len, hex, (long long)json_integer_value(json_object_get(want, "bytes")), want_sha);
                if (ref)
                    fprintf(stderr, "; first difference at byte %zu: got '%.40s', want '%.40s'", k, got + k,
                            ref + (k < ref_len ? k : ref_len));
                fprintf(stderr, "\n");
            }
            n_equal += ok && eq_text;
            free(ref);
            free(got);
        }
        free(ids);
        free(text);
    }
    tok_free(t);
    printf("decode: %zu reference decodes, %zu of them equal to the text\n", n_cases, n_equal);
    SV_ASSERT_EQ(n_cases, 2 * json_array_size(dcases));
    json_decref(man);
    json_decref(dec);
}

/* decode(encode(text)) == text on the whole TinyStories head with the
 * SentencePiece-style tokenizers of the bundled models (byte fallback for the
 * text's mojibake in stories260K; the reference ids are run.c's and
 * tokenizers.js's, reference-values.json). */
static void test_decode_bundled(void) {
    static const char *const cases[][2] = {
        {"tests/data/stories260K-hf/tokenizer.json", "tests/data/reference/tinystories-valid-head.stories260K.tokens.i32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sv_err err = {0};
        struct tok *t = NULL;
        size_t len = 0, n = 0;
        char *text = read_all("tests/data/text/tinystories-valid-head.txt", &len);
        int32_t *ids = read_ids(cases[i][1], &n);
        SV_ASSERT_EQ(tok_new(&t, cases[i][0], &err), 0);
        char *got = NULL;
        size_t got_len = 0;
        int r = t && text && ids ? tok_decode(t, ids, n, TOK_DECODE_SKIP_SPECIAL, &got, &got_len, &err) : -1;
        SV_ASSERT_EQ(r, 0);
        SV_ASSERT_EQ(got_len, len);
        SV_CHECK(got && got_len == len && memcmp(got, text, len) == 0);
        free(got);
        free(text);
        free(ids);
        tok_free(t);
    }
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    double t0 = mono_now();
    test_toy();
    test_toy_variants();
    test_errors();
    test_errors_bytelevel();
    test_split_rules();
    test_bytelevel_toy();
    test_bytelevel_roundtrip();
    test_bundled_basics();
    test_reference_ids();
    test_decode_toy();
    test_reference_decode();
    test_decode_bundled();

    check_file("tests/data/stories260K-hf/tokenizer.json", "tests/data/text/tinystories-valid-head.txt",
               "tests/data/reference/tinystories-valid-head.stories260K.tokens.i32", 393019);
    check_file("tests/data/tinystories-656K/tokenizer.json", "tests/data/text/tinystories-valid-head.txt",
               "tests/data/reference/tinystories-valid-head.tinystories656K.tokens.i32", 193347);
    check_file("tests/data/stories260K-hf/tokenizer.json", "tests/data/text/wikitext-2-raw-v1-test.joined.txt",
               "tests/data/reference/wikitext-2-raw-v1-test.joined.stories260K.tokens.i32", 815070);
    printf("total %.3f s\n", mono_now() - t0);

    char cmd[64 + sizeof tmpdir];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return sv_test_result("tok");
}

/* test_tok: token-for-token equality with the reference ids (made with the
 * tokenizers library's rules, see tests/data/reference/reference-values.json)
 * on whole files, small hand-checked cases of the BPE rules, and the errors a
 * user sees for tokenizers we do not support. Run from the source root. */
#include "tok.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "mono.h"

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
    /* Added tokens in the text are not split out. */
    EXPECT_IDS(t, "<s>", 5, 0);  /* '<' 's' '>': one fused unk */

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

    expect_refused("bytelevel.json",
                   "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
                   "\"trim_offsets\": true, \"use_regex\": true}, "
                   "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   -ENOTSUP, "byte-level BPE");
    expect_refused("llama3.json",
                   "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\"}, "
                   "{\"type\": \"ByteLevel\"}]}, "
                   "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                   -ENOTSUP, "ByteLevel");
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

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    double t0 = mono_now();
    test_toy();
    test_toy_variants();
    test_errors();
    test_bundled_basics();

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

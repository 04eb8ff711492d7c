/* fuzz_tok: libFuzzer target for the tokenizer (daemon/engine/tok.c), which
 * reads the tokenizer.json of whatever model directory a client names.
 *
 * Input layout: the tokenizer.json bytes, then optionally "####" and a text
 * to encode (any bytes, invalid UTF-8 included). Without the separator a fixed
 * sample text is encoded. The JSON goes to a memfd and tok_new() reads it
 * through /proc/self/fd/N.
 *
 * Checked on success: encoding is deterministic; with add_bos the output is
 * the BOS ids followed by exactly the output without; every id is >= 0 and
 * every id from the text (not the template's BOS) is < tok_vocab_size(); an
 * empty text gives only the BOS. On failure: a negative code and a bounded
 * message. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tok.h"

static struct fuzz_file file;

static const char sample[] = "Once upon a time, there was a little girl named Lily. She said \"hi!\"\n"
                             "\xe2\x96\x81 caf\xc3\xa9 \xf0\x9f\x98\x80 \xff\xfe\x80 <s> <0x41>  end";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = fuzz_find_sep(data, data + size);
    size_t jlen = sep ? (size_t)(sep - data) : size;
    const char *text = sep ? (const char *)sep + 4 : sample;
    size_t tlen = sep ? size - jlen - 4 : sizeof sample - 1;

    const char *path = fuzz_file_put(&file, "fuzz_tok", data, jlen);
    struct tok *t = NULL;
    struct sv_err err = {0};
    int r = tok_new(&t, path, &err);
    if (r < 0) {
        FUZZ_CHECK_FAILURE(r, t, err);
        return 0;
    }
    int vocab = tok_vocab_size(t), bos = tok_bos_id(t);
    FUZZ_CHECK(vocab >= 0 && bos >= -1, "vocab %d bos %d", vocab, bos);

    int32_t *a = NULL, *b = NULL, *c = NULL;
    size_t na = 0, nb = 0, nc = 0;
    int ra = tok_encode(t, text, tlen, 0, &a, &na, &err);
    if (ra < 0) {
        /* Only an unk_token missing from the vocab (or memory) may fail here. */
        FUZZ_CHECK(ra == -EINVAL || ra == -ENOMEM || ra == -E2BIG, "encode returned %d: %s", ra, err.msg);
        FUZZ_CHECK(strnlen(err.msg, sizeof err.msg) < sizeof err.msg, "message");
        tok_free(t);
        return 0;
    }
    int rb = tok_encode(t, text, tlen, 1, &b, &nb, &err);
    int rc = tok_encode(t, text, tlen, 0, &c, &nc, &err);
    FUZZ_CHECK(rb == 0 && rc == 0, "encode failed the second time: %d %d", rb, rc);
    FUZZ_CHECK(nc == na && (na == 0 || memcmp(a, c, na * sizeof *a) == 0), "encoding is not deterministic");
    FUZZ_CHECK(nb >= na && memcmp(b + (nb - na), a, na * sizeof *a) == 0, "add_bos changed the text's ids");
    size_t nbos = nb - na;
    FUZZ_CHECK(nbos == 0 ? bos == -1 : b[0] == bos, "BOS %d, %zu BOS ids, first %d", bos, nbos, nbos ? b[0] : -1);
    for (size_t i = 0; i < nb; i++)
        FUZZ_CHECK(b[i] >= 0, "id %d at %zu", b[i], i);
    for (size_t i = 0; i < na; i++)
        FUZZ_CHECK(a[i] < vocab, "text id %d at %zu not below the vocab size %d", a[i], i, vocab);
    /* The same text again, empty: only the BOS. */
    int32_t *e = NULL;
    size_t ne = 0;
    FUZZ_CHECK(tok_encode(t, "", 0, 1, &e, &ne, &err) == 0 && ne == nbos, "empty text gave %zu ids", ne);
    free(e);
    free(a);
    free(b);
    free(c);
    tok_free(t);
    return 0;
}

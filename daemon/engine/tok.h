/* tok: a SentencePiece-style BPE tokenizer read from a Hugging Face
 * tokenizer.json, producing the same ids as the tokenizers library.
 *
 * Supported: model.type "BPE" with a normalizer made of Prepend("▁") and
 * Replace(" " -> "▁") (in a Sequence or alone), no pre-tokenizer (or the
 * equivalent Metaspace), merges applied by rank, byte_fallback (<0xNN> pieces),
 * fuse_unk, and the BOS that the TemplateProcessing post-processor puts in
 * front. Anything else (byte-level BPE with a regex pre-tokenizer, WordPiece,
 * Unigram, ...) is refused with a message naming it.
 *
 * Added/special tokens inside the text are NOT split out: calibration and
 * evaluation text is plain prose, and the reference ids were produced that way. */
#ifndef TOK_H
#define TOK_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

struct tok;

int tok_new(struct tok **ret, const char *tokenizer_json_path, struct sv_err *err);
void tok_free(struct tok *t);

/* Encodes len bytes of UTF-8 text. With add_bos, the post-processor's BOS
 * (if it has one) comes first. *ret_ids is malloc'ed; the caller frees it. */
int tok_encode(const struct tok *t, const char *text, size_t len, int add_bos,
               int32_t **ret_ids, size_t *ret_n, struct sv_err *err);

int tok_vocab_size(const struct tok *t);
int tok_bos_id(const struct tok *t);   /* -1 if the post-processor adds none */

#endif

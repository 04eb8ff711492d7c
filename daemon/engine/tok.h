/* tok: BPE tokenizers read from a Hugging Face tokenizer.json, producing the
 * same ids as the tokenizers library (checked token for token against the
 * independent @huggingface/tokenizers on the Llama 2/Mistral, Llama 3 and
 * Qwen3 files: tests/test_tok.c, tests/ref/gen_tok_ref.mjs).
 *
 * Supported: model.type "BPE" (merges by rank, byte_fallback, fuse_unk,
 * ignore_merges); normalizers Prepend, Replace(String), NFC, in a Sequence or
 * alone; pre-tokenizers: none, Metaspace (split=false), or Split (the file's
 * regex, Isolated or Removed, invert) and ByteLevel (add_prefix_space,
 * use_regex) alone or in a Sequence; added_tokens (special or not, lstrip,
 * rstrip, normalized) cut out of the text before the model, as the library
 * does by default; post-processors TemplateProcessing (the BOS in front of
 * $A), ByteLevel (no ids), and a Sequence of them. Anything else is refused
 * with a message naming it.
 *
 * Text that is not valid UTF-8: for byte-level / regex / NFC files each
 * ill-formed subsequence is read as U+FFFD (what a UTF-8 decoder hands the
 * library); for SentencePiece-style files the stray bytes go to byte
 * fallback. See tok.c's design note. */
#ifndef TOK_H
#define TOK_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

struct tok;

int tok_new(struct tok **ret, const char *tokenizer_json_path, struct sv_err *err);
void tok_free(struct tok *t);

/* Encodes len bytes of text. With add_bos, the post-processor's tokens in
 * front of $A (if any) come first; none after it (no EOS). *ret_ids is
 * malloc'ed (also when *ret_n is 0); the caller frees it. */
int tok_encode(const struct tok *t, const char *text, size_t len, int add_bos, int32_t **ret_ids, size_t *ret_n,
               struct sv_err *err);

int tok_vocab_size(const struct tok *t);
int tok_bos_id(const struct tok *t);   /* -1 if the post-processor adds none */

/* The piece string of id as the file spells it (a vocab key such as "Ġthe"
 * or "▁the", or an added token's content), not NUL-terminated; it lives as
 * long as t. -ENOENT for an id with no piece. */
int tok_piece_borrow(const struct tok *t, int32_t id, const char **ret, size_t *ret_len);
/* 1 if pieces are in GPT-2's byte-to-unicode alphabet (ByteLevel). */
int tok_is_byte_level(const struct tok *t);

/* ids -> text, as the library's decode(ids, skip_special_tokens) with the
 * file's "decoder": supported are ByteLevel, Replace (String pattern),
 * ByteFallback, Fuse, Strip and Metaspace, alone or in one Sequence; no
 * decoder joins the pieces with ' '. Ids with no piece are dropped, as the
 * library drops them (a model's embedding table may be larger than the
 * tokenizer). With TOK_DECODE_SKIP_SPECIAL, added tokens with special = true
 * are dropped; other added tokens are kept and decoded like any piece.
 * The text is always valid UTF-8 (ill-formed byte sequences come out as
 * U+FFFD: maximal subparts for ByteLevel, one per byte for a ByteFallback
 * run, as the Rust library does). No clean-up of spaces before punctuation
 * (transformers' clean_up_tokenization_spaces is not the library's).
 * *ret_text is malloc'ed and NUL-terminated; the caller frees it.
 * -ENOTSUP (the message names the decoder) for a decoder not listed. */
#define TOK_DECODE_SKIP_SPECIAL 1
int tok_decode(const struct tok *t, const int32_t *ids, size_t n, int flags, char **ret_text, size_t *ret_len,
               struct sv_err *err);

#endif

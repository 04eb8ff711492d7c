/* generate: text generation with a key/value cache, as a user runs a model:
 * the prompt once through the model, then one position per new token.
 *
 * Sampling is llama2.c run.c's, step for step, so a seed gives the same text
 * as run.c with the same seed on the same model: temperature 0 is argmax
 * (the first of equal maxima); otherwise the logits are divided by the
 * temperature and softmaxed in float, a coin is drawn from run.c's RNG
 * (xorshift64*: s ^= s >> 12, s ^= s << 25, s ^= s >> 27, u32 = (s *
 * 0x2545F4914F6CDD1D) >> 32, coin = (u32 >> 8) / 2^24, one coin per token,
 * state = the seed), and the token is the first whose cumulative probability
 * exceeds the coin, over the whole vocabulary when top_p is 0 or >= 1, else
 * over the nucleus: tokens with p >= (1 - top_p) / (vocab - 1), sorted by
 * descending probability (qsort), cut after the first whose running sum
 * exceeds top_p, the coin scaled by that sum.
 *
 * Generation stops at the model's eos_token_id (config.json; the EOS id is
 * kept in the ids, dropped from the text), after max_tokens new tokens, when
 * the context (max_position_embeddings, or sliding_window when in effect) is
 * full, or when the text reaches max_text_bytes. The text is the tokenizer's
 * decode of prompt and continuation with special tokens skipped (tok_decode);
 * it is handed out as it grows, holding back a trailing U+FFFD that a later
 * byte may still complete.
 *
 * Memory: every layer converted to f32 and resident (the model's f32 size),
 * plus the cache, 2 * layers * (prompt + max_tokens) * kv_heads * head_dim
 * floats. Not thread-safe per struct gen; separate ones may run at once. */
#ifndef GENERATE_H
#define GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "sv_err.h"

struct gen;

/* Opens the model in model_dir (dense or our factored output) with room for
 * cap positions (<= 0: max_position_embeddings) and loads every layer. */
int gen_new(struct gen **ret, const char *model_dir, int cap, struct sv_err *err);
void gen_free(struct gen *g);
const struct config *gen_config(const struct gen *g);
/* Positions already in the cache. */
int gen_pos(const struct gen *g);
/* Empties the cache: the next gen_feed starts at position 0. */
void gen_rewind(struct gen *g);
/* Runs n ids (each < vocab) at the next n positions. logits: (vocab) of the
 * last position, or (n, vocab) of every one when all is set. */
int gen_feed(struct gen *g, const int32_t *ids, int n, int all, float *logits, struct sv_err *err);

/* run.c's sampler (the header's rule). */
struct gen_sampler {
    int vocab;
    float temperature, top_p;
    uint64_t state;
    struct gen_prob *scratch;   /* (vocab), for top-p */
};
/* seed must be non-zero (a zero xorshift state stays zero). */
int gen_sampler_init(struct gen_sampler *s, int vocab, double temperature, double top_p, uint64_t seed,
                     struct sv_err *err);
void gen_sampler_free(struct gen_sampler *s);
/* Picks the next id; logits (vocab) are overwritten when temperature > 0. */
int32_t gen_sample(struct gen_sampler *s, float *logits);

struct gen_params {
    const char *prompt;     /* need not be NUL-terminated */
    size_t prompt_len;
    int add_bos;            /* the tokenizer's BOS in front (what the post-processor adds) */
    int max_tokens;         /* new tokens, >= 1 */
    double temperature;     /* 0: greedy */
    double top_p;           /* 0 or >= 1: off */
    uint64_t seed;          /* non-zero; ignored when greedy */
    size_t max_text_bytes;  /* 0: no limit */
};

enum gen_finish { GEN_FINISH_EOS, GEN_FINISH_LENGTH, GEN_FINISH_CONTEXT, GEN_FINISH_TEXT_LIMIT };
const char *gen_finish_name(enum gen_finish f);   /* "eos", "length", "context", "text_limit" */

struct gen_result {
    int32_t *ids;           /* prompt then generated ids (malloc'ed) */
    size_t n_ids, n_prompt;
    char *text;             /* decoded, valid UTF-8, NUL-terminated (malloc'ed) */
    size_t text_len;
    enum gen_finish finish;
    double prompt_seconds, gen_seconds;
    double tokens_per_s;    /* generated tokens / gen_seconds */
};
void gen_result_free(struct gen_result *r);

/* Called with each new piece of text; a negative return stops the run with it. */
typedef int (*gen_text_fn)(void *ctx, const char *text, size_t len);
/* Called before each token; non-zero stops the run with -ECANCELED. */
typedef int (*gen_cancel_fn)(void *ctx);

/* The whole run: model_dir's config.json, model.safetensors and
 * tokenizer.json. on_text and cancel may be NULL. */
int gen_run(const char *model_dir, const struct gen_params *p, gen_text_fn on_text, void *text_ctx,
            gen_cancel_fn cancel, void *cancel_ctx, struct gen_result *ret, struct sv_err *err);

#endif

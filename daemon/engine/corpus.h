/* corpus: calibration and evaluation token streams.
 *
 * A path ending in ".i32" is read as pre-tokenized little-endian int32 ids
 * (used as they are: include the BOS yourself). Anything else is UTF-8 text,
 * tokenized whole with the model's tokenizer.json and one BOS in front. */
#ifndef CORPUS_H
#define CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "sv_err.h"

/* *ret_ids is malloc'ed. vocab > 0: every id must be below it. */
int corpus_load(const char *path, const char *model_dir, int vocab, int32_t **ret_ids, size_t *ret_n,
                struct sv_err *err);

#endif

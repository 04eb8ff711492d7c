/* fuzz_config: libFuzzer target for config.json parsing (daemon/engine/config.c).
 *
 * Input: the bytes of a config.json, written to a memfd and loaded through
 * config_load("/proc/self/fd/N"). A loaded config must satisfy what the
 * engine relies on without rechecking (config.h and the checks in
 * config_load): positive sizes within their limits, heads dividing evenly,
 * an even head_dim, and every low-rank rank within [0, min(d_out, d_in)] of
 * its projection. A failure must leave a negative code and a message. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

static struct fuzz_file file;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file_put(&file, "fuzz_config", data, size);
    struct config c;
    memset(&c, 0xa5, sizeof c);  /* untouched on failure: nothing to free */
    struct sv_err err = {0};
    int r = config_load(&c, path, &err);
    if (r < 0) {
        FUZZ_CHECK_FAILURE(r, NULL, err);
        return 0;
    }
    FUZZ_CHECK(r == 0, "config_load returned %d", r);
    FUZZ_CHECK(c.hidden >= 1 && c.hidden <= 1 << 16, "hidden %d", c.hidden);
    FUZZ_CHECK(c.intermediate >= 1 && c.intermediate <= 1 << 18, "intermediate %d", c.intermediate);
    FUZZ_CHECK(c.n_layers >= 1 && c.n_layers <= CONFIG_MAX_LAYERS, "n_layers %d", c.n_layers);
    FUZZ_CHECK(c.n_heads >= 1 && c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0, "heads %d / %d", c.n_heads,
               c.n_kv_heads);
    FUZZ_CHECK(c.head_dim >= 2 && c.head_dim % 2 == 0, "head_dim %d", c.head_dim);
    FUZZ_CHECK(c.vocab >= 1 && c.max_pos >= 1, "vocab %d max_pos %d", c.vocab, c.max_pos);
    FUZZ_CHECK(isfinite(c.rms_eps) && c.rms_eps > 0 && isfinite(c.rope_theta) && c.rope_theta > 0, "eps/theta");
    FUZZ_CHECK(c.bos_id >= -1 && c.eos_id >= -1 && c.sliding_window >= 0, "bos %d eos %d sw %d", c.bos_id,
               c.eos_id, c.sliding_window);
    FUZZ_CHECK(c.rank != NULL, "rank table");
    for (int l = 0; l < c.n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int d_out, d_in;
            config_proj_shape(&c, (enum config_proj)p, &d_out, &d_in);
            FUZZ_CHECK(d_out >= 1 && d_in >= 1, "layer %d %s shape %d x %d", l, config_proj_name(p), d_out, d_in);
            int k = c.rank[l][p];
            FUZZ_CHECK(k >= 0 && k <= (d_out < d_in ? d_out : d_in), "layer %d %s rank %d of %d x %d", l,
                       config_proj_name(p), k, d_out, d_in);
        }
    config_free(&c);
    FUZZ_CHECK(c.rank == NULL, "config_free");
    return 0;
}

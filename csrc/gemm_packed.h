/* The recurrent product of one step, h_prev W_hh^T (forward) or dGh W_hh (backward), for a
 * few rows of batch:
 *
 *   fr_matvec_rows / fr_matvec_cols_acc   small batch: read W_hh once per step for all rows;
 *   fr_pack_panels / fr_gemm_packed       larger batch: W_hh packed once per call into
 *                                         panels, then a register-tiled micro-kernel
 *                                         (AVX-512 or 256-bit: fr_panel_width).
 *
 * Each output element is summed over k in a fixed order whatever range of rows, columns or
 * panels a thread owns, which keeps results identical across thread counts. The body is in
 * gemm_packed_impl.h, included for float and double. Cython reaches these through
 * fastrnn/_cpu/_gemm_packed.pxd.
 */
#ifndef FASTRNN_GEMM_PACKED_H
#define FASTRNN_GEMM_PACKED_H
#include <stddef.h>
#include <string.h>
#include "compiler.h"

/* Set by tests (recurrent.pyx's _force_narrow_panels) to run the 256-bit micro-kernel on an
 * AVX-512 CPU, so that it stays tested there; read once per call through fr_panel_width. */
static int fr_narrow_panels_forced = 0;

static inline void fr_set_narrow_panels(int forced) {
    FR_FLAG_STORE(fr_narrow_panels_forced, forced != 0);
}

/* Whether the packed GEMM uses its AVX-512 micro-kernel (gemm_packed_impl.h). */
static inline int fr_wide_panels(void) {
    return fr_cpu_has_wide() && !FR_FLAG_LOAD(fr_narrow_panels_forced);
}

#define FR_BODY "gemm_packed_impl.h"
#include "instantiate.h"

#endif

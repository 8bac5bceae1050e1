/* The recurrent product of one step, h_prev W_hh^T (forward) or dGh W_hh (backward), for a
 * few rows of batch:
 *
 *   fr_matvec_rows / fr_matvec_cols_acc   small batch: read W_hh once per step for all rows;
 *   fr_pack_panels / fr_gemm_packed       larger batch: W_hh packed once per call into
 *                                         panels, then a register-tiled micro-kernel.
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

#define FR_BODY "gemm_packed_impl.h"
#include "instantiate.h"

#endif

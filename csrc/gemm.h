/* The large GEMMs of the kernels (input projections, weight gradients, dense layers) on
 * fastrnn's own AVX-512 packed micro-kernel (gemm_packed.h), where the CPU has AVX-512.
 *
 * Why not BLAS there: a BLAS picks its kernels from its build and its environment (an
 * OpenBLAS told OPENBLAS_CORETYPE=Haswell runs 256-bit kernels at half an AVX-512 core's
 * rate), while the recurrent loop already owns a 512-bit micro-kernel that matches a
 * well-configured BLAS on these shapes (~200 GFLOP/s per core, float32). Using it for the
 * few large products keeps the whole layer at the CPU's rate whatever BLAS is installed,
 * and sums each element in one fixed order (results do not depend on the thread count).
 * Without AVX-512 fr_gemm declines and the caller (_blas.pxd's gemm) calls BLAS.
 *
 * Blocking: K in blocks of FR_GEMM_KC (each packed panel, KC x NR, stays in L1), columns in
 * blocks of FR_GEMM_NC (the packed block of B, KC x NC, in L2/L3), rows in blocks of
 * FR_GEMM_MC (the block of A, MC x KC, in L2, read in place: packing a transposed A into
 * tiles was measured slower, its copy reading the same strided lines as the tiles do;
 * only a transposed A whose rows alias in the caches is copied, as it is, with a padded
 * stride: see gemm_impl.h).
 * Every C element is the sum over k of the K blocks in order, each block summed by the
 * micro-kernel in order: a fixed order whatever the caller's split into parts.
 */
#ifndef FASTRNN_GEMM_H
#define FASTRNN_GEMM_H
#include <stdlib.h>
#include "gemm_packed.h"

enum { FR_GEMM_KC = 256, FR_GEMM_MC = 128, FR_GEMM_NC = 2048 };

/* Set by tests (recurrent.pyx's _force_blas_gemm) so that the BLAS fallback stays tested on
 * an AVX-512 CPU. */
static int fr_blas_gemm_forced = 0;

static inline void fr_set_blas_gemm(int forced) {
    FR_FLAG_STORE(fr_blas_gemm_forced, forced != 0);
}

static inline int fr_own_gemm(void) {
    return fr_wide_panels() && !FR_FLAG_LOAD(fr_blas_gemm_forced);
}

/* Take the lines of a block of C into this core's cache, zeroed, before a product that
 * only writes them (beta 0): rows [0, rows) of row_bytes each, ld_bytes apart.
 *
 * Why: when another core read those lines last (the gate buffer, which the weight
 * gradients read by column halves on both cores, and the next call's input projection
 * writes by row halves), each plain store waits for the line to come over from the other
 * core, and on this VM the two cores sometimes sit apart, without a shared cache. rep stosb
 * takes whole lines without reading them: 4 MiB that the other core had read cost 170 us
 * to claim and write this way against 650 us with plain stores (benchmarks/cross_core.c).
 * Only where the caller asks: for a C that no cache holds (the word model's 28 MB of
 * logits) it is only extra work (that output layer took 0.4 ms longer). No-op where the
 * compiler has no x86 inline assembly. */
static inline void fr_claim_rows(void *c, int rows, size_t row_bytes, ptrdiff_t ld_bytes) {
#if defined(__GNUC__) && defined(__x86_64__)
    if ((ptrdiff_t)row_bytes == ld_bytes) {   /* contiguous rows: one span */
        row_bytes *= (size_t)rows;
        rows = 1;
    }
    for (int r = 0; r < rows; r++) {
        void *dst = (char *)c + r * ld_bytes;
        size_t count = row_bytes;
        __asm__ volatile("rep stosb" : "+D"(dst), "+c"(count) : "a"(0) : "memory");
    }
#else
    (void)c, (void)rows, (void)row_bytes, (void)ld_bytes;
#endif
}

#define FR_BODY "gemm_impl.h"
#include "instantiate.h"

#endif

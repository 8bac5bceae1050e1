/* Compiler machinery shared by the kernels in csrc/: per-CPU clones, forced inlining, and
 * the name pasting that instantiates a kernel body for float and double.
 *
 * FR_HOT marks the per-row functions (gate math, matrix-vector products, packed GEMM): with
 * gcc on x86-64 Linux they are compiled twice (AVX2+FMA and baseline) and the loader picks
 * one for the CPU, so the portable build (no -march=native) still runs 8-wide on the
 * machines that can.
 */
#ifndef FASTRNN_COMPILER_H
#define FASTRNN_COMPILER_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX2__) && !defined(FASTRNN_NO_CLONES)
#define FR_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FR_HOT
#endif

/* Everything FR_HOT calls must be inlined into each clone to be compiled for its ISA (gcc
 * does not inline a function built for a different target unless forced). */
#if defined(__GNUC__)
#define FR_INLINE static inline __attribute__((always_inline))
#else
#define FR_INLINE static inline
#endif

/* FR_CAT(fr_tile, f) -> fr_tile_f: the bodies *_impl.h are included once per element type,
 * with FR_SFX naming it. */
#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)

#endif

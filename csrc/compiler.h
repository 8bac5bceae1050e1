/* Compiler machinery shared by the kernels in csrc/: per-CPU clones, forced inlining, and
 * the name pasting that instantiates a kernel body for float and double.
 *
 * FR_HOT marks the per-row functions (gate math, matrix-vector products, packed GEMM): with
 * gcc on x86-64 Linux they are compiled three times (x86-64-v4: AVX-512; x86-64-v3:
 * AVX2+FMA; baseline) and the loader picks one for the CPU, so the portable build (no
 * -march=native) still runs 16-wide (8-wide) on the machines that can. Each clone computes
 * every element with the same operations in the same order; v4 and v3 both contract a*b+c
 * to one FMA, so they give the same bits, and baseline rounds the product separately.
 *
 * FR_WIDE marks the functions written for 512-bit vectors (the packed GEMM's AVX-512
 * micro-kernel, whose register blocking differs from the 256-bit one and so cannot be a
 * clone of it): FR_HAVE_WIDE says whether they are compiled at all, and FR_WIDE_RUNTIME
 * whether the CPU must be asked (fr_cpu_has_wide) before calling them. They may also use
 * PREFETCHW (prfchw: every AVX-512 CPU has it), which __builtin_prefetch(p, 1) becomes.
 *
 * FR_NARROW marks the functions written for 256-bit vectors with FMA (AVX2: x86-64-v3), the
 * twins of the batch-1 products for CPUs without AVX-512, where the compiler's own
 * vectorisation of the generic code spills its partial sums (matvec_narrow.h):
 * FR_HAVE_NARROW says whether they are compiled, fr_cpu_has_narrow whether the CPU runs them.
 */
#ifndef FASTRNN_COMPILER_H
#define FASTRNN_COMPILER_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(__AVX2__) && !defined(FASTRNN_NO_CLONES)
#define FR_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FR_WIDE __attribute__((target("arch=x86-64-v4,prfchw")))
#define FR_HAVE_WIDE 1
#define FR_WIDE_RUNTIME 1
#define FR_NARROW __attribute__((target("arch=x86-64-v3")))
#define FR_HAVE_NARROW 1
#elif defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512BW__) \
    && defined(__AVX512DQ__)
/* Built for an AVX-512 CPU (-march=native on one): no clones, the wide kernels always. */
#define FR_HOT
#define FR_WIDE
#define FR_HAVE_WIDE 1
#define FR_WIDE_RUNTIME 0
#else
#define FR_HOT
#define FR_HAVE_WIDE 0
#define FR_WIDE_RUNTIME 0
#endif

/* Built for the CPU (-march=native, or any build whose baseline has AVX2 and FMA): the
 * narrow twins need no target of their own, and every CPU the build runs on has them. */
#if !defined(FR_NARROW) && defined(__AVX2__) && defined(__FMA__)
#define FR_NARROW
#define FR_HAVE_NARROW 1
#define FR_NARROW_RUNTIME 0
#elif defined(FR_NARROW)
#define FR_NARROW_RUNTIME 1
#else
#define FR_HAVE_NARROW 0
#define FR_NARROW_RUNTIME 0
#endif

#if FR_WIDE_RUNTIME
/* True when the CPU runs x86-64-v4 code (AVX-512 F/BW/CD/DQ/VL) and PREFETCHW, the set
 * FR_WIDE targets: asked once (the answer cannot change while the process runs). */
static inline int fr_cpu_has_wide(void) {
    static int has = -1;   /* atomic: threads may ask at once (and get the same answer) */
    int known = __atomic_load_n(&has, __ATOMIC_RELAXED);
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("prfchw");
        __atomic_store_n(&has, known, __ATOMIC_RELAXED);
    }
    return known;
}
#else
static inline int fr_cpu_has_wide(void) { return FR_HAVE_WIDE; }
#endif

#if FR_NARROW_RUNTIME
/* True when the CPU runs x86-64-v3 code (AVX2, FMA, BMI2, ...), the set FR_NARROW targets. */
static inline int fr_cpu_has_narrow(void) {
    static int has = -1;   /* as in fr_cpu_has_wide */
    int known = __atomic_load_n(&has, __ATOMIC_RELAXED);
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("x86-64-v3");
        __atomic_store_n(&has, known, __ATOMIC_RELAXED);
    }
    return known;
}
#else
static inline int fr_cpu_has_narrow(void) { return FR_HAVE_NARROW; }
#endif

/* A process-wide int flag that tests flip between calls (e.g. fr_set_narrow_panels) and the
 * kernels read once per call, from any thread: relaxed atomics where the compiler has them. */
#if defined(__GNUC__)
#define FR_FLAG_STORE(flag, value) __atomic_store_n(&(flag), (value), __ATOMIC_RELAXED)
#define FR_FLAG_LOAD(flag) __atomic_load_n(&(flag), __ATOMIC_RELAXED)
#else
#define FR_FLAG_STORE(flag, value) ((flag) = (value))
#define FR_FLAG_LOAD(flag) (flag)
#endif

/* Which hand-written kernels a call may use: the CPU's best (0), none of the AVX-512 ones
 * (1: the packed GEMM's 256-bit micro-kernel and the AVX2 twins of the batch-1 products), or
 * not the AVX2 twins either (2: the generic, compiler-vectorised code). Tests set it (the
 * _force_kernels of recurrent.pyx and generate.pyx, each module its own copy) so that every
 * kind stays tested on a CPU that would pick another; kernels read it once per call. */
static int fr_kernel_cap = 0;

static inline void fr_set_kernel_cap(int cap) { FR_FLAG_STORE(fr_kernel_cap, cap); }

/* Whether a call uses the AVX-512 kernels (FR_WIDE). */
static inline int fr_wide_panels(void) {
    return fr_cpu_has_wide() && FR_FLAG_LOAD(fr_kernel_cap) == 0;
}

/* Whether a call uses the AVX2 twins (FR_NARROW): where the AVX-512 ones are not used. */
static inline int fr_narrow_twins(void) {
    return fr_cpu_has_narrow() && !fr_wide_panels() && FR_FLAG_LOAD(fr_kernel_cap) <= 1;
}

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

/* Body of update.h, included once per element type FR_REAL (suffix FR_SFX: f or d).
 * No include guard on purpose. */
#define REAL FR_REAL
#define FN(name) FR_CAT(name, FR_SFX)

/* Elements [i0, i1) of one Adam step, in place (see update.pyx's adam_update for the
 * arguments and the order of operations). The four arrays do not overlap (checked by the
 * caller); the two flags are loop-invariant, so the compiler unswitches the loop and
 * vectorises each version. */
FR_HOT static void FN(fr_adam_update)(ptrdiff_t i0, ptrdiff_t i1, REAL *restrict param,
                                      const REAL *restrict grad, REAL *restrict exp_avg,
                                      REAL *restrict exp_avg_sq, REAL beta1,
                                      REAL one_minus_beta1, REAL beta2, REAL one_minus_beta2,
                                      REAL sqrt_bias_correction2, REAL eps, REAL step_size,
                                      int l2, REAL l2_decay, REAL param_scale) {
    const int scale = param_scale != 1;
    for (ptrdiff_t i = i0; i < i1; i++) {
        REAL p = param[i];
        if (scale)
            p = p * param_scale;
        REAL g = grad[i];
        if (l2)
            g = p * l2_decay + g;
        REAL m = exp_avg[i] * beta1 + g * one_minus_beta1;
        REAL v = exp_avg_sq[i] * beta2 + (g * g) * one_minus_beta2;
        REAL denom = FR_SQRT(v) / sqrt_bias_correction2 + eps;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p - m / denom * step_size;
    }
}

/* The sum of x[i]^2 over [0, n) in double, in a fixed order: element i goes to partial sum
 * i % 8 (its square is exact in double), the tail to partial 0, and the eight partials are
 * added as a tree at the end. The order depends on n only, so a gradient's sum of squares
 * is the same whatever thread computes it (clip_grad_norm; update.pyx's sum_of_squares). */
FR_HOT static double FN(fr_sum_squares)(ptrdiff_t n, const REAL *restrict x) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            const double v = (double)x[i + j];
            acc[j] += v * v;
        }
    for (; i < n; i++) {
        const double v = (double)x[i];
        acc[0] += v * v;
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* x[i] = x[i] * scale over [i0, i1): NumPy's ``x *= scale`` with scale in x's precision. */
FR_HOT static void FN(fr_scale)(ptrdiff_t i0, ptrdiff_t i1, REAL *restrict x, REAL scale) {
    for (ptrdiff_t i = i0; i < i1; i++)
        x[i] = x[i] * scale;
}

#undef REAL
#undef FN

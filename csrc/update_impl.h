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

#undef REAL
#undef FN

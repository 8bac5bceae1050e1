/* Body of reduce.h, included once per element type FR_REAL (suffix FR_SFX: f or d).
 * No include guard on purpose. The arrays of one call do not overlap (the caller's outputs
 * are checked to share no memory with each other or with the gradients they sum). */
#define REAL FR_REAL
#define FN(name) FR_CAT(name, FR_SFX)

/* out[j] += a[r, j] for r = 0, 1, ..., rows - 1 in turn, columns [c0, c1), a's rows lda
 * apart; the same additions into out2 too unless it is NULL (an RNN's or LSTM's two bias
 * gradients are sums of the same dG columns: one pass over a serves both). */
FR_HOT static void FN(fr_add_column_sums)(ptrdiff_t rows, ptrdiff_t c0, ptrdiff_t c1,
                                          const REAL *a, ptrdiff_t lda, REAL *restrict out,
                                          REAL *restrict out2) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const REAL *restrict row = a + r * lda;
        if (out2 == NULL)
            for (ptrdiff_t j = c0; j < c1; j++)
                out[j] += row[j];
        else
            for (ptrdiff_t j = c0; j < c1; j++) {
                out[j] += row[j];
                out2[j] += row[j];
            }
    }
}

/* out[i] += parts[0][i] + ... + parts[count - 1][i] (added in that order), i in [i0, i1),
 * the parts n elements apart. */
FR_HOT static void FN(fr_add_parts)(ptrdiff_t n, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t count,
                                    const REAL *parts, REAL *restrict out) {
    for (ptrdiff_t q = 0; q < count; q++) {
        const REAL *restrict part = parts + q * n;
        for (ptrdiff_t i = i0; i < i1; i++)
            out[i] += part[i];
    }
}

#undef REAL
#undef FN

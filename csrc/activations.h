/* Activations used by every cell's gate math (csrc/cells_impl.h), for float and double.
 *
 * double: the libm functions, unchanged, so float64 results stay exact to libm (the
 *         finite-difference and PyTorch float64 checks compare at 1e-10).
 * float:  branch-free range reduction + polynomial, written with plain arithmetic and
 *         ternaries only, so that gcc -O3 vectorises a loop over j that calls them (one
 *         expf per element through libm was most of the time of the gate math). Accuracy
 *         is a few ulp (Cephes polynomials), far inside the float32 parity tolerance.
 *
 * They are FR_INLINE (compiler.h), so that each FR_HOT clone of the gate math gets its own
 * copy, compiled for its instruction set.
 */
#ifndef FASTRNN_ACTIVATIONS_H
#define FASTRNN_ACTIVATIONS_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "compiler.h"

/* e^x for float. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-5
 * polynomial for e^r, and 2^n built in the exponent bits. Inputs are clamped to the range
 * where 2^n is a normal float, so no inf/NaN/denormal paths are needed: callers only feed
 * it values whose true result saturates there anyway. */
FR_INLINE float fr_expf_poly(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round(x / ln2) without floorf (which would not vectorise without SSE4.1): adding and
     * subtracting 1.5 * 2^23 rounds to nearest in the default rounding mode. */
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* Unsigned shift: vectorises with or without -fwrapv (which Python's CFLAGS add). */
    uint32_t bits = (uint32_t)(int32_t)(n + 127.0f) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

FR_INLINE float fr_sigmoid_f(float x) { return 1.0f / (1.0f + fr_expf_poly(-x)); }

/* tanh for float. |x| < 0.625: Cephes' odd polynomial (the exp form below would cancel);
 * otherwise 1 - 2 / (e^{2|x|} + 1), which saturates to 1 for large |x|. Both are computed
 * and one is selected, so the loop stays branch-free. */
FR_INLINE float fr_tanh_f(float x) {
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (fr_expf_poly(2.0f * ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;
}

FR_INLINE double fr_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
FR_INLINE double fr_tanh_d(double x) { return tanh(x); }

#endif

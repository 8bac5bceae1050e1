/* One row of the fused softmax + cross-entropy (fastrnn/_cpu/loss.pyx), float32.
 *
 * NumPy's version makes six passes over the (N, V) logits (max, subtract into a new array,
 * exp, sum, divide, the target gather); a word-level output of 700 x 10000 spent ~6 ms
 * there per step. Here each row (V floats, in L1/L2) is read for its maximum, then
 * exponentiated into probs while summing, then scaled: one read of the logits from memory
 * and one write of probs.
 *
 * e^x is csrc/activations.h's fr_expf_poly (a few ulp); shifted logits below -87, whose
 * e^x is under 1.7e-38 (it cannot change a sum that is at least 1), give exactly 0. The sum
 * is kept in FR_SOFTMAX_LANES float lanes (vectorised; an error of a few ulp of the sum),
 * added in a fixed order, so a row's result does not depend on which thread computes it.
 */
#ifndef FASTRNN_SOFTMAX_H
#define FASTRNN_SOFTMAX_H
#include <math.h>
#include "activations.h"
#include "compiler.h"

#define FR_SOFTMAX_LANES 32

/* probs[j] = softmax(x)[j] for j < V (V >= 1); returns -log softmax(x)[target], in double.
 * probs may be x itself (the row is then overwritten in place: every element is read before
 * its own index is written, and x[target] is kept first), or must not overlap it; the
 * loops that write probs are marked ivdep, which says just that to the vectoriser.
 * With grad_scale (not NULL), probs gets the loss gradient instead, in the same pass:
 * (softmax(x) - onehot(target)) * grad_scale, each element as the NumPy code rounds it
 * (p * c, and (p - 1) * c at the target, p the softmax value). */
FR_HOT static double fr_softmax_xent_row_f(int V, const float *x, int target, float *probs,
                                           const float *grad_scale) {
    int blocks = V / FR_SOFTMAX_LANES, tail = blocks * FR_SOFTMAX_LANES;
    float lanes[FR_SOFTMAX_LANES];
    for (int l = 0; l < FR_SOFTMAX_LANES; l++)
        lanes[l] = x[0];
    for (int i = 0; i < blocks; i++) {
        const float *xi = x + i * FR_SOFTMAX_LANES;
        for (int l = 0; l < FR_SOFTMAX_LANES; l++)
            lanes[l] = xi[l] > lanes[l] ? xi[l] : lanes[l];
    }
    float max = x[0];
    for (int l = 0; l < FR_SOFTMAX_LANES; l++)
        max = lanes[l] > max ? lanes[l] : max;
    for (int j = tail; j < V; j++)
        max = x[j] > max ? x[j] : max;
    const float x_target = x[target];
    for (int l = 0; l < FR_SOFTMAX_LANES; l++)
        lanes[l] = 0.0f;
    for (int i = 0; i < blocks; i++) {
        const float *xi = x + i * FR_SOFTMAX_LANES;
        float *pi = probs + i * FR_SOFTMAX_LANES;
#pragma GCC ivdep
        for (int l = 0; l < FR_SOFTMAX_LANES; l++) {
            float s = xi[l] - max;
            float e = s < -87.0f ? 0.0f : fr_expf_poly(s);
            pi[l] = e;
            lanes[l] += e;
        }
    }
    for (int j = tail; j < V; j++) {
        float s = x[j] - max;
        float e = s < -87.0f ? 0.0f : fr_expf_poly(s);
        probs[j] = e;
        lanes[j - tail] += e;
    }
    for (int w = FR_SOFTMAX_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            lanes[l] += lanes[l + w];
    float sum = lanes[0];   /* >= 1: the maximum contributes e^0 */
    float inv = 1.0f / sum;
    if (grad_scale == NULL) {
        for (int j = 0; j < V; j++)
            probs[j] *= inv;
    } else {
        float c = *grad_scale, p_target = probs[target] * inv;
        for (int j = 0; j < V; j++)
            probs[j] = (probs[j] * inv) * c;
        probs[target] = (p_target - 1.0f) * c;
    }
    return log((double)sum) - ((double)x_target - (double)max);
}

#endif

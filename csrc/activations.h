/* Scalar activations used by every cell's gate math, for float and double.
 *
 * Kept in C so the float versions call the single-precision libm functions
 * (expf/tanhf) rather than promoting to double, which Cython cannot express
 * for a fused type without this indirection.
 */
#ifndef FASTRNN_ACTIVATIONS_H
#define FASTRNN_ACTIVATIONS_H
#include <math.h>

static inline float fr_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline double fr_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline float fr_tanhf(float x) { return tanhf(x); }
static inline double fr_tanh(double x) { return tanh(x); }

#endif

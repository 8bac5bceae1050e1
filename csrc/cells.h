/* Gate math of every cell, forward and backward, for one batch row and a range of hidden
 * units [j0, j1), plus the small matrix-vector kernels of the small-batch path.
 *
 * This is the one definition of the cell equations (see fastrnn/cells.py for them in
 * words). The body is written once, in cells_impl.h, and included twice: for float (with
 * the vectorisable activations of activations.h) and for double (exact libm). Cython
 * reaches these through fastrnn/_cpu/_cells.pxd.
 *
 * Why C and not Cython: the loops over j must auto-vectorise, which needs `restrict`
 * pointers (Cython cannot say restrict) and the FR_HOT clones for AVX2+FMA.
 */
#ifndef FASTRNN_CELLS_H
#define FASTRNN_CELLS_H
#include <stddef.h>
#include "activations.h"

/* Cell ids; they match fastrnn/cells.py and the enum in _cells.pxd. */
#define FR_K_RNN_TANH 0
#define FR_K_RNN_RELU 1
#define FR_K_GRU 2
#define FR_K_LSTM 3

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)

#define FR_REAL float
#define FR_SFX f
#include "cells_impl.h"
#undef FR_REAL
#undef FR_SFX

#define FR_REAL double
#define FR_SFX d
#include "cells_impl.h"
#undef FR_REAL
#undef FR_SFX

#endif

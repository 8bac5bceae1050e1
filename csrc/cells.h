/* Gate math of every cell, forward and backward, for one batch row and a range of hidden
 * units [j0, j1).
 *
 * This is the one definition of the cell equations in C (fastrnn/cells.py states them in
 * words; the GPU has its own copy in fastrnn/_gpu/kernels.cu, checked against this one by the
 * tests). The body is written once, in cells_impl.h, and included twice: for float (with
 * the vectorisable activations of activations.h) and for double (exact libm). Cython
 * reaches these through fastrnn/_cpu/_cells.pxd.
 *
 * Why C and not Cython: the loops over j must auto-vectorise, which needs `restrict`
 * pointers (Cython cannot say restrict) and the FR_HOT clones for AVX-512 and AVX2+FMA.
 */
#ifndef FASTRNN_CELLS_H
#define FASTRNN_CELLS_H
#include <stddef.h>
#include "activations.h"
#include "compiler.h"

/* Cell ids. The table is fastrnn/cells.py (CellSpec.kind); these copies, and those of
 * fastrnn/_gpu/kernels.cu, are checked against it by tests/test_cells.py (the compiled
 * module exports them as fastrnn._cpu.recurrent.CELL_IDS). */
#define FR_K_RNN_TANH 0
#define FR_K_RNN_RELU 1
#define FR_K_GRU 2
#define FR_K_LSTM 3
#define FR_K_RNN_IDENTITY 4

#define FR_BODY "cells_impl.h"
#include "instantiate.h"

#endif

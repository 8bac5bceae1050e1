/* Sums over rows in the weight gradients (fastrnn/_cpu/recurrent.pyx): the bias gradients
 * (column sums of dG over every token) and the reduction of per-thread partial dW. Written
 * in C with per-CPU clones (compiler.h) so that they run on 512- or 256-bit vectors: as
 * Cython loops, built for the baseline x86-64, the bias sums read dG at about 20 GB/s
 * (0.4 ms of the (32, 64, 128, 256) LSTM's backward on 2 threads).
 *
 * Each output element gets the same additions in the same order as the scalar loops they
 * replace (rows in order), so the results are unchanged bit for bit. */
#ifndef FASTRNN_REDUCE_H
#define FASTRNN_REDUCE_H
#include <stddef.h>
#include "compiler.h"

#define FR_BODY "reduce_impl.h"
#include "instantiate.h"

#endif

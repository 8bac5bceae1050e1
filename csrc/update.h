/* The element loop of the fused Adam step (fastrnn/_cpu/update.pyx), with per-CPU clones
 * (compiler.h) so that it runs on 512- or 256-bit vectors where the CPU has them: in Cython's
 * parallel loop gcc left it scalar (one square root and one division per element: 0.63 ns
 * per float32 element on one core, measured on a 1 MiB parameter).
 *
 * The operations and their order are update.pyx's (NumPy's): vector square roots and
 * divisions round as the scalar ones do, and the extension is built without contraction
 * (-ffp-contract=off) in every clone, so results are NumPy's bit for bit. */
#ifndef FASTRNN_UPDATE_H
#define FASTRNN_UPDATE_H
#include <math.h>
#include <stddef.h>
#include "compiler.h"

/* sqrtf for float (no promotion to double: NumPy's float32 square root), sqrt for double. */
#define FR_SQRT(x) _Generic((x), float: sqrtf, default: sqrt)(x)

#define FR_BODY "update_impl.h"
#include "instantiate.h"

#endif

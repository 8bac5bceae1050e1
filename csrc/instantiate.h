/* Includes the kernel body named by FR_BODY twice: for float (FR_REAL float, names suffixed
 * _f) and for double (_d). The body uses FR_CAT(name, FR_SFX) for its function names
 * (compiler.h). No include guard on purpose: each public header includes it once with its
 * own FR_BODY. */
#define FR_REAL float
#define FR_SFX f
#include FR_BODY
#undef FR_REAL
#undef FR_SFX

#define FR_REAL double
#define FR_SFX d
#include FR_BODY
#undef FR_REAL
#undef FR_SFX

#undef FR_BODY

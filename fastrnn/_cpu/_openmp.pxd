# OpenMP calls with serial fallbacks, so the extension builds and runs where the compiler has no
# OpenMP. setup.py defines FASTRNN_HAVE_OPENMP when it compiles with -fopenmp.
cdef extern from *:
    """
    #ifdef FASTRNN_HAVE_OPENMP
    #include <omp.h>
    static int fr_openmp_enabled(void) { return 1; }
    static int fr_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fr_openmp_enabled(void) { return 0; }
    static int fr_omp_max_threads(void) { return 1; }
    #endif
    """
    int fr_openmp_enabled() noexcept nogil
    int fr_omp_max_threads() noexcept nogil

# OpenMP calls with serial fallbacks, so the extension builds and runs where the compiler has no
# OpenMP. setup.py defines FASTRNN_HAVE_OPENMP when it compiles with -fopenmp.
cdef extern from *:
    """
    #ifdef FASTRNN_HAVE_OPENMP
    #include <omp.h>
    static int fr_openmp_enabled(void) { return 1; }
    static int fr_omp_max_threads(void) { return omp_get_max_threads(); }
    /* Threads in the current team: can be fewer than asked for (nested regions, limits). */
    static int fr_omp_team_size(void) { return omp_get_num_threads(); }
    /* An orphaned barrier: binds to the parallel region of the caller. */
    static void fr_omp_barrier(void) {
        #pragma omp barrier
    }
    #else
    static int fr_openmp_enabled(void) { return 0; }
    static int fr_omp_max_threads(void) { return 1; }
    static int fr_omp_team_size(void) { return 1; }
    static void fr_omp_barrier(void) { }
    #endif
    """
    int fr_openmp_enabled() noexcept nogil
    int fr_omp_max_threads() noexcept nogil
    int fr_omp_team_size() noexcept nogil
    void fr_omp_barrier() noexcept nogil

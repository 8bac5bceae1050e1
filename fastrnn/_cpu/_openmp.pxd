# OpenMP calls with serial fallbacks, so the extension builds and runs where the compiler has no
# OpenMP. setup.py defines FASTRNN_HAVE_OPENMP when it compiles with -fopenmp.
#
# Fork: libgomp keeps the threads of its last team for reuse; a child made by fork() has none
# of them but still believes it does, so its first parallel region with more than one thread
# waits forever (measured: a 2-thread region hangs, a 1-thread region runs). The flag below is
# static, so each extension module has its own: each calls join_fork_guard() once at import,
# which installs its fork handler and, in a module first imported in a forked child, learns
# of the fork from fastrnn._cpu.openmp (which fastrnn imports first, through fastrnn.threads).
# From then on a forked child (and its own children) runs every region on one thread:
# fr_team_threads(n) is 1 there. The kernels split their work by the thread count they were
# asked for, not by the team that runs it, so the child's results are the parent's, bit for
# bit.
cdef extern from *:
    """
    #ifdef FASTRNN_HAVE_OPENMP
    #include <omp.h>
    #include <pthread.h>
    static int fr_openmp_enabled(void) { return 1; }
    static int fr_omp_max_threads(void) { return omp_get_max_threads(); }
    /* Threads in the current team: can be fewer than asked for (nested regions, limits). */
    static int fr_omp_team_size(void) { return omp_get_num_threads(); }
    /* An orphaned barrier: binds to the parallel region of the caller. */
    static void fr_omp_barrier(void) {
        #pragma omp barrier
    }
    static volatile int fr_in_forked_child = 0;
    static void fr_mark_forked_child(void) { fr_in_forked_child = 1; }
    static void fr_install_fork_guard(void) {
        static int installed = 0;
        if (!installed) {
            pthread_atfork(NULL, NULL, fr_mark_forked_child);
            installed = 1;
        }
    }
    #else
    static int fr_openmp_enabled(void) { return 0; }
    static int fr_omp_max_threads(void) { return 1; }
    static int fr_omp_team_size(void) { return 1; }
    static void fr_omp_barrier(void) { }
    static const int fr_in_forked_child = 0;
    static void fr_install_fork_guard(void) { }
    static void fr_mark_forked_child(void) { }
    #endif
    /* Threads a parallel region may start: n, or 1 in a forked child (see above). */
    static inline int fr_team_threads(int n) { return fr_in_forked_child || n < 1 ? 1 : n; }
    static inline int fr_forked_child(void) { return fr_in_forked_child; }
    """
    int fr_openmp_enabled() noexcept nogil
    int fr_omp_max_threads() noexcept nogil
    int fr_omp_team_size() noexcept nogil
    void fr_omp_barrier() noexcept nogil
    void fr_install_fork_guard() noexcept nogil
    void fr_mark_forked_child() noexcept nogil
    int fr_team_threads(int n) noexcept nogil
    int fr_forked_child() noexcept nogil


cdef inline int join_fork_guard() except -1:
    """Call once at the import of each kernel module (see the top of this file)."""
    fr_install_fork_guard()
    from fastrnn._cpu.openmp import in_forked_child
    if in_forked_child():
        # First imported in a forked child: the parent's OpenMP threads are gone here too.
        fr_mark_forked_child()
    return 0

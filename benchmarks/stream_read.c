/* How fast this machine's cores can read a block that does not fit in their L2 caches: the
 * limit of every step that streams a weight matrix once (batch-1 recurrent steps and
 * batch-1 generation, where each weight is used once per step). Each of T threads reads its
 * own block of MIB MiB over and over with AVX-512 loads; the best of 5 trials is printed.
 *
 *     gcc -O2 -mavx512f -fopenmp benchmarks/stream_read.c -o /tmp/stream_read
 *     /tmp/stream_read 2 2.0      # 2 threads, 2 MiB each (a 4 MiB W_hh split in two)
 *
 * Not part of the package or its build (it needs an AVX-512 CPU); README "Results" quotes it.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s THREADS MIB_PER_THREAD\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    double mib = atof(argv[2]);
    size_t n = (size_t)(mib * 1048576 / 4) / 64 * 64;   /* floats per thread, whole lines */
    if (threads < 1 || n == 0) {
        fprintf(stderr, "THREADS must be >= 1 and MIB_PER_THREAD > 0\n");
        return 2;
    }
    int reps = (int)(400.0 * 2.0 / mib) + 1;
    double best = 1e30;
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        float *a = aligned_alloc(64, n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            a[i] = 1.0f / (float)(i + 1);
        for (int trial = 0; trial < 5; trial++) {
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
#pragma omp barrier
            double t0 = omp_get_wtime();
            for (int r = 0; r < reps; r++)
                for (size_t i = 0; i < n; i += 64) {
                    s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
                    s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
                    s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
                    s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
                }
#pragma omp barrier
            double t = omp_get_wtime() - t0;
            sink += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1),
                                                       _mm512_add_ps(s2, s3)));
#pragma omp master
            if (t < best)
                best = t;
        }
        free(a);
    }
    printf("%d threads x %.2f MiB: %.1f GB/s (checksum %g)\n", threads, mib,
           (double)threads * n * sizeof(float) * reps / best / 1e9, sink);
    return 0;
}

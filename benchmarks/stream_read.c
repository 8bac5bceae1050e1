/* How fast this machine's cores can read a block that does not fit in their L2 caches: the
 * limit of every step that streams a weight matrix once (batch-1 recurrent steps and
 * batch-1 generation, where each weight is used once per step). Each of T threads reads its
 * own block of MIB MiB over and over with AVX-512 loads (AVX2 loads where the build has no
 * AVX-512); the best of 5 trials is printed.
 *
 *     gcc -O2 -march=native -fopenmp benchmarks/stream_read.c -o /tmp/stream_read
 *     /tmp/stream_read 2 2.0      # 2 threads, 2 MiB each (a 4 MiB W_hh split in two)
 *
 * Not part of the package or its build (it needs AVX2 or AVX-512); README "Results" quotes it.
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
#ifdef __AVX512F__
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
#else   /* AVX2: eight 256-bit loads per 64 floats, into eight sums (the adds' latency) */
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
            __m256 s4 = s0, s5 = s0, s6 = s0, s7 = s0;
#endif
#pragma omp barrier
            double t0 = omp_get_wtime();
            for (int r = 0; r < reps; r++)
                for (size_t i = 0; i < n; i += 64) {
#ifdef __AVX512F__
                    s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
                    s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
                    s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
                    s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
#else
                    s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i));
                    s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 8));
                    s2 = _mm256_add_ps(s2, _mm256_load_ps(a + i + 16));
                    s3 = _mm256_add_ps(s3, _mm256_load_ps(a + i + 24));
                    s4 = _mm256_add_ps(s4, _mm256_load_ps(a + i + 32));
                    s5 = _mm256_add_ps(s5, _mm256_load_ps(a + i + 40));
                    s6 = _mm256_add_ps(s6, _mm256_load_ps(a + i + 48));
                    s7 = _mm256_add_ps(s7, _mm256_load_ps(a + i + 56));
#endif
                }
#pragma omp barrier
            double t = omp_get_wtime() - t0;
#ifdef __AVX512F__
            sink += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1),
                                                       _mm512_add_ps(s2, s3)));
#else
            float lanes[8];
            __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
                                       _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7)));
            _mm256_storeu_ps(lanes, sum);
            for (int k = 0; k < 8; k++)
                sink += lanes[k];
#endif
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

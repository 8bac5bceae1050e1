/* What it costs two threads to touch the same cache lines: the figures behind "Two cores" in
 * the README's "How it is built".
 *
 *     gcc -O2 -march=native -fopenmp benchmarks/cross_core.c -o /tmp/cross_core && /tmp/cross_core
 *
 * 1. writes: each thread writes its half of 8 MiB with full-line stores, after (a) nothing
 *    else touched it, (b) the other thread read it all, (c) each thread read the other's
 *    half; (d) is (c) with PREFETCHW 16 lines ahead, (e) with streaming stores.
 * 2. the transposed pack of W_hh^T (H = 256, 4H x H floats, 32-wide panels, in blocks of 8 k
 *    as csrc/gemm_panels_impl.h does), each thread packing half of the panels and then both
 *    reading all of them, as the recurrent loops do: without and with PREFETCHW two blocks
 *    ahead.
 * 3. rows of 4 KiB, 32 per step, 200 steps (25 MiB), read and written by two threads: every
 *    other row each (the old packed-loop split) or a contiguous half each.
 * On a shared virtual machine whose cores sometimes sit apart, run it a few times: the
 * figures are bimodal (see 2's pack times).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPS 100

static double writes(int after, int mode) {
    const long n = 2L << 20;   /* floats: 8 MiB */
    float *g = aligned_alloc(64, n * sizeof(float));
    memset(g, 0, n * sizeof(float));
    double total = 0;
    volatile float sink;
    for (int r = 0; r < REPS; r++) {
#pragma omp parallel num_threads(2) reduction(+ : total)
        {
            int t = omp_get_thread_num();
            long lo = t * n / 2, hi = (t + 1) * n / 2;
            __m512 v = _mm512_set1_ps((float)r);
            double t0 = omp_get_wtime();
            for (long i = lo; i < hi; i += 16) {
                if (mode == 1 && i + 256 < hi)
                    _mm_prefetch((const char *)(g + i + 256), _MM_HINT_ET0);
                if (mode == 2)
                    _mm512_stream_ps(g + i, v);
                else
                    _mm512_store_ps(g + i, v);
                v = _mm512_add_ps(v, v);
            }
            _mm_sfence();
            if (r > 2)
                total += omp_get_wtime() - t0;
#pragma omp barrier
            float s = 0;
            if (after == 1 && t == 0)
                for (long i = 0; i < n; i += 16) s += g[i];
            if (after == 2)
                for (long i = 0; i < n; i += 16) s += g[(i + n / 2) % n];
            sink = s;
        }
    }
    free(g);
    (void)sink;
    return total / 2 / (REPS - 3) * 1e6;
}

static void pack(int K, int p0, int p1, const float *W, float *Bp, int prefetch) {
    enum { NR = 32 };
    for (int p = p0; p < p1; p++) {
        float *dst = Bp + (long)p * K * NR;
        for (int k0 = 0; k0 < K; k0 += 8) {
            if (prefetch)
                for (long i = ((long)p * K + k0 + 16) * NR; i < ((long)p * K + k0 + 24) * NR
                                                              && i < (long)p1 * K * NR; i += 16)
                    __builtin_prefetch(Bp + i, 1);
            for (int c = 0; c < NR; c++)
                for (int k = k0; k < k0 + 8 && k < K; k++)
                    dst[(long)k * NR + c] = W[(long)(p * NR + c) * K + k];
        }
    }
}

static double packs(int prefetch) {
    const int H = 256, GH = 1024, panels = GH / 32;
    float *W = malloc(sizeof(float) * GH * H), *Bp = aligned_alloc(64, sizeof(float) * GH * H);
    for (int i = 0; i < GH * H; i++) W[i] = (float)i;
    double total = 0;
    volatile float sink;
    for (int r = 0; r < 10 * REPS; r++) {
#pragma omp parallel num_threads(2) reduction(+ : total)
        {
            int t = omp_get_thread_num();
            double t0 = omp_get_wtime();
            pack(H, t * panels / 2, (t + 1) * panels / 2, W, Bp, prefetch);
            if (r > 2)
                total += omp_get_wtime() - t0;
#pragma omp barrier
            float s = 0;
            for (long i = 0; i < (long)GH * H; i += 16) s += Bp[i];
            sink = s;
        }
    }
    free(W);
    free(Bp);
    (void)sink;
    return total / 2 / (10 * REPS - 3) * 1e6;
}

static double rows(int contiguous) {
    const long rows = 6400, width = 1024;   /* 4 KiB rows */
    float *g = aligned_alloc(4096, rows * width * sizeof(float));
    for (long i = 0; i < rows * width; i++) g[i] = 1;
    double t0 = 0;
    for (int r = 0; r < 30; r++) {
        if (r == 3)
            t0 = omp_get_wtime();
#pragma omp parallel num_threads(2)
        {
            int k = omp_get_thread_num();
            __m512 a = _mm512_set1_ps(0.999f);
            for (int s = 0; s < 200; s++)
                for (int j = 0; j < 16; j++) {
                    float *p = g + (s * 32 + (contiguous ? 16 * k + j : k + 2 * j)) * width;
                    for (int i = 0; i < width; i += 16)
                        _mm512_store_ps(p + i, _mm512_mul_ps(_mm512_load_ps(p + i), a));
                }
        }
    }
    double per = (omp_get_wtime() - t0) / 27 * 1e3;
    free(g);
    return per;
}

int main(void) {
    printf("1. each thread writes its 4 MiB half (us): untouched %.0f; after the other thread read"
           " all %.0f; after each read the other's half %.0f, with PREFETCHW %.0f, streaming"
           " stores %.0f\n",
           writes(0, 0), writes(1, 0), writes(2, 0), writes(2, 1), writes(2, 2));
    printf("2. transposed pack of W_hh^T, H = 256, per thread (us): %.1f plain, %.1f with"
           " PREFETCHW\n", packs(0), packs(1));
    printf("3. 4 KiB rows, 25 MiB read and written (ms): every other row per thread %.2f,"
           " contiguous halves %.2f\n", rows(0), rows(1));
    return 0;
}

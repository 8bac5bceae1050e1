# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled autoregressive generation: the whole per-token loop without the GIL.

Per network step, for every layer: input gates (layer 0 from a precomputed (V, G*H_0) table
``embedding @ W_ih^T + b_ih`` or a per-token projection of the gathered embeddings; layers
above from the layer below, whose size H_{l-1} may differ), recurrent product h @ W_hh^T, the shared fused gate math
(_cells.pxd); then the output layer, a float64 softmax with temperature, banned ids, top-k
(partial selection), top-p (sorted nucleus), one draw from a pre-drawn uniform, and the
drawn token is fed back. Before ``min_length`` tokens have been drawn, the stop token is
treated as banned (probability zero, the rest renormalised).

Steps: the prime's P tokens, then the generated tokens except the last (which is emitted but
not consumed), so a call makes P + n_tokens - 1 network steps and n_tokens draws. A row that
draws the stop token is finished: its state stays the state after its last consumed token.

Two ways to use the threads (chosen by the caller):

  split rows   every thread owns a block of hidden units (and of output-layer rows) for the
               whole batch: G small products per layer on its slice of the weights, which
               then stays in that core's cache. Barriers after each layer, after the logits
               and after the draws. Best at small batch.
  split batch  every thread owns a slice of the batch for the whole run, no synchronisation
               (as in recurrent.pyx). Best at large batch.

Draws use uniforms drawn up front, so tokens do not depend on the thread count.

Sizes and offsets are 64-bit (Py_ssize_t): with many rows, B*G*H passes 2^31 elements (a
1024-unit LSTM at 233017 rows). generate_loop checks that every size handed to BLAS fits a C
int and computes its buffer sizes before allocating anything (_buffer_sizes).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport exp, INFINITY
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.stdlib cimport malloc, free, qsort
from libc.string cimport memcpy

import sys

import numpy as np

from ._blas cimport gemm, gemv

cdef extern from "bf16.h" nogil:
    size_t fr_bf16_packed_size(int rows, int K)
    void fr_bf16_pack(int rows, int K, const float* W, Py_ssize_t ldw, uint16_t* dst)
    void fr_matvec_bf16(int rows, int K, const uint16_t* P, const float* x, float* y,
                        int accumulate)
from ._gemm_packed cimport fr_matvec_rows_acc_simd_f, fr_set_kernel_cap
from ._cells cimport K_LSTM, cell_forward_row, gate_count
from ._checks cimport _blas_int, _check_len, _check_shape
from ._openmp cimport (fr_omp_barrier, fr_omp_team_size, fr_openmp_enabled, fr_team_threads,
                       join_fork_guard)
from ._parts cimport COL_ALIGN, _share, _split_at

join_fork_guard()


ctypedef struct Pair:
    double p
    int64_t i


ctypedef struct Ctx:
    int kind, nt
    Py_ssize_t L, G, E, V, B, P, n_tokens
    const Py_ssize_t* hs        # (L,) hidden size of each layer
    const Py_ssize_t* hoff      # (L,) offset of layer l's (B, H_l) states in hbuf: B * sum(H_m, m < l)
    Py_ssize_t hbuf_half        # B * sum(H_l): one parity of hbuf
    bint split_rows, greedy
    bint bf16                   # split_rows only: this thread's weights as bfloat16 (bf16.h)
    int top_k
    double temperature, top_p
    int64_t stop_id
    Py_ssize_t min_length       # draws t < min_length never give stop_id
    const int64_t* prime        # (B, P)
    const double* uniforms      # (n_tokens, B), NULL when greedy
    const uint8_t* banned       # (V,)
    void** w_ih                 # L pointers: (G*H_l, in_l), in_l = E or H_{l-1}
    void** w_hh                 # L pointers: (G*H_l, H_l)
    void** b_ih                 # L pointers: (G*H_l,)
    void** b_hh                 # L pointers: (G*H_l,)
    void** c                    # L pointers: (B, H_l) LSTM cell states, in place; NULL otherwise
    void* table                 # (V, G*H_0) or NULL
    void* emb                   # (V, E), or NULL when table is given
    void* out_b                 # (V,)
    void* hbuf                  # 2 parities of the packed (B, H_l) hidden states of every layer
    void* xbuf                  # (B, E) gathered embeddings (no table)
    void* logits                # (B, V)
    void* scratch               # (nt, S) per-thread gate buffers and local biases
    Py_ssize_t scratch_stride   # S (_scratch_stride)
    Py_ssize_t scratch_rows     # rows of the batch a thread's gate buffers hold
    Py_ssize_t scratch_units    # the most hidden units a thread owns in one layer
    Pair* pairs                 # (nt, V)
    int64_t* tokens             # (B, n_tokens)
    int64_t* lengths            # (B,)
    int64_t* cur                # (B,) the token each row consumes at the current step
    uint8_t* done               # (B,)
    uint8_t* par_of             # (B,) hbuf parity holding each finished row's final h


# ---------------------------------------------------------------------------------------------
# Sampling from one row of logits.
# ---------------------------------------------------------------------------------------------

cdef inline bint _before(const Pair* a, const Pair* b) noexcept nogil:
    """Total order for selection: larger probability first, then smaller id."""
    return a.p > b.p or (a.p == b.p and a.i < b.i)


cdef int _cmp_pairs(const void* a, const void* b) noexcept nogil:
    if _before(<const Pair*>a, <const Pair*>b):
        return -1
    if _before(<const Pair*>b, <const Pair*>a):
        return 1
    return 0


cdef inline void _swap(Pair* a, Pair* b) noexcept nogil:
    cdef Pair t = a[0]
    a[0] = b[0]
    b[0] = t


cdef void _select_top(Pair* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Partial selection: afterwards a[:k] holds the k first pairs in _before order (unsorted)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, mid, i, store
    cdef Pair pivot
    while hi > lo:
        mid = lo + (hi - lo) // 2
        # median of three to the end as the pivot
        if _before(&a[mid], &a[lo]):
            _swap(&a[mid], &a[lo])
        if _before(&a[hi], &a[lo]):
            _swap(&a[hi], &a[lo])
        if _before(&a[mid], &a[hi]):
            _swap(&a[mid], &a[hi])
        pivot = a[hi]
        store = lo
        for i in range(lo, hi):
            if _before(&a[i], &pivot):
                _swap(&a[i], &a[store])
                store += 1
        _swap(&a[store], &a[hi])
        if store == k - 1 or store == k:
            return
        if store < k:
            lo = store + 1
        else:
            hi = store - 1


cdef int64_t _sample_row(const floating* logits, Py_ssize_t V, const uint8_t* banned,
                         int64_t also_banned, bint greedy, double temperature, int top_k,
                         double top_p, double u, Pair* pairs) noexcept nogil:
    """One token from one row of logits. Tokens with ``banned[v]`` and the token
    ``also_banned`` (-1: none) get probability zero: they are left out of the softmax, so the
    others are renormalised among themselves. The caller guarantees one token is allowed."""
    cdef Py_ssize_t v, n = 0, i
    cdef int64_t best = -1
    cdef double m = -INFINITY, z, total, cum, target
    if greedy:
        for v in range(V):
            if banned[v] or v == also_banned:
                continue
            if best < 0 or logits[v] > logits[best]:
                best = v
        return best
    for v in range(V):
        if not banned[v] and v != also_banned:
            z = <double>logits[v] / temperature
            if z > m:
                m = z
    for v in range(V):
        if not banned[v] and v != also_banned:
            pairs[n].p = exp(<double>logits[v] / temperature - m)
            pairs[n].i = v
            n += 1
    if 0 < top_k < n:
        _select_top(pairs, n, top_k)
        n = top_k
    if top_p < 1.0 and n > 1:
        qsort(pairs, n, sizeof(Pair), _cmp_pairs)
        total = 0
        for i in range(n):
            total += pairs[i].p
        target = top_p * total
        cum = 0
        for i in range(n):
            cum += pairs[i].p
            if cum >= target:
                n = i + 1
                total = cum   # the nucleus's mass, summed in the same order as the draw below
                break
    else:
        total = 0
        for i in range(n):
            total += pairs[i].p
    target = u * total
    cum = 0
    for i in range(n):
        cum += pairs[i].p
        if target < cum:
            return pairs[i].i
    # u * total rounded up to the total: the last candidate with a nonzero probability
    for i in range(n - 1, -1, -1):
        if pairs[i].p > 0:
            return pairs[i].i
    return pairs[0].i


# ---------------------------------------------------------------------------------------------
# The loop, one thread's share of it.
# ---------------------------------------------------------------------------------------------

cdef enum:
    # Up to this many rows a float32 product runs on the matrix-vector kernel (_rows_times_wt).
    MATVEC_ROWS = 8


cdef inline void _rows_times_wt(Py_ssize_t nb, Py_ssize_t n_out, Py_ssize_t k,
                                const floating* x, Py_ssize_t ldx, const floating* w,
                                Py_ssize_t ldw, floating beta, floating* out,
                                Py_ssize_t ldo) noexcept nogil:
    """out[nb, n_out] = x[nb, k] @ w[n_out, k]^T + beta * out, beta 0 or 1.

    float32 with up to MATVEC_ROWS rows, on a CPU with AVX-512 or AVX2: fastrnn's
    matrix-vector kernel (its AVX-512 or AVX2 twin), which reads w once for all rows at the
    cache's streaming rate (BLAS sgemm re-packs w on every call: 2 samples took 161 against
    29 µs per token; at one row BLAS sgemv was as fast). Else BLAS (gemv for one row)."""
    cdef const float* xs[MATVEC_ROWS]
    cdef float* ys[MATVEC_ROWS]
    cdef Py_ssize_t b
    if floating is float and nb <= MATVEC_ROWS:
        for b in range(nb):
            xs[b] = x + b * ldx
            ys[b] = out + b * ldo
        if fr_matvec_rows_acc_simd_f(0, <int>n_out, <int>k, w, ldw, <int>nb, xs, ys,
                                     beta != 0) == 0:
            return
    if nb == 1:
        gemv(False, n_out, k, <floating>1, w, ldw, x, beta, out)
    else:
        gemm(False, True, nb, n_out, k, <floating>1, x, ldx, w, ldw, beta, out, ldo)


cdef void _feed(Ctx* ctx, const floating* emb, Py_ssize_t b, int64_t tok) noexcept nogil:
    """Row b consumes ``tok`` at the next step."""
    ctx.cur[b] = tok
    if ctx.table == NULL:
        memcpy(<floating*>ctx.xbuf + b * ctx.E, emb + tok * ctx.E, ctx.E * sizeof(floating))


cdef inline Py_ssize_t _unit_start(Ctx* ctx, Py_ssize_t H, int tid) noexcept nogil:
    """First hidden unit of a layer of H units this thread owns (all units: split batch)."""
    return _split_at(H, tid, ctx.nt) if ctx.split_rows else 0


cdef inline Py_ssize_t _unit_stop(Ctx* ctx, Py_ssize_t H, int tid) noexcept nogil:
    return _split_at(H, tid + 1, ctx.nt) if ctx.split_rows else H


cdef inline Py_ssize_t _weight_block_columns(Ctx* ctx, Py_ssize_t l) noexcept nogil:
    """Columns of layer l's W_ih in a thread's weight blocks: its input size, or 0 for layer 0
    when the (V, G*H_0) table replaces its W_ih."""
    if l == 0:
        return 0 if ctx.table != NULL else ctx.E
    return ctx.hs[l - 1]


cdef void _worker(Ctx* ctx, const floating* out_w, int tid) noexcept nogil:
    cdef Py_ssize_t L = ctx.L, G = ctx.G, E = ctx.E, V = ctx.V, B = ctx.B, P = ctx.P
    cdef Py_ssize_t nt = ctx.nt, H, Hin, GH0 = G * ctx.hs[0], Htop = ctx.hs[ctx.L - 1]
    cdef Py_ssize_t half = ctx.hbuf_half, U = ctx.scratch_units
    cdef int kind = ctx.kind
    cdef bint sync = ctx.split_rows and nt > 1
    cdef Py_ssize_t j0, j1, v0, v1, b0, b1, s0, s1, nj, nv, GL
    cdef Py_ssize_t s, t, l, k, b, lo, hi, nb, par = 0, in_dim
    cdef Py_ssize_t n_steps = P + ctx.n_tokens - 1
    cdef int64_t tok
    if ctx.split_rows:
        v0 = _share(V, tid, nt)
        v1 = _share(V, tid + 1, nt)
        b0 = 0
        b1 = B
        s0 = _share(B, tid, nt)
        s1 = _share(B, tid + 1, nt)
    else:
        v0 = 0
        v1 = V
        b0 = _share(B, tid, nt)
        b1 = _share(B, tid + 1, nt)
        s0 = b0
        s1 = b1
    nv = v1 - v0
    # Thread scratch (_scratch_stride), sized for U = ctx.scratch_units, the most units this
    # thread owns in any layer: for the R = ctx.scratch_rows rows from b0 (all rows when
    # splitting rows, its own slice when splitting the batch), gates (R, G*nj), recurrent
    # gates (R, G*nj), GRU hn (R, nj) of the current layer (nj = its units there); then the
    # biases of this thread's units in block layout (k * nj + jj), layer l's at l * G * U,
    # then a copy of one row's c_{t-1} (nj). Row b is at b - b0.
    cdef Py_ssize_t R = ctx.scratch_rows
    cdef floating* g = <floating*>ctx.scratch + tid * ctx.scratch_stride
    cdef floating* gh = g + R * G * U
    cdef floating* hn = gh + R * G * U
    cdef floating* bih = hn + R * U
    cdef floating* bhh = bih + L * G * U
    cdef floating* c_prev = bhh + L * G * U
    cdef floating* hbuf = <floating*>ctx.hbuf
    cdef floating* cst = NULL
    cdef floating* logits = <floating*>ctx.logits
    cdef floating* hp
    cdef floating* hw
    cdef const floating* xin
    cdef const floating* w
    cdef const floating* table = <const floating*>ctx.table
    cdef const floating* emb = <const floating*>ctx.emb
    cdef const floating* out_b = <const floating*>ctx.out_b
    cdef Pair* pairs = ctx.pairs + tid * V
    for l in range(L):
        H = ctx.hs[l]
        j0 = _unit_start(ctx, H, tid)
        nj = _unit_stop(ctx, H, tid) - j0
        for k in range(G):
            memcpy(bih + l * G * U + k * nj, <floating*>ctx.b_ih[l] + k * H + j0, nj * sizeof(floating))
            memcpy(bhh + l * G * U + k * nj, <floating*>ctx.b_hh[l] + k * H + j0, nj * sizeof(floating))
    # Splitting rows: this thread's rows of every W_ih and W_hh (rows k * H + j for its units
    # j, gate by gate) copied into one block per matrix, in the gate buffers' order (k * nj +
    # jj), so that each is one product per step instead of G, and the copy, made by this
    # thread, starts out in its own caches. Without the memory, G products on the originals.
    # With bfloat16 weights (opt-in, float32 only) the blocks and this thread's rows of the
    # output layer are then packed for fr_matvec_bf16 into bblock: boff[2l], boff[2l + 1] and
    # boff[2L] are the offsets of W_ih, W_hh and the output rows (woff likewise in wblock).
    # Without the memory, the float32 products.
    cdef floating* wblock = NULL
    cdef Py_ssize_t* woff = NULL
    cdef Py_ssize_t wsize = 0
    cdef uint16_t* bblock = NULL
    cdef Py_ssize_t* boff = NULL
    cdef Py_ssize_t bsize = 0
    if ctx.split_rows:
        woff = <Py_ssize_t*>malloc((4 * L + 1) * sizeof(Py_ssize_t))
        if woff != NULL:
            boff = woff + 2 * L
            for l in range(L):
                H = ctx.hs[l]
                nj = _unit_stop(ctx, H, tid) - _unit_start(ctx, H, tid)
                in_dim = _weight_block_columns(ctx, l)
                woff[2 * l], boff[2 * l] = wsize, bsize
                wsize += G * nj * in_dim
                bsize += <Py_ssize_t>fr_bf16_packed_size(<int>(G * nj), <int>in_dim)
                woff[2 * l + 1], boff[2 * l + 1] = wsize, bsize
                wsize += G * nj * H
                bsize += <Py_ssize_t>fr_bf16_packed_size(<int>(G * nj), <int>H)
            boff[2 * L] = bsize
            bsize += <Py_ssize_t>fr_bf16_packed_size(<int>nv, <int>Htop)
            wblock = <floating*>malloc(max(wsize, 1) * sizeof(floating))
        if wblock != NULL:
            for l in range(L):
                H = ctx.hs[l]
                j0 = _unit_start(ctx, H, tid)
                nj = _unit_stop(ctx, H, tid) - j0
                in_dim = _weight_block_columns(ctx, l)
                for k in range(G):
                    if in_dim > 0:
                        memcpy(wblock + woff[2 * l] + k * nj * in_dim,
                               <floating*>ctx.w_ih[l] + (k * H + j0) * in_dim,
                               nj * in_dim * sizeof(floating))
                    memcpy(wblock + woff[2 * l + 1] + k * nj * H,
                           <floating*>ctx.w_hh[l] + (k * H + j0) * H, nj * H * sizeof(floating))
    if floating is float:
        if ctx.bf16 and wblock != NULL:
            bblock = <uint16_t*>malloc(max(bsize, 1) * sizeof(uint16_t))
            if bblock != NULL:
                for l in range(L):
                    H = ctx.hs[l]
                    nj = _unit_stop(ctx, H, tid) - _unit_start(ctx, H, tid)
                    in_dim = _weight_block_columns(ctx, l)
                    if in_dim > 0 and nj > 0:
                        fr_bf16_pack(<int>(G * nj), <int>in_dim, wblock + woff[2 * l], in_dim,
                                     bblock + boff[2 * l])
                    if nj > 0:
                        fr_bf16_pack(<int>(G * nj), <int>H, wblock + woff[2 * l + 1], H,
                                     bblock + boff[2 * l + 1])
                if nv > 0:
                    fr_bf16_pack(<int>nv, <int>Htop, out_w + v0 * Htop, Htop, bblock + boff[2 * L])
                free(wblock)   # the products read bblock from now on
                wblock = NULL

    for s in range(n_steps):
        # Rows still running: the window [lo, hi) of this thread's rows (same for all threads
        # when splitting rows, since every thread reads the same flags after a barrier).
        lo = b0
        while lo < b1 and ctx.done[lo]:
            lo += 1
        if lo == b1:
            break
        hi = b1
        while ctx.done[hi - 1]:
            hi -= 1
        nb = hi - lo
        for l in range(L):
            H = ctx.hs[l]
            j0 = _unit_start(ctx, H, tid)
            j1 = _unit_stop(ctx, H, tid)
            nj = j1 - j0
            GL = G * nj
            if nj > 0:
                hp = hbuf + par * half + ctx.hoff[l]
                hw = hbuf + (1 - par) * half + ctx.hoff[l]
                cst = <floating*>ctx.c[l] if ctx.c != NULL else NULL
                if l == 0 and table != NULL:
                    for b in range(lo, hi):
                        if not ctx.done[b]:
                            for k in range(G):
                                memcpy(g + (b - b0) * GL + k * nj, table + ctx.cur[b] * GH0 + k * H + j0,
                                       nj * sizeof(floating))
                else:
                    if l == 0:
                        xin = <const floating*>ctx.xbuf
                        in_dim = E
                    else:
                        xin = hbuf + (1 - par) * half + ctx.hoff[l - 1]
                        in_dim = ctx.hs[l - 1]
                    w = <const floating*>ctx.w_ih[l]
                    for b in range(lo, hi):
                        memcpy(g + (b - b0) * GL, bih + l * G * U, GL * sizeof(floating))
                    if floating is float and bblock != NULL:
                        for b in range(lo, hi):
                            fr_matvec_bf16(<int>GL, <int>in_dim, bblock + boff[2 * l],
                                           xin + b * in_dim, g + (b - b0) * GL, 1)
                    elif wblock != NULL:
                        _rows_times_wt(nb, GL, in_dim, xin + lo * in_dim, in_dim,
                                       wblock + woff[2 * l], in_dim, <floating>1,
                                       g + (lo - b0) * GL, GL)
                    else:
                        for k in range(G):
                            _rows_times_wt(nb, nj, in_dim, xin + lo * in_dim, in_dim,
                                           w + (k * H + j0) * in_dim, in_dim, <floating>1,
                                           g + (lo - b0) * GL + k * nj, GL)
                if floating is float and bblock != NULL:
                    for b in range(lo, hi):
                        fr_matvec_bf16(<int>GL, <int>H, bblock + boff[2 * l + 1], hp + b * H,
                                       gh + (b - b0) * GL, 0)
                elif wblock != NULL:
                    _rows_times_wt(nb, GL, H, hp + lo * H, H, wblock + woff[2 * l + 1], H,
                                   <floating>0, gh + (lo - b0) * GL, GL)
                else:
                    w = <const floating*>ctx.w_hh[l]
                    for k in range(G):
                        _rows_times_wt(nb, nj, H, hp + lo * H, H, w + (k * H + j0) * H, H,
                                       <floating>0, gh + (lo - b0) * GL + k * nj, GL)
                for b in range(lo, hi):
                    if ctx.done[b]:
                        continue
                    if cst != NULL:
                        # The gate math takes c_{t-1} and c_t as distinct (restrict) arrays.
                        memcpy(c_prev, cst + b * H + j0, nj * sizeof(floating))
                    cell_forward_row(kind, nj, 0, nj, g + (b - b0) * GL, gh + (b - b0) * GL,
                                     bhh + l * G * U, hp + b * H + j0, hw + b * H + j0, c_prev,
                                     cst + b * H + j0 if cst != NULL else NULL,
                                     hn + (b - b0) * nj)
            if sync:
                fr_omp_barrier()
        par = 1 - par
        if s < P - 1:
            for b in range(s0, s1):
                _feed(ctx, emb, b, ctx.prime[b * P + s + 1])
            if sync:
                fr_omp_barrier()
            continue
        # Output layer on the newest top-layer state.
        if nv > 0:
            hp = hbuf + par * half + ctx.hoff[L - 1]
            for b in range(lo, hi):
                memcpy(logits + b * V + v0, out_b + v0, nv * sizeof(floating))
            if floating is float and bblock != NULL:
                for b in range(lo, hi):
                    fr_matvec_bf16(<int>nv, <int>Htop, bblock + boff[2 * L], hp + b * Htop,
                                   logits + b * V + v0, 1)
            else:
                _rows_times_wt(nb, nv, Htop, hp + lo * Htop, Htop, out_w + v0 * Htop, Htop,
                               <floating>1, logits + lo * V + v0, V)
        if sync:
            fr_omp_barrier()
        t = s - P + 1
        for b in range(s0, s1):
            if ctx.done[b]:
                continue
            tok = _sample_row(logits + b * V, V, ctx.banned,
                              ctx.stop_id if t < ctx.min_length else -1, ctx.greedy,
                              ctx.temperature, ctx.top_k, ctx.top_p,
                              ctx.uniforms[t * B + b] if ctx.uniforms != NULL else 0.0, pairs)
            ctx.tokens[b * ctx.n_tokens + t] = tok
            ctx.lengths[b] = t + 1
            if tok == ctx.stop_id:
                ctx.done[b] = 1
                ctx.par_of[b] = par
            else:
                _feed(ctx, emb, b, tok)
        if sync:
            fr_omp_barrier()
    # Rows that ran to the end hold their final state at the last parity.
    for b in range(s0, s1):
        if not ctx.done[b]:
            ctx.par_of[b] = par
    free(wblock)
    free(woff)
    free(bblock)


cdef void _team_worker(Ctx* ctx, const floating* out_w, int tid, int* team_ok) noexcept nogil:
    if fr_omp_team_size() == ctx.nt:
        _worker(ctx, out_w, tid)
    elif tid == 0:
        team_ok[0] = 0


# ---------------------------------------------------------------------------------------------
# Entry point. Arguments are validated by fastrnn.generation; generate_loop checks again what
# it indexes (shapes against each other), so that a direct call cannot make it read or write
# outside its buffers.
# ---------------------------------------------------------------------------------------------

# The size helpers take and return Python ints (untyped on purpose): exact at any size.

def _force_kernels(str kinds):
    """Private, for tests: which hand-written kernels this module's products may use (see
    recurrent._force_kernels: "best", "narrow" or "generic"; "generic" also sends float32
    products to BLAS). Takes effect from the next call; not for use while calls run."""
    from .recurrent import _KERNEL_CAPS   # the one table of the kinds
    fr_set_kernel_cap(_KERNEL_CAPS[kinds])


def _thread_layout(G, B, hidden_sizes, nt, split_rows):
    """(rows, units): the most batch rows and hidden units (in any one layer of
    ``hidden_sizes``) one thread's gate buffers hold."""
    if split_rows:
        return B, max(_split_at(H, t + 1, nt) - _split_at(H, t, nt)
                      for H in hidden_sizes for t in range(nt))
    return max(_share(B, t + 1, nt) - _share(B, t, nt) for t in range(nt)), max(hidden_sizes)


def _scratch_stride(G, L, rows, units):
    """Elements of one thread's scratch (see _worker): 2 (rows, G*units) gate buffers, GRU hn
    (rows, units), 2 (L, G*units) local biases, one c_{t-1} (units), and 16 spare."""
    return 2 * rows * G * units + rows * units + 2 * L * G * units + units + 16


def _buffer_sizes(G, B, hidden_sizes, E, V, n_tokens, nt, split_rows, itemsize):
    """Bytes of each buffer generate_loop allocates, computed exactly before it allocates any.

    hidden_sizes: the size of each layer. Raises MemoryError when the total cannot be
    addressed (more than sys.maxsize bytes). The scratch also serves the one-thread fallback
    of the row split (stride for one thread, all rows, the largest layer):
    nt * stride(nt) >= stride(1), since the units of nt threads cover that layer.
    """
    L = len(hidden_sizes)
    rows, units = _thread_layout(G, B, hidden_sizes, nt, split_rows)
    sizes = {
        "tokens": B * n_tokens * 8,
        "hidden states": 2 * B * sum(hidden_sizes) * itemsize,
        "embeddings": B * E * itemsize,
        "logits": B * V * itemsize,
        "scratch": nt * _scratch_stride(G, L, rows, units) * itemsize,
        "sampling pairs": nt * V * int(sizeof(Pair)) + 16,
    }
    total = sum(sizes.values())
    if total > sys.maxsize:
        detail = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise MemoryError(f"generation would need {total} bytes of buffers ({detail}), more than "
                          f"can be addressed: generate fewer rows or tokens per call")
    return sizes


def generate_loop(int kind, const floating[:, ::1] embedding, list w_ih not None,
                  list w_hh not None, list b_ih not None, list b_hh not None,
                  const floating[:, ::1] table, const floating[:, ::1] out_w not None,
                  const floating[::1] out_b not None, const int64_t[:, ::1] prime not None,
                  Py_ssize_t n_tokens, const double[:, ::1] uniforms,
                  list h not None, list c,
                  double temperature, int top_k, double top_p, bint greedy, int64_t stop_id,
                  const uint8_t[::1] banned not None, int num_threads, bint split_rows,
                  Py_ssize_t min_length=0, bint bf16_weights=False):
    """Generate ``n_tokens`` tokens per row.

    Layer l has H_l = w_hh[l].shape[1] units. h: list over layers of (B, H_l) C-contiguous
    arrays, in: the state before the prime; out: each row's final state. c likewise (LSTM;
    None otherwise). w_ih, w_hh, b_ih, b_hh: lists over layers of C-contiguous arrays
    (biases never None). embedding (V, E), or None when table is given (then E is
    w_ih[0].shape[1], e.g. V for one-hot inputs). table: (V, G*H_0) layer-0 input gates or
    None. uniforms (n_tokens, B) in [0, 1), None when greedy. stop_id < 0: no stop token.
    banned (V,) uint8. min_length >= 0: the first min_length draws of a row never give
    stop_id (it is banned for them); needs a token other than stop_id that is not banned.
    bf16_weights (float32 and split_rows only): each thread multiplies by a bfloat16 copy of
    its rows of W_ih, W_hh and the output layer (csrc/bf16.h; float32 sums and states); the
    float32 products if that copy cannot be allocated.
    Returns (tokens (B, n_tokens) int64, -1 after a stop; lengths (B,) int64).
    """
    cdef Py_ssize_t L = len(h), B, V = out_w.shape[0], H, Htop, Hsum = 0
    cdef Py_ssize_t E, P = prime.shape[1], G = gate_count(kind)
    cdef Py_ssize_t l, b, stride, stride1, rows, units
    cdef int nt = num_threads if num_threads > 0 and fr_openmp_enabled() else 1, tid, team
    cdef int team_ok = 1
    cdef const floating[:, ::1] mv2
    cdef const floating[::1] mv1
    cdef floating[:, ::1] state_mv
    if L < 1:
        raise ValueError("h must hold one (B, H_l) array per layer, got an empty list")
    if bf16_weights:
        if floating is double:
            raise TypeError("bf16_weights needs float32 weights, got float64")
        if not split_rows:
            raise ValueError("bf16_weights needs split_rows (the rows split among threads)")
    for name, arrays in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        if len(arrays) != L:
            raise ValueError(f"{name} must hold {L} arrays (one per layer), got {len(arrays)}")
    hidden_sizes = []
    for l in range(L):
        mv2 = w_hh[l]
        hidden_sizes.append(mv2.shape[1])
    Htop = hidden_sizes[L - 1]
    if embedding is None:
        if table is None:
            raise TypeError("embedding is required when there is no table, got None")
        mv2 = w_ih[0]
        E = mv2.shape[1]
    else:
        E = embedding.shape[1]
    state_mv = h[0]
    B = state_mv.shape[0]
    # Shapes, and the sizes that reach BLAS (C int).
    if B < 1 or min(hidden_sizes) < 1 or V < 1 or E < 1 or P < 1 or n_tokens < 1:
        raise ValueError(f"L, B, H, V, E, P and n_tokens must be >= 1, got L={L}, B={B}, "
                         f"H={hidden_sizes}, V={V}, E={E}, P={P}, n_tokens={n_tokens}")
    for size, what in ((G * max(hidden_sizes), "G*H (gate columns)"), (B, "the number of rows B"),
                       (V, "the vocabulary size V"), (E, "the embedding size E")):
        _blas_int(size, what)
    if embedding is not None:
        _check_shape("embedding", embedding.shape[0], E, V, E)
    _check_shape("out_w", V, out_w.shape[1], V, Htop)
    _check_len("out_b", out_b.shape[0], V)
    _check_shape("prime", prime.shape[0], P, B, P)
    _check_len("banned", banned.shape[0], V)
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    # Every draw needs an allowed token (_sample_row would otherwise return an unset id).
    allowed = np.asarray(banned) == 0
    if min_length > 0 and 0 <= stop_id < V:
        allowed[stop_id] = False
    if not allowed.any():
        raise ValueError("banned (and stop_id while min_length applies) must leave at least "
                         "one token allowed")
    if table is not None:
        _check_shape("table", table.shape[0], table.shape[1], V, G * hidden_sizes[0])
    if not greedy:
        if uniforms is None:
            raise TypeError("uniforms must be given unless greedy, got None")
        _check_shape("uniforms", uniforms.shape[0], uniforms.shape[1], n_tokens, B)
    if c is None and kind == K_LSTM:
        raise TypeError("the LSTM needs c, got None")
    for name, states in (("h", h), ("c", c)):
        if states is None:
            continue
        if len(states) != L:
            raise ValueError(f"{name} must hold {L} arrays (one per layer), got {len(states)}")
        for l in range(L):
            state_mv = states[l]
            _check_shape(f"{name}[{l}]", state_mv.shape[0], state_mv.shape[1], B, hidden_sizes[l])
    for l in range(L):
        H = hidden_sizes[l]
        mv2 = w_ih[l]
        _check_shape(f"w_ih[{l}]", mv2.shape[0], mv2.shape[1], G * H,
                     E if l == 0 else hidden_sizes[l - 1])
        mv2 = w_hh[l]
        _check_shape(f"w_hh[{l}]", mv2.shape[0], mv2.shape[1], G * H, H)
        mv1 = b_ih[l]
        _check_len(f"b_ih[{l}]", mv1.shape[0], G * H)
        mv1 = b_hh[l]
        _check_len(f"b_hh[{l}]", mv1.shape[0], G * H)
    H = max(hidden_sizes)
    if split_rows:
        if nt > (H + COL_ALIGN - 1) // COL_ALIGN:
            nt = <int>max(1, (H + COL_ALIGN - 1) // COL_ALIGN)
    elif nt > B:
        nt = <int>B
    team = fr_team_threads(nt)   # threads that may run them: 1 in a forked child
    dtype = np.float32 if floating is float else np.float64
    # Python ints from here to the allocations: exact at any size.
    _buffer_sizes(int(G), int(B), hidden_sizes, int(E) if embedding is not None else 0, int(V),
                  int(n_tokens), int(nt), split_rows, int(sizeof(floating)))
    rows, units = _thread_layout(int(G), int(B), hidden_sizes, int(nt), split_rows)
    stride = _scratch_stride(int(G), int(L), rows, units)
    stride1 = _scratch_stride(int(G), int(L), int(B), int(H))   # one-thread fallback, row split
    assert stride1 <= nt * stride
    tokens = np.full((B, n_tokens), -1, dtype=np.int64)
    lengths = np.zeros(B, dtype=np.int64)
    if np.asarray(prime).min() < 0 or np.asarray(prime).max() >= V:
        raise ValueError(f"prime ids must be in [0, {V})")
    cur = np.array(prime[:, 0], dtype=np.int64)   # a writable copy: prime may be read-only
    done = np.zeros(B, dtype=np.uint8)
    par_of = np.zeros(B, dtype=np.uint8)
    # Layer l's (B, H_l) states at offset hoff[l] of each parity.
    offsets = np.cumsum([0] + hidden_sizes[:L - 1]).astype(np.intp) * B
    hs_arr = np.array(hidden_sizes, dtype=np.intp)
    Hsum = sum(hidden_sizes)
    hbuf = np.empty((2, B * Hsum), dtype=dtype)
    for l in range(L):
        hbuf[0, offsets[l]:offsets[l] + B * hidden_sizes[l]] = np.asarray(h[l]).reshape(-1)
    hbuf[1] = hbuf[0]
    xbuf = np.empty((B, E if table is None else 1), dtype=dtype)
    if table is None:
        xbuf[...] = np.asarray(embedding)[cur]
    logits = np.empty((B, V), dtype=dtype)
    scratch = np.empty(nt * stride, dtype=dtype)
    pairs_arr = np.empty(nt * V * sizeof(Pair) + 16, dtype=np.uint8)
    cdef Py_ssize_t[::1] hs_mv = hs_arr, hoff_mv = offsets

    cdef int64_t[:, ::1] tok_mv = tokens
    cdef int64_t[::1] len_mv = lengths, cur_mv = cur
    cdef uint8_t[::1] done_mv = done, par_mv = par_of, pairs_mv = pairs_arr
    cdef floating[:, ::1] hbuf_mv = hbuf
    cdef floating[:, ::1] xbuf_mv = xbuf, logits_mv = logits
    cdef floating[::1] scratch_mv = scratch
    cdef Ctx ctx
    ctx.w_ih = <void**>malloc(5 * L * sizeof(void*))
    if ctx.w_ih == NULL:
        raise MemoryError()
    ctx.w_hh = ctx.w_ih + L
    ctx.b_ih = ctx.w_ih + 2 * L
    ctx.b_hh = ctx.w_ih + 3 * L
    ctx.c = ctx.w_ih + 4 * L if c is not None else NULL
    try:
        for l in range(L):
            mv2 = w_ih[l]
            ctx.w_ih[l] = <void*>&mv2[0, 0]
            mv2 = w_hh[l]
            ctx.w_hh[l] = <void*>&mv2[0, 0]
            mv1 = b_ih[l]
            ctx.b_ih[l] = <void*>&mv1[0]
            mv1 = b_hh[l]
            ctx.b_hh[l] = <void*>&mv1[0]
            if c is not None:
                state_mv = c[l]   # updated in place
                ctx.c[l] = <void*>&state_mv[0, 0]
        ctx.kind, ctx.L, ctx.G, ctx.E, ctx.V, ctx.B, ctx.P = kind, L, G, E, V, B, P
        ctx.hs, ctx.hoff, ctx.hbuf_half = &hs_mv[0], &hoff_mv[0], B * Hsum
        ctx.n_tokens, ctx.nt, ctx.split_rows, ctx.greedy = n_tokens, nt, split_rows, greedy
        ctx.top_k, ctx.temperature, ctx.top_p, ctx.stop_id = top_k, temperature, top_p, stop_id
        ctx.min_length = min_length
        ctx.bf16 = bf16_weights
        ctx.prime = &prime[0, 0]
        ctx.uniforms = &uniforms[0, 0] if uniforms is not None else NULL
        ctx.banned = &banned[0]
        ctx.table = <void*>&table[0, 0] if table is not None else NULL
        ctx.emb = <void*>&embedding[0, 0] if embedding is not None else NULL
        ctx.out_b = <void*>&out_b[0]
        ctx.hbuf = <void*>&hbuf_mv[0, 0]
        ctx.xbuf = <void*>&xbuf_mv[0, 0]
        ctx.logits = <void*>&logits_mv[0, 0]
        ctx.scratch = <void*>&scratch_mv[0]
        ctx.scratch_stride, ctx.scratch_rows, ctx.scratch_units = stride, rows, units
        ctx.pairs = <Pair*>&pairs_mv[0]
        ctx.tokens = &tok_mv[0, 0]
        ctx.lengths = &len_mv[0]
        ctx.cur = &cur_mv[0]
        ctx.done = &done_mv[0]
        ctx.par_of = &par_mv[0]
        with nogil:
            if nt == 1:
                _worker(&ctx, &out_w[0, 0], 0)
            elif split_rows:
                # The barriers need exactly nt threads; with fewer (a thread limit, or a
                # forked child: see _openmp.pxd), the loop runs on one thread below.
                if team == nt:
                    with parallel(num_threads=nt):
                        _team_worker(&ctx, &out_w[0, 0], threadid(), &team_ok)
                else:
                    team_ok = 0
                if not team_ok:
                    # One thread, all units and rows: its scratch stride fits in nt strides
                    # (see _buffer_sizes).
                    ctx.nt = 1
                    ctx.scratch_stride, ctx.scratch_rows, ctx.scratch_units = stride1, B, H
                    _worker(&ctx, &out_w[0, 0], 0)
            else:
                # No barriers: a smaller team (one thread in a forked child) runs the same
                # nt slices in turn, with the same results.
                for tid in prange(nt, num_threads=team, schedule='static', chunksize=1):
                    _worker(&ctx, &out_w[0, 0], tid)
    finally:
        free(ctx.w_ih)
    # Final states: each row's h from the parity that holds it (c is updated in place).
    for l in range(L):
        layer = hbuf[:, offsets[l]:offsets[l] + B * hidden_sizes[l]].reshape(2, B, hidden_sizes[l])
        np.asarray(h[l])[...] = layer[par_of.astype(np.intp), np.arange(B)]
    return tokens, lengths

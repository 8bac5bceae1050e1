/* fastrnn GPU kernels: fused element-wise gate math, one launch per step per layer.
 *
 * Compiled at first use by CuPy (cupy.RawModule with name_expressions, see backend.py).
 * The gate equations are exactly those of csrc/cells_impl.h (the CPU's gate math), one
 * definition per cell (the *Cell structs below), shared by the
 * forward and backward step kernels.
 *
 * Layout (as the CPU engine): buffers are 2-D in "time space", row r = t * B + b.
 *   gates (T*B, G*H)  forward in: x W_ih^T + b_ih; forward out: activations;
 *                     backward out: dL/d(recurrent pre-activations), zero on padded rows.
 *   hn    (T*B, H)    GRU: W_hn h_prev + b_hn; backward out: x-side grad of the n gate.
 *   chist (T*B, H)    LSTM: c_t per step.
 *   y     (T*B, H)    rows ldy elements apart (may be one half of a bidirectional output).
 *   h, c  (B, H)      running state.        gh (B, G*H) = h_prev W_hh^T (cuBLAS, no bias).
 * Step s of batch row b (length len_b) is time t = s forward, t = len_b - 1 - s in reverse.
 * Steps s >= len_b leave the state untouched; the forward writes a zero output at time s
 * (which is past the end in both directions), the backward zeroes that time's rows.
 *
 * One thread per (b, j), b < B, j < H; every thread touches only column j of its row's
 * gate blocks, so no synchronisation is needed. Unused pointers (c, hn, chist, dy, ... for
 * cells without them) are never dereferenced; the caller passes any valid array for them.
 */

/* Cell ids: the table is fastrnn/cells.py (CellSpec.kind); tests/test_cells.py checks these. */
#define FR_RNN_TANH 0
#define FR_RNN_RELU 1
#define FR_GRU 2
#define FR_LSTM 3
#define FR_RNN_IDENTITY 4

template <typename T> __device__ __forceinline__ T fr_exp(T x);
template <> __device__ __forceinline__ float fr_exp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double fr_exp<double>(double x) { return exp(x); }

template <typename T> __device__ __forceinline__ T fr_tanh(T x);
template <> __device__ __forceinline__ float fr_tanh<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ double fr_tanh<double>(double x) { return tanh(x); }

template <typename T> __device__ __forceinline__ T fr_sigmoid(T x) {
    return T(1) / (T(1) + fr_exp<T>(-x));
}

/* ---- cells ---------------------------------------------------------------------------------
 * forward(H, j, g, gh, b_hh, h, c, hn)
 *   g  row of gates (G*H): in x-projection, out activations.  gh row (G*H), b_hh (G*H).
 *   h, c  state rows (H): in previous, out new.              hn row (H): GRU out.
 * backward(H, j, g, hn, c_t, c_prev, h_prev, dh, dc)
 *   g  row: in activations, out dGh.   hn row: GRU in W_hn h + b_hn, out x-side dn.
 *   dh (scalar): in dL/dh_t, out the part of dL/dh_{t-1} bypassing W_hh (GRU dh*z, else 0).
 *   dc row: LSTM in dL/dc_t, out dL/dc_{t-1}.
 */

template <typename T, int KIND>
struct RnnCell {
    static const int G = 1;
    __device__ static __forceinline__ void forward(int H, int j, T* g, const T* gh,
                                                   const T* b_hh, T* h, T* c, T* hn) {
        T a = g[j] + gh[j] + b_hh[j];
        if (KIND == FR_RNN_TANH) {
            a = fr_tanh<T>(a);
        } else if (KIND == FR_RNN_RELU && a < T(0)) {
            a = T(0);
        }   /* FR_RNN_IDENTITY: a as it is */
        g[j] = a;
        h[j] = a;
    }
    __device__ static __forceinline__ void backward(int H, int j, T* g, T* hn, const T* c_t,
                                                    const T* c_prev, const T* h_prev,
                                                    T& dh, T* dc) {
        T a = g[j];
        if (KIND == FR_RNN_TANH) {
            g[j] = dh * (T(1) - a * a);
        } else if (KIND == FR_RNN_RELU) {
            g[j] = a > T(0) ? dh : T(0);
        } else {   /* FR_RNN_IDENTITY */
            g[j] = dh;
        }
        dh = T(0);
    }
};

template <typename T>
struct GruCell {
    static const int G = 3;
    __device__ static __forceinline__ void forward(int H, int j, T* g, const T* gh,
                                                   const T* b_hh, T* h, T* c, T* hn) {
        T r = fr_sigmoid<T>(g[j] + gh[j] + b_hh[j]);
        T z = fr_sigmoid<T>(g[H + j] + gh[H + j] + b_hh[H + j]);
        T hnj = gh[2 * H + j] + b_hh[2 * H + j];
        T n = fr_tanh<T>(g[2 * H + j] + r * hnj);
        hn[j] = hnj;
        h[j] = (T(1) - z) * n + z * h[j];
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = n;
    }
    __device__ static __forceinline__ void backward(int H, int j, T* g, T* hn, const T* c_t,
                                                    const T* c_prev, const T* h_prev,
                                                    T& dh, T* dc) {
        T r = g[j];
        T z = g[H + j];
        T n = g[2 * H + j];
        T dn = dh * (T(1) - z) * (T(1) - n * n);
        g[j] = dn * hn[j] * r * (T(1) - r);
        g[H + j] = dh * (h_prev[j] - n) * z * (T(1) - z);
        g[2 * H + j] = dn * r;
        hn[j] = dn;
        dh = dh * z;
    }
};

template <typename T>
struct LstmCell {
    static const int G = 4;
    __device__ static __forceinline__ void forward(int H, int j, T* g, const T* gh,
                                                   const T* b_hh, T* h, T* c, T* hn) {
        T gi = fr_sigmoid<T>(g[j] + gh[j] + b_hh[j]);
        T gf = fr_sigmoid<T>(g[H + j] + gh[H + j] + b_hh[H + j]);
        T gg = fr_tanh<T>(g[2 * H + j] + gh[2 * H + j] + b_hh[2 * H + j]);
        T go = fr_sigmoid<T>(g[3 * H + j] + gh[3 * H + j] + b_hh[3 * H + j]);
        T cj = gf * c[j] + gi * gg;
        c[j] = cj;
        h[j] = go * fr_tanh<T>(cj);
        g[j] = gi;
        g[H + j] = gf;
        g[2 * H + j] = gg;
        g[3 * H + j] = go;
    }
    __device__ static __forceinline__ void backward(int H, int j, T* g, T* hn, const T* c_t,
                                                    const T* c_prev, const T* h_prev,
                                                    T& dh, T* dc) {
        T gi = g[j];
        T gf = g[H + j];
        T gg = g[2 * H + j];
        T go = g[3 * H + j];
        T tc = fr_tanh<T>(c_t[j]);
        T dct = dc[j] + dh * go * (T(1) - tc * tc);
        g[j] = dct * gg * gi * (T(1) - gi);
        g[H + j] = dct * c_prev[j] * gf * (T(1) - gf);
        g[2 * H + j] = dct * gi * (T(1) - gg * gg);
        g[3 * H + j] = dh * tc * go * (T(1) - go);
        dc[j] = dct * gf;
        dh = T(0);
    }
};

template <typename T, int KIND> struct CellOps;
template <typename T> struct CellOps<T, FR_RNN_TANH> : RnnCell<T, FR_RNN_TANH> {};
template <typename T> struct CellOps<T, FR_RNN_RELU> : RnnCell<T, FR_RNN_RELU> {};
template <typename T> struct CellOps<T, FR_RNN_IDENTITY> : RnnCell<T, FR_RNN_IDENTITY> {};
template <typename T> struct CellOps<T, FR_GRU> : GruCell<T> {};
template <typename T> struct CellOps<T, FR_LSTM> : LstmCell<T> {};

/* ---- step kernels -------------------------------------------------------------------------- */

/* Forward step s: gh = h_prev W_hh^T must already be computed. Updates h (and c) in place,
 * turns the step's gate rows into activations, writes y (and chist / hn). */
template <typename T, int KIND>
__global__ void fr_forward_step(const int s, const int B, const int H, const int reverse,
                                const long long* lengths, T* gates, const T* gh,
                                const T* b_hh, T* h, T* c, T* hn, T* chist, T* y,
                                const long long ldy) {
    typedef CellOps<T, KIND> Cell;
    const long long n = (long long)B * H;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const long long GH = (long long)Cell::G * H;
    const int len = (int)lengths[b];
    if (s >= len) {
        /* Time s is past this sequence's end (forward and reverse alike): zero output. */
        y[((long long)s * B + b) * ldy + j] = T(0);
        return;
    }
    const int t = reverse ? len - 1 - s : s;
    const long long row = (long long)t * B + b;
    const long long brow = (long long)b * H;
    Cell::forward(H, j, gates + row * GH, gh + (long long)b * GH, b_hh, h + brow, c + brow,
                  hn + row * H);
    y[row * ldy + j] = h[brow + j];
    if (KIND == FR_LSTM) {
        chist[row * H + j] = c[brow + j];
    }
}

/* Backward step s (called for s = steps-1 down to 0).
 *   dh (B, H)      in: the part of dL/dh carried past W_hh (initially dL/dh_T);
 *                  out: the same after this step (GRU dh*z, else 0; unchanged for rows
 *                  whose sequence has ended).
 *   dh_rec (B, H)  dGh(step s+1) W_hh (cuBLAS, computed after the previous launch; zeros
 *                  before the first one).
 *   dc (B, H)      LSTM: dL/dc, updated in place.
 *   dgh (B, G*H)   out: this step's dGh per batch row (zero for ended rows), for the next
 *                  dh_rec GEMM; after step 0 it pairs with h0 in dW_hh.
 */
template <typename T, int KIND>
__global__ void fr_backward_step(const int s, const int B, const int H, const int reverse,
                                 const long long* lengths, T* gates, T* hn, const T* chist,
                                 const T* h0, const T* c0, const T* y, const long long ldy,
                                 const T* dy, const long long lddy, const int has_dy,
                                 T* dh, const T* dh_rec, T* dc, T* dgh) {
    typedef CellOps<T, KIND> Cell;
    const long long n = (long long)B * H;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const long long GH = (long long)Cell::G * H;
    const long long brow = (long long)b * H;
    T* dgh_row = dgh + (long long)b * GH;
    const int len = (int)lengths[b];
    if (s >= len) {
        /* Time s is past the end: its rows take part in the weight-gradient GEMMs, zero
         * them. The state gradient passes through unchanged. */
        const long long pad = (long long)s * B + b;
        for (int k = 0; k < Cell::G; ++k) {
            gates[pad * GH + (long long)k * H + j] = T(0);
            dgh_row[(long long)k * H + j] = T(0);
        }
        if (KIND == FR_GRU) {
            hn[pad * H + j] = T(0);
        }
        return;
    }
    const int t = reverse ? len - 1 - s : s;
    const long long row = (long long)t * B + b;
    const T* h_prev;
    const T* c_prev;
    if (s == 0) {
        h_prev = h0 + brow;
        c_prev = c0 + brow;
    } else {
        const long long prev_row = (long long)(reverse ? t + 1 : t - 1) * B + b;
        h_prev = y + prev_row * ldy;
        c_prev = chist + prev_row * H;
    }
    T dhv = dh[idx] + dh_rec[idx];
    if (has_dy) {
        dhv += dy[row * lddy + j];
    }
    T* g = gates + row * GH;
    Cell::backward(H, j, g, hn + row * H, chist + row * H, c_prev, h_prev, dhv, dc + brow);
    dh[idx] = dhv;
    for (int k = 0; k < Cell::G; ++k) {
        dgh_row[(long long)k * H + j] = g[(long long)k * H + j];
    }
}

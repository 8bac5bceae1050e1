"""GPU cases of the `fastrnn bench` table: one forward + backward of fastrnn's CUDA backend
against PyTorch cuDNN on the same GPU, timed and tabulated by fastrnn_bench (the same timer,
rows and table as the CPU cases; ratio = torch time / fastrnn time, > 1: fastrnn faster).

    fastrnn bench --cases gpu --repeat 20          # from a source checkout
    fastrnn bench --cases gpu-graphs               # the same with CUDA-graph replay

Cases are (batch, steps, input, hidden) = (64, 100, 512, 512) and (256, 50, 256, 256) for
LSTM and GRU, float32, one layer, unidirectional. Every timed call ends by waiting for the GPU
(fastrnn: the current CuPy stream; PyTorch: torch.cuda.synchronize), after WARMUP untimed
calls. The GEMM share is against cuBLAS's float32 GEMM_N^3 rate through CuPy, measured in the
same run. Peak memory is host memory only, so it is not measured here (n/a). PyTorch without
CUDA gives the note "n/a (torch without CUDA)".
"""
import numpy as np

import fastrnn
from fastrnn._gpu import require_gpu
from fastrnn_bench import Case, CaseUnavailable, gemm_rate, kernel_flops

# (cell, batch, steps, input, hidden)
CASES = [("lstm", 64, 100, 512, 512), ("gru", 64, 100, 512, 512),
         ("lstm", 256, 50, 256, 256), ("gru", 256, 50, 256, 256)]
WARMUP = 3      # the first calls compile kernels and fill the memory pool
GEMM_N = 4096
TORCH_NO_CUDA = "n/a (torch without CUDA)"


def gpu_name(cp):
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def gpu_gemm_rate(repeat=3):
    """(GFLOP/s, label): the best of ``repeat`` GEMM_N^3 float32 products through CuPy."""
    cp = require_gpu()
    rate = gemm_rate(n=GEMM_N, repeat=repeat, xp=cp,
                     sync=cp.cuda.get_current_stream().synchronize)
    return rate, f"cupy sgemm {GEMM_N}^3 on {gpu_name(cp)}"


def _inputs(B, T, I, H, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, I), dtype=np.float32),
            rng.standard_normal((T, B, H), dtype=np.float32))


def _fastrnn_step(cell, B, T, I, H, cuda_graphs):
    def factory():
        cp = require_gpu()
        from fastrnn._gpu import backend   # only after require_gpu()
        # A process-wide switch: set by every GPU case for itself, so cases with and without
        # graphs can share a run.
        backend.set_cuda_graphs(cuda_graphs)
        layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(I, H, seed=0, device="cuda")
        x, dy = (cp.asarray(a) for a in _inputs(B, T, I, H))
        synchronize = cp.cuda.get_current_stream().synchronize

        def step():
            layer.forward(x)
            layer.backward(dy)
            synchronize()
        return step
    return factory


def _torch_step(cell, B, T, I, H):
    def factory():
        import torch
        if not torch.cuda.is_available():
            raise CaseUnavailable(TORCH_NO_CUDA)
        torch.backends.cudnn.enabled = True
        layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).cuda()
        x, dy = (torch.from_numpy(a).cuda() for a in _inputs(B, T, I, H))
        x.requires_grad_(True)

        def step():
            y, _ = layer(x)
            y.backward(dy)
            torch.cuda.synchronize()
        return step
    return factory


def gpu_cases(cases=None, cuda_graphs=False):
    """The GPU cases (default: every entry of CASES) as fastrnn_bench Cases on device "cuda".
    Raises GPUUnavailableError (a RuntimeError, saying what is missing) without CuPy or a GPU."""
    require_gpu()
    suffix = "-graphs" if cuda_graphs else ""
    out = []
    for cell, B, T, I, H in cases or CASES:
        group = f"gpu-{cell}-forward+backward-B{B}T{T}I{I}H{H}{suffix}"
        out.append(Case(
            name=group, group=group,
            make_fastrnn=_fastrnn_step(cell, B, T, I, H, cuda_graphs),
            make_torch=_torch_step(cell, B, T, I, H),
            flops=kernel_flops(cell, "forward+backward", B, T, I, H),
            params=dict(kind="gpu-kernel", cell=cell, mode="forward+backward", B=B, T=T, I=I,
                        H=H, dtype="float32", cuda_graphs=cuda_graphs),
            device="cuda", warmup=WARMUP, host_memory=False))
    return out

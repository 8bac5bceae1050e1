"""Time one forward + backward of fastrnn's GPU backend against PyTorch cuDNN, same GPU.

    python -m fastrnn._gpu.bench            # prints a table
    rows = fastrnn._gpu.bench.run()         # [{case, fastrnn_ms, torch_ms, ratio, gpu_name}]

Cases are (batch, steps, input, hidden) = (64, 100, 512, 512) and (256, 50, 256, 256) for
LSTM and GRU, float32, one layer, unidirectional. ratio = fastrnn_ms / torch_ms (lower is
better for fastrnn). torch_ms is None when PyTorch with CUDA is not installed.
"""
import time

CASES = [("lstm", 64, 100, 512, 512), ("gru", 64, 100, 512, 512),
         ("lstm", 256, 50, 256, 256), ("gru", 256, 50, 256, 256)]


def _time_ms(fn, sync, repeats, warmup):
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def _fastrnn_ms(cp, cell, B, T, I, H, repeats, warmup):
    import fastrnn
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(I, H, seed=0, device="cuda")
    x = cp.random.standard_normal((T, B, I), dtype=cp.float32)
    dy = cp.random.standard_normal((T, B, H), dtype=cp.float32)

    def step():
        layer.forward(x)
        layer.backward(dy)

    return _time_ms(step, cp.cuda.get_current_stream().synchronize, repeats, warmup)


def _torch_ms(cell, B, T, I, H, repeats, warmup):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.enabled = True
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).cuda()
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    dy = torch.randn(T, B, H, device="cuda")

    def step():
        y, _ = layer(x)
        y.backward(dy)

    return _time_ms(step, torch.cuda.synchronize, repeats, warmup)


def run(repeats=20, warmup=3, cuda_graphs=False):
    """Benchmark every case; returns a list of row dicts."""
    from . import require_gpu
    from . import backend
    cp = require_gpu()
    backend.set_cuda_graphs(cuda_graphs)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    name = props["name"]
    gpu_name = name.decode() if isinstance(name, bytes) else str(name)
    rows = []
    try:
        for cell, B, T, I, H in CASES:
            ours = _fastrnn_ms(cp, cell, B, T, I, H, repeats, warmup)
            ref = _torch_ms(cell, B, T, I, H, repeats, warmup)
            rows.append({"case": f"{cell} B={B} T={T} I={I} H={H}",
                         "fastrnn_ms": round(ours, 3),
                         "torch_ms": None if ref is None else round(ref, 3),
                         "ratio": None if ref is None else round(ours / ref, 2),
                         "gpu_name": gpu_name})
    finally:
        backend.set_cuda_graphs(False)
    return rows


def main():
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--graphs", action="store_true", help="use CUDA-graph replay")
    args = parser.parse_args()
    rows = run(args.repeats, cuda_graphs=args.graphs)
    print(f"{'case':34s} {'fastrnn ms':>11s} {'torch ms':>9s} {'ratio':>6s}  gpu")
    for r in rows:
        print(f"{r['case']:34s} {r['fastrnn_ms']:11.3f} {str(r['torch_ms']):>9s} "
              f"{str(r['ratio']):>6s}  {r['gpu_name']}")


if __name__ == "__main__":
    main()

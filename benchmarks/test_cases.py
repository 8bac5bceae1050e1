"""Every benchmark case, fastrnn vs PyTorch in the same session.

Cases come from fastrnn_bench.py (the same lists `fastrnn bench` runs):
* kernel cases: one recurrent layer, forward and forward+backward, every cell x
  (B, T, I, H) in {(32, 64, 128, 256), (64, 100, 512, 512), (256, 50, 256, 256), (1, 100, 512, 512)};
* torch-bridge cases: packed variable-length LSTM/GRU (32, 200, 128, 256) forward+backward
  through PyTorch's autograd, fastrnn.torch's module against torch.nn's (torch installed only);
* jax-bridge case: jax.jit(jax.grad) of a (32, 64, 128, 256) LSTM, fastrnn.jax against the
  same LSTM in pure JAX with lax.scan (in the "torch" test, library "pure JAX (lax.scan)";
  JAX installed only);
* varlen cases: LSTM and GRU (32, 200, 128, 256) forward+backward with lengths uniform in
  [T/4, T], fastrnn with lengths against PyTorch packed, and the same batch padded in both;
* language-model cases: a full training step (embedding, 2-layer LSTM, linear, softmax
  cross-entropy, backward, clipping, Adam) of a character model, fast.ai's small character
  model (V 86, E 42, one LSTM of 256, B 64 x T 8) and a word model, and generation
  of 500 tokens from the character model at batch 1 and 64.
Same weights, dtype and thread count for both libraries; the two benchmarks of a case share
a group, so --benchmark-group-by=group shows them side by side.
"""
import pytest

from fastrnn_bench import (jax_bridge_cases, kernel_cases, lm_cases, torch_available,
                           torch_bridge_cases, varlen_cases)

# torch_bridge_cases is empty without torch, jax_bridge_cases without JAX (both of their
# columns need it)
CASES = (kernel_cases() + varlen_cases() + lm_cases() + torch_bridge_cases()
         + jax_bridge_cases())


def _extra_info(benchmark, case, library, threads):
    benchmark.group = case.group
    benchmark.extra_info.update(case.params, library=library, flops=case.flops,
                                threads=threads)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fastrnn(benchmark, run_benchmark, threads, case):
    _extra_info(benchmark, case, "fastrnn", threads)
    run_benchmark(benchmark, case.make_fastrnn())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_torch(benchmark, run_benchmark, threads, case):
    """The reference column: PyTorch, or the library the case names (case.reference)."""
    if case.reference == "torch" and not torch_available():
        pytest.skip("torch is not installed")
    _extra_info(benchmark, case, case.reference, threads)
    run_benchmark(benchmark, case.make_torch())

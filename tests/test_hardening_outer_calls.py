"""Whole-model calls: one BLAS limit per call, and no records left by an interrupted step."""
import numpy as np
import pytest

from fastrnn import LanguageModel, Trainer, threads


def _model():
    return LanguageModel(11, embed_size=6, hidden_size=8, num_layers=2, cell="lstm",
                         dtype=np.float64, seed=0)


def _count_outermost_limits(monkeypatch):
    """Patch the call that sets BLAS to one thread so each outermost entry of the BLAS limit
    is counted."""
    calls = []
    real_limit = threads._limit_blas

    def counting_limit():
        calls.append(1)
        return real_limit()

    monkeypatch.setattr(threads, "_limit_blas", counting_limit)
    return calls


def test_language_model_forward_and_backward_enter_the_blas_limit_once_each(monkeypatch, rng):
    model = _model()
    x = rng.integers(0, 11, (5, 3))
    calls = _count_outermost_limits(monkeypatch)
    model.forward(x, x)
    model.backward()
    assert len(calls) == 2          # not once per layer or kernel call
    model.evaluate(rng.integers(0, 11, 40), batch_size=2, seq_len=4)
    assert len(calls) == 3          # one for the whole evaluation loop


def test_interrupted_step_leaves_no_pending_records(monkeypatch, rng):
    model = _model()
    ids = rng.integers(0, 11, 400)
    trainer = Trainer(model, ids, ids[:50], batch_size=2, seq_len=5, max_steps=3,
                      progress=False)

    def interrupted(scale=1.0):   # LanguageModel.backward(scale)
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "backward", interrupted)
    x = ids[:10].reshape(5, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_step((x, x))
    assert model.num_pending == 0

"""Issue 9, item 2: validation on a list of sentences scores each sentence alone from a zero
state (masked, padded batches), and the Trainer reports and schedules on that number."""
import math

import numpy as np
import pytest

from fastrnn import LanguageModel, Trainer

V = 11


def _model(cell="lstm", dropout=0.3):
    return LanguageModel(V, embed_size=5, hidden_size=7, num_layers=2, cell=cell, dropout=dropout,
                         dtype=np.float64, seed=2)


def _sentences(rng, count=13, shortest=1, longest=15):
    return [rng.integers(0, V, rng.integers(shortest, longest + 1)) for _ in range(count)]


def _one_by_one(model, sentences):
    """Token-weighted mean of each sentence scored alone: forward from a zero state, B = 1."""
    model.eval()
    total, count = 0.0, 0
    for s in sentences:
        if len(s) < 2:
            continue
        loss, _ = model.forward(s[:-1, None], s[1:, None])
        total += loss * (len(s) - 1)
        count += len(s) - 1
    model.train()
    return total / count


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_evaluate_on_sentences_equals_scoring_each_alone(cell, batch_size, rng):
    model = _model(cell)
    sentences = _sentences(rng)
    expected = _one_by_one(model, sentences)
    got = model.evaluate(sentences, batch_size=batch_size)
    assert abs(got - expected) <= 1e-12 * abs(expected)
    assert model.training and model.num_pending == 0
    assert model.evaluate(tuple(sentences), batch_size=batch_size) == got


def test_evaluate_on_sentences_is_not_the_stream_number(rng):
    model = _model()
    sentences = _sentences(rng, shortest=4)
    stream = np.concatenate(sentences)
    assert abs(model.evaluate(sentences) - model.evaluate(stream, batch_size=1)) > 1e-6


@pytest.mark.parametrize("sentences, error, match", [
    ([np.array([1, 2]), np.array([[1, 2]])], ValueError, r"ids\[1\] must be a 1-D"),
    ([np.array([1, V])], ValueError, r"ids\[0\] must hold token ids"),
    ([np.array([1.0, 2.0])], TypeError, r"ids\[0\]"),
    ([np.array([1]), np.array([], dtype=np.int64)], ValueError, "at least 2 ids"),
    ([], ValueError, "at least 2 ids"),
])
def test_evaluate_rejects_bad_sentences_clearly(sentences, error, match):
    with pytest.raises(error, match=match):
        _model().evaluate(sentences)


@pytest.mark.parametrize("schedule", [None, "plateau"])
def test_trainer_in_sentence_mode_validates_on_sentences(schedule, rng):
    train = _sentences(rng, count=20, shortest=2)
    val = _sentences(rng, count=9)
    model = _model()
    trainer = Trainer(model, train, val_ids=val, batch_size=4, max_steps=6, eval_every=3,
                      eval_batch_size=4, progress=False, schedule=schedule, lr=1e-2)
    history = trainer.fit()
    assert [record["step"] for record in history] == [3, 6]
    last = history[-1]
    expected = _one_by_one(model, val)
    assert abs(last["val_loss"] - expected) <= 1e-12 * expected
    assert last["val_perplexity"] == pytest.approx(math.exp(expected), rel=1e-12)
    assert trainer.best_val == min(record["val_loss"] for record in history)


def test_trainer_checks_validation_sentences_before_training(rng):
    with pytest.raises(ValueError, match=r"val_ids\[1\] must be a 1-D"):
        Trainer(_model(), _sentences(rng, shortest=2), val_ids=[np.array([1, 2]), np.zeros((2, 2), int)],
                max_steps=1, progress=False)
    with pytest.raises(ValueError, match="val_ids must be a 1-D stream"):
        Trainer(_model(), _sentences(rng, shortest=2), val_ids=np.zeros((3, 3), int), max_steps=1,
                progress=False)

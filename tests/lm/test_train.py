"""Trainer: learning, stopping rules, checkpoints and exact resume."""
import numpy as np
import pytest

from fastrnn import LanguageModel, SentenceBatcher, Trainer, WordVocab
from fastrnn.lm.text import SyntheticLanguage


def make_model(**kwargs):
    settings = dict(embed_size=8, hidden_size=12, num_layers=2, cell="lstm", dropout=0.2, seed=1)
    settings.update(kwargs)
    return LanguageModel(13, **settings)


def periodic_stream(n=3000, seed=0):
    """A stream where each token is determined by the two before it: learnable to ~0 loss."""
    pattern = np.random.default_rng(seed).integers(0, 13, 17)
    return np.resize(pattern, n)


def trainer_for(model, ids, **kwargs):
    settings = dict(batch_size=4, seq_len=10, lr=1e-2, progress=False, schedule="plateau",
                    eval_every=5)
    settings.update(kwargs)
    return Trainer(model, ids[:2500], ids[2500:], **settings)


def test_training_learns_a_deterministic_stream():
    model = make_model(dropout=0.0)
    ids = periodic_stream()
    before = model.evaluate(ids[2500:])
    history = trainer_for(model, ids, max_steps=150, eval_every=50).fit()
    assert [r["step"] for r in history] == [50, 100, 150]
    assert history[-1]["val_loss"] < 0.3 < before
    # 4 streams of 625 tokens: 63 windows (62 of 10 steps, one of 4) per epoch.
    assert history[-1]["tokens"] == 2 * (624 * 4) + 24 * 40
    assert history[-1]["val_perplexity"] == pytest.approx(np.exp(history[-1]["val_loss"]))


@pytest.mark.parametrize("mode", ["stream", "sentences"])
def test_resuming_from_a_checkpoint_is_exact(tmp_path, mode):
    ids = periodic_stream()
    data = ids if mode == "stream" else [ids[i:i + 9] for i in range(0, 2500, 9)]

    def trainer(model, **kwargs):
        if mode == "stream":
            return trainer_for(model, data, **kwargs)
        return Trainer(model, data, ids[2500:], batch_size=5, lr=1e-2, progress=False,
                       schedule="plateau", eval_every=5, **kwargs)

    straight = make_model()
    trainer(straight, max_steps=23).fit()

    path = tmp_path / "ckpt.npz"
    first = make_model()
    trainer(first, max_steps=12, checkpoint_path=path).fit()
    resumed_model = make_model(seed=99)          # different init: everything must come from the file
    resumed = trainer(resumed_model, max_steps=23)
    resumed.load_checkpoint(path)
    assert resumed.step == 12
    resumed.fit()
    for name, param in straight.params.items():
        np.testing.assert_array_equal(resumed_model.params[name], param, err_msg=name)
    assert resumed.history[-1]["val_loss"] == pytest.approx(straight.evaluate(ids[2500:]), abs=0)


def test_checkpoints_are_written_every_n_steps(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    saved_at = []
    model = make_model()
    trainer = trainer_for(model, periodic_stream(), max_steps=10, checkpoint_path=path,
                          checkpoint_every=4)
    original = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda: (saved_at.append(trainer.step), original()))
    trainer.fit()
    assert saved_at == [4, 8, 10]
    _, extra = LanguageModel.load(path, with_extra=True)
    assert extra["trainer"]["step"] == 10


def test_time_limit_and_max_epochs_stop_training():
    ids = periodic_stream()
    trainer = trainer_for(make_model(), ids, time_limit=1e-9)
    trainer.fit()
    assert trainer.step == 1
    trainer = trainer_for(make_model(), ids, max_epochs=1, eval_every=1000)
    trainer.fit()
    assert trainer.step == len(trainer.batcher)
    assert trainer.batcher.epoch == 1
    assert len(trainer.history) == 1


def test_early_stopping_after_patience_validations_without_improvement(monkeypatch):
    model = make_model()
    losses = iter([3.0, 2.0, 2.5, 2.0, 1.0, 0.5])
    monkeypatch.setattr(model, "evaluate", lambda ids, batch_size, loss_on="all": next(losses))
    trainer = trainer_for(model, periodic_stream(), patience=2, max_steps=100, eval_every=1,
                          schedule=None)
    trainer.fit()
    assert trainer.stopped_early
    assert trainer.step == 4            # best at step 2, then two validations without a new best
    assert trainer.best_val == 2.0


def test_plateau_schedule_halves_the_learning_rate():
    trainer = trainer_for(make_model(), periodic_stream(), lr=1e-9, optimizer="sgd",
                          max_steps=8, eval_every=1, lr_decay=0.5)
    trainer.fit()
    assert trainer.optimizer.lr < 1e-9


def test_sentence_batches_mask_padding(rng):
    language = SyntheticLanguage(seed=0)
    text = language.generate_text(200, seed=1)
    vocab = WordVocab.build(text)
    ids = vocab.encode(text)
    ends = np.flatnonzero(ids == vocab.eos_id)
    sentences = np.split(ids, ends + 1)[:-1]
    model = LanguageModel(vocab=vocab, embed_size=8, hidden_size=8, num_layers=1, seed=0)
    trainer = Trainer(model, sentences, ids[:300], batch_size=16, max_steps=3, progress=False)
    trainer.fit()
    replay = SentenceBatcher(sentences, 16, seed=0, pad_id=vocab.eos_id)
    batches = [next(iter(replay)) for _ in range(3)]
    assert trainer.tokens == sum(int(lengths.sum()) for _, _, lengths in batches)
    assert trainer.tokens < sum(x.size for x, _, _ in batches)   # padding was not counted


@pytest.mark.parametrize("kwargs, match", [
    ({}, "at least one of"),
    ({"max_steps": 1, "optimizer": "lbfgs"}, "optimizer"),
    ({"max_steps": 1, "schedule": "cosine"}, "schedule"),
    ({"max_steps": 1, "batch_size": 0}, "batch_size"),
    ({"time_limit": -1}, "time_limit"),
])
def test_trainer_rejects_bad_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(make_model(), periodic_stream(), progress=False, **kwargs)


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "ckpt.npz"
    trainer_for(make_model(), periodic_stream(), max_steps=2, checkpoint_path=path).fit()
    other = trainer_for(make_model(hidden_size=7), periodic_stream(), max_steps=2)
    with pytest.raises(ValueError, match="different model"):
        other.load_checkpoint(path)
    make_model().save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="no training state"):
        trainer_for(make_model(), periodic_stream(), max_steps=2).load_checkpoint(tmp_path / "plain.npz")

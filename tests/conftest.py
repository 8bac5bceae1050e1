import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def corpus(tmp_path):
    """A small UTF-8 text file for command-line runs."""
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 40, encoding="utf-8")
    return path


@pytest.fixture
def built(monkeypatch):
    """Every ``(args, kwargs, trainer)`` the command line builds, in order (a spy on
    fastrnn.lm.train.Trainer)."""
    from fastrnn.lm import train as train_module

    made = []
    real = train_module.Trainer

    def spy(*args, **kwargs):
        trainer = real(*args, **kwargs)
        made.append((args, kwargs, trainer))
        return trainer

    monkeypatch.setattr(train_module, "Trainer", spy)
    return made

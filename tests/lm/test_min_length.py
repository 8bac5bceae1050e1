"""generate(..., min_length=N): the stop token is suppressed (probability zero, the rest
renormalised) before N tokens have been generated — in the compiled loop, through
LanguageModel.generate/generate_ids and ``fastrnn sample --min-length``."""
import numpy as np
import pytest

import fastrnn
from fastrnn import CharVocab, LanguageModel
from fastrnn._cpu import generate as _gen
from fastrnn.lm.cli import main
from fastrnn.lm.generation import _generate_tokens, generate_tokens
from helpers import cli_error_line
from test_generation import _fixed_logits_model, make_model, np_step


def np_sample(cell, model, prime, n_tokens, seed, stop_id, min_length, temperature=1.0,
              banned_ids=()):
    """The sampling rule in NumPy, row by row: softmax of logits / temperature over the allowed
    tokens in id order (banned ids, and stop_id while t < min_length, left out), then the
    first token whose cumulative mass passes u * total, u from default_rng(seed)."""
    layers, emb, out_w, out_b = model
    B, _ = prime.shape
    L, H, V = len(layers), layers[0][1].shape[1], emb.shape[0]
    uniforms = np.random.default_rng(seed).random((n_tokens, B))
    tokens = np.full((B, n_tokens), -1, np.int64)
    lengths = np.zeros(B, np.int64)
    for b in range(B):
        h, c = np.zeros((L, 1, H)), np.zeros((L, 1, H))
        for tok in prime[b]:
            np_step(cell, layers, emb[tok][None], h, c)
        for t in range(n_tokens):
            logits = h[-1, 0] @ out_w.T + out_b
            allowed = [v for v in range(V) if v not in banned_ids
                       and not (t < min_length and v == stop_id)]
            z = logits[allowed] / temperature
            cum = np.cumsum(np.exp(z - z.max()))
            tok = allowed[np.searchsorted(cum, uniforms[t, b] * cum[-1], side="right")]
            tokens[b, t] = tok
            lengths[b] = t + 1
            if tok == stop_id:
                break
            np_step(cell, layers, emb[tok][None], h, c)
    return tokens, lengths


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    fastrnn.set_num_threads(None)


@pytest.mark.parametrize("cell", ["lstm", "rnn_identity"])
@pytest.mark.parametrize("min_length", [0, 3, 8])
def test_tokens_equal_a_numpy_sampler_with_the_same_rule(cell, min_length):
    model = make_model(cell, V=5, H=8, seed=2, scale=0.3)
    B, N, stop = 24, 24, 1
    prime = np.random.default_rng(0).integers(0, 5, (B, 2))
    ref_tokens, ref_lengths = np_sample(cell, model, prime, N, 7, stop, min_length,
                                        temperature=2.0, banned_ids=(3,))
    fastrnn.set_num_threads(2)
    for split in ("rows", "batch"):
        tokens, lengths, _ = _generate_tokens(cell, *model, prime, N, temperature=2.0, seed=7,
                                              stop_id=stop, banned_ids=[3],
                                              min_length=min_length, split=split)
        np.testing.assert_array_equal(tokens, ref_tokens)
        np.testing.assert_array_equal(lengths, ref_lengths)
    stopped = tokens[np.arange(B), lengths - 1] == stop
    assert stopped.sum() >= B // 3         # the rule is exercised: many rows stop
    assert (lengths[stopped] > min_length).all()   # at least min_length tokens before stop
    if min_length == 0:
        assert (lengths[stopped] <= 3).any()       # without it, some stop early


def test_greedy_takes_the_best_other_token_until_min_length():
    # Fixed logits: the stop token 2 is the most likely, token 0 the next.
    logits = np.array([1.0, -1.0, 3.0, 0.0])
    model = _fixed_logits_model(logits, 4)
    prime = np.zeros((3, 1), np.int64)
    tokens, lengths, _ = generate_tokens("rnn_tanh", *model, prime, 10, greedy=True, stop_id=2,
                                         min_length=4)
    np.testing.assert_array_equal(tokens[:, :5], [[0, 0, 0, 0, 2]] * 3)
    assert (lengths == 5).all() and (tokens[:, 5:] == -1).all()
    # min_length past n_tokens: the stop token never comes
    tokens, lengths, _ = generate_tokens("rnn_tanh", *model, prime, 6, greedy=True, stop_id=2,
                                         min_length=50)
    assert (tokens == 0).all() and (lengths == 6).all()


def test_suppressed_draws_follow_the_renormalised_softmax():
    """Before min_length, token frequencies are softmax over the other tokens."""
    logits = np.array([0.5, 2.0, 0.0, -0.5])
    layers, emb, w, b = _fixed_logits_model(logits, 4)
    n = 20000
    tokens, _, _ = generate_tokens("rnn_tanh", layers, emb, w, b, np.zeros((n, 1), np.int64), 1,
                                   stop_id=1, min_length=1, seed=4)
    counts = np.bincount(tokens.ravel(), minlength=4)
    assert counts[1] == 0
    p = np.exp(logits[[0, 2, 3]])
    expected = p / p.sum() * n
    chi2 = ((counts[[0, 2, 3]] - expected) ** 2 / expected).sum()
    assert chi2 < 20, (counts, expected)    # 2 dof: p(chi2 > 20) ~ 5e-5


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(min_length=-1, stop_id=1), ValueError, "min_length must be >= 0"),
    (dict(min_length=2.5, stop_id=1), TypeError, "min_length must be an integer"),
    (dict(min_length=True, stop_id=1), TypeError, "min_length must be an integer"),
    (dict(min_length=3), ValueError, "min_length=3 needs stop_id"),
    (dict(min_length=1, stop_id=1, banned_ids=[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]), ValueError,
     "no token could be drawn")])
def test_bad_min_length_is_refused(kwargs, exc, match):
    model = make_model("gru", seed=1)
    with pytest.raises(exc, match=match):
        generate_tokens("gru", *model, np.zeros((2, 1), np.int64), 5, **kwargs)


def test_the_kernel_refuses_what_it_cannot_draw_from():
    """A direct generate_loop call: min_length < 0, or nothing left to draw, is refused (an
    empty candidate set would return an unset token id)."""
    V, E, H = 3, 2, 2
    args = dict(kind=0, embedding=np.ones((V, E)), w_ih=[np.zeros((H, E))],
                w_hh=[np.zeros((H, H))], b_ih=[np.zeros(H)], b_hh=[np.zeros(H)], table=None,
                out_w=np.zeros((V, H)), out_b=np.zeros(V), prime=np.zeros((1, 1), np.int64),
                n_tokens=3, uniforms=np.full((3, 1), 0.5), h=[np.zeros((1, H))], c=None,
                temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_id=2,
                banned=np.array([1, 1, 0], np.uint8), num_threads=1, split_rows=False)
    tokens, _ = _gen.generate_loop(**args)
    assert tokens[0, 0] == 2
    with pytest.raises(ValueError, match="min_length must be >= 0"):
        _gen.generate_loop(**args, min_length=-1)
    with pytest.raises(ValueError, match="at least one token allowed"):
        _gen.generate_loop(**args, min_length=1)
    with pytest.raises(ValueError, match="at least one token allowed"):
        _gen.generate_loop(**dict(args, banned=np.ones(V, np.uint8)))


def _char_model(tmp_path):
    vocab = CharVocab.build("ab\n")
    model = LanguageModel(vocab=vocab, embed_size=4, hidden_size=6, num_layers=1, seed=1)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def test_language_model_generate_honours_min_length(tmp_path):
    model, _ = _char_model(tmp_path)
    free = model.generate(30, prime="a", num_samples=40, stop="\n", seed=3)
    assert min(len(s) for s in free) < 5                     # short samples without it
    samples = model.generate(30, prime="a", num_samples=40, stop="\n", seed=3, min_length=5)
    assert all("\n" not in s[:5] for s in samples)
    assert sum(s.endswith("\n") for s in samples) > 20       # and most still end
    ids, lengths = model.generate_ids(np.array([0]), 30, num_samples=40, stop_id=2, seed=3,
                                      min_length=5)
    assert ((ids[:, :5] != 2) & (ids[:, :5] >= 0)).all()
    with pytest.raises(ValueError, match="min_length=4 needs stop"):
        model.generate(10, min_length=4)
    with pytest.raises(ValueError, match="min_length must be >= 0"):
        model.generate(10, stop="\n", min_length=-2)


def test_cli_sample_min_length(tmp_path, capsys):
    model, path = _char_model(tmp_path)
    assert main(["sample", str(path), "--prime", "a", "--length", "30", "--stop", "\n",
                 "--min-length", "6", "--seed", "5", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    expected = model.generate(30, prime="a", num_samples=3, stop="\n", seed=5, min_length=6)
    assert out == "".join(f"--- sample {i + 1}\na{s}\n" for i, s in enumerate(expected))
    assert "--min-length needs --stop" in cli_error_line(
        capsys, ["sample", str(path), "--min-length", "3"])
    assert "--min-length" in cli_error_line(capsys, ["sample", str(path), "--stop", "\n",
                                                     "--min-length", "-1"])

"""What the four tutorial examples compare fastrnn against: PyTorch at equal steps.

``side_by_side`` trains a fastrnn ``LanguageModel`` with a ``Trainer`` and a PyTorch copy of
the same model (same initial weights, same batches, the same optimizer, clipping and loss
reduction) for a number of steps, and returns both losses at every step. It is the one
piece the examples share; it is a reference, not part of the tutorials' own steps, and it is
skipped (returns None) when PyTorch is not installed. Both sides run in float64, so that
the losses agree to rounding (~1e-12) however many steps apart: in float32, rounding alone
grows to ~1e-3 within 50 steps of an unclipped ReLU RNN, which would hide a real difference.

The PyTorch copy is built from the fastrnn model's public parameters: ``embedding.weight``
(absent for one-hot inputs), ``model.rnn.all_weights`` (one tuple per layer, so layers of
different widths work) and ``output.weight``/``output.bias``. Cells PyTorch does not have
(``rnn_identity``) and models with dropout (the masks would differ) are not compared.
"""
import math

import numpy as np

import fastrnn
from fastrnn.lm.model import last_token_mask

try:
    import torch
except ImportError:   # the comparison is optional
    torch = None

_TORCH_CELLS = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
                "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
                "rnn_relu": ("RNN", {"nonlinearity": "relu"})}


def why_not_comparable(model):
    """None when a PyTorch copy of ``model`` can be built, else the reason (str)."""
    if torch is None:
        return "PyTorch is not installed"
    if model.cell.name not in _TORCH_CELLS:
        return f"PyTorch has no {model.cell.name!r} cell"
    if model.dropout:
        return "dropout masks would differ"
    return None


class TorchCopy(torch.nn.Module if torch is not None else object):
    """embedding (or one-hot) -> one torch RNN module per layer -> linear, in float64."""

    def __init__(self, model):
        super().__init__()
        params = model.params
        self.vocab_size = model.vocab_size
        weight = params.get("embedding.weight")
        self.embedding = None if weight is None else torch.nn.Parameter(_tensor(weight))
        kind, options = _TORCH_CELLS[model.cell.name]
        self.layers = torch.nn.ModuleList()
        for w_ih, w_hh, b_ih, b_hh in model.rnn.all_weights:
            hidden, inputs = w_hh.shape[1], w_ih.shape[1]
            layer = getattr(torch.nn, kind)(inputs, hidden, bias=b_ih is not None,
                                            dtype=torch.float64, **options)
            with torch.no_grad():
                layer.weight_ih_l0.copy_(_tensor(w_ih))
                layer.weight_hh_l0.copy_(_tensor(w_hh))
                if b_ih is not None:
                    layer.bias_ih_l0.copy_(_tensor(b_ih))
                    layer.bias_hh_l0.copy_(_tensor(b_hh))
            self.layers.append(layer)
        out = params.get("output.weight", params.get("embedding.weight"))
        self.out_weight = torch.nn.Parameter(_tensor(out))
        self.out_bias = torch.nn.Parameter(_tensor(params["output.bias"]))

    def forward(self, x, y, state, weights, reduction):
        x = torch.as_tensor(x)
        if self.embedding is None:
            h = torch.nn.functional.one_hot(x, self.vocab_size).to(torch.float64)
        else:
            h = self.embedding[x]
        new_state = []
        for i, layer in enumerate(self.layers):
            h, s = layer(h, None if state is None else state[i])
            new_state.append(s)
        logits = h @ self.out_weight.T + self.out_bias
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, self.vocab_size), torch.as_tensor(y).reshape(-1),
            reduction="none")
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1))
        total = (losses * w).sum()
        loss = total if reduction == "sum" else total / w.sum()
        return loss, total / w.sum(), new_state


def _tensor(a):
    return torch.tensor(np.array(a, dtype=np.float64))


def _torch_optimizer(copy, name, lr, options):
    options = dict(options or {})
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adadelta": torch.optim.Adadelta,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[name]
    return cls(copy.parameters(), lr=lr, **options)


def _detach(state):
    return [tuple(s.detach() for s in st) if isinstance(st, tuple) else st.detach()
            for st in state]


def side_by_side(make_model, train_data, steps, trainer_options):
    """Train ``make_model(np.float64)`` with ``fastrnn.Trainer(model, train_data, **trainer_options)``
    and a PyTorch copy of its initial weights on the same ``steps`` batches.

    ``trainer_options`` uses the Trainer's names (optimizer, lr, optimizer_options, clip,
    clip_mode, reduction, loss_on, batch_size, seq_len, shuffle, seed); with
    ``loss_on="last"`` the PyTorch side weights each sentence's last predicted token only.
    Returns None when no comparison is possible (printing why), else a list of
    ``(step, fastrnn_loss, torch_loss)``, the mean loss per counted token of each step.
    """
    model = make_model(np.float64)
    reason = why_not_comparable(model)
    if reason is not None:
        print(f"PyTorch comparison skipped: {reason}")
        return None
    options = dict(trainer_options)
    options.update(max_steps=steps, progress=False)
    trainer = fastrnn.Trainer(model, train_data, **options)
    copy = TorchCopy(model)
    torch_opt = _torch_optimizer(copy, options.get("optimizer", "adam"), trainer.optimizer.lr,
                                 options.get("optimizer_options"))
    clip, clip_mode = options.get("clip", 5.0), options.get("clip_mode", "norm")
    reduction = options.get("reduction", "mean")
    rows, torch_state = [], None
    for step in range(1, steps + 1):
        if trainer.batcher.position == 0:   # each epoch starts from a zero state
            trainer.carry, torch_state = None, None
        batch = next(iter(trainer.batcher))
        x, y = batch[0], batch[1]
        if len(batch) == 2:
            weights = np.ones(x.shape)
        elif trainer.loss_on == "last":
            weights = last_token_mask(batch[2], x.shape[0]).astype(np.float64)
        else:
            weights = fastrnn.SentenceBatcher.mask(batch[2], x.shape[0]).astype(np.float64)
        ours = trainer.train_step(batch)
        for g in torch_opt.param_groups:   # follow the fastrnn schedule, if any
            g["lr"] = trainer.optimizer.lr
        torch_opt.zero_grad()
        loss, mean, state = copy(x, y, torch_state if trainer.mode == "stream" else None,
                                 weights, reduction)
        loss.backward()
        _torch_clip(copy, clip, clip_mode)
        torch_opt.step()
        torch_state = _detach(state)
        rows.append((step, float(ours), mean.item()))
    return rows


def _torch_clip(copy, clip, mode):
    if clip is None:
        return
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(copy.parameters(), clip)
    elif mode == "param_norm":
        for p in copy.parameters():
            torch.nn.utils.clip_grad_norm_([p], clip)
    else:
        torch.nn.utils.clip_grad_value_(copy.parameters(), clip)


def print_side_by_side(rows, every=None, label="PyTorch"):
    """Print the losses at equal steps and the largest difference; returns that difference."""
    if not rows:
        return None
    every = every or max(1, len(rows) // 5)
    print(f"{'step':>6}  {'fastrnn':>10}  {label:>10}")
    for step, ours, theirs in rows:
        if step == 1 or step % every == 0 or step == len(rows):
            print(f"{step:>6}  {ours:10.5f}  {theirs:10.5f}")
    worst = max(abs(a - b) for _, a, b in rows)
    print(f"largest |fastrnn - {label}| over {len(rows)} steps: {worst:.2e} nats/token "
          "(both in float64)")
    return worst


def nats_to_bits(nats):
    return nats / math.log(2)


def add_common_options(parser, default_steps_help):
    """--quick, --steps, --time, --threads, --torch-steps and --seed, the same in every example."""
    parser.add_argument("--quick", action="store_true",
                        help="a short run on generated text, no corpus needed (< 60 s)")
    parser.add_argument("--steps", type=int, default=None, help=default_steps_help)
    parser.add_argument("--time", type=float, default=None,
                        help="seconds of training per model (a cap besides --steps)")
    parser.add_argument("--threads", type=int, default=None,
                        help="fastrnn threads (default: 1 with --quick, which is robust on a "
                             "busy shared machine; else fastrnn's default)")
    parser.add_argument("--torch-steps", type=int, default=None,
                        help="steps of the PyTorch comparison")


def apply_threads(args):
    threads = args.threads or (1 if args.quick else None)
    if threads:
        fastrnn.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)

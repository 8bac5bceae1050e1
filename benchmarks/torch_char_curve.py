"""PyTorch's equivalent of the README's char-LSTM command, for the training curve in "Results".

    python benchmarks/torch_char_curve.py tinyshakespeare.txt --time-limit 150 --log torch.jsonl
    fastrnn plot fastrnn.jsonl torch.jsonl -o curves.png --x train_seconds

Same data (fastrnn's CharVocab, 90/10 split and StreamBatcher: 32 streams x 64 steps, state
carried across windows and cut for the gradient), same model (embedding 64 -> 2-layer LSTM 256
-> linear), Adam 2e-3, global-norm clip 5, the same threads; validation (not counted in the
training seconds) scores the held-out text as 16 parallel streams with carried state, as
``LanguageModel.evaluate`` does. Writes the records in ``fastrnn train --log``'s format.
"""
import argparse
import json
import time

import numpy as np
import torch

import fastrnn


def evaluate(net, ids, streams=16, seq_len=64):
    n = (len(ids) - 1) // streams
    x = torch.from_numpy(np.asarray(ids[:n * streams]).reshape(streams, n).T.copy())
    y = torch.from_numpy(np.asarray(ids[1:n * streams + 1]).reshape(streams, n).T.copy())
    total, state = 0.0, None
    with torch.no_grad():
        for t in range(0, n, seq_len):
            logits, state = net(x[t:t + seq_len], state)
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[t:t + seq_len].reshape(-1),
                reduction="sum").item()
    return total / (n * streams)


class CharLSTM(torch.nn.Module):
    def __init__(self, vocab_size, embed=64, hidden=256, layers=2):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed)
        self.rnn = torch.nn.LSTM(embed, hidden, layers)
        self.output = torch.nn.Linear(hidden, vocab_size)

    def forward(self, x, state):
        y, state = self.rnn(self.embedding(x), state)
        return self.output(y), state


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--time-limit", type=float, default=150.0)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    text = fastrnn.load_text(args.file)
    vocab = fastrnn.CharVocab.build(text)
    train_ids, val_ids = fastrnn.train_val_split(vocab.encode(text), 0.1)
    batches = fastrnn.StreamBatcher(train_ids, 32, 64)
    net = CharLSTM(len(vocab))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    step, seconds, state = 0, 0.0, None
    with open(args.log, "w", encoding="utf-8") as log:
        while seconds < args.time_limit:
            if batches.position == 0:
                state = None   # each epoch starts the streams from a zero state
            x, y = next(iter(batches))
            started = time.perf_counter()
            logits, state = net(torch.from_numpy(x), state)
            state = tuple(s.detach() for s in state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     torch.from_numpy(y).reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            seconds += time.perf_counter() - started
            step += 1
            if step % args.eval_every == 0 or seconds >= args.time_limit:
                record = {"step": step, "train_seconds": round(seconds, 3),
                          "train_loss": loss.item(), "val_loss": evaluate(net, val_ids)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(record, flush=True)


if __name__ == "__main__":
    main()

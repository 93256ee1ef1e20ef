"""Model-parallel RNN: the embedding table and the decoder live on a parameter server, the LSTM here.

As in torch's distributed RNN tutorial: `remote` creates both modules on the server, forward
calls them through their RRefs, and DistributedOptimizer updates all three parts. The task is
to predict the next token of sequences that follow a fixed rule.

    python examples/rnn.py                         # spawns trainer and ps here
    torchrun --nproc-per-node 2 examples/rnn.py
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

from distautograd import autograd as dist_autograd
from distautograd import launch, rpc
from distautograd.optim import DistributedOptimizer

TOKENS, EMBED, HIDDEN = 16, 16, 32


class EmbeddingTable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embedding = torch.nn.Embedding(TOKENS, EMBED)

    def forward(self, tokens):
        return self.embedding(tokens)


class Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.linear = torch.nn.Linear(HIDDEN, TOKENS)

    def forward(self, output):
        return self.linear(output)


def parameter_rrefs(module_rref):
    return [rpc.RRef(p) for p in module_rref.local_value().parameters()]


class RNNModel(torch.nn.Module):
    def __init__(self, ps: str):
        super().__init__()
        self.embedding = rpc.remote(ps, EmbeddingTable)
        torch.manual_seed(3)
        self.lstm = torch.nn.LSTM(EMBED, HIDDEN, batch_first=True)
        self.decoder = rpc.remote(ps, Decoder)

    def forward(self, tokens):
        embedded = self.embedding.rpc_sync().forward(tokens)
        output, _ = self.lstm(embedded)
        return self.decoder.rpc_sync().forward(output)

    def parameter_rrefs(self):
        remote_params = rpc.rpc_sync(self.embedding.owner(), parameter_rrefs, args=(self.embedding,))
        remote_params += rpc.rpc_sync(self.decoder.owner(), parameter_rrefs, args=(self.decoder,))
        return remote_params + [rpc.RRef(p) for p in self.lstm.parameters()]


def sequences(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Token t+1 = (3 * token t + 1) mod TOKENS, from random starts."""
    start = torch.randint(0, TOKENS, (batch, 1), generator=generator)
    out = [start]
    for _ in range(length):
        out.append((out[-1] * 3 + 1) % TOKENS)
    return torch.cat(out, dim=1)


def train(ps: str, steps: int, bound: float) -> None:
    model = RNNModel(ps)
    optimizer = DistributedOptimizer(torch.optim.Adam, model.parameter_rrefs(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    print(f"embedding and decoder on {ps}, LSTM here; {steps} steps", flush=True)
    for step in range(1, steps + 1):
        seq = sequences(16, 12, generator)
        with dist_autograd.context() as context_id:
            logits = model(seq[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, TOKENS), seq[:, 1:].reshape(-1))
            dist_autograd.backward(context_id, [loss])
            optimizer.step(context_id)
        if step % max(1, steps // 6) == 0:
            print(f"  step {step:>3}/{steps} loss {loss.item():.4f}", flush=True)
    seq = sequences(64, 12, generator)
    final = torch.nn.functional.cross_entropy(model(seq[:, :-1]).reshape(-1, TOKENS), seq[:, 1:].reshape(-1)).item()
    print(f"held-out loss {final:.4f}")
    if not final < bound:
        raise RuntimeError(f"the RNN did not learn: held-out loss {final:.4f} (bound {bound})")
    print(f"learned: held-out loss below {bound}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--bound", type=float, default=0.5, help="the held-out loss must fall below this")
    args = parser.parse_args(argv)
    ps = launch.workers(["ps"])[0]
    return launch.run(["trainer", ps], {"trainer": functools.partial(train, ps, args.steps, args.bound)})


if __name__ == "__main__":
    sys.exit(launch.as_module(__file__, "examples.rnn").main())

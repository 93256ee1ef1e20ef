"""WGAN-GP across workers: a critic split over two workers, trained with a gradient penalty.

The critic's two halves are RemoteModules on "critic1" and "critic2"; the generator is local. The
penalty ``λ (‖∂D(x̂)/∂x̂‖ - 1)²`` needs the critic's gradient to be differentiable:
``dist_autograd.grad(..., create_graph=True)`` computes it across both workers, and the critic's
loss then backpropagates through it, crossing them again (second order). At the end the trainer
replays every step in one process with plain torch and checks the parameters match.

    python examples/gradient_penalty.py                 # spawns trainer, critic1, critic2 here
    torchrun --nproc-per-node 3 examples/gradient_penalty.py
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

from distautograd import autograd as dist_autograd
from distautograd import launch, rpc
from distautograd.nn import RemoteModule
from distautograd.optim import DistributedOptimizer

NOISE, HIDDEN, BATCH, LAMBDA, LR = 4, 32, 64, 10.0, 0.02
ROLES = ["trainer", "critic1", "critic2"]


class CriticIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(2, HIDDEN)

    def forward(self, x):
        return torch.nn.functional.leaky_relu(self.linear(x), 0.2)


class CriticOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.linear = torch.nn.Linear(HIDDEN, 1)

    def forward(self, h):
        return self.linear(h)


def generator() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Linear(NOISE, 2)


def batch(step: int):
    """Real points on a ring, the generator's noise, and the interpolation weights, the same in every run."""
    g = torch.Generator().manual_seed(step)
    angle = torch.rand(BATCH, 1, generator=g) * 6.2832
    real = torch.cat([angle.cos(), angle.sin()], dim=1) * 2 + 0.05 * torch.randn(BATCH, 2, generator=g)
    return real, torch.randn(BATCH, NOISE, generator=g), torch.rand(BATCH, 1, generator=g)


def critic_loss(critic, gen, step: int, grad):
    """The WGAN-GP critic loss; ``grad(output, x)`` differentiates with create_graph."""
    real, noise, eps = batch(step)
    fake = gen(noise).detach()
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    g = grad(critic(x_hat).sum(), x_hat)
    penalty = ((g.norm(2, dim=1) - 1) ** 2).mean()
    return critic(fake).mean() - critic(real).mean() + LAMBDA * penalty


def train(steps: int) -> None:
    first = RemoteModule("critic1/cpu", CriticIn)
    second = RemoteModule("critic2/cpu", CriticOut)
    critic = lambda x: second(first(x))  # noqa: E731
    gen = generator()
    critic_opt = DistributedOptimizer(torch.optim.SGD, first.remote_parameters() + second.remote_parameters(), lr=LR)
    gen_opt = DistributedOptimizer(torch.optim.SGD, [rpc.RRef(p) for p in gen.parameters()], lr=LR)
    for step in range(steps):
        with dist_autograd.context() as context_id:
            def grad(output, x):
                return dist_autograd.grad(context_id, [output], [x], create_graph=True)[0]

            loss = critic_loss(critic, gen, step, grad)
            dist_autograd.backward(context_id, [loss])
            critic_opt.step(context_id)
        with dist_autograd.context() as context_id:
            gen_loss = -critic(gen(batch(step)[1])).mean()
            dist_autograd.backward(context_id, [gen_loss])
            gen_opt.step(context_id)
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step:>3}/{steps}: critic loss {loss.item():+.4f}, generator loss {gen_loss.item():+.4f}",
                  flush=True)
    got = [p.to_here() for p in first.remote_parameters() + second.remote_parameters()]
    got += [p.detach() for p in gen.parameters()]
    check_against_one_process(got, steps)


def check_against_one_process(got, steps: int) -> None:
    """The same steps with plain torch in this process."""
    first, second, gen = CriticIn(), CriticOut(), generator()
    critic = lambda x: second(first(x))  # noqa: E731
    critic_opt = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=LR)
    gen_opt = torch.optim.SGD(gen.parameters(), lr=LR)
    for step in range(steps):
        critic_opt.zero_grad()
        critic_loss(critic, gen, step, lambda out, x: torch.autograd.grad(out, x, create_graph=True)[0]).backward()
        critic_opt.step()
        gen_opt.zero_grad()
        (-critic(gen(batch(step)[1])).mean()).backward()
        gen_opt.step()
    want = [*first.parameters(), *second.parameters(), *gen.parameters()]
    worst = max((a - b.detach()).abs().max().item() for a, b in zip(got, want))
    exact = all(torch.equal(a, b.detach()) for a, b in zip(got, want))
    print(f"trainer: after {steps} steps the parameters match a single-process run: "
          f"{'bit for bit' if exact else f'max |diff| {worst:.2g}'}", flush=True)
    if worst > 1e-6:
        raise RuntimeError(f"the distributed run drifted from the single-process one: max |diff| {worst:.3g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    return launch.run(ROLES, {"trainer": functools.partial(train, args.steps)})


if __name__ == "__main__":
    sys.exit(launch.as_module(__file__, "examples.gradient_penalty").main())

"""Stands in for an installed library: a model class, and a function that is not a model."""

import torch


class LibModel(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.linear(x))


def not_a_model(path):
    """Anything a library offers that is not a model: a peer must not be able to call it."""
    open(path, "w").write("ran")

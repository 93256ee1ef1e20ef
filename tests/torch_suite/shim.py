"""Maps torch.distributed.rpc, .autograd, .optim and RemoteModule to distautograd for torch's own tests."""

from __future__ import annotations

import sys

import torch.distributed
import torch.distributed.autograd  # noqa: F401  the real modules load first: torch's helpers import them
import torch.distributed.nn
import torch.distributed.nn.api.remote_module
import torch.distributed.optim
import torch.distributed.rpc  # noqa: F401
import torch.distributed.rpc.internal

import distautograd.autograd
import distautograd.nn
import distautograd.optim
import distautograd.rpc
import distautograd.rpc.api
import distautograd.rpc.functions

_TORCH_INTERNAL = torch.distributed.rpc.internal

# torch's name -> the module of ours that stands in for it. Nothing else of torch's is replaced:
# torch.distributed.rpc.internal (the profiling key format, exec modes) stays torch's own.
MODULES = {
    "torch.distributed.rpc": distautograd.rpc,
    "torch.distributed.rpc.api": distautograd.rpc.api,
    "torch.distributed.rpc.functions": distautograd.rpc.functions,
    "torch.distributed.autograd": distautograd.autograd,
    "torch.distributed.optim": distautograd.optim,
}


def install() -> None:
    """Makes every later ``import torch.distributed.rpc`` (and the rest of MODULES) give ours."""
    for name, module in MODULES.items():
        parent, _, attr = name.rpartition(".")
        sys.modules[name] = module
        setattr(sys.modules[parent], attr, module)
    distautograd.rpc.internal = _TORCH_INTERNAL  # what torch's code reaches as torch.distributed.rpc.internal
    torch.distributed.nn.RemoteModule = distautograd.nn.RemoteModule
    torch.distributed.nn.api.remote_module.RemoteModule = distautograd.nn.RemoteModule

"""RemoteModule: an nn.Module made on another worker and used through its RRef, as torch.distributed.nn.RemoteModule.

It lives in the runtime (not in the public nn/ face) because RemoteModules travel as call
arguments, and every worker must be able to rebuild one and run what it runs on the owner.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from distautograd.encoding.allowlist import trusted_global
from distautograd.runtime import current
from distautograd.runtime.options import UNSET_TIMEOUT
from distautograd.runtime.rref import RRef


@trusted_global
def create_module(module_cls, args: tuple, kwargs: dict, device: str) -> nn.Module:
    if not (isinstance(module_cls, type) and issubclass(module_cls, nn.Module)):
        raise TypeError(f"RemoteModule needs an nn.Module class, got {module_cls!r}")
    module = module_cls(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise ValueError(f"Expect `module_cls(*args, **kwargs)` returns an instance of <class nn.Module>, "
                         f"but it returns an instance of {type(module)}.")
    return module.to(device)


@trusted_global
def param_rrefs(module_rref: RRef, recurse: bool) -> List[RRef]:
    return [RRef(param) for param in module_rref.local_value().parameters(recurse)]


@trusted_global
def remote_forward(module_rref: RRef, args: tuple, kwargs: dict) -> Any:
    return module_rref.local_value()(*args, **kwargs)


@trusted_global
def rebuild(on, device: str, module_rref: RRef) -> "RemoteModule":
    return RemoteModule._rebuild(on, device, module_rref)


def parse_remote_device(remote_device: str) -> Tuple[Union[str, int], str]:
    """"worker1/cpu", "rank:1/cpu" or "worker1" -> (worker name or rank, device)."""
    if not isinstance(remote_device, str) or not remote_device:
        raise ValueError(f"remote_device must be 'workername/device' or 'rank:N/device', got {remote_device!r}")
    where, _, device = remote_device.partition("/")
    device = device or "cpu"
    if where.startswith("rank:"):
        rank = where[len("rank:"):]
        if not rank.isdigit():
            raise ValueError(f"Could not parse remote_device: {remote_device}. The valid format is "
                             "'<workername>/<device>' or 'rank:<rank>/<device>'")
        where = int(rank)
    if torch.device(device).type != "cpu":
        raise ValueError(f"RemoteModule device {device!r} is not supported: distautograd moves CPU tensors only")
    return where, device


def _not_supported(name: str):
    def refuse(self, *args, **kwargs):
        raise ValueError(f"Method ``{name}`` not supported for RemoteModule")

    refuse.__name__ = name
    return refuse


class RemoteModule(nn.Module):
    """An ``nn.Module`` made and kept on another worker; ``forward`` runs there, autograd crosses back.

    Args:
        remote_device: where to make it: ``"worker1/cpu"``, ``"rank:1/cpu"`` or ``"worker1"``.
        module_cls: the nn.Module class (loadable by that worker: a library's, or the program's own).
        args, kwargs: for ``module_cls``.

    Example::

        On worker 0:
            >>> remote_linear = RemoteModule("worker1/cpu", nn.Linear, args=(20, 30))
            >>> out = remote_linear.forward_async(torch.randn(128, 20)).wait()
            >>> opt = DistributedOptimizer(torch.optim.SGD, remote_linear.remote_parameters(), lr=0.05)
    """

    def __init__(self, remote_device: str, module_cls, args: Optional[tuple] = None,
                 kwargs: Optional[Dict[str, Any]] = None, _module_interface_cls: Any = None):
        super().__init__()
        self.on, self.device = parse_remote_device(remote_device)
        self.is_scriptable = _module_interface_cls is not None
        agent = current.get()
        to = agent.world.resolve(self.on)
        self.module_rref = agent.calls.remote(to, create_module, (module_cls, tuple(args or ()), dict(kwargs or {}),
                                                                   self.device), {}, UNSET_TIMEOUT)

    @classmethod
    def _rebuild(cls, on, device: str, module_rref: RRef) -> "RemoteModule":
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.on, self.device, self.module_rref, self.is_scriptable = on, device, module_rref, False
        return self

    def __reduce__(self):
        return rebuild, (self.on, self.device, self.module_rref)

    def _call(self, function, args: tuple, mode: str):
        agent = current.get()
        future = agent.calls.invoke(agent.world.resolve(self.on), function, args, {}, UNSET_TIMEOUT)
        return future if mode == "async" else future.wait()

    def forward(self, *args, **kwargs):
        return self._call(remote_forward, (self.module_rref, args, kwargs), "sync")

    def forward_async(self, *args, **kwargs) -> torch.futures.Future:
        return self._call(remote_forward, (self.module_rref, args, kwargs), "async")

    def remote_parameters(self, recurse: bool = True) -> List[RRef]:
        """RRefs to the remote module's parameters, as DistributedOptimizer takes them."""
        return self._call(param_rrefs, (self.module_rref, recurse), "sync")

    def get_module_rref(self) -> RRef:
        return self.module_rref

    def train(self, mode: bool = True):
        return self.module_rref.rpc_sync().train(mode)

    def eval(self):
        return self.module_rref.rpc_sync().eval()

    def parameters(self, recurse: bool = True):
        raise ValueError("Method ``parameters`` not supported for RemoteModule. Please use "
                         "``remote_parameters`` instead.")

    for _name in ("register_buffer", "register_parameter", "add_module", "apply", "cuda", "ipu", "xpu", "cpu",
                  "type", "float", "double", "half", "bfloat16", "to", "register_backward_hook",
                  "register_forward_pre_hook", "register_forward_hook", "state_dict", "load_state_dict",
                  "named_parameters", "buffers", "named_buffers", "children", "named_children", "modules",
                  "named_modules", "requires_grad_", "zero_grad", "share_memory", "extra_repr"):
        locals()[_name] = _not_supported(_name)
    del _name

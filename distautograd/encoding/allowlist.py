"""What a connected peer may reach, decided by allowing: user code it trusts, models, tensor math, plain data.

Who may connect is settled before any message is read (transport.security). Then every global a
message names, every operator and every method an RRef proxy calls goes through an Allowlist:

- *user code*: functions and classes of the caller's ``__main__``, of the modules the deployment
  names (``allowed_modules``), and, when this process runs a program (every rank runs the same
  one), of that program's own modules: those loaded from the program's folder;
- *models*: ``torch.nn.Module`` subclasses from any module already loaded here (torchvision's
  ResNet), and the methods a model is used through (``forward``, ``parameters``, ``state_dict``,
  ``train``, ...); optimizers and distributions;
- *tensor math*: ATen operators (``torch.add``, ``Tensor.matmul``, ``F.linear``), except the few
  that reach files or process-wide state, and the functions of torch's math modules;
- *data*: the standard containers and scalars, dtypes, devices, shapes, numpy arrays.

Nothing else: not files (``torch.from_file``, ``Tensor.numpy().tofile``), storages, processes,
threads or seeds, TorchScript/IR loading, or attributes a name reaches through dunders. Checking
a name never imports a module: only modules the deployment names are imported on first use.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import types
from typing import Any, Iterable, Optional

import torch

from distautograd.errors import InvalidArgument, PermissionDenied

ALLOW_ENV = "DISTAUTOGRAD_ALLOW_MODULES"

_SAFE_BUILTINS = frozenset(
    "list dict set frozenset tuple bytearray bytes str int float complex bool slice range object "
    "Ellipsis NotImplemented "
    # functions of plain values only: they reach nothing but their arguments (torch's tests call min)
    "abs all any divmod len max min pow round sorted sum".split()
)
_SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._C._profiler", "ProfilerState"),  # enums of profiles (profiles and their events travel)
        ("torch._C._autograd", "DeviceType"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("collections", "Counter"),
        ("copyreg", "_reconstructor"),
        ("copyreg", "__newobj__"),
        ("copyreg", "__newobj_ex__"),
        ("functools", "partial"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("torch", "Size"),
        ("torch", "Tensor"),
        ("torch.nn.parameter", "Parameter"),
        ("torch", "device"),
        ("torch.serialization", "_get_layout"),
    }
)
_MAIN_MODULES = ("__main__", "__mp_main__")
_TORCH_DATA = (torch.dtype, torch.layout, torch.memory_format, torch.device, torch.qscheme)
# torch modules whose Python functions only compute on tensors.
_TORCH_MATH_MODULES = frozenset(
    {"torch.nn.functional", "torch.functional", "torch.nn.init", "torch.linalg", "torch.fft", "torch.special"}
)
_MODEL_BASES = (torch.nn.Module, torch.optim.Optimizer, torch.distributions.Distribution)
# torch modules whose classes only hold data (a profile's events: EventList, FunctionEvent, ...).
_TORCH_DATA_CLASS_MODULES = frozenset({"torch.autograd.profiler_util"})
# Compiled torch operators travel by name: pickle would otherwise need builtins.getattr to load them.
OP_NAMESPACES = {
    "torch": torch,
    "torch.Tensor": torch.Tensor,
    "torch.nn.functional": torch.nn.functional,
    "torch.linalg": torch.linalg,
    "torch.fft": torch.fft,
    "torch.special": torch.special,
    "torch._C._nn": torch._C._nn,
}
OP_TYPES = (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)
# ATen operators that are not tensor math: files, printing, global RNG seeds, grad mode, device and
# memory pinning, storages, and test hooks.
_NOT_MATH = frozenset({
    "from_file", "save", "_print", "warn", "manual_seed", "seed", "initial_seed", "set_grad_enabled",
    "set_data", "set_", "_pin_memory", "pin_memory", "record_stream", "cuda", "_cufft_set_plan_cache_max_size",
    "_use_miopen_ctc_loss", "_set_item", "is_scripting", "has_torch_function", "_version",
})
# What a model is used through, beyond its own code.
_MODEL_METHODS = frozenset({
    "__call__", "forward", "parameters", "named_parameters", "buffers", "named_buffers", "children",
    "named_children", "modules", "named_modules", "state_dict", "load_state_dict", "train", "eval",
    "zero_grad", "requires_grad_", "get_parameter", "get_buffer", "get_submodule", "extra_repr",
    "float", "double", "half", "bfloat16", "step", "param_groups", "sample", "rsample", "log_prob",
    "entropy", "cdf", "icdf", "mean", "variance", "stddev",
})
_TENSOR_METHODS = frozenset({"tolist", "element_size", "nelement", "ndimension", "__call__"})
_DATA_TYPES = (list, dict, set, frozenset, tuple, int, float, complex, bool, bytes, bytearray, str, range)


class ForbiddenGlobal(PermissionDenied):
    """A message named something outside the allowlist."""


_aten_names: Optional[frozenset] = None


def _aten() -> frozenset:
    global _aten_names
    if _aten_names is None:
        _aten_names = frozenset(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
                                if s.name.startswith("aten::"))
    return _aten_names


def is_tensor_op(name: str) -> bool:
    """True for an ATen operator that only computes on tensors."""
    return name in _aten() and name not in _NOT_MATH and not name.startswith("_test")


def _library_dirs() -> tuple:
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    return tuple(sorted(os.path.abspath(p) + os.sep for p in paths if p))


def program_root() -> Optional[str]:
    """The folder of the program this process runs (its ``__main__``), or None when it runs none."""
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return None
    path = os.path.abspath(path)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in _MAIN_MODULES:
        depth = spec.name.count(".") + 1  # -m pkg.train (or -m pkg: pkg.__main__): the folder above pkg
    else:
        depth = 2 if os.path.basename(path) == "__main__.py" else 1  # a script, or a folder run as one
    root = path
    for _ in range(depth):
        root = os.path.dirname(root)
    if any((root + os.sep).startswith(lib) for lib in _library_dirs()):
        return None  # a tool started with -m from an installed package: not a program of the user's
    return root


class Allowlist:
    """The rules above for one process: the modules its deployment names, and its program's folder."""

    def __init__(self, modules: Iterable[str] = (), program: Optional[str] = None):
        self.modules = tuple(sorted({m.strip() for m in modules if m and m.strip()}))
        self.program = os.path.abspath(program) + os.sep if program else None
        self._libraries = _library_dirs()

    # ------------------------------------------------------------------ whose code it is

    def _named(self, module: Optional[str]) -> bool:
        return bool(module) and any(module == m or module.startswith(m + ".") for m in self.modules)

    def _of_program(self, module: Optional[str]) -> bool:
        if not self.program or not module:
            return False
        loaded = sys.modules.get(module)
        path = getattr(loaded, "__file__", None)
        if not path:
            return False
        path = os.path.abspath(path)
        return path.startswith(self.program) and not any(path.startswith(lib) for lib in self._libraries)

    def trusts(self, module: Optional[str]) -> bool:
        """True when ``module`` holds user code this process runs for peers."""
        return module in _MAIN_MODULES or self._named(module) or self._of_program(module)

    # ------------------------------------------------------------------ globals in a message

    def resolve(self, module: str, name: str) -> Any:
        """The global ``module.name`` if the rules admit it; raises ForbiddenGlobal otherwise."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise InvalidArgument("malformed pickle: a global's module and name must be strings")
        if any(part.startswith("__") for part in name.split(".")):
            raise self._refuse(module, name, "names with dunders are never loaded")
        if self._named(module):
            try:
                # The deployment named it: its code is trusted. import_module also waits for an import of
                # it another thread started, where sys.modules would hand out a half-made module.
                loaded = importlib.import_module(module)
            except Exception as exc:
                raise self._refuse(module, name, f"it could not be imported here ({exc})") from None
        else:
            loaded = sys.modules.get(module)
            if loaded is None:
                raise self._refuse(module, name, "its module is not loaded here")
        obj = loaded
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise self._refuse(module, name, "it does not exist here (the RPC pickler does not serialize function "
                               "code: define it on the caller and the callee alike)") from None
        if not self._admits(module, name, obj):
            raise self._refuse(module, name)
        return obj

    def _admits(self, module: str, name: str, obj: Any) -> bool:
        if isinstance(obj, _TORCH_DATA) or (module, name) in _SAFE_GLOBALS:
            return True
        if module == "builtins":
            return name in _SAFE_BUILTINS
        if isinstance(obj, torch.jit.ScriptFunction):
            return self.trusts(module)  # compiled from user code in that module
        if not (isinstance(obj, type) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            return False  # modules and arbitrary instances found through a module's namespace
        defined_in = getattr(obj, "__module__", None) or ""
        if self.trusts(defined_in) or obj in _TRUSTED:
            return True
        if isinstance(obj, type):
            if issubclass(obj, torch.nn.Module) or defined_in in _TORCH_DATA_CLASS_MODULES:
                return True  # models, from torch or any library loaded here; torch's plain data
            if issubclass(obj, _MODEL_BASES) or defined_in == "torch.return_types":
                return defined_in.startswith("torch.")
            return False
        if inspect.isbuiltin(obj):
            return defined_in.startswith("torch") and is_tensor_op(obj.__name__)
        return defined_in in _TORCH_MATH_MODULES

    def _refuse(self, module: str, name: str, why: str = "it is not in the allowlist") -> ForbiddenGlobal:
        return ForbiddenGlobal(
            f"refused to load the global '{module}.{name}': {why}. Calls and values may only use tensor "
            f"operators, models, plain data, what the caller's __main__ defines, this program's own modules, "
            f"and modules the deployment allows (now: {list(self.modules) or 'none'}). If you trust "
            f"'{module}', allow it on the receiving process: rpc_backend_options=BackendOptions("
            f"allowed_modules=['{module}']), {ALLOW_ENV}={module}, or --allow-module {module}."
        )

    # ------------------------------------------------------------------ operators and methods

    def resolve_op(self, namespace: str, name: str) -> Any:
        """A compiled torch operator sent by name (``torch:add``)."""
        space = OP_NAMESPACES.get(namespace)
        op = getattr(space, name, None) if isinstance(name, str) and space is not None else None
        if op is None or not isinstance(op, OP_TYPES) or not is_tensor_op(getattr(op, "__name__", "")):
            raise ForbiddenGlobal(
                f"refused to load the torch operator '{namespace}.{name}': only tensor operators may be called "
                f"by name (not ones that reach files, storages, threads or process-wide settings)")
        return op

    def method(self, value: Any, name: str) -> Any:
        """``value.name`` if a peer may call it (RRef proxies, bound methods); PermissionDenied otherwise."""
        if not isinstance(name, str) or (name.startswith("__") and name != "__call__" and not (
                name in _CONTEXT_DUNDERS and type(value) in _TRUSTED)):
            raise PermissionDenied(f"RRef proxies only call public methods; refused {name!r}")
        try:
            inspect.getattr_static(value, name)
        except AttributeError:  # as torch's proxies
            raise AttributeError(f"type object '{type(value).__name__}' has no attribute '{name}'") from None
        classes = value.__mro__ if isinstance(value, type) else type(value).__mro__  # a class: its classmethods
        owner = next((cls for cls in classes if name in vars(cls)), None)
        where = getattr(owner, "__module__", "") or ""
        if owner is not None and (self.trusts(where) or type(value) in _TRUSTED):
            allowed = True  # user code, or a class of this package's that peers may use
        elif isinstance(value, torch.Tensor):
            allowed = is_tensor_op(name) or name in _TENSOR_METHODS
        elif isinstance(value, _MODEL_BASES):
            allowed = name in _MODEL_METHODS
        elif isinstance(value, _DATA_TYPES):
            allowed = not name.startswith("_") and name not in ("format", "format_map")
        else:
            allowed = False
        if not allowed:
            kind = type(value).__qualname__
            hint = (f"{name} is not a method of {kind}" if owner is None and self.trusts(type(value).__module__)
                    else f"if {kind} is your code, allow its module: BackendOptions(allowed_modules=[...])")
            raise PermissionDenied(
                f"refused to call {kind}.{name} for a peer: RRef proxies call the methods of your own classes, "
                f"what a model is used through (forward, parameters, state_dict, ...), tensor operators and "
                f"methods of plain data, never storages, files, numpy escapes or process-wide settings ({hint})")
        return getattr(value, name)

    def resolve_exception(self, module: str, name: str) -> Optional[type]:
        """An exception class a peer's error names, to raise it as its own type; None if not loadable here."""
        loaded = sys.modules.get(module)
        kind = getattr(loaded, name, None) if loaded is not None and "." not in name else None
        if isinstance(kind, type) and issubclass(kind, BaseException) and (
                module == "builtins" or module.startswith(("torch", "distautograd.")) or self.trusts(module)):
            return kind
        return None


# distautograd's own functions that peers may call (RRef proxies, the optimizer, ...) and classes
# they may send (WorkerInfo) or use through a proxy (the server profiler, whose __enter__ and
# __exit__ torch's users call that way).
_TRUSTED: set = set()
_CONTEXT_DUNDERS = ("__enter__", "__exit__")


def trusted_global(obj):
    """Marks a distautograd function or class as one a peer's message may name."""
    _TRUSTED.add(obj)
    return obj

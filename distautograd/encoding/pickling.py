"""Python values to and from a restricted pickle: tensors and rrefs travel beside it, only allowlisted globals load.

A pickle can name any importable global and call it while loading; that is how ``os.system``
runs on the receiver. Here every global a pickle names goes through ``Allowlist.resolve``:
the standard containers, torch's compute (ops, modules, optimizers, dtypes), whatever is defined
in the caller's ``__main__``, and the modules a deployment names. Anything else is refused before
its module is even imported.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import threading
import types
from typing import Any, Callable, Iterable, Optional

import torch

from distautograd.errors import InvalidArgument, PermissionDenied

ALLOW_ENV = "DISTAUTOGRAD_ALLOW_MODULES"

_SAFE_BUILTINS = frozenset(
    "list dict set frozenset tuple bytearray bytes str int float complex bool slice range object "
    "Ellipsis NotImplemented".split()
)
_SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
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
        ("torch.serialization", "_get_layout"),
    }
)
# Modules whose globals may be looked up at all; the object found is then checked by kind.
_IMPORTABLE_ROOTS = ("builtins", "collections", "copyreg", "functools", "numpy", "torch", "distautograd")
_MAIN_MODULES = ("__main__", "__mp_main__")
# torch classes that are safe to construct: tensor-like data, modules, optimizers, distributions.
_TORCH_CLASS_PACKAGES = ("torch.nn", "torch.optim", "torch.distributions")
# torch modules whose Python functions only compute on tensors.
_TORCH_FUNCTION_MODULES = frozenset(
    {"torch.nn.functional", "torch.functional", "torch.nn.init", "torch.linalg", "torch.fft", "torch.special"}
)
_TORCH_DATA = (torch.dtype, torch.layout, torch.memory_format, torch.device, torch.qscheme)

# Compiled torch operators travel by name: pickle would otherwise need builtins.getattr to load them.
_OP_NAMESPACES = {
    "torch": torch,
    "torch.Tensor": torch.Tensor,
    "torch.nn.functional": torch.nn.functional,
    "torch.linalg": torch.linalg,
    "torch.fft": torch.fft,
    "torch.special": torch.special,
    "torch._C._nn": torch._C._nn,
}
_OP_TYPES = (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)
_DENIED_OPS = frozenset({"from_file"})  # reads any file on the receiver

# distautograd's own functions that peers may call (RRef proxies, the optimizer, ...) and classes
# they may send (WorkerInfo).
_TRUSTED: set = set()


def trusted_global(obj):
    """Marks a distautograd function or class as one a peer's pickle may name."""
    _TRUSTED.add(obj)
    return obj


class ForbiddenGlobal(PermissionDenied):
    """A pickle named a global outside the allowlist."""


class Allowlist:
    """Decides which globals a pickle may load: the defaults plus the modules a deployment names."""

    def __init__(self, modules: Iterable[str] = ()):
        self.modules = tuple(sorted({m.strip() for m in modules if m and m.strip()}))

    def _named(self, module: Optional[str]) -> bool:
        return bool(module) and any(module == m or module.startswith(m + ".") for m in self.modules)

    def resolve(self, module: str, name: str) -> Any:
        """The global ``module.name`` if the allowlist admits it; raises ForbiddenGlobal otherwise."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise InvalidArgument("malformed pickle: a global's module and name must be strings")
        root = module.split(".", 1)[0]
        if not (root in _IMPORTABLE_ROOTS or module in _MAIN_MODULES or self._named(module)):
            raise self._refuse(module, name)
        try:
            obj = _lookup(module, name)
        except Exception:
            raise self._refuse(module, name, "it does not exist here") from None
        if not self._permitted(module, name, obj):
            raise self._refuse(module, name)
        return obj

    def _permitted(self, module: str, name: str, obj: Any) -> bool:
        if isinstance(obj, _TORCH_DATA) or (module, name) in _SAFE_GLOBALS:
            return True
        if module == "builtins":
            return name in _SAFE_BUILTINS
        if not (isinstance(obj, type) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            return False  # modules and arbitrary instances found through a module's namespace
        defined_in = getattr(obj, "__module__", None) or ""
        if defined_in in _MAIN_MODULES or self._named(defined_in):
            return True
        if obj in _TRUSTED:
            return True
        if isinstance(obj, type):
            return defined_in == "torch" or any(
                defined_in == p or defined_in.startswith(p + ".") for p in _TORCH_CLASS_PACKAGES
            )
        return defined_in in _TORCH_FUNCTION_MODULES

    def _refuse(self, module: str, name: str, why: str = "it is not in the allowlist") -> ForbiddenGlobal:
        return ForbiddenGlobal(
            f"refused to load the global '{module}.{name}': {why}. Calls and values may only use torch, "
            f"the standard containers, what the caller's __main__ defines, and modules the deployment "
            f"allows (now: {list(self.modules) or 'none'}). If you trust '{module}', allow it on the "
            f"receiving process: rpc_backend_options=BackendOptions(allowed_modules=['{module}']), "
            f"{ALLOW_ENV}={module}, or --allow-module {module}."
        )

    def resolve_op(self, namespace: str, name: str) -> Any:
        space = _OP_NAMESPACES.get(namespace)
        op = getattr(space, name, None) if isinstance(name, str) and space is not None else None
        if op is None or not isinstance(op, _OP_TYPES) or name in _DENIED_OPS:
            raise ForbiddenGlobal(f"refused to load the torch operator '{namespace}.{name}': not a known tensor op")
        return op


def _lookup(module: str, name: str) -> Any:
    mod = importlib.import_module(module)
    obj = mod
    for part in name.split("."):
        if part.startswith("__") and part != "__init__":
            raise AttributeError(part)
        obj = getattr(obj, part)
    return obj


_op_names: Optional[dict] = None


def op_name(obj: Any) -> Optional[tuple[str, str]]:
    """(namespace, name) when ``obj`` is a compiled torch operator, else None."""
    global _op_names
    if not isinstance(obj, _OP_TYPES):
        return None
    if _op_names is None:
        # Built once: an op's __name__ is not always its public name (torch.linalg.norm is "linalg_norm").
        names = {}
        for namespace, space in reversed(list(_OP_NAMESPACES.items())):
            for attr in dir(space):
                value = getattr(space, attr, None)
                if isinstance(value, _OP_TYPES):
                    names[id(value)] = (namespace, attr)
        _op_names = names
    found = _op_names.get(id(obj))
    if found is not None and getattr(_OP_NAMESPACES[found[0]], found[1], None) is obj:
        return found
    return None


# Persistent ids are themselves pickled, element by element through persistent_id again, so they are
# kept to one atom: an int from the caller's hook (a tensor or rref index), or "namespace:name" of an op.


_NEVER_PERSISTENT = frozenset({int, str, float, bool, bytes, tuple, list, dict, set, frozenset, complex})


class _Pickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=5)
        self.file = file
        self._persistent = None

    def persistent_id(self, obj):
        kind = type(obj)
        if kind in _NEVER_PERSISTENT or obj is None:
            return None
        if kind in _OP_TYPES:
            op = op_name(obj)
            if op is not None:
                return f"{op[0]}:{op[1]}"
        return self._persistent(obj)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, allowlist: Allowlist, persistent_load: Callable[[int], Any]):
        super().__init__(file)
        self._allowlist = allowlist
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        return self._allowlist.resolve(module, name)

    def persistent_load(self, pid):
        if type(pid) is int:
            return self._persistent_load(pid)
        if type(pid) is str and ":" in pid:
            namespace, _, name = pid.partition(":")
            return self._allowlist.resolve_op(namespace, name)
        raise InvalidArgument(f"malformed pickle: unknown persistent id {pid!r}")


_picklers = threading.local()


def _no_persistent(obj: Any) -> None:
    return None


def dumps(obj: Any, persistent: Callable[[Any], Optional[int]] = _no_persistent) -> bytes:
    """Pickles ``obj``; ``persistent`` may take objects out of the pickle (returning an int id)."""
    pickler = getattr(_picklers, "pickler", None)
    if pickler is None or pickler._persistent is not None:  # none yet, or in use further up this thread
        pickler = _Pickler(io.BytesIO())
        if not hasattr(_picklers, "pickler"):
            _picklers.pickler = pickler
    pickler._persistent = persistent
    try:
        pickler.dump(obj)
        return pickler.file.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"cannot send {type(obj).__name__} value: {exc}") from exc
    finally:
        pickler._persistent = None
        pickler.clear_memo()
        pickler.file.seek(0)
        pickler.file.truncate()


def loads(data: bytes, allowlist: Allowlist, persistent_load: Callable[[int], Any] = None) -> Any:
    """Unpickles ``data`` loading only what ``allowlist`` admits."""

    def refuse(pid):
        raise InvalidArgument(f"malformed pickle: unknown persistent id {pid!r}")

    try:
        return _Unpickler(io.BytesIO(data), allowlist, persistent_load or refuse).load()
    except (InvalidArgument, PermissionDenied):
        raise
    except Exception as exc:  # anything a corrupt pickle makes the unpickler raise
        raise InvalidArgument(f"malformed pickle: {type(exc).__name__}: {exc}") from exc

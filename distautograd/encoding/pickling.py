"""Python values to and from a restricted pickle: tensors and RRefs travel beside it, only allowed globals load.

A pickle can name any importable global and call it while loading; that is how ``os.system``
runs on the receiver. Here every global, operator and bound method a pickle names goes through
an Allowlist (encoding.allowlist). A pickle that nests deeper than any real value would is
refused before it is loaded: freeing a million nested deques would overflow the C stack.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import sys
import threading
import types
from typing import Any, Callable, Optional

import torch

from distautograd.encoding.allowlist import OP_NAMESPACES, OP_TYPES, Allowlist
from distautograd.errors import InvalidArgument, PermissionDenied

MAX_DEPTH = 1000
_SCAN_ABOVE = 4096  # a pickle this short cannot nest dangerously deep


def _bound_method(allowlist: Allowlist, obj: Any, name: str) -> Any:
    """Rebuilds ``obj.name`` sent as a call target, if a peer may call it."""
    return allowlist.method(obj, name)


def _script_function(allowlist: Allowlist, qualified_name: str) -> Any:
    """A TorchScript function, by the name both programs compiled it under."""
    module = qualified_name.removeprefix("__torch__.").rpartition(".")[0] or "__main__"
    if not allowlist.trusts(module):
        raise PermissionDenied(f"refused the TorchScript function {qualified_name}: its module '{module}' is "
                               "not user code this process runs for peers")
    name = qualified_name.rpartition(".")[2]
    # The object the program's module made keeps the function's Python source (runtime.builtin_ops needs
    # it for RRef arguments); the compilation unit's copy does not.
    found = getattr(sys.modules.get(module), name, None)
    if not (isinstance(found, torch.jit.ScriptFunction) and found.qualified_name == qualified_name):
        found = torch.jit._state._python_cu.find_function(qualified_name)
    if found is None and module != "__main__":  # its module may not be loaded here yet: loading scripts it
        candidate = allowlist.resolve(module, name)
        found = candidate if isinstance(candidate, torch.jit.ScriptFunction) else None
    if found is None:
        raise InvalidArgument(f"no TorchScript function {qualified_name} here: script it in this process too")
    return found


_op_names: Optional[dict] = None


def op_name(obj: Any) -> Optional[tuple[str, str]]:
    """(namespace, name) when ``obj`` is a compiled torch operator, else None."""
    global _op_names
    if not isinstance(obj, OP_TYPES):
        return None
    if _op_names is None:
        # Built once: an op's __name__ is not always its public name (torch.linalg.norm is "linalg_norm").
        names = {}
        for namespace, space in reversed(list(OP_NAMESPACES.items())):
            for attr in dir(space):
                value = getattr(space, attr, None)
                if isinstance(value, OP_TYPES):
                    names[id(value)] = (namespace, attr)
        _op_names = names
    found = _op_names.get(id(obj))
    if found is not None and getattr(OP_NAMESPACES[found[0]], found[1], None) is obj:
        return found
    return None


# Persistent ids are themselves pickled, element by element through persistent_id again, so they are
# kept to one atom: an int from the caller's hook (a tensor or rref index), or "namespace:name" of an op.
_NEVER_PERSISTENT = frozenset({int, str, float, bool, bytes, tuple, list, dict, set, frozenset, complex})
_BOUND = "distautograd.encoding.pickling"


class _Pickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=5)
        self.file = file
        self._persistent = None

    def persistent_id(self, obj):
        kind = type(obj)
        if kind in _NEVER_PERSISTENT or obj is None:
            return None
        if kind in OP_TYPES:
            op = op_name(obj)
            if op is not None:
                return f"{op[0]}:{op[1]}"
        return self._persistent(obj)

    def reducer_override(self, obj):
        kind = type(obj)
        if kind is types.MethodType and not isinstance(obj.__self__, types.ModuleType):
            return _bound_method, (obj.__self__, obj.__func__.__name__)
        if kind is types.BuiltinMethodType and isinstance(obj.__self__, torch.Tensor):
            return _bound_method, (obj.__self__, obj.__name__)
        if isinstance(obj, torch.jit.ScriptFunction):
            return _script_function, (obj.qualified_name,)
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, allowlist: Allowlist, persistent_load: Callable[[int], Any]):
        super().__init__(file)
        self._allowlist = allowlist
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        if module == _BOUND and name in ("_bound_method", "_script_function"):
            return functools.partial(globals()[name], self._allowlist)
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

    if len(data) > _SCAN_ABOVE:
        check_depth(data)
    try:
        return _Unpickler(io.BytesIO(data), allowlist, persistent_load or refuse).load()
    except (InvalidArgument, PermissionDenied):
        raise
    except Exception as exc:  # anything a corrupt pickle makes the unpickler raise
        raise InvalidArgument(f"malformed pickle: {type(exc).__name__}: {exc}") from exc


# Opcodes that build a value out of what they take (its depth: one more than the deepest part), and
# ones that add what they take to the container below them (which then is at least that deep).
_BUILDERS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT", "FROZENSET", "INST", "OBJ", "REDUCE",
             "NEWOBJ", "NEWOBJ_EX"}
_ADDERS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuses a pickle whose values nest deeper than ``limit``, without loading it.

    Runs the pickle machine's stack on depths instead of values, from pickletools' description of
    what each opcode takes and leaves."""
    stack: list = []  # the depth of each value on the machine's stack; None is a MARK
    memo: dict = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name == "MARK":
                stack.append(None)
                continue
            taken = []
            for item in reversed(opcode.stack_before):
                if item is pickletools.markobject:
                    taken += _pop_to_mark(stack)
                elif item is not pickletools.stackslice:
                    taken.append(stack.pop())
            if name in _ADDERS:  # taken: the parts, then the container they go into
                stack.append(max(taken[-1], max(taken[:-1], default=-1) + 1))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):  # the value stays where it is
                value = taken[0] if taken else stack[-1]
                memo[arg if name != "MEMOIZE" else len(memo)] = value
                stack.extend(taken)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0))
            elif name == "DUP":
                stack.extend(taken * 2)
            else:
                depth = max(taken, default=0) + 1 if name in _BUILDERS else 0
                stack.extend([depth] * len(opcode.stack_after))
            if stack and stack[-1] is not None and stack[-1] > limit:
                raise InvalidArgument(f"a value in this message nests deeper than {limit} levels; refused")
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument(f"malformed pickle: {type(exc).__name__}: {exc}") from None


def _pop_to_mark(stack: list) -> list:
    taken = []
    while True:
        item = stack.pop()
        if item is None:
            return taken
        taken.append(item)


__all__ = ["check_depth", "dumps", "loads", "op_name"]

"""Each rule of the allowlist on its own: which branch admits a name, and what its refusal says.

test_allowlist.py tries the attacks; this file pins every rule and message, so a rule that flips
(an ``and`` for an ``or``, a prefix misspelt) fails a test (README, "Tests that can fail").
"""

import collections
import os
import sys
import types

import pytest
import torch

from distautograd.encoding.allowlist import (
    Allowlist, ForbiddenGlobal, _aten, is_tensor_op, program_root, trusted_global,
)
from distautograd.errors import InvalidArgument, PermissionDenied

ALLOW = Allowlist()
HERE = __name__
USER = Allowlist([HERE])


class UserError(Exception):
    """An exception class of the user's: a peer's error may name it once its module is trusted."""


class WithState:
    """A user's class with an instance attribute (not a method) and a context manager."""

    def __init__(self):
        self.data = 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@trusted_global
class TrustedTool:
    """Stands for a class of this package's that peers use through a proxy (as the server profiler)."""

    def public(self):
        return "ran"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Pair = collections.namedtuple("Pair", "a b")


def scaled(x: torch.Tensor) -> torch.Tensor:
    return x * 3


SCRIPTED = torch.jit.script(scaled)


# ---------------------------------------------------------------------------- the operator rule

def test_test_hooks_among_aten_operators_are_never_tensor_math():
    hooks = [name for name in _aten() if name.startswith("_test")]
    assert hooks, "torch has _test_* operators; the rule must keep refusing them"
    assert not any(is_tensor_op(name) for name in hooks)
    assert is_tensor_op("_softmax")  # a private operator that is math still is


def test_every_aten_name_is_the_part_after_the_namespace():
    names = _aten()
    assert "add" in names and "matmul" in names and not any("::" in n for n in names)


# ---------------------------------------------------------------------------- which program runs

def test_the_program_is_the_folder_of_the_spawned_main_first(tmp_path, monkeypatch):
    spawned = types.ModuleType("__mp_main__")
    spawned.__file__ = str(tmp_path / "spawned" / "train.py")
    monkeypatch.setitem(sys.modules, "__mp_main__", spawned)
    assert program_root() == str(tmp_path / "spawned")


def test_the_program_is_the_folder_of_main_when_nothing_was_spawned(tmp_path, monkeypatch):
    main = types.ModuleType("__main__")
    main.__file__ = str(tmp_path / "train.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.delitem(sys.modules, "__mp_main__", raising=False)
    assert program_root() == str(tmp_path)


@pytest.mark.parametrize("spec_name, file, root", [
    (None, "train.py", ""),                       # python train.py
    ("__main__", "app/__main__.py", ""),          # python app/ (a folder run as a program)
    ("pkg.train", "pkg/train.py", ""),            # python -m pkg.train
    ("pkg.sub.train", "pkg/sub/train.py", ""),    # python -m pkg.sub.train
    ("pkg.__main__", "pkg/__main__.py", ""),      # python -m pkg: the folder above pkg, not its parent
])
def test_the_programs_folder_for_each_way_python_starts_one(tmp_path, monkeypatch, spec_name, file, root):
    import importlib.machinery

    main = types.ModuleType("__main__")
    main.__file__ = str(tmp_path / file)
    main.__spec__ = importlib.machinery.ModuleSpec(spec_name, None) if spec_name else None
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.delitem(sys.modules, "__mp_main__", raising=False)
    assert program_root() == str(tmp_path / root).rstrip(os.sep)


def test_without_a_main_file_there_is_no_program(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # an interactive session
    monkeypatch.delitem(sys.modules, "__mp_main__", raising=False)
    assert program_root() is None


def test_a_loaded_module_without_a_file_is_never_the_programs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fileless_module", types.ModuleType("fileless_module"))
    assert not Allowlist(program=str(tmp_path))._of_program("fileless_module")


# ---------------------------------------------------------------------------- globals: refusals name what and why

def _refusal(module, name, allowlist=ALLOW):
    with pytest.raises(ForbiddenGlobal) as caught:
        allowlist.resolve(module, name)
    return str(caught.value)


@pytest.mark.parametrize("module, name", [(1, "add"), ("torch", 2), (None, None)])
def test_a_global_that_is_not_two_strings_is_malformed(module, name):
    with pytest.raises(InvalidArgument, match="^malformed pickle: a global's module and name must be strings$"):
        ALLOW.resolve(module, name)


def test_each_refusal_names_the_global_and_its_reason(tmp_path, monkeypatch):
    assert "'torch.nn.__dict__': names with dunders are never loaded." in _refusal("torch.nn", "__dict__")
    assert "'not_loaded_mod.f': its module is not loaded here." in _refusal("not_loaded_mod", "f")
    assert ("'torch.no_such_thing': it does not exist here (the RPC pickler does not serialize function code: "
            "define it on the caller and the callee alike)." in _refusal("torch", "no_such_thing"))
    assert "'os.system': it is not in the allowlist." in _refusal("os", "system")
    (tmp_path / "broken_named.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = _refusal("broken_named", "f", Allowlist(["broken_named"]))
    assert "'broken_named.f': it could not be imported here (boom at import)." in text


def test_a_refusal_says_which_modules_are_allowed_now_and_how_to_allow_one():
    text = _refusal("os", "system")
    assert "(now: none)" in text
    assert ("allowed_modules=['os']), DISTAUTOGRAD_ALLOW_MODULES=os, or --allow-module os." in text)
    assert "(now: ['a', 'b'])" in _refusal("os", "system", Allowlist(["b", " a ", "", "   "]))


# ---------------------------------------------------------------------------- globals: what each kind admits

def test_tensor_operators_models_and_torch_data_classes_resolve():
    assert ALLOW.resolve("torch", "add") is torch.add
    assert ALLOW.resolve("torch.nn", "Linear") is torch.nn.Linear
    assert ALLOW.resolve("torch.return_types", "max") is torch.return_types.max
    assert ALLOW.resolve("torch.autograd.profiler_util", "EventList") is not None
    assert ALLOW.resolve("torch.nn.functional", "relu") is torch.nn.functional.relu
    assert ALLOW.resolve("torch.optim", "SGD") is torch.optim.SGD


def test_builtins_outside_tensor_math_and_classes_of_no_kind_are_refused():
    for module, name in [("torch", "set_num_threads"), ("torch", "from_file"), ("collections", "ChainMap"),
                         ("torch.utils.data", "DataLoader"), ("torch", "typename")]:
        _refusal(module, name)


def test_a_script_function_resolves_only_from_a_trusted_module():
    assert USER.resolve(HERE, "SCRIPTED") is SCRIPTED
    assert "'%s.SCRIPTED'" % HERE in _refusal(HERE, "SCRIPTED")


# ---------------------------------------------------------------------------- operators by name

@pytest.mark.parametrize("name", [5, "no_such_operator", "norm", "Tensor", "from_file"])
def test_only_compiled_tensor_operators_travel_by_name(name):
    with pytest.raises(ForbiddenGlobal, match=f"refused to load the torch operator 'torch.{name}'"):
        ALLOW.resolve_op("torch", name)


def test_an_operator_in_no_known_namespace_is_refused():
    with pytest.raises(ForbiddenGlobal):
        ALLOW.resolve_op("os", "add")
    assert ALLOW.resolve_op("torch.Tensor", "add") is torch.Tensor.add


# ---------------------------------------------------------------------------- methods through a proxy

def _refused_call(value, name, allowlist=ALLOW):
    with pytest.raises(PermissionDenied) as caught:
        allowlist.method(value, name)
    return str(caught.value)


@pytest.mark.parametrize("name", [5, "__init__", "__class__", "__reduce_ex__", "__enter__"])
def test_proxies_call_only_public_methods(name):
    assert "RRef proxies only call public methods; refused %r" % name in _refused_call(WithState(), name, USER)


def test_call_is_the_one_dunder_every_callable_keeps():
    model = torch.nn.Linear(1, 1)
    assert ALLOW.method(model, "__call__") == model.__call__


def test_context_dunders_only_for_this_packages_trusted_classes():
    tool = TrustedTool()
    assert ALLOW.method(tool, "__enter__")() is tool and ALLOW.method(tool, "__exit__")(None, None, None) is False
    assert ALLOW.method(tool, "public")() == "ran"
    assert "only call public methods" in _refused_call(tool, "__reduce_ex__")
    assert "only call public methods" in _refused_call(WithState(), "__exit__", USER)


def test_a_missing_method_is_an_attribute_error_as_torchs_proxies_raise():
    with pytest.raises(AttributeError, match=r"^type object 'Tensor' has no attribute 'nope'$"):
        ALLOW.method(torch.ones(1), "nope")


def test_an_instance_attribute_is_not_a_method_and_the_refusal_says_so():
    text = _refused_call(WithState(), "data", USER)
    assert "refused to call WithState.data for a peer" in text and "(data is not a method of WithState)" in text
    text = _refused_call(WithState(), "data")
    assert "(if WithState is your code, allow its module: BackendOptions(allowed_modules=[...]))" in text


def test_the_refusal_names_the_type_and_method():
    assert "refused to call Tensor.untyped_storage for a peer" in _refused_call(torch.ones(1), "untyped_storage")


def test_plain_data_exposes_its_public_methods_not_private_ones_or_format():
    assert ALLOW.method([1], "count")(1) == 1
    assert ALLOW.method(torch.Size([2, 3]), "numel")() == 6
    assert ALLOW.method(Pair(1, 2), "index")(2) == 1
    for value, name in [(Pair(1, 2), "_replace"), (Pair(1, 2), "_asdict"), ("{0}", "format"),
                        ("{x}", "format_map")]:
        _refused_call(value, name)


def test_models_forward_and_model_methods_but_not_the_rest():
    model = torch.nn.Linear(1, 1)
    assert ALLOW.method(model, "forward") == model.forward
    _refused_call(model, "register_full_backward_hook")


# ---------------------------------------------------------------------------- a peer's exception types

def test_exception_types_load_from_builtins_torch_this_package_and_trusted_code():
    assert ALLOW.resolve_exception("builtins", "ValueError") is ValueError
    assert ALLOW.resolve_exception("torch", "OutOfMemoryError") is torch.OutOfMemoryError
    assert ALLOW.resolve_exception("distautograd.errors", "InvalidArgument") is InvalidArgument
    assert USER.resolve_exception(HERE, "UserError") is UserError


def test_other_names_give_no_exception_type():
    assert ALLOW.resolve_exception("os", "error") is None  # OSError, but os is neither torch's nor trusted
    assert ALLOW.resolve_exception(HERE, "UserError") is None
    assert ALLOW.resolve_exception("builtins", "int") is None  # a class, not an exception
    assert ALLOW.resolve_exception("builtins", "NoSuchError") is None
    assert ALLOW.resolve_exception("not_loaded_mod", "Error") is None
    assert ALLOW.resolve_exception("os", "path.sep") is None


def test_the_programs_modules_are_trusted_only_through_their_files(tmp_path, monkeypatch):
    (tmp_path / "prog_helpers.py").write_text("class Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import prog_helpers  # noqa: F401

    try:
        program = Allowlist(program=str(tmp_path))
        assert program.trusts("prog_helpers") and not program.trusts("os")
        assert program.resolve_exception("prog_helpers", "Boom") is prog_helpers.Boom
        assert not Allowlist(program=os.path.dirname(os.__file__)).trusts("os")
    finally:
        sys.modules.pop("prog_helpers", None)

"""What a connected peer may reach: allowed by kind (user code, models, tensor math, data), everything else refused.

Each attack from the security review is tried here against the allowlist itself; tests/cluster/
test_security.py tries them against real processes.
"""

import collections
import os
import sys

import pytest
import torch

from distautograd.encoding import pickling
from distautograd.encoding.allowlist import Allowlist, is_tensor_op, program_root
from distautograd.errors import InvalidArgument, PermissionDenied
from tests.helpers.payloads import nested_deques
from tests.helpers.pickled import round_trip

ALLOW = Allowlist()


def load_global(module, name, allowlist=ALLOW):
    return pickling.loads(f"c{module}\n{name}\n.".encode(), allowlist)


class UserThing:
    """Stands for a user's class: tests.* is a module the test allowlists below name."""

    def public(self, x):
        return x + 1

    @classmethod
    def build(cls):
        return cls()

    @staticmethod
    def helper(x):
        return x * 2


USER = Allowlist(["tests"])


@pytest.mark.parametrize("op", [torch.add, torch.matmul, torch.Tensor.add_, torch.nn.functional.linear,
                                torch.linalg.norm, torch._C._nn.linear, torch.relu])
def test_tensor_operators_load(op):
    assert pickling.loads(pickling.dumps(op), ALLOW) is op


@pytest.mark.parametrize("op", [torch.from_file, torch.import_ir_module, torch.set_num_threads, torch._from_blob,
                                torch.manual_seed if isinstance(torch.manual_seed, type(torch.add)) else torch.seed,
                                torch.frombuffer, torch.set_flush_denormal, torch.Tensor.pin_memory,
                                torch.Tensor.set_, torch.Tensor.untyped_storage, torch.parse_ir])
def test_operators_that_reach_files_memory_or_process_state_are_refused(op):
    with pytest.raises(PermissionDenied):
        pickling.loads(pickling.dumps(op), ALLOW)


def test_the_operator_rule_is_aten_tensor_math():
    assert is_tensor_op("add") and is_tensor_op("conv2d") and is_tensor_op("embedding_bag")
    assert not is_tensor_op("from_file") and not is_tensor_op("save") and not is_tensor_op("import_ir_module")


@pytest.mark.parametrize("module, name", [("torch", "PyTorchFileWriter"), ("torch", "PyTorchFileReader"),
                                          ("torch", "load"), ("torch.serialization", "save"), ("torch.hub", "load"),
                                          ("torch", "UntypedStorage"), ("torch.jit", "load"), ("numpy", "fromfile"),
                                          ("numpy", "save"), ("os", "system"), ("builtins", "getattr"),
                                          ("builtins", "__import__"), ("torch", "set_num_threads")])
def test_globals_outside_the_kinds_allowed_are_refused(module, name):
    with pytest.raises(PermissionDenied):
        load_global(module, name)


def test_dunder_paths_are_never_followed():
    with pytest.raises(PermissionDenied, match="dunder"):
        load_global("torch.nn.functional", "linear.__globals__")


def test_checking_a_name_never_imports_it(tmp_path, monkeypatch):
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text("")
    (tmp_path / "planted" / "payload.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nf = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("planted.payload", "torch.planted_payload", "numpy.planted_payload"):
        with pytest.raises(PermissionDenied, match="not loaded here"):
            load_global(module, "f")
    assert not (tmp_path / "ran").exists() and "planted" not in sys.modules


def test_a_module_the_deployment_names_is_imported_when_first_named(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text("def scale(x):\n    return x * 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_global("mymodels", "scale", Allowlist(["mymodels"]))(2) == 6
    sys.modules.pop("mymodels", None)


def test_the_programs_own_modules_are_user_code_libraries_are_not(tmp_path, monkeypatch):
    (tmp_path / "helpers_of_the_program.py").write_text("def call(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helpers_of_the_program  # noqa: F401  (the program imported it, as programs do)

    try:
        assert load_global("helpers_of_the_program", "call", Allowlist(program=str(tmp_path)))(5) == 5
        with pytest.raises(PermissionDenied):
            load_global("helpers_of_the_program", "call", Allowlist())
        with pytest.raises(PermissionDenied):
            load_global("os.path", "join", Allowlist(program=os.path.dirname(os.__file__)))  # stdlib: never the program
    finally:
        sys.modules.pop("helpers_of_the_program", None)


def test_a_tool_run_from_an_installed_package_has_no_program(monkeypatch):
    import __main__

    monkeypatch.setattr(__main__, "__file__", os.path.join(os.path.dirname(torch.__file__), "utils", "x.py"),
                        raising=False)
    monkeypatch.delitem(sys.modules, "__mp_main__", raising=False)
    assert program_root() is None


def test_models_from_any_loaded_library_and_their_methods_load():
    model = round_trip(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert isinstance(model, torch.nn.Sequential)
    assert ALLOW.method(model, "parameters") and ALLOW.method(model, "forward") and ALLOW.method(model, "state_dict")
    for name in ("share_memory", "to", "register_forward_hook", "apply", "_apply", "__dict__"):
        with pytest.raises(PermissionDenied):
            ALLOW.method(model, name)


def test_proxy_chains_cannot_reach_storages_files_or_numpy():
    t = torch.zeros(3)
    assert ALLOW.method(t, "add")(1).tolist() == [1.0, 1.0, 1.0]
    for name in ("untyped_storage", "storage", "numpy", "share_memory_", "data_ptr", "set_", "pin_memory",
                 "register_hook", "__reduce_ex__"):
        with pytest.raises(PermissionDenied):
            ALLOW.method(t, name)
    with pytest.raises(PermissionDenied):
        ALLOW.method(t.untyped_storage(), "from_file")
    with pytest.raises(PermissionDenied):
        ALLOW.method("{0.__class__}", "format")


def test_user_classes_methods_classmethods_and_staticmethods_travel():
    thing = UserThing()
    assert pickling.loads(pickling.dumps(thing.public), USER)(1) == 2
    assert isinstance(pickling.loads(pickling.dumps(UserThing.build), USER)(), UserThing)
    assert pickling.loads(pickling.dumps(UserThing.helper), USER)(3) == 6
    with pytest.raises(PermissionDenied):
        pickling.loads(pickling.dumps(thing.public), ALLOW)


def test_a_bound_tensor_method_travels_only_if_it_is_math():
    t = torch.ones(2)
    assert torch.equal(round_trip(t.add)(1), torch.full((2,), 2.0))
    with pytest.raises(PermissionDenied):
        round_trip(t.untyped_storage)


def test_script_functions_travel_by_name_within_a_program():
    scripted = torch.jit.script(scale_by_two)
    assert pickling.loads(pickling.dumps(scripted), Allowlist(["tests", "__main__"])) is not None


def test_a_nesting_bomb_is_refused_before_it_is_built():
    with pytest.raises(InvalidArgument, match="nests deeper than"):
        pickling.loads(nested_deques(300_000), ALLOW)


def test_real_values_nest_far_less_and_load():
    value = collections.deque()
    for _ in range(900):
        value = collections.deque([value])
    assert len(pickling.loads(nested_deques(900), ALLOW)) == 1
    deep = [[[{"a": (1, [2, {3}])}]]] * 50
    assert pickling.loads(pickling.dumps(deep), ALLOW) == deep


def scale_by_two(x: torch.Tensor) -> torch.Tensor:
    return x * 2

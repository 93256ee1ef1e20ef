"""The restricted pickle: what a peer's message may load, and the clear refusal of everything else."""

import collections
import functools
import os
import subprocess

import pytest
import torch

from distautograd.errors import InvalidArgument, PermissionDenied
from distautograd.encoding import pickling
from distautograd.encoding.allowlist import Allowlist
from tests.helpers.pickled import round_trip

ALLOW = Allowlist()


@pytest.mark.parametrize(
    "value",
    [
        [1, 2.5, "x", b"y", None, True, 1j, (1,), {1: 2}, {3}, frozenset([4]), bytearray(b"z"), slice(1, 2), range(3)],
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        collections.deque([1, 2]),
        collections.Counter("aab"),
        [torch.float32, torch.bfloat16, torch.Size([2, 3]), torch.device("cpu"), torch.strided, torch.channels_last],
        Ellipsis,
    ],
    ids=lambda v: type(v).__name__,
)
def test_standard_values_load(value):
    assert round_trip(value) == value


@pytest.mark.parametrize(
    "func",
    [torch.add, torch.matmul, torch.Tensor.add, torch.nn.functional.relu, torch.nn.functional.linear, torch.linalg.norm],
    ids=lambda f: getattr(f, "__name__", str(f)),
)
def test_torch_ops_load_by_name(func):
    assert round_trip(func) is func


def test_modules_optimizers_and_partials_load():
    model = round_trip(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
    assert isinstance(model[0], torch.nn.Linear)
    assert round_trip(torch.optim.SGD) is torch.optim.SGD
    assert round_trip(functools.partial(torch.add, alpha=2)).func is torch.add


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class EvilSubprocess:
    def __reduce__(self):
        return (subprocess.call, (["true"],))


@pytest.mark.parametrize(
    "value, named",
    [
        (os.system, "posix.system"),
        (Evil(), "posix.system"),
        (EvilSubprocess(), "subprocess.call"),
        (eval, "builtins.eval"),
        (getattr, "builtins.getattr"),
        (torch.load, "torch.serialization.load"),
        (torch.hub.load, "torch.hub.load"),
        (torch.save, "torch.serialization.save"),
    ],
    ids=["os.system", "reduce-to-system", "subprocess", "eval", "getattr", "torch.load", "hub.load", "torch.save"],
)
def test_dangerous_globals_are_refused_with_a_clear_error(value, named):
    data = pickling.dumps(value)
    with pytest.raises(PermissionDenied) as err:
        pickling.loads(data, ALLOW)
    message = str(err.value)
    assert named in message and "allowed_modules" in message and "DISTAUTOGRAD_ALLOW_MODULES" in message


def test_from_file_op_is_refused():
    with pytest.raises(PermissionDenied, match="from_file"):
        round_trip(torch.from_file)


def test_objects_imported_into_main_are_not_main_objects():
    """`from os import system` in a script must not make posix.system loadable as __main__.system."""
    import __main__

    __main__.system = os.system
    try:
        with pytest.raises(PermissionDenied, match="__main__.system"):
            pickling.loads(b"c__main__\nsystem\n(S'true'\ntR.", ALLOW)
    finally:
        del __main__.system


def test_named_modules_extend_the_allowlist():
    data = pickling.dumps(os.path.join)
    with pytest.raises(PermissionDenied):
        pickling.loads(data, ALLOW)
    assert pickling.loads(data, Allowlist(["posixpath"])) is os.path.join


def test_unlisted_modules_are_not_even_imported():
    with pytest.raises(PermissionDenied, match="antigravity"):
        pickling.loads(b"cantigravity\nfly\n.", ALLOW)
    import sys

    assert "antigravity" not in sys.modules


def test_garbage_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="malformed pickle"):
        pickling.loads(b"\x80\x05garbage", ALLOW)
    with pytest.raises(InvalidArgument, match="persistent id"):
        pickling.loads(b"Pgarbage\n.", ALLOW)


def test_unpicklable_values_say_so():
    with pytest.raises(InvalidArgument, match="cannot send"):
        pickling.dumps(lambda: 1)

"""The compiled core (distautograd._core, C++ against libtorch), or None where it was not built.

What it offers the runtime: reading frames off a socket and writing them to it (length, header,
attachments) without the GIL, coding lists of plain tensors (gradients) in one call each, planning a
worker's part of a backward pass over torch's autograd Nodes (engine/graph.py), the recv node as a C++
autograd Node that torch's engine runs without the GIL (engine/nodes.py), a wave's engine call with the
leaves' slots swapped and the recv nodes recorded in one call (engine/execution.py), a pass's part from
an arrival to its pushes (engine/local_pass.py), each push's request written in one call
(encoding/tensor_lists.py), failing
torch futures as torch's RPC fails them, adding a remote call's profiled events to the caller's
profiler, and watching for calls that run too long on the thread that read them (transport/reading.py)
without taking the GIL to look. Without it the package runs its Python path, and says so once, in one line,
when it starts.
"""

from __future__ import annotations

import atexit
import logging
import os

import torch  # noqa: F401  (loads libtorch and libc10, which the core links against, before the core)

log = logging.getLogger("distautograd")

try:
    from distautograd import _core as core
except ImportError as exc:  # built without a compiler, or against another torch
    core = None
    _missing = str(exc)
else:
    _missing = ""
    # Before the interpreter's shutdown ends any thread that then asks for the GIL: the core's threads
    # stop asking, and those already waiting get it first (native/csrc/gil.h). Registered at import, so
    # the exit handlers of whatever imports the package later (which may still use the core) run before.
    atexit.register(core.close_gil_at_exit)

_said = False
PATH_ENV = "DISTAUTOGRAD_NATIVE_PATH"
# Read once: every message asks several times, and a read of os.environ costs a microsecond or two.
_on = core is not None and os.environ.get(PATH_ENV, "1") != "0"


def path_on() -> bool:
    """Messages take the core's path (it reads and writes sockets' frames, codes tensor lists, plans
    a pass's part, makes recv nodes and runs waves): it is built, and DISTAUTOGRAD_NATIVE_PATH was not
    0 when the package was imported (tests switch a process with tests/helpers/paths.py)."""
    return _on


def built() -> str:
    """What the bench and tools say of the core: built or not, and which part of a message's path it runs."""
    if core is None:
        return f"compiled core not built ({_missing}); every message takes the Python path"
    if not path_on():
        return "compiled core built, not used for messages (DISTAUTOGRAD_NATIVE_PATH=0): they take the Python path"
    return ("compiled core built: it reads and writes frames, codes tensor lists and makes and describes a value's "
            "tensors, plans and runs each pass's part (its bookkeeping and each wave's engine call), runs each push "
            "it reads into its part once the part has started, writes each push's request, makes recv nodes and "
            "watches calls run by their reader (C++, run without the GIL); the rest of a message's decoding and "
            "encoding (its pickle), the dispatch of calls, and a part's start and the pushes it sends take the "
            "Python path")


def message_path() -> str:
    """In a word, what ``distautograd status`` shows of this process: "native" (the core reads and
    writes its frames and codes its tensor lists) or "python"."""
    return "native" if path_on() else "python"


def say_which_once() -> None:
    """One line, once per process, when the compiled core is missing."""
    global _said
    if core is None and not _said:
        _said = True
        log.warning("distautograd: the compiled core is not built (%s); running the Python path", _missing)

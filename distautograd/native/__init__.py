"""The compiled core (distautograd._core, C++ against libtorch), or None where it was not built.

What it offers the runtime: failing torch futures as torch's RPC fails them, and adding a remote
call's profiled events to the caller's profiler. Without it the package runs its Python path,
and says so once, in one line, when it starts.
"""

from __future__ import annotations

import logging

log = logging.getLogger("distautograd")

try:
    from distautograd import _core as core
except ImportError as exc:  # built without a compiler, or against another torch
    core = None
    _missing = str(exc)
else:
    _missing = ""

_said = False


def built() -> str:
    """What the bench and tools say of the core: it is built or not, and carries no message yet."""
    return ("compiled core built (futures, profiler events, thread state)" if core is not None
            else f"compiled core not built ({_missing})") + "; every message takes the Python path"


def say_which_once() -> None:
    """One line, once per process, when the compiled core is missing."""
    global _said
    if core is None and not _said:
        _said = True
        log.warning("distautograd: the compiled core is not built (%s); running the Python path", _missing)

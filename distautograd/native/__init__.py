"""The compiled core (distautograd._core, C++ against libtorch), or None where it was not built.

What it offers the runtime: reading frames off a socket (length, header, attachments) without the
GIL, failing torch futures as torch's RPC fails them, and adding a remote call's profiled events to
the caller's profiler. Without it the package runs its Python path, and says so once, in one line,
when it starts.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("distautograd")

try:
    from distautograd import _core as core
except ImportError as exc:  # built without a compiler, or against another torch
    core = None
    _missing = str(exc)
else:
    _missing = ""

_said = False


def frames_on() -> bool:
    """Sockets' frames are read by the core: it is built, and DISTAUTOGRAD_NATIVE_FRAMES is not 0."""
    return core is not None and os.environ.get("DISTAUTOGRAD_NATIVE_FRAMES", "1") != "0"


def built() -> str:
    """What the bench and tools say of the core: built or not, and which part of a message's path it runs."""
    if core is None:
        return f"compiled core not built ({_missing}); every message takes the Python path"
    frames = "frames read by the core" if frames_on() else "frames read by Python (DISTAUTOGRAD_NATIVE_FRAMES=0)"
    return f"compiled core built: {frames}; decoding, the engine's push loop and sending take the Python path"


def message_path() -> str:
    """In a word, what ``distautograd status`` shows of this process: "native-reader" (the core reads
    its frames) or "python"."""
    return "native-reader" if frames_on() else "python"


def say_which_once() -> None:
    """One line, once per process, when the compiled core is missing."""
    global _said
    if core is None and not _said:
        _said = True
        log.warning("distautograd: the compiled core is not built (%s); running the Python path", _missing)

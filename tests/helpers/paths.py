"""A test's message path: what DISTAUTOGRAD_NATIVE_PATH would make it at a process's start, for this
process (the package reads the variable once) and the processes it starts (which read it themselves)."""

from distautograd import native


def take_path(patch, value: str) -> None:
    """``patch``: pytest's monkeypatch (or one of its contexts), which undoes both at the test's end;
    ``value``: "1" for the compiled path (where the core is built), "0" for the Python one."""
    patch.setenv(native.PATH_ENV, value)
    patch.setattr(native, "_on", native.core is not None and value != "0")

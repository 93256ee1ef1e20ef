"""Run one program as a world of named processes, however it was started.

``run(roles, programs)`` gives rank i the name ``roles[i]``; processes whose name has a program
run it, the others serve calls until everyone is done. It works four ways:

- inside an existing cluster (DISTAUTOGRAD_COORDINATOR is set, as in docker-compose or
  Kubernetes): this process joins as DISTAUTOGRAD_NAME (default: the first role with a
  program) and runs that role's program against workers that are already there;
- under torchrun, or started by hand once per rank: RANK, WORLD_SIZE, MASTER_ADDR and
  MASTER_PORT say who this process is;
- otherwise it spawns one local process per role with torch.multiprocessing and waits.

Example::

    if __name__ == "__main__":
        sys.exit(launch.run(["trainer", "worker1", "worker2"], {"trainer": train}))
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch.multiprocessing as mp

from distautograd import rpc
from distautograd.runtime.options import COORDINATOR_ENV, BackendOptions
from distautograd.runtime.rendezvous import free_port

Program = Callable[[], object]


def as_module(file: str, module: str):
    """Imports the running script under its module name and returns it.

    A script run as ``python path/x.py`` or ``python -m pkg.x`` is ``__main__``: what it sends
    would name ``__main__.Stage``, which a worker started on its own cannot load. Running the
    program from the imported module makes it name ``pkg.x.Stage`` instead.
    """
    root = Path(file).resolve().parents[module.count(".")]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(module)


def workers(default: Sequence[str]) -> list:
    """Worker names, from DISTAUTOGRAD_WORKERS (comma-separated) when a deployment sets it."""
    names = [n for n in os.environ.get("DISTAUTOGRAD_WORKERS", "").split(",") if n]
    return names or list(default)


def default_options() -> BackendOptions:
    return BackendOptions()


def run(
    roles: Sequence[str],
    programs: Dict[str, Program],
    options: Optional[Callable[[], BackendOptions]] = None,
) -> int:
    """Runs ``programs`` across processes named ``roles``; returns an exit code (0: all succeeded).

    Every process launched here allows the programs' own modules: they call their own code.
    """
    options = functools.partial(_with_program_modules, options or default_options, _modules(programs))
    if os.environ.get(COORDINATOR_ENV):
        name = os.environ.get("DISTAUTOGRAD_NAME") or next(r for r in roles if r in programs)
        if name not in programs:
            print(f"error: no program for {name!r}; this script runs {sorted(programs)}", file=sys.stderr)
            return 2
        rpc.init_rpc(name, rpc_backend_options=options())
        return _run_role(name, programs, graceful=False)
    if os.environ.get("RANK"):
        rank, world_size = int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", len(roles)))
        if world_size != len(roles):
            print(f"error: this program needs {len(roles)} processes ({', '.join(roles)}), got WORLD_SIZE={world_size}",
                  file=sys.stderr)
            return 2
        rpc.init_rpc(roles[rank], rank=rank, world_size=world_size, rpc_backend_options=options())
        return _run_role(roles[rank], programs, graceful=True)
    return _spawn(roles, programs, options)


def _modules(programs: Dict[str, Program]) -> list:
    found = set()
    for program in programs.values():
        while isinstance(program, functools.partial):
            program = program.func
        found.add(getattr(program, "__module__", None) or "__main__")
    return sorted(found - {"__main__", "__mp_main__"})


def _with_program_modules(options: Callable[[], BackendOptions], modules: list) -> BackendOptions:
    made = options()
    return dataclasses.replace(made, allowed_modules=[*made.allowed_modules, *modules])


def _run_role(name: str, programs: Dict[str, Program], graceful: bool) -> int:
    code = 0
    try:
        program = programs.get(name)
        if program is not None:
            program()
    except Exception as exc:
        print(f"{name}: training failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        logging.getLogger("distautograd").debug("%s", traceback.format_exc())
        code = 1
    try:
        rpc.shutdown(graceful=graceful and code == 0)
    except Exception as exc:
        print(f"{name}: shutdown failed: {exc}", file=sys.stderr, flush=True)
        code = code or 1
    return code


def _entry(rank: int, roles: Sequence[str], programs: Dict[str, Program], port: int, options, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(len(roles)), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    results.put((rank, run(roles, programs, options)))


def _spawn(roles: Sequence[str], programs: Dict[str, Program], options) -> int:
    port = free_port()
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_entry, args=(roles, programs, port, options, results), nprocs=len(roles), start_method="spawn")
    codes = [results.get()[1] for _ in range(len(roles))]
    return max(codes)

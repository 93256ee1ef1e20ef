"""Finding the coordinator: a named external one, or the one rank 0 hosts, as torch's init_methods say.

``env://`` and ``tcp://HOST:PORT``: rank 0 hosts the coordinator on that port, unless the port
already belongs to a torch store the ranks share — torchrun's agent store, or the store of a
process group this process initialized on the same address (``init_process_group`` first, then
``init_rpc``, as torch allows). Then rank 0 hosts the coordinator on a free port and writes its
address into that store for the other ranks. ``file://PATH`` works the same way through a
FileStore on PATH (the process group's, if it uses the same file).
"""

from __future__ import annotations

import collections
import datetime
import os
import socket
from typing import Optional, Tuple

from distautograd.runtime.options import COORDINATOR_ENV, BackendOptions

_generations: "collections.Counter[str]" = collections.Counter()  # rendezvous per shared store, this process


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a coordinator a launcher is about to start)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_address(address: str) -> Tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected an address as HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Board:
    """A key in a store every rank reaches, where rank 0 writes the coordinator's address."""

    def __init__(self, open_store, key: str):
        self._open_store = open_store
        self.key = key

    def write(self, address: str) -> None:
        self._open_store(30.0).set(self.key, address)

    def read(self, timeout: float) -> str:
        store = self._open_store(timeout)
        try:
            store.wait([self.key], datetime.timedelta(seconds=timeout))
        except Exception as e:
            raise TimeoutError(f"rank 0 did not publish the coordinator's address within {timeout:g} s "
                               f"(store key {self.key!r}): {e}") from None
        return store.get(self.key).decode()


class Rendezvous:
    """Where the coordinator is, and whether this process hosts it."""

    def __init__(self, options: BackendOptions, rank: int, world_size: Optional[int] = None, store=None):
        self._board: Optional[_Board] = None
        self._address = ""
        self.host = "127.0.0.1"
        self.host_it = False
        external = options.coordinator or os.environ.get(COORDINATOR_ENV)
        if external:
            split_address(external)
            self._address = external
            self.host = split_address(external)[0]
            return
        if rank < 0:
            missing = ("environment variable RANK expected" if (options.init_method or "env://") == "env://"
                       else "rank parameter missing")
            raise ValueError(
                f"{missing}: the rank says which process hosts the coordinator (rank 0); pass rank=, set RANK, or "
                f"name an external coordinator with {COORDINATOR_ENV}"
            )
        self.host_it = rank == 0
        if store is not None:  # a torch Store the caller made (torch's _init_rpc_backend takes one)
            self._board = _Board(lambda timeout: store, _next_key("given store"))
            self.host = os.environ.get("MASTER_ADDR") or "127.0.0.1"
            return
        init = options.init_method or "env://"
        if init.startswith("file://"):
            self._board = _file_board(init[len("file://"):], world_size)
            self.host = os.environ.get("MASTER_ADDR") or "127.0.0.1"
            return
        if init.startswith("tcp://"):
            address = init[len("tcp://"):]
        elif init == "env://":
            host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            if not host or not port:
                raise ValueError(
                    "cannot find the coordinator: set MASTER_ADDR and MASTER_PORT (rank 0 hosts the coordinator "
                    f"there), pass init_method='tcp://HOST:PORT', or name an external one with {COORDINATOR_ENV}"
                )
            address = join_address(host, int(port))
        else:
            raise ValueError(f"unsupported init_method {init!r}: use 'env://', 'tcp://HOST:PORT' or 'file://PATH'")
        self.host, port = split_address(address)
        self._address = address
        if init == "env://" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
            key = f"distautograd/coordinator/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            self._board = _Board(lambda timeout: _tcp_store(self.host, port, timeout), key)
        else:
            self._board = _process_group_board(port=port)

    def listen(self) -> Tuple[str, int]:
        """Where rank 0 listens to host the coordinator."""
        if self._board is not None:
            return self.host, 0
        return split_address(self._address)

    def publish(self, port: int) -> str:
        """Called by the host once listening; returns the address workers should use."""
        address = join_address(self.host, port)
        if self._board is not None:
            self._board.write(address)
        return address

    def address(self, timeout: float) -> str:
        if self._board is not None and not self.host_it:
            return self._board.read(timeout)
        return self._address


def _tcp_store(host: str, port: int, timeout: float):
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)


def _next_key(store_name: str) -> str:
    """Every rank calls init_rpc as often as the others, so the n-th call of each finds the same key."""
    _generations[store_name] += 1
    return f"distautograd/coordinator/{_generations[store_name]}"


def _default_store():
    """The store of this process's default process group (the outermost one), or None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.distributed_c10d._get_default_store()


def _underlying(store):
    while hasattr(store, "underlying_store"):
        store = store.underlying_store
    return store


def _process_group_board(port: Optional[int] = None, path: Optional[str] = None) -> Optional[_Board]:
    """A board in the default process group's store, if that store sits on this port or file."""
    store = _default_store()
    if store is None:
        return None
    inner = _underlying(store)
    if port is not None and getattr(inner, "port", None) == port:
        return _Board(lambda timeout: store, _next_key(f"tcp:{port}"))
    if path is not None and os.path.abspath(getattr(inner, "path", "") or "/") == os.path.abspath(path):
        return _Board(lambda timeout: store, _next_key(f"file:{path}"))
    return None


def _file_board(path: str, world_size: Optional[int]) -> _Board:
    if not path:
        raise ValueError("init_method='file://PATH' needs a PATH every rank can reach, e.g. file:///tmp/rendezvous")
    shared = _process_group_board(path=path)
    if shared is not None:
        return shared
    from torch.distributed import FileStore

    held = []

    def open_store(timeout: float):
        if not held:  # one FileStore per process: each counts as one of world_size users of the file
            store = FileStore(path, world_size or -1)  # an open world: the file stays, as torch's
            store.set_timeout(datetime.timedelta(seconds=timeout))
            held.append(store)
        return held[0]

    return _Board(open_store, _next_key(f"file:{path}"))

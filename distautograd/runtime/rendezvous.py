"""Finding the coordinator: a named external one, or the one rank 0 hosts at init_method / MASTER_ADDR:MASTER_PORT.

Under torchrun, MASTER_PORT already belongs to torchrun's own store; rank 0 then hosts the
coordinator on a free port and publishes its address in that store for the other ranks.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Optional, Tuple

from distautograd.runtime.options import COORDINATOR_ENV, BackendOptions


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


class Rendezvous:
    """Where the coordinator is, and whether this process hosts it."""

    def __init__(self, options: BackendOptions, rank: int):
        self._store_key: Optional[str] = None
        external = options.coordinator or os.environ.get(COORDINATOR_ENV)
        if external:
            split_address(external)
            self._address: Optional[str] = external
            self.host_it = False
            return
        init = options.init_method or "env://"
        if init.startswith("tcp://"):
            address = init[len("tcp://") :]
        elif init == "env://":
            host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            if not host or not port:
                raise ValueError(
                    "cannot find the coordinator: set MASTER_ADDR and MASTER_PORT (rank 0 hosts the coordinator "
                    f"there), pass init_method='tcp://HOST:PORT', or name an external one with {COORDINATOR_ENV}"
                )
            address = join_address(host, int(port))
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
                self._store_key = f"distautograd/coordinator/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        else:
            raise ValueError(f"unsupported init_method {init!r}: use 'env://' or 'tcp://HOST:PORT'")
        split_address(address)
        if rank < 0:
            raise ValueError(
                "rank is needed to know which process hosts the coordinator: pass rank=, set RANK, or name an "
                f"external coordinator with {COORDINATOR_ENV}"
            )
        self._address = address
        self.host_it = rank == 0

    def listen(self) -> Tuple[str, int]:
        """Where rank 0 listens to host the coordinator."""
        host, port = split_address(self._address)
        return host, 0 if self._store_key else port

    @property
    def host(self) -> str:
        return split_address(self._address)[0]

    def publish(self, port: int) -> str:
        """Called by the host once listening; returns the address workers should use."""
        address = join_address(self.host, port)
        if self._store_key:
            self._store(timeout=30).set(self._store_key, address)
        return address

    def address(self, timeout: float) -> str:
        if self._store_key and not self.host_it:
            return self._store(timeout).get(self._store_key).decode()
        return self._address

    def _store(self, timeout: float):
        from torch.distributed import TCPStore

        host, port = split_address(self._address)
        return TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)

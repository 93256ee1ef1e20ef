"""Shared memory for bulk tensors between processes on one host: the sender's warm segments, the receiver's mappings.

Fresh pages are what makes big copies slow (a 64 MiB clone runs at a fifth of memcpy speed), so
a sender keeps its segments (memfds, mapped once) and reuses them. It copies an attachment into
a free segment; the frame names the segment, and the first time a peer sees one, its descriptor
travels along (SCM_RIGHTS). The receiver maps each segment once and hands out the bytes without
copying; when the last tensor using them is gone, it tells the sender, which reuses the segment.

A segment, once shown to one peer, is only ever lent to that peer again: no other peer can read
or rewrite what it maps. Segments are sealed against shrinking and growing before they travel,
and a receiver maps only sealed segments of the size announced, so a sender cannot make it fault
by truncating one under it.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import mmap
import os
import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger("distautograd")

MIN_BYTES = 1 << 20  # below this, a copy through the socket is as cheap
_MAX_IDLE_BYTES = 1 << 30  # free segments kept warm, in total
_SPLIT_BYTES = 8 << 20  # copies above this are split across threads
_copiers: Optional[ThreadPoolExecutor] = None
_copiers_lock = threading.Lock()


def copy_into(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src``, on several threads when it is big: one thread does a third of memcpy speed."""
    n = len(src)
    parts = min(4, os.cpu_count() or 1, max(1, n // _SPLIT_BYTES))
    target, source = np.frombuffer(dst, dtype=np.uint8, count=n), np.frombuffer(src, dtype=np.uint8, count=n)
    if parts == 1:
        np.copyto(target, source)
        return
    global _copiers
    with _copiers_lock:
        if _copiers is None:
            _copiers = ThreadPoolExecutor(3, thread_name_prefix="distautograd-copy")
    bounds = [n * i // parts for i in range(parts + 1)]
    futures = [_copiers.submit(np.copyto, target[a:b], source[a:b]) for a, b in zip(bounds[1:-1], bounds[2:])]
    np.copyto(target[: bounds[1]], source[: bounds[1]])  # numpy lets go of the GIL while it copies
    for future in futures:
        future.result()


def available() -> Optional[str]:
    """None when shared memory works here; otherwise why not."""
    if not hasattr(os, "memfd_create"):
        return "this platform has no memfd_create"
    try:
        os.close(os.memfd_create("distautograd-probe"))
    except OSError as exc:
        return f"memfd_create failed: {exc}"
    return None


def _size_class(nbytes: int) -> int:
    return max(MIN_BYTES, 1 << (nbytes - 1).bit_length())


_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class _Shelf:
    """Free buffers by key (a size class, or who may have them and their size), kept warm up to a
    total number of bytes."""

    def __init__(self, max_bytes: int):
        self._items: Dict[object, List[tuple]] = {}  # key -> [(size, item)]
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def take(self, key):
        """An item kept under ``key``, or None."""
        with self._lock:
            items = self._items.get(key)
            if not items:
                return None
            size, item = items.pop()
            if not items:
                del self._items[key]
            self._bytes -= size
            return item

    def keep(self, key, size: int, item) -> bool:
        """Keeps ``item`` for reuse unless that would pass the limit; False when it was not kept."""
        with self._lock:
            if self._bytes + size > self._max_bytes:
                return False
            self._items.setdefault(key, []).append((size, item))
            self._bytes += size
            return True

    def drop(self, match: Callable[[object], bool]) -> list:
        """Takes out every item whose key ``match`` accepts."""
        with self._lock:
            gone = [key for key in self._items if match(key)]
            entries = [entry for key in gone for entry in self._items.pop(key)]
            self._bytes -= sum(size for size, _ in entries)
        return [item for _, item in entries]


class Segment:
    __slots__ = ("id", "size", "fd", "map", "lease")

    def __init__(self, segment_id: int, size: int):
        self.id = segment_id
        self.size = size
        self.fd = os.memfd_create(f"distautograd-{segment_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)  # its size is final
        self.map = mmap.mmap(self.fd, size)
        self.lease = 0

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes when it does
        os.close(self.fd)


class SegmentPool:
    """The segments this process sends from; each loan (a lease) lasts until the peer says it is done.

    A segment belongs to the one peer it was first lent to (its ``borrower``), free or lent, until
    that connection ends. Releases name the lease, not the segment: a late release of an earlier
    loan must not free the segment while a later loan of it is still being read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._leases = itertools.count(1)
        self._free = _Shelf(_MAX_IDLE_BYTES)  # (borrower id, size) -> segments
        self._lent: Dict[int, tuple] = {}  # lease -> (borrower, segment)
        self.made = 0

    def lend(self, data: memoryview, borrower) -> Segment:
        """A segment holding a copy of ``data``, lent to ``borrower``."""
        size = _size_class(len(data))
        segment = self._free.take((id(borrower), size))
        if segment is None:
            segment = Segment(next(self._ids), size)
            self.made += 1
        copy_into(memoryview(segment.map)[: len(data)], data)
        with self._lock:
            segment.lease = next(self._leases)
            self._lent[segment.lease] = (borrower, segment)
        return segment

    def release(self, borrower, leases) -> None:
        """``borrower`` is done with these loans: their segments are free again, for it alone."""
        closing = []
        with self._lock:
            for lease in leases:
                entry = self._lent.get(lease)
                if entry is None or entry[0] is not borrower:
                    continue
                del self._lent[lease]
                segment = entry[1]
                if not self._free.keep((id(borrower), segment.size), segment.size, segment):
                    closing.append(segment)
        for segment in closing:
            segment.close()

    def forget(self, borrower) -> None:
        """The connection to ``borrower`` ended: its segments, free or lent, are never lent again (it
        may still map them); they are freed by the kernel once nobody maps them."""
        with self._lock:
            leases = [lease for lease, (who, _) in self._lent.items() if who is borrower]
            gone = [self._lent.pop(lease)[1] for lease in leases]
        gone += self._free.drop(lambda key: key[0] == id(borrower))
        for segment in gone:
            segment.close()

    def lent_count(self) -> int:
        with self._lock:
            return len(self._lent)

    def lent_bytes(self) -> int:
        """Bytes of the segments lent and not had back (metrics)."""
        with self._lock:
            return sum(segment.size for _, segment in self._lent.values())


class ReceiveBuffers:
    """Warm buffers to receive big attachments into: fresh pages cost more than the copy itself.

    A buffer goes back to the pool when the last tensor made from it is freed."""

    def __init__(self, keep_bytes: int = 256 << 20):
        self._free = _Shelf(keep_bytes)

    def get(self, nbytes: int) -> np.ndarray:
        size = _size_class(nbytes)
        block = self._free.take(size)
        if block is None:
            block = np.empty(size, dtype=np.uint8)
        view = block[:nbytes]  # a view: its finalizer fires when every tensor over it is gone
        weakref.finalize(view, self._free.keep, size, size, block)
        return view


class _Releaser:
    """Sends the "done with these segments" notices, off the garbage collector's thread."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        threading.Thread(target=self._run, name="distautograd-shm-release", daemon=True).start()

    def put(self, send: Callable[[List[int]], None], lease: int) -> None:
        self._queue.put((send, lease))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_sender: Dict[Callable, List[int]] = {}
            for send, lease in batch:
                by_sender.setdefault(send, []).append(lease)
            for send, leases in by_sender.items():
                try:
                    send(leases)
                except Exception as exc:  # the sender is gone, and its segments with it
                    log.debug("could not release shared segments: %s", exc)


_releaser: Optional[_Releaser] = None
_releaser_lock = threading.Lock()


class Mappings:
    """The segments of one sender that this process has mapped."""

    def __init__(self, send_release: Callable[[List[int]], None]):
        global _releaser
        with _releaser_lock:
            if _releaser is None:
                _releaser = _Releaser()
        self._send_release = send_release
        self._maps: Dict[int, mmap.mmap] = {}

    def add(self, segment_id: int, fd: int, size: int) -> None:
        """Maps a segment a peer sent, if it is what a segment must be: sealed against shrinking and
        growing, and of the size announced (else a peer could truncate it under us: SIGBUS)."""
        try:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                actual = os.fstat(fd).st_size
            except OSError as exc:
                raise ValueError(f"shared segment {segment_id} is not a memfd: {exc}") from None
            if seals & _SEALS != _SEALS:
                raise ValueError(f"shared segment {segment_id} is not sealed against resizing")
            if actual != size or size <= 0:
                raise ValueError(f"shared segment {segment_id} has {actual} bytes, not the {size} announced")
            self._maps[segment_id] = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def buffer(self, segment_id: int, lease: int, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of a segment, without copying; the sender is told when they are unused."""
        mapped = self._maps.get(segment_id)
        if mapped is None or nbytes > len(mapped):
            raise ValueError(f"shared segment {segment_id} was never received, or is too small")
        array = np.frombuffer(mapped, dtype=np.uint8, count=nbytes)
        # numpy arrays take weak references and tensors made from them keep them alive: when the
        # last tensor over these bytes is freed, the array goes, and the sender hears of it.
        weakref.finalize(array, _releaser.put, self._send_release, lease)
        return array

"""Shared memory for bulk tensors between processes on one host: the sender's warm segments, the receiver's mappings.

Fresh pages are what makes big copies slow (a 64 MiB clone runs at a fifth of memcpy speed), so
a sender keeps its segments (memfds, mapped once) and reuses them. It copies an attachment into
a free segment; the frame names the segment, and the first time a peer sees one, its descriptor
travels along (SCM_RIGHTS). The receiver maps each segment once and hands out the bytes without
copying; when the last tensor using them is gone, it tells the sender, which reuses the segment.
"""

from __future__ import annotations

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


class _Shelf:
    """Free buffers by size class, kept warm up to a total number of bytes."""

    def __init__(self, max_bytes: int):
        self._items: Dict[int, list] = {}
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def take(self, size: int):
        """A kept item of exactly ``size`` bytes, or None."""
        with self._lock:
            items = self._items.get(size)
            if not items:
                return None
            self._bytes -= size
            return items.pop()

    def keep(self, size: int, item) -> bool:
        """Keeps ``item`` for reuse unless that would pass the limit; False when it was not kept."""
        with self._lock:
            if self._bytes + size > self._max_bytes:
                return False
            self._items.setdefault(size, []).append(item)
            self._bytes += size
            return True


class Segment:
    __slots__ = ("id", "size", "fd", "map", "borrower", "lease")

    def __init__(self, segment_id: int, size: int):
        self.id = segment_id
        self.size = size
        self.fd = os.memfd_create(f"distautograd-{segment_id}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.borrower = None
        self.lease = 0

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            pass  # a view is still alive; the mapping goes when it does
        os.close(self.fd)


class SegmentPool:
    """The segments this process sends from; each loan (a lease) lasts until the peer says it is done.

    Releases name the lease, not the segment: a late release of an earlier loan must not free
    the segment while a later loan of it is still being read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._leases = itertools.count(1)
        self._free = _Shelf(_MAX_IDLE_BYTES)
        self._lent: Dict[int, Segment] = {}  # by lease
        self.made = 0

    def lend(self, data: memoryview, borrower) -> Segment:
        """A segment holding a copy of ``data``, lent to ``borrower``."""
        size = _size_class(len(data))
        segment = self._free.take(size)
        if segment is None:
            segment = Segment(next(self._ids), size)
            self.made += 1
        copy_into(memoryview(segment.map)[: len(data)], data)
        segment.borrower = borrower
        with self._lock:
            segment.lease = next(self._leases)
            self._lent[segment.lease] = segment
        return segment

    def release(self, borrower, leases) -> None:
        """``borrower`` is done with these loans: their segments are free again."""
        closing = []
        with self._lock:
            for lease in leases:
                segment = self._lent.get(lease)
                if segment is None or segment.borrower is not borrower:
                    continue
                del self._lent[lease]
                segment.borrower = None
                if not self._free.keep(segment.size, segment):
                    closing.append(segment)
        for segment in closing:
            segment.close()

    def forget(self, borrower) -> None:
        """The connection to ``borrower`` ended: its segments are never reused, for it may still
        read them; they are freed by the kernel once nobody maps them."""
        with self._lock:
            gone = [s for s in self._lent.values() if s.borrower is borrower]
            for segment in gone:
                del self._lent[segment.lease]
        for segment in gone:
            segment.close()

    def lent_count(self) -> int:
        with self._lock:
            return len(self._lent)


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
        weakref.finalize(view, self._free.keep, size, block)
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
        try:
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

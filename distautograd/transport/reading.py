"""Who reads a connection: its reader runs the calls it reads itself, and hands reading on only when it must.

Waking another thread costs more here than running a small call (tens to hundreds of µs on a busy
two-core machine). So the thread that reads a call runs it (``lend``), and goes back to reading
when it is done (``reclaim``). Meanwhile nobody reads that connection, which is only safe while
the call does not wait for something that comes over it: so reading is handed to a standby
thread (``give_away``) as soon as the call is about to wait for another worker
(``before_blocking``, called by every wait of the runtime), or once it has run for longer than
``LENT_SECONDS`` (a watchdog catches calls that compute long or wait on anything else). The
watchdog is the core's where messages took its path when the package was imported: it looks without
the GIL and takes it only to give a late call's reading away; Python's (the fallback) takes the GIL
at every look. A child process forked from this one starts with a fresh watchdog.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

from distautograd import native

log = logging.getLogger("distautograd")

LENT_SECONDS = 0.002  # a call that runs longer than this no longer holds up its connection
_IDLE_SECONDS = 60.0  # a standby thread nobody needed for this long ends
_WATCH_SECONDS = 1.0  # the watchdog sleeps once nothing was lent for this long

_local = threading.local()
_HELD, _LENT, _GIVEN = "held", "lent", "given"


class Role:
    """The job of reading one connection, held by one thread at a time."""

    __slots__ = ("state", "_continue", "_lock")

    def __init__(self, continue_elsewhere: Callable[[], None]):
        self.state = _HELD
        self._continue = continue_elsewhere
        self._lock = threading.Lock()

    @property
    def reading_here(self) -> bool:
        return self.state == _HELD

    def give_away(self) -> None:
        """A standby thread goes on reading; the thread that had the role leaves its read loop
        once its call is done."""
        with self._lock:
            if self.state != _LENT:
                return
            self.state = _GIVEN
        _watch.forget(self)
        standby.run(self._continue)


@contextlib.contextmanager
def holding(role: Role) -> Iterator[Role]:
    """This thread reads for ``role`` inside the block."""
    previous = getattr(_local, "role", None)
    _local.role = role
    try:
        yield role
    finally:
        _local.role = previous


def lend() -> Optional[Role]:
    """On a thread reading a connection: it stops reading to run a call; returns the role to
    ``reclaim`` after. None anywhere else (the call must go to a worker thread)."""
    role: Optional[Role] = getattr(_local, "role", None)
    if role is None or role.state != _HELD:
        return None
    role.state = _LENT
    _watch.add(role)
    return role


def reclaim(role: Role) -> None:
    """The call is done: this thread reads on, unless reading was given away meanwhile."""
    with role._lock:
        if role.state == _LENT:
            role.state = _HELD
            _watch.forget(role)


def before_blocking() -> None:
    """Every wait for another worker calls this first: a connection this thread stopped reading
    to run a call must not wait with it (the answer may come over it)."""
    role: Optional[Role] = getattr(_local, "role", None)
    if role is not None and role.state == _LENT:
        role.give_away()


class Watch:
    """Hands each role lent for longer than ``limit`` seconds to ``late`` (to give its reading away),
    looking while any was lent in the last ``idle`` seconds (the core's ``LentWatch`` does the same
    without taking the GIL to look)."""

    def __init__(self, limit: float, idle: float, late: Callable[[Role], None]) -> None:
        self._limit, self._idle, self._late = limit, idle, late
        self._lent: Dict[int, Tuple[Role, float]] = {}  # id -> (the role, when it was lent)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last = 0.0

    def add(self, role: Role) -> None:
        now = time.monotonic()
        with self._lock:
            self._lent[id(role)] = (role, now)
            self._last = now
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="distautograd-reading-watch", daemon=True)
                thread.start()  # first: if it cannot start, the next add tries again
                self._thread = thread
        if not self._wake.is_set():
            self._wake.set()  # only when the watchdog sleeps: while calls keep coming it polls instead

    def forget(self, role: Role) -> None:
        with self._lock:
            self._lent.pop(id(role), None)

    def lent(self) -> int:
        with self._lock:
            return len(self._lent)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self._limit)
            now = time.monotonic()
            with self._lock:  # each late role forgotten as found: handed over once, given away or not
                late = [self._lent.pop(key)[0] for key, (_, since) in list(self._lent.items())
                        if now - since >= self._limit]
                idle = not self._lent and now - self._last > self._idle
                if idle:
                    self._wake.clear()
            for role in late:
                try:
                    self._late(role)
                except Exception:  # ``late`` says its own failures: this is a last resort
                    log.exception("distautograd's watchdog giving a late call's reading away")


def give_away_late(role: Role) -> None:
    """What either watchdog does with a role lent too long; a failure is logged, and the watch goes on."""
    try:
        role.give_away()
    except Exception:
        log.exception("distautograd's watchdog could not give a late call's reading away")


def _new_watch():
    if native.path_on():
        return native.core.LentWatch(LENT_SECONDS, _WATCH_SECONDS, give_away_late)
    return Watch(LENT_SECONDS, _WATCH_SECONDS, give_away_late)


def _afresh() -> None:
    """In a forked child: the parent's watchdog and standby threads are not there, and their locks may be
    held forever."""
    global _watch, standby
    _watch = _new_watch()
    standby = Standby()


_watch = _new_watch()


class Standby:
    """Threads that wait to run a job (to read a connection); a new one only when none is free."""

    def __init__(self, name: str = "distautograd-recv"):
        self._name = name
        self._jobs: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._idle = 0
        self._threads = 0
        self._lock = threading.Lock()

    def busy(self) -> int:
        """Threads running a job now (the rest wait for one)."""
        with self._lock:
            return self._threads - self._idle

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
            self._threads += 1
        threading.Thread(target=self._serve, args=(job,), name=self._name, daemon=True).start()

    def _serve(self, job: Callable[[], None]) -> None:
        while True:
            job()
            del job  # a finished job's frame must not stay alive while this thread waits
            with self._lock:
                self._idle += 1
            while True:
                try:
                    job = self._jobs.get(timeout=_IDLE_SECONDS)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():
                            self._idle -= 1
                            self._threads -= 1
                            return


standby = Standby()
os.register_at_fork(after_in_child=_afresh)

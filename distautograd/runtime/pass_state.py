"""What backward passes keep on a worker: the root's drive, each participant's part, and the registry of both."""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch

from distautograd.engine.local_pass import LocalPart
from distautograd.engine.slots import Captured
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.contexts import Context
from distautograd.transport.pushes import PartDone

PassKey = Tuple[int, int]  # (context id, pass id)


class Part:
    """This worker's part of one pass."""

    def __init__(self, ctx: Context, pass_id: int, root: int):
        self.ctx = ctx
        self.pass_id = pass_id
        self.root = root
        self.plan: Optional[pb.PassPlan] = None
        self.plan_bytes = b""  # the plan serialized once, for the pushes it rides along with
        self.active: frozenset = frozenset()  # the plan's send points (message ids), to look up
        self.local: Optional[LocalPart] = None  # LocalPass, or the core's on the native path
        self.early: List[Tuple[int, Optional[torch.Tensor]]] = []  # pushes that came before the plan
        self.lock = threading.Lock()
        self.closed = False
        self.learned: List[PartDone] = []  # parts done that pushes to this one told of: (rank, leaves)
        self.told = False  # this part's own end went out on its last push
        self.watches: list = []  # anomaly checks on this part's nodes, removed when it ends
        self.captured: Optional[Captured] = None  # leaf gradients handed back (dist_autograd.grad)

    def unwatch(self) -> None:
        watches, self.watches = self.watches, []
        for handle in watches:
            handle.remove()


class Drive:
    """What the root keeps of a pass it drives. ``inbox``: when the caller's thread runs every push
    to the root's part itself (a profiler records that thread only), the pushes wait there."""

    def __init__(self, ctx: Context, pass_id: int, participants: Set[int], inbox: Optional[queue.SimpleQueue] = None):
        self.inbox = inbox
        self.ctx = ctx
        self.pass_id = pass_id
        self.participants = participants
        self.waiting = set(participants)
        self.leaves: Dict[int, int] = {}
        self.result: Future = Future()
        self.lock = threading.Lock()


ENDED_MEMORY = 4096  # passes that ended here, remembered so gradients arriving late cannot revive them


class Passes:
    """The passes going on at one worker: those it drives, its parts of every pass, and which ended."""

    def __init__(self, rank: Callable[[], int], lane=None):
        self._rank = rank  # this worker's, once it joined
        # the core's PushLane (native/csrc/push_lane.h), or None: the parts it runs pushes into, each
        # dropped from it here as the part is forgotten
        self.lane = lane
        self._parts: Dict[PassKey, Part] = {}
        self._drives: Dict[PassKey, Drive] = {}
        self._ended: "collections.OrderedDict[PassKey, None]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def begin(self, drive: Drive, part: Part) -> None:
        """A pass this worker drives, and its own part of it."""
        with self._lock:
            self._drives[(drive.ctx.id, drive.pass_id)] = drive
            self._parts[(part.ctx.id, part.pass_id)] = part

    def drive(self, key: PassKey) -> Optional[Drive]:
        with self._lock:
            return self._drives.get(key)

    def part(self, key: PassKey) -> Optional[Part]:
        with self._lock:
            return self._parts.get(key)

    def join(self, key: PassKey, make: Callable[[], Part]) -> Optional[Part]:
        """This worker's part of a pass, ``make()`` on the first message of the pass to arrive; None once
        the pass ended here (finished or aborted): what still arrives for it is to be dropped."""
        with self._lock:
            part = self._parts.get(key)
            if part is None and key not in self._ended:
                part = self._parts[key] = make()
            return part

    def end(self, key: PassKey, driven: bool = False) -> Optional[Part]:
        """Forgets a pass's part here (and its drive, if ``driven``), remembering that it ended."""
        with self._lock:
            if driven:
                self._drives.pop(key, None)
            self._ended[key] = None
            while len(self._ended) > ENDED_MEMORY:
                self._ended.popitem(last=False)
            part = self._parts.pop(key, None)
        if self.lane is not None:
            self.lane.drop(*key)
        return part

    def drives(self) -> List[Drive]:
        with self._lock:
            return list(self._drives.values())

    def of_root(self, rank: int) -> List[Part]:
        """Ends the parts of passes ``rank`` drives (it is gone) and returns them."""
        with self._lock:
            keys = [key for key, part in self._parts.items() if part.root == rank]
        return [part for part in map(self.end, keys) if part is not None]

    def of_context(self, context_id: int) -> List[Part]:
        """Forgets the parts of a context that ended, except those of passes driven here; returns them."""
        with self._lock:
            gone = [key for key in self._parts if key[0] == context_id and key not in self._drives]
            parts = [self._parts.pop(key) for key in gone]
        if self.lane is not None:
            for key in gone:
                self.lane.drop(*key)
        return parts

    def in_flight(self) -> List[Tuple[int, int, int]]:
        """(context id, pass id, root's rank) of every pass going on here, driven or taken part in."""
        with self._lock:
            roots = {key: part.root for key, part in self._parts.items()}
            roots.update((key, self._rank()) for key in self._drives)
        return sorted((context_id, pass_id, root) for (context_id, pass_id), root in roots.items())

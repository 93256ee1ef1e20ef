"""What one backward pass keeps on a worker: the root's drive, and each participant's part."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Dict, List, Optional, Set, Tuple

import torch

from distautograd.engine.local_pass import LocalPass
from distautograd.engine.slots import Captured
from distautograd.protocol.v1 import messages_pb2 as pb
from distautograd.runtime.contexts import Context

PassKey = Tuple[int, int]  # (context id, pass id)


class Part:
    """This worker's part of one pass."""

    def __init__(self, ctx: Context, pass_id: int, root: int):
        self.ctx = ctx
        self.pass_id = pass_id
        self.root = root
        self.plan: Optional[pb.PassPlan] = None
        self.local: Optional[LocalPass] = None
        self.early: List[Tuple[int, Optional[torch.Tensor]]] = []  # pushes that came before the plan
        self.lock = threading.Lock()
        self.closed = False
        self.learned: List[pb.PartDone] = []  # parts done that pushes to this one told of
        self.told = False  # this part's own end went out on its last push
        self.watches: list = []  # anomaly checks on this part's nodes, removed when it ends
        self.captured: Optional[Captured] = None  # leaf gradients handed back (dist_autograd.grad)

    def unwatch(self) -> None:
        watches, self.watches = self.watches, []
        for handle in watches:
            handle.remove()


class Drive:
    """What the root keeps of a pass it drives."""

    def __init__(self, ctx: Context, pass_id: int, participants: Set[int]):
        self.ctx = ctx
        self.pass_id = pass_id
        self.participants = participants
        self.waiting = set(participants)
        self.leaves: Dict[int, int] = {}
        self.result: Future = Future()
        self.lock = threading.Lock()

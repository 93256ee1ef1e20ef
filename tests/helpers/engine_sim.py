"""Several workers' backward engines in one process, joined by queues instead of sockets.

Each virtual worker holds send and recv points like a real one; ``send`` moves a tensor between
workers as an rpc would (a recv point on the receiver, the activation travelling along), and
``backward`` runs a pass the way runtime.backward does: the root works out the active send points
from its own graph, every worker runs its part as gradients arrive, pushes go worker to worker.
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Dict, List, Optional

import torch
from torch.autograd.graph import get_gradient_edge

from distautograd.engine import activations, local_pass, nodes, order
from distautograd.engine.activations import Activations
from distautograd.engine.graph import ROOTS
from distautograd.engine.slots import Captured, GradStore


class _Recv:
    __slots__ = ("message_id", "anchor", "activation")

    def __init__(self, message_id, activation):
        self.message_id = message_id
        self.activation = activation
        self.anchor = None


class Worker:
    def __init__(self, world: "World", name: str, capture: bool = False):
        self.world = world
        self.name = name
        self.sends: Dict[int, tuple] = {}  # message id -> (edge, key)
        self.activations = Activations()
        self.store = Captured() if capture else GradStore()

    def grads(self, leaves=()) -> Dict[torch.Tensor, torch.Tensor]:
        """The gradient of each leaf here: accumulated, or (capturing) handed back by its node."""
        if isinstance(self.store, GradStore):
            return self.store.snapshot()
        nodes = {get_gradient_edge(leaf).node: leaf for leaf in leaves}
        return {nodes[node]: grad for node, grad in self.store.grads.items() if node in nodes}


class World:
    def __init__(self, *names: str, limit: Optional[int] = None, order: str = "fifo", seed: int = 0,
                 capture: bool = False):
        """``limit``: activations bigger than this do not travel; ``order``: how pushes in flight are
        delivered ("fifo", "lifo" or "random"); ``capture``: leaves hand their gradients back
        (dist_autograd.grad) instead of accumulating them."""
        self.workers = {name: Worker(self, name, capture) for name in names}
        self.order = order
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self.owner: Dict[int, str] = {}  # message id -> worker holding the send point
        self.limit = limit  # activations bigger than this do not travel
        self.pushes = 0
        self.unknown_asked = 0

    def send(self, tensor: torch.Tensor, src: str, dest: str) -> torch.Tensor:
        """``tensor`` as ``dest`` receives it from ``src`` inside a context."""
        if not tensor.requires_grad:
            return tensor.detach().clone()
        sender = self.workers[src]
        message_id = next(self._ids)
        edge = get_gradient_edge(tensor)
        sender.sends[message_id] = (edge, order.place([edge.node]))
        self.owner[message_id] = src
        found = sender.activations.of(edge.node, edge.output_nr)
        travels = not found.unknown and (self.limit is None or len(found.ids) <= self.limit)
        point = _Recv(message_id, activations.of_recv(message_id, found.ids if travels else None))
        (out,), point.anchor = nodes.make_recv([tensor.detach()], [point])
        return out

    def _ask(self, ids: List[int]) -> List[tuple]:
        """What the holder of each send point says it sets off (runtime.reach asks over the wire)."""
        self.unknown_asked += len(ids)
        answers = []
        for message_id in ids:
            sender = self.workers[self.owner[message_id]]
            edge = sender.sends[message_id][0]
            reach = sender.activations.of(edge.node, edge.output_nr)
            answers.append((reach.ids, reach.unknown))
        return answers

    def backward(self, root: str, roots: List[torch.Tensor], retain_graph=False, create_graph=False) -> None:
        edges = [get_gradient_edge(r) for r in roots]
        order.place(edge.node for edge in edges)
        found = activations.union(self.workers[root].activations.of(e.node, e.output_nr) for e in edges)
        active = activations.reached(found, self._ask)  # what did not travel: asked of the senders, as runtime.reach does
        queue: collections.deque = collections.deque()
        errors: List[BaseException] = []
        finished = set()
        parts: Dict[str, local_pass.LocalPart] = {}
        for name, worker in self.workers.items():
            mine = [m for m in active if self.owner[m] == name]
            sources = {m: [worker.sends[m][0]] for m in mine}
            if name == root:
                sources[ROOTS] = edges
            if name != root and not mine:
                continue

            def send(grads, last, name=name):
                for message_id, grad in grads.items():
                    self.pushes += 1
                    queue.append((self.owner[message_id], message_id, grad))

            def finish(error, name=name):
                if error is not None:
                    errors.append(error)
                finished.add(name)

            parts[name] = local_pass.start(sources, {m: worker.sends[m][1] for m in mine}, worker.store,
                                           send=send, finish=finish, retain_graph=retain_graph,
                                           create_graph=create_graph)
        for part in parts.values():
            part.start_if_empty()
        parts[root].arrive(ROOTS, [torch.ones_like(r) for r in roots])
        while queue and not errors:
            if self.order == "lifo":
                dest, message_id, grad = queue.pop()
            elif self.order == "random":
                queue.rotate(-self._random.randrange(len(queue)))
                dest, message_id, grad = queue.popleft()
            else:
                dest, message_id, grad = queue.popleft()
            parts[dest].arrive(message_id, [grad])
        if errors:
            raise errors[0]
        assert finished == set(parts), f"parts that never finished: {set(parts) - finished}"

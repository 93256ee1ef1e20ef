"""One worker's share of a pass's graph: the nodes gradient reaches from each active source, and in what order.

A *source* is where gradient enters this worker's graph: the roots of the pass (key ``ROOTS``)
or a send point (key = its message id), whose gradient comes back from the worker the tensor was
sent to. Gradient stops at leaves and recv points. A node is *complete* once every source that
reaches it has delivered: only then has it all its gradient, and only then may it run, so every
node runs exactly once however many sources meet in it.

Where the compiled core is built, it plans the same graph over torch's Nodes directly
(native/csrc/pass_graph.cpp: the walk 4x faster warm, the whole PassGraph 2x); the Python planner
here is the reference it is tested against and the fallback.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from torch.autograd.graph import GradientEdge

from distautograd import native
from distautograd.engine.nodes import LEAF_NODE, RECV_TYPES, is_leaf, recv_points

ROOTS = 0

Node = object
ChildEdge = Tuple[Node, int, int]  # (child, its input slot, index among the parent's next edges)


class PassGraph:
    def __init__(self, sources: Dict[int, Sequence[GradientEdge]], native_plan: Optional[bool] = None):
        """``native_plan``: plan with the compiled core (None: when the message path is native); where it
        cannot (a node torch did not make), or with False, the Python planner below does it all."""
        self.sources = {key: list(edges) for key, edges in sources.items()}
        planned = None
        if native_plan if native_plan is not None else native.path_on():
            planned = native.core.plan_pass_graph(
                [(key, [edge.node for edge in edges]) for key, edges in self.sources.items()], LEAF_NODE, RECV_TYPES)
        if planned is not None:
            (self.children, self.order, self.index, self.parents, self.bit, self.mask, self.reach,
             self.leaves) = planned
        else:
            self._plan()

    def _plan(self) -> None:
        """The reference planner, in Python; native/csrc/pass_graph.cpp does the same step for step."""
        self.children: Dict[Node, List[ChildEdge]] = {}
        self._collect()
        self.order: List[Node] = self._topological()
        self.index: Dict[Node, int] = {node: i for i, node in enumerate(self.order)}
        self.parents: Dict[Node, List[Tuple[Node, int, int]]] = {node: [] for node in self.order}
        for node in self.order:
            for child, slot, i in self.children[node]:
                self.parents[child].append((node, i, slot))
        self.bit = {key: 1 << n for n, key in enumerate(self.sources)}
        self.mask: Dict[Node, int] = dict.fromkeys(self.order, 0)
        for key, edges in self.sources.items():
            for edge in edges:
                if edge.node is not None:
                    self.mask[edge.node] |= self.bit[key]
        for node in self.order:
            for child, _, _ in self.children[node]:
                self.mask[child] |= self.mask[node]
        self.reach: Dict[int, List[Node]] = {key: [] for key in self.sources}
        for node in self.order:
            mask = self.mask[node]
            for key, bit in self.bit.items():
                if mask & bit:
                    self.reach[key].append(node)
        self.leaves = [node for node in self.order if is_leaf(node)]

    def _collect(self) -> None:
        children = self.children
        stack = [edge.node for edges in self.sources.values() for edge in edges if edge.node is not None]
        while stack:
            node = stack.pop()
            if node in children:
                continue
            if is_leaf(node) or recv_points(node) is not None:
                children[node] = []
                continue
            kids = [(child, slot, i) for i, (child, slot) in enumerate(node.next_functions) if child is not None]
            children[node] = kids
            stack.extend(child for child, _, _ in kids if child not in children)

    def _topological(self) -> List[Node]:
        indegree: Dict[Node, int] = dict.fromkeys(self.children, 0)
        for kids in self.children.values():
            for child, _, _ in kids:
                indegree[child] += 1
        # Latest-created first among the ready ones, as torch's engine would run them.
        ready = sorted((node for node, d in indegree.items() if d == 0), key=_sequence_nr)
        order: List[Node] = []
        while ready:
            node = ready.pop()
            order.append(node)
            for child, _, _ in self.children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        return order

    def __len__(self) -> int:
        return len(self.order)


def _sequence_nr(node: Node) -> int:
    return node._sequence_nr()

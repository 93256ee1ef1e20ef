"""This worker's share of a context's autograd graph: what each gradient source reaches, and its segments.

A *source* is where gradient enters the local graph: the roots of a pass (key 0) or a send
point (key = its message id), whose gradient comes back from the worker it was sent to.
The graph is cut into *segments*, each headed by a *boundary* node that waits for every
contribution it will get in this pass and then runs once. Boundaries are the nodes sources
point at, nodes where the gradients of different segments meet, and the terminals: leaves
(their gradient accumulates in the context) and recv points (their gradient goes back to the
sender). So every autograd node runs exactly once per pass, however the graph is shared.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Set, Tuple

from torch.autograd.graph import GradientEdge

ROOTS = 0

Node = object
Edge = Tuple[Node, int]


def is_leaf_node(node: Node) -> bool:
    return hasattr(node, "variable")


class Segment:
    """A boundary and the nodes that run with it."""

    __slots__ = ("boundary", "kind", "nodes", "frontier", "order", "flat", "expected", "message_id")

    def __init__(self, boundary: Node, kind: str):
        self.boundary = boundary
        self.kind = kind  # "node", "leaf" or "recv"
        self.nodes: List[Node] = [boundary]  # topological order, boundary first
        # child boundary -> the edges (child, slot) this segment's nodes send gradient along
        self.frontier: Dict[Node, Set[int]] = {}
        # child boundary -> the latest sequence number among this segment's nodes that feed it:
        # contributions are summed latest-first, the order torch's engine would produce them in
        self.order: Dict[Node, int] = {}
        self.flat = True
        self.expected = 0  # contributions to wait for in this pass
        self.message_id = 0  # recv points: the autograd message id to answer


class Plan:
    """The segments that take part in one pass, from the sources active in it."""

    def __init__(self, segments: Dict[Node, Segment], starts: Dict[Node, List[Tuple[int, int]]]):
        self.segments = segments
        self.starts = starts  # boundary -> [(source key, slot)] that feed it directly


class LocalGraph:
    def __init__(self, sources: Dict[int, List[GradientEdge]], recv_nodes: Dict[Node, int]):
        self.sources = sources
        self.recv_nodes = recv_nodes
        self.children: Dict[Node, List[Edge]] = {}
        self._collect()
        self.order = self._topological()
        self._recv_bit = {node: 1 << i for i, node in enumerate(n for n in self.order if n in recv_nodes)}
        self._reach = self._reachability()

    def _collect(self) -> None:
        stack = [edge.node for edges in self.sources.values() for edge in edges if edge.node is not None]
        children = self.children
        while stack:
            node = stack.pop()
            if node in children:
                continue
            if node in self.recv_nodes or is_leaf_node(node):
                children[node] = []
                continue
            kids = [(child, slot) for child, slot in node.next_functions if child is not None]
            children[node] = kids
            stack.extend(child for child, _ in kids if child not in children)

    def _topological(self) -> List[Node]:
        indegree: Dict[Node, int] = dict.fromkeys(self.children, 0)
        for kids in self.children.values():
            for child, _ in kids:
                indegree[child] += 1
        ready = [node for node, d in indegree.items() if d == 0]
        order: List[Node] = []
        while ready:
            node = ready.pop()
            order.append(node)
            for child, _ in self.children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        return order

    def _reachability(self) -> Dict[Node, int]:
        reach: Dict[Node, int] = {}
        for node in reversed(self.order):
            bits = self._recv_bit.get(node, 0)
            for child, _ in self.children[node]:
                bits |= reach[child]
            reach[node] = bits
        return reach

    def reaches(self, key: int) -> List[int]:
        """The message ids of the recv points source ``key`` reaches."""
        bits = 0
        for edge in self.sources.get(key, ()):
            bits |= self._reach.get(edge.node, 0)
        return [self.recv_nodes[node] for node, bit in self._recv_bit.items() if bits & bit]

    def descends(self, node: Node, other: Node) -> bool:
        """True when ``other`` is reachable from ``node``."""
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            for child, _ in self.children[current]:
                if child is other:
                    return True
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return False

    def plan(self, active: Iterable[int]) -> Plan:
        starts: Dict[Node, List[Tuple[int, int]]] = {}
        for key in active:
            for edge in self.sources.get(key, ()):
                starts.setdefault(edge.node, []).append((key, edge.output_nr))
        live: Set[Node] = set()
        stack = list(starts)
        while stack:
            node = stack.pop()
            if node in live:
                continue
            live.add(node)
            stack.extend(child for child, _ in self.children[node] if child not in live)

        parents: Dict[Node, Set[Node]] = {node: set() for node in live}
        for node in live:
            for child, _ in self.children[node]:
                parents[child].add(node)

        owner: Dict[Node, Segment] = {}
        segments: Dict[Node, Segment] = {}
        for node in (n for n in self.order if n in live):
            parent_segments = {owner[p] for p in parents[node]}
            terminal = node in self.recv_nodes or is_leaf_node(node)
            if node in starts or terminal or len(parent_segments) != 1:
                kind = "recv" if node in self.recv_nodes else "leaf" if terminal else "node"
                segment = segments[node] = Segment(node, kind)
                segment.message_id = self.recv_nodes.get(node, 0)
                segment.expected = len({key for key, _ in starts.get(node, ())}) + len(parent_segments)
            else:
                segment = next(iter(parent_segments))
                segment.nodes.append(node)
            owner[node] = segment

        for segment in segments.values():
            for node in segment.nodes:
                for child, slot in self.children[node]:
                    if owner[child] is not segment:
                        segment.frontier.setdefault(child, set()).add(slot)
                        segment.order[child] = max(segment.order.get(child, -1), node._sequence_nr())
            heads = list(segment.frontier)
            segment.flat = not any(
                self.descends(a, b) for a in heads for b in heads if a is not b
            )
        return Plan(segments, starts)


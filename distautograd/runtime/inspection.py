"""What a context's graph looks like on this worker, and what passes did to it: the runtime side of views/.

``graph_part`` runs on every worker that holds part of a context (the owner asks each, following
the workers each one exchanged tensors with); ``watch_runs`` counts, during a pass of a context
that asked for it, every node that runs and the shapes of what it produced.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch

from distautograd.encoding.allowlist import trusted_global
from distautograd.engine.nodes import is_leaf, recv_points
from distautograd.runtime import current
from distautograd.runtime.contexts import Context
from distautograd.runtime.options import UNSET_TIMEOUT
from distautograd.views import graphdata, trace

GRAPH = 1  # Context.inspect: record what each pass does to each node
TRACE = 2  # Context.inspect: record the calls and the passes of the context (views.trace)


def describe(ctx: Context, roots: Sequence[torch.Tensor] = ()) -> dict:
    """This worker's part of ``ctx``'s graph, from ``roots`` (on the owner) and every send point."""
    agent = current.get()
    with ctx.lock:
        sends = {mid: point.edge.node for mid, point in ctx.sends.items()}
        recvs = [(point.node(), point.src) for point in ctx.recvs.values() if point.node is not None]
        runs = dict(ctx.runs)
        pushed = dict(ctx.pushed)
    recvs = {node: _name(agent, src) for node, src in recvs if node is not None}
    starts = [root.grad_fn for root in roots if root.grad_fn is not None] + list(sends.values())
    if ctx.inspect & GRAPH and ctx.passes:
        runs = {**{node: {"ran": 0} for node in _reachable(starts)}, **runs}
    return graphdata.describe(agent.name, starts, sends, recvs, runs, pushed=pushed)


@trusted_global
def graph_part(context_id: int) -> dict:
    """On a worker that took part in a context: its part, and whom else it exchanged tensors with."""
    agent = current.get()
    ctx = agent.contexts.get(context_id)
    return {"part": describe(ctx), "peers": sorted(_name(agent, rank) for rank in ctx.peers)}


def gather(context_id: int, roots: Sequence[torch.Tensor] = ()) -> dict:
    """On the worker that owns the context: every worker's part, following whom each exchanged
    tensors with, joined into one graph (views.graphdata.join)."""
    ctx = current.get().contexts.get(context_id)
    parts = [describe(ctx, roots)]

    def ask(agent, name: str) -> List[str]:
        reply = agent.calls.invoke(agent.world.resolve(name), graph_part, (context_id,), {}, UNSET_TIMEOUT).wait()
        parts.append(reply["part"])
        return reply["peers"]

    _each_worker(ctx, ask)
    return graphdata.join(parts)


def _each_worker(ctx: Context, ask: Callable) -> None:
    """``ask(agent, name)`` of every other worker that took part in ``ctx`` (each says whom it
    exchanged tensors with, so workers two hops away are found too), outside the context."""
    agent = current.get()
    asked, queue = {agent.name}, list(peers_of(ctx))
    previous = agent.contexts.swap(None)  # asking is no call of the context
    try:
        while queue:
            name = queue.pop(0)
            if name in asked:
                continue
            asked.add(name)
            queue.extend(peer for peer in ask(agent, name) if peer not in asked)
    finally:
        agent.contexts.swap(previous)


@trusted_global
def whole_graph(context_id: int) -> dict:
    """The whole graph of a context this worker owns, for a tool outside the program (distautograd graph)."""
    return gather(context_id)


@trusted_global
def trace_part(context_id: int) -> dict:
    """On a worker that took part in a traced context: its events (taken), its clock, its peers."""
    agent = current.get()
    ctx = agent.contexts.find(context_id)
    peers = sorted(_name(agent, rank) for rank in ctx.peers) if ctx is not None else []
    return {"worker": agent.name, "now_us": trace.now_us(), "events": trace.take(context_id), "peers": peers}


def gather_trace(context_id: int) -> dict:
    """On the owner: every worker's events of the context, on the owner's clock, as one Chrome trace."""
    agent = current.get()
    ctx = agent.contexts.get(context_id)
    parts = [(agent.name, 0.0, trace.take(context_id))]

    def ask(agent, name: str) -> List[str]:
        sent = trace.now_us()
        reply = agent.calls.invoke(agent.world.resolve(name), trace_part, (context_id,), {}, UNSET_TIMEOUT).wait()
        offset = reply["now_us"] - (sent + trace.now_us()) / 2  # its clock ahead of ours, give or take the trip
        parts.append((reply["worker"], offset, reply["events"]))
        return reply["peers"]

    _each_worker(ctx, ask)
    return trace.assemble(parts)


def pushed(ctx: Context, message_ids: Sequence[int], value, attachments) -> None:
    """What the gradients of recv points took to cross (a tensor list value): 0 for none or zeros."""
    metas = iter(value.tensors)
    nones = set(value.none_at)
    with ctx.lock:
        for index, message_id in enumerate(message_ids):
            meta = None if index in nones else next(metas)
            ctx.pushed[message_id] = 0 if meta is None or meta.zeros else len(memoryview(
                attachments[meta.attachment]).cast("B"))


def watch_runs(ctx: Context, nodes) -> List[Callable[[], None]]:
    """While a pass runs: counts each node's runs in ``ctx.runs`` with the shapes it produced."""
    handles = []
    for node in nodes:
        def record(grad_inputs, grad_outputs, node=node):
            made = grad_inputs if any(g is not None for g in grad_inputs) else grad_outputs  # a recv point: what came in
            shapes = [list(g.shape) if g is not None else None for g in made]
            with ctx.lock:
                entry = ctx.runs.setdefault(node, {"ran": 0, "shapes": []})
                entry["ran"] += 1
                entry["shapes"] = shapes
        handles.append(node.register_hook(record))
    return handles


def _reachable(starts) -> List[object]:
    seen, stack = [], list(starts)
    marks = set()
    while stack:
        node = stack.pop()
        if node is None or node in marks:
            continue
        marks.add(node)
        seen.append(node)
        if not is_leaf(node) and recv_points(node) is None:
            stack.extend(child for child, _ in node.next_functions)
    return seen


def _name(agent, rank: int) -> str:
    return agent.world.name_of(rank)


def peers_of(ctx: Context) -> Dict[str, None]:
    agent = current.get()
    return dict.fromkeys(_name(agent, rank) for rank in sorted(ctx.peers))


__all__ = ["GRAPH", "TRACE", "describe", "gather", "gather_trace", "graph_part", "peers_of", "trace_part",
           "watch_runs", "whole_graph"]

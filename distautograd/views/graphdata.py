"""One worker's part of a context's backward graph as plain data: nodes with torch's formulas, edges, saved shapes.

``describe`` walks the autograd graph from where gradient enters this worker (the roots, the
send points) down to where it leaves (leaves, recv points) and says, for every node, what it is
and what it computes. ``join`` puts the parts of every worker together, adding an edge for every
tensor that crossed (recv point on one worker -> the sent tensor's node on the other).
"""

from __future__ import annotations

import gc
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from distautograd.engine.nodes import RECV_NAME, is_leaf, recv_points
from distautograd.views import formulas


def describe(worker: str, starts: Sequence, sends: Mapping[int, object], recvs: Mapping[int, tuple],
             runs: Optional[Mapping[object, dict]] = None, parameters: Optional[Mapping[int, str]] = None,
             pushed: Optional[Mapping[int, int]] = None) -> dict:
    """``starts``: nodes gradient enters at; ``sends``: message id -> the sent tensor's node;
    ``recvs``: RecvRpcBackward node -> source worker; ``runs``: node -> what a pass
    did to it; ``parameters``: id(tensor) -> module path; ``pushed``: recv point -> bytes its gradient
    took to cross in the last pass (a pass of a context that records its graph)."""
    ids: Dict[object, str] = {}
    order: List[object] = []
    stack = [node for node in starts if node is not None]
    while stack:
        node = stack.pop()
        if node in ids:
            continue
        ids[node] = f"{worker}/{len(ids)}"
        order.append(node)
        if is_leaf(node) or recv_points(node) is not None:
            continue
        stack.extend(child for child, _ in node.next_functions if child is not None and child not in ids)
    sent_at: Dict[object, List[int]] = {}
    for message_id, node in sends.items():
        sent_at.setdefault(node, []).append(message_id)
    parameters = parameters if parameters is not None else parameter_names()
    nodes, edges = [], []
    for node in order:
        nodes.append(_node(node, ids[node], worker, sent_at.get(node), recvs.get(node), (runs or {}).get(node),
                           parameters, pushed or {}))
        if is_leaf(node) or recv_points(node) is not None:
            continue
        for slot, (child, input_nr) in enumerate(node.next_functions):
            if child is not None and child in ids:
                edges.append({"from": ids[node], "to": ids[child], "input": slot, "child_slot": input_nr})
    return {"worker": worker, "nodes": nodes, "edges": edges}


def _node(node, node_id: str, worker: str, sent: Optional[List[int]], recv_from: Optional[str], run: Optional[dict],
          parameters: Mapping[int, str], pushed: Mapping[int, int]) -> dict:
    points = recv_points(node)
    name = RECV_NAME if points is not None else type(node).__name__
    entry = {"id": node_id, "worker": worker, "name": name, "what": formulas.describe(node)}
    formula = formulas.of(name)
    if formula is not None:
        entry["op"] = formula.op
        entry["formulas"] = {arg: formula.formulas.get(arg, "(not differentiable)") for arg in formula.inputs}
        entry["compiled"] = {arg: formula.compiled.get(arg, "(not differentiable)") for arg in formula.inputs}
    if is_leaf(node):
        entry["kind"] = "leaf"
        variable = node.variable
        entry["leaf"] = {"shape": list(variable.shape), "dtype": str(variable.dtype).replace("torch.", ""),
                         "parameter": parameters.get(id(variable))}
    elif points is not None:
        entry["kind"] = "recv"
        entry["from_worker"] = recv_from
        metas = getattr(node, "_input_metadata", ())  # one per output: the tensors of the message
        entry["tensors"] = [{"message_id": point.message_id, "shape": list(meta.shape),
                             "dtype": str(meta.dtype).replace("torch.", ""), "pushed": pushed.get(point.message_id)}
                            for point, meta in zip(points, metas)]
    elif hasattr(node, "_forward_cls"):
        entry["kind"] = "custom"
    else:
        entry["kind"] = "function"
    if sent:
        entry["sent_as"] = sorted(sent)  # message ids of the tensors sent from this node's output
    entry["saved"] = saved_values(node)
    if run is not None:
        entry["ran"] = run.get("ran", 0)
        entry["grad_shapes"] = run.get("shapes", [])
    return entry


def saved_values(node) -> List[dict]:
    """What the node saved for its backward: tensors by shape and dtype, other values as they are."""
    out = []
    for attr in sorted(a for a in dir(node) if a.startswith("_saved_")):
        try:
            value = getattr(node, attr)
        except RuntimeError:  # freed by a backward without retain_graph
            out.append({"name": attr[len("_saved_"):], "freed": True})
            continue
        out.append({"name": attr[len("_saved_"):], **_value(value)})
    return out


def _value(value) -> dict:
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return {"tensors": [{"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for v in value]}
    text = repr(value)
    return {"value": text if len(text) <= 80 else text[:77] + "..."}


def parameter_names() -> Dict[int, str]:
    """id(parameter) -> its path in the biggest module holding it ("Net.hidden.weight"), for every
    module alive in this process."""
    found: Dict[int, str] = {}
    depth: Dict[int, int] = {}
    for module in (obj for obj in gc.get_objects() if issubclass(type(obj), torch.nn.Module)):
        prefix = type(module).__name__
        for name, param in module.named_parameters():
            path = f"{prefix}.{name}"
            dots = path.count(".")
            if depth.get(id(param), -1) < dots:
                found[id(param)], depth[id(param)] = path, dots
    return found


def join(parts: Iterable[dict]) -> dict:
    """Every worker's part in one graph; an edge for each tensor that crossed workers."""
    parts = list(parts)
    nodes = [node for part in parts for node in part["nodes"]]
    edges = [edge for part in parts for edge in part["edges"]]
    sent = {mid: node["id"] for node in nodes for mid in node.get("sent_as", ())}
    for node in nodes:
        for output, tensor in enumerate(node.get("tensors", ())):
            mid = tensor["message_id"]
            if mid in sent:
                crossed = tensor.get("pushed")
                edges.append({"from": node["id"], "to": sent[mid], "message_id": mid, "output": output,
                              "cross": True, "from_worker": node["worker"], "to_worker": node.get("from_worker"),
                              "bytes": _bytes(tensor) if crossed is None else crossed, "crossed": crossed is not None})
    owner, others = parts[0]["worker"], sorted(part["worker"] for part in parts[1:])
    return {"workers": [owner, *others], "nodes": nodes, "edges": edges}


def _bytes(tensor: dict) -> int:
    shape, dtype = tensor.get("shape"), tensor.get("dtype")
    if shape is None or dtype is None:
        return 0
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=getattr(torch, dtype)).element_size()

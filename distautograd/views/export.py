"""A context's graph (views.graphdata) as JSON, as Graphviz DOT, and as one self-contained HTML page.

The page draws the graph itself (inline SVG, no network, no Graphviz needed): one column per
worker, nodes in the order gradient reaches them, edges that cross workers drawn between the
columns. Clicking a node shows torch's formula for each input, what it saved and what the pass
did to it.
"""

from __future__ import annotations

import html
import json
from typing import Dict, List, Tuple

_COLORS = {"leaf": "#d8f0d8", "recv": "#fde3c8", "custom": "#e8dcf8", "function": "#dde9f8"}
_NODE_W, _NODE_H, _ROW, _GAP = 210, 38, 64, 110


def to_json(graph: dict) -> str:
    return json.dumps(graph, indent=1, sort_keys=True)


def to_dot(graph: dict) -> str:
    """One cluster per worker; an edge per gradient path, cross-worker edges labelled with their bytes."""
    lines = ["digraph distautograd {", "  rankdir=TB; compound=true; node [shape=box, style=filled, fontname=Helvetica];"]
    for i, worker in enumerate(graph["workers"]):
        lines.append(f"  subgraph cluster_{i} {{ label={_q(worker)}; style=rounded;")
        for node in graph["nodes"]:
            if node["worker"] == worker:
                label = node["name"] + ("\\n" + _short(node) if _short(node) else "")
                fill = _COLORS.get(node.get("kind"), "#eee")
                lines.append(f"    {_q(node['id'])} [label={_q(label)}, fillcolor={_q(fill)}];")
        lines.append("  }")
    for edge in graph["edges"]:
        attrs = ""
        if edge.get("cross"):
            text = f"{edge.get('bytes', 0)} B, message {edge['message_id']}"
            attrs = f" [color=\"#d2691e\", penwidth=2, label={_q(text)}]"
        lines.append(f"  {_q(edge['from'])} -> {_q(edge['to'])}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _short(node: dict) -> str:
    if node.get("kind") == "leaf":
        leaf = node["leaf"]
        return (leaf.get("parameter") or "leaf") + f" {leaf['shape']}"
    if node.get("kind") == "recv":
        return f"from {node.get('from_worker')}"
    if "ran" in node:
        return f"ran {node['ran']}x"
    return ""


def layout(graph: dict) -> Tuple[Dict[str, Tuple[float, float]], Dict[str, float], float]:
    """(node id -> (x, y) of its box, worker -> x of its column, height): rows by depth from the roots."""
    children: Dict[str, List[str]] = {}
    indegree = {node["id"]: 0 for node in graph["nodes"]}
    for edge in graph["edges"]:
        children.setdefault(edge["from"], []).append(edge["to"])
        indegree[edge["to"]] = indegree.get(edge["to"], 0) + 1
    depth = {nid: 0 for nid, d in indegree.items() if d == 0}
    ready = list(depth)
    remaining = dict(indegree)
    while ready:
        nid = ready.pop(0)
        for child in children.get(nid, ()):
            depth[child] = max(depth.get(child, 0), depth[nid] + 1)
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    for nid in indegree:
        depth.setdefault(nid, 0)  # a cycle cannot happen in autograd; stay safe all the same
    columns = {worker: 30 + i * (_NODE_W + _GAP) for i, worker in enumerate(graph["workers"])}
    by_cell: Dict[Tuple[str, int], List[dict]] = {}
    for node in sorted(graph["nodes"], key=lambda n: n["id"]):
        by_cell.setdefault((node["worker"], depth[node["id"]]), []).append(node)
    levels = max(depth.values(), default=0) + 1
    rows = [max((len(cell) for (_, d), cell in by_cell.items() if d == level), default=1) for level in range(levels)]
    tops = [70]
    for count in rows[:-1]:
        tops.append(tops[-1] + count * (_NODE_H + 8) + (_ROW - _NODE_H))
    positions = {}
    for (worker, level), cell in by_cell.items():
        for slot, node in enumerate(cell):
            positions[node["id"]] = (columns[worker], tops[level] + slot * (_NODE_H + 8))
    height = tops[-1] + rows[-1] * (_NODE_H + 8) + 40
    return positions, columns, height


def to_html(graph: dict, title: str = "distautograd: the backward graph of a context") -> str:
    positions, columns, height = layout(graph)
    width = max(columns.values(), default=0) + _NODE_W + 60
    svg: List[str] = [f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
                      '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9"'
                      ' markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for worker, x in columns.items():
        svg.append(f'<rect class="worker" x="{x - 12}" y="20" width="{_NODE_W + 24}" height="{height - 30}" '
                   f'rx="10" fill="#fafafa" stroke="#bbb"/><text x="{x}" y="44" font-weight="bold" font-size="15">'
                   f'{html.escape(worker)}</text>')
    for edge in graph["edges"]:
        if edge["from"] not in positions or edge["to"] not in positions:
            continue
        (x1, y1), (x2, y2) = positions[edge["from"]], positions[edge["to"]]
        a = (x1 + _NODE_W / 2, y1 + _NODE_H)
        b = (x2 + _NODE_W / 2, y2)
        cross = edge.get("cross")
        color, width_px = ("#d2691e", 2.5) if cross else ("#777", 1.2)
        label = ""
        if cross:
            text = (f"{edge.get('bytes', 0)} bytes of gradient, message {edge['message_id']}: "
                    f"{edge.get('from_worker')} to {edge.get('to_worker')}")
            label = f"<title>{html.escape(text)}</title>"
        kind = "cross" if cross else "edge"
        svg.append(f'<path class="{kind}" d="M{a[0]:.0f},{a[1]:.0f} C{a[0]:.0f},{a[1] + 30:.0f} '
                   f'{b[0]:.0f},{b[1] - 30:.0f} {b[0]:.0f},{b[1]:.0f}" fill="none" stroke="{color}" '
                   f'stroke-width="{width_px}" marker-end="url(#arrow)">{label}</path>')
    for node in graph["nodes"]:
        x, y = positions[node["id"]]
        fill = _COLORS.get(node.get("kind"), "#eee")
        stroke = "#c00" if node.get("ran", 1) > 1 else ("#999" if node.get("ran") == 0 else "#444")
        dash = "4,3" if node.get("ran") == 0 else "none"
        node_id, name, what = html.escape(node["id"]), html.escape(node["name"]), html.escape(node["what"])
        svg.append(f'<g class="node" data-id="{node_id}"><rect x="{x}" y="{y}" width="{_NODE_W}" '
                   f'height="{_NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-dasharray="{dash}"/>'
                   f'<text x="{x + 8}" y="{y + 16}" font-size="12" font-weight="bold">{name}</text>'
                   f'<text x="{x + 8}" y="{y + 31}" font-size="11" fill="#444">{html.escape(_short(node)[:34])}</text>'
                   f'<title>{what}</title></g>')
    svg.append("</svg>")
    data = json.dumps({node["id"]: node for node in graph["nodes"]}).replace("</", "<\\/")
    counts = {w: sum(1 for n in graph["nodes"] if n["worker"] == w) for w in graph["workers"]}
    summary = ", ".join(f"{w}: {c} nodes" for w, c in counts.items())
    crossings = sum(1 for e in graph["edges"] if e.get("cross"))
    return _PAGE.format(title=html.escape(title), summary=html.escape(summary), crossings=crossings,
                        svg="\n".join(svg), data=data)


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 0; display: flex; }}
#view {{ flex: 1; overflow: auto; padding: 10px; }}
#side {{ width: 420px; border-left: 1px solid #ccc; padding: 12px; font-size: 13px; overflow: auto; height: 100vh;
        box-sizing: border-box; line-height: 1.6; }}
/* No vertical padding, lines 1.6 apart: a wrapped line's background must not paint over the line
   above it (its underscores vanished under it). */
#side code {{ background: #f3f3f3; padding: 0 3px; white-space: pre-wrap; word-break: break-all; }}
.node {{ cursor: pointer; }} .node:hover rect {{ stroke-width: 2.5; }}
h1 {{ font-size: 17px; margin: 4px 0 8px 0; }}
</style></head>
<body><div id="view"><h1>{title}</h1><div id="summary">{summary}; {crossings} gradients cross workers
(orange). Click a node for torch's formula.</div>
{svg}
</div><div id="side"><b>Node</b><div id="detail">Click a node.</div></div>
<script>
const nodes = {data};
function esc(s) {{ return String(s).replace(/[&<>]/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;'}})[c]); }}
function show(id) {{
  const n = nodes[id]; let h = '<h2>' + esc(n.name) + '</h2><p>on <b>' + esc(n.worker) + '</b> (' + esc(n.kind) + ')</p>';
  if (n.op) h += '<p>forward: <code>' + esc(n.op) + '</code></p>';
  if (n.formulas) {{ h += '<p>derivative formula per input (torch\\'s derivatives.yaml):</p><ul>';
    for (const [k, v] of Object.entries(n.formulas)) h += '<li><b>' + esc(k) + '</b>: <code>' + esc(v) + '</code>' +
      (n.compiled && n.compiled[k] !== v ? '<br>compiled as <code>' + esc(n.compiled[k]) + '</code>' : '') + '</li>';
    h += '</ul>'; }} else h += '<p>' + esc(n.what) + '</p>';
  if (n.leaf) h += '<p>leaf ' + esc(JSON.stringify(n.leaf.shape)) + ' ' + esc(n.leaf.dtype) +
                   (n.leaf.parameter ? ', parameter <code>' + esc(n.leaf.parameter) + '</code>' : '') + '</p>';
  if (n.saved && n.saved.length) {{ h += '<p>saved for backward:</p><ul>';
    for (const s of n.saved) h += '<li>' + esc(s.name) + ': ' + esc(s.shape ? JSON.stringify(s.shape) + ' ' + s.dtype :
                                   (s.freed ? 'freed' : (s.value || JSON.stringify(s.tensors)))) + '</li>';
    h += '</ul>'; }}
  if (n.ran !== undefined) h += '<p>the pass: ' + (n.ran ? 'ran ' + n.ran + ' time(s), gradients ' +
                                  esc(JSON.stringify(n.grad_shapes)) : 'not reached (skipped)') + '</p>';
  if (n.tensors) h += '<p>tensors from ' + esc(n.from_worker) + ', message(s) ' +
                      n.tensors.map(t => t.message_id).join(', ') + '</p>';
  if (n.sent_as) h += '<p>sent to another worker as message(s) ' + n.sent_as.join(', ') + '</p>';
  document.getElementById('detail').innerHTML = h;
}}
for (const g of document.querySelectorAll('.node')) g.addEventListener('click', () => show(g.dataset.id));
if (location.hash && nodes[decodeURIComponent(location.hash.slice(1))]) show(decodeURIComponent(location.hash.slice(1)));
document.title = document.title + ' (' + Object.keys(nodes).length + ' nodes)';
</script></body></html>
"""


def trace_to_html(trace: dict, title: str = "distautograd: one traced step") -> str:
    """A Chrome trace (views.trace) drawn as a timeline page: a row per worker, spans as bars,
    messages as arrows. For a quick look without Perfetto; the JSON itself opens there too."""
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    spans = [e for e in events if e["ph"] == "X"]
    if not spans:
        return _TIMELINE.format(title=html.escape(title), svg="<p>no events</p>", legend="")
    start = min(e["ts"] for e in spans)
    end = max(e["ts"] + e["dur"] for e in spans)
    scale = 1100.0 / max(end - start, 1.0)
    lanes: Dict[Tuple[int, int], int] = {}
    for e in sorted(spans, key=lambda e: (e["pid"], e["tid"])):
        lanes.setdefault((e["pid"], e["tid"]), len([k for k in lanes if k[0] == e["pid"]]))
    rows: Dict[int, float] = {}
    y = 40.0
    for pid in sorted(names):
        rows[pid] = y
        y += 30 + 22 * max([lane for (p, _), lane in lanes.items() if p == pid] + [0]) + 22
    colors = {"call": "#7aa6d8", "backward": "#e59866"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="1320" height="{y + 30:.0f}">',
           '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>']
    for pid, top in rows.items():
        svg.append(f'<text x="8" y="{top + 14:.0f}" font-size="13" font-weight="bold">{html.escape(names[pid])}</text>'
                   f'<line x1="8" x2="1310" y1="{top - 6:.0f}" y2="{top - 6:.0f}" stroke="#ddd"/>')
    for e in sorted(spans, key=lambda e: -e["dur"]):
        x = 180 + (e["ts"] - start) * scale
        w = max(1.5, e["dur"] * scale)
        top = rows[e["pid"]] + 22 * lanes[(e["pid"], e["tid"])]
        label = html.escape(e["name"])
        svg.append(f'<g class="span"><rect x="{x:.1f}" y="{top:.0f}" width="{w:.1f}" height="18" rx="2" '
                   f'fill="{colors.get(e.get("cat"), "#aaa")}" stroke="#555" stroke-width="0.4"/>'
                   f'<title>{label}: {e["dur"] / 1000:.3f} ms</title>'
                   # the label in a viewport of the bar's size: clipped at its end, never over a neighbour
                   + (f'<svg x="{x:.1f}" y="{top:.0f}" width="{w:.1f}" height="18"><text x="3" y="13" font-size="10">'
                      f'{label}</text></svg>' if w > 12 else "") + "</g>")
    ends: Dict[Tuple[str, object], dict] = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            ends[(e["ph"], e["id"])] = e
    for (ph, flow_id), out in ends.items():
        arrival = ends.get(("f", flow_id)) if ph == "s" else None
        if arrival is None or out["pid"] not in rows or arrival["pid"] not in rows:
            continue
        x1, x2 = 180 + (out["ts"] - start) * scale, 180 + (arrival["ts"] - start) * scale
        y1, y2 = rows[out["pid"]] + 9, rows[arrival["pid"]] + 9
        svg.append(f'<line class="message" x1="{x1:.1f}" y1="{y1:.0f}" x2="{x2:.1f}" y2="{y2:.0f}" stroke="#333" '
                   f'stroke-width="1" marker-end="url(#a)"><title>{html.escape(out["name"])}</title></line>')
    total = (end - start) / 1000
    svg.append(f'<text x="180" y="{y + 16:.0f}" font-size="11" fill="#555">0 ms</text>'
               f'<text x="1230" y="{y + 16:.0f}" font-size="11" fill="#555">{total:.2f} ms</text></svg>')
    legend = ('<span style="background:#7aa6d8">&nbsp;calls&nbsp;</span> '
              '<span style="background:#e59866">&nbsp;backward&nbsp;</span> arrows: messages')
    return _TIMELINE.format(title=html.escape(title), svg="\n".join(svg), legend=legend)


_TIMELINE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: Helvetica, Arial, sans-serif; margin: 12px; }} h1 {{ font-size: 17px; }}</style></head>
<body><h1>{title}</h1><div>{legend}</div>
{svg}
</body></html>
"""

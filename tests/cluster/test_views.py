"""The graph of a context and the trace of a step, from real processes; the HTML page in a real browser.

Graphs with fan-out, a round trip (trainer -> worker1 -> trainer), a custom Function, a module's
parameters and a send whose result is never used; after a pass, every reached node ran once and
the unused one says it was skipped.
"""

import copy
import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from distautograd import autograd as dist_autograd
from distautograd import rpc
from distautograd.views import export
from tests.helpers import remote

pytestmark = pytest.mark.usefixtures("trainer")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def build(context_id):
    """Fan-out of x to worker1 and worker2, a round trip worker1 -> trainer, a custom Function on
    worker2, a Linear on worker3, and a send to worker3 whose result is dropped."""
    x = torch.linspace(-1, 1, 4, requires_grad=True)
    a = rpc.rpc_sync("worker1", torch.sin, args=(x,))
    b = rpc.rpc_sync("worker2", remote.scaled, args=(x,))
    back = rpc.rpc_sync("worker1", torch.exp, args=(a * 2,))  # trainer -> worker1 -> trainer
    rpc.rpc_sync("worker3", torch.cos, args=(x * 5,))  # never used
    c = rpc.rpc_sync("worker3", remote.linear_of, args=(0, b.reshape(1, 4)))
    return x, (back.sum() + c.sum())


@pytest.fixture(scope="module")
def graph():
    with dist_autograd.context(graph=True) as context_id:
        x, loss = build(context_id)
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        return dist_autograd.graph(context_id, [loss])


def test_every_worker_and_kind_of_node_is_there(graph):
    assert graph["workers"][0] == "trainer" and set(graph["workers"]) == {"trainer", "worker1", "worker2", "worker3"}
    by_name = {}
    for node in graph["nodes"]:
        by_name.setdefault((node["worker"], node["name"]), []).append(node)
    assert ("worker1", "SinBackward0") in by_name and ("worker1", "ExpBackward0") in by_name
    custom = by_name[("worker2", "ScaledBackward")][0]
    assert custom["kind"] == "custom" and "tests.helpers.remote.Scaled" in custom["what"]
    sin = by_name[("worker1", "SinBackward0")][0]
    assert sin["formulas"] == {"self": "grad * self.cos().conj()"} and sin["saved"][0]["shape"] == [4]
    leaves = [n for n in graph["nodes"] if n["kind"] == "leaf"]
    assert {n["leaf"]["parameter"] for n in leaves if n["worker"] == "worker3"} == {"Sequential.0.weight",
                                                                                     "Sequential.0.bias"}


def test_cross_worker_edges_carry_message_workers_and_bytes(graph):
    cross = [e for e in graph["edges"] if e.get("cross")]
    nodes = {n["id"]: n for n in graph["nodes"]}
    pairs = {(nodes[e["from"]]["worker"], nodes[e["to"]]["worker"]) for e in cross}
    # gradient flows from the recv point to the sent tensor's node: both ways between the trainer and each worker
    assert pairs == {(a, b) for w in ("worker1", "worker2", "worker3") for a, b in (("trainer", w), (w, "trainer"))}
    # sent by the trainer: x to 1, 2, 3, a * 2 to 1, b reshaped to 3; back to it: a, back, b, c (the cos
    # result is nowhere in the loss's graph: its recv point is not part of it)
    assert len(cross) == 9
    crossed = sorted((nodes[e["from"]]["worker"], nodes[e["to"]]["name"], e["bytes"]) for e in cross if e["crossed"])
    assert len(crossed) == 8 and all(b > 0 for _, _, b in crossed)  # what the pass sent: all but the unused send's
    assert [e for e in cross if not e["crossed"]][0]["bytes"] == 16  # x * 5, dropped on worker3: only its size
    assert ("trainer", "ExpBackward0", 4) in crossed  # back.sum()'s gradient: one float, expanded
    assert any(e["bytes"] == 16 for e in cross)  # 4 float32


def test_an_edge_says_what_crossed_a_gradient_of_zeros_takes_no_bytes():
    with dist_autograd.context(graph=True) as context_id:
        x = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
        loss = rpc.rpc_sync("worker1", torch.relu, args=(x,)).sum()  # all negative: its gradient is zeros
        before = [e for e in dist_autograd.graph(context_id, [loss])["edges"] if e.get("cross")]
        dist_autograd.backward(context_id, [loss], retain_graph=True)
        after = [e for e in dist_autograd.graph(context_id, [loss])["edges"] if e.get("cross")]
    # each way one 3-float gradient: the relu's (ones) back to worker1, x's (zeros) back to the trainer
    assert sorted((e["bytes"], e["crossed"]) for e in before) == [(12, False), (12, False)]  # its size, before a pass
    assert sorted((e["bytes"], e["crossed"]) for e in after) == [(0, True), (4, True)]  # sum's: one float, expanded


def test_the_pass_ran_every_reached_node_once_and_skipped_the_unused_send(graph):
    ran = [n for n in graph["nodes"] if "ran" in n]
    assert len(ran) == len(graph["nodes"]), "every node of a context that records its graph says what the pass did"
    skipped = sorted((n["worker"], n["name"]) for n in ran if n["ran"] == 0)
    # only the send to worker3 whose result was dropped: cos there, its recv node, and x * 5 here
    assert skipped == [("trainer", "MulBackward0"), ("worker3", "CosBackward0"),
                       ("worker3", "torch::distributed::autograd::RecvRpcBackward")]
    assert all(n["ran"] == 1 for n in ran if n["ran"] != 0), [n for n in ran if n["ran"] not in (0, 1)]


def test_json_and_dot_exports(graph, tmp_path):
    assert json.loads(export.to_json(graph)) == json.loads(json.dumps(graph))
    dot = export.to_dot(graph)
    assert dot.count("subgraph cluster_") == 4 and "SinBackward0" in dot and "penwidth=2" in dot


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (the README's test command installs it)")
def test_the_page_loads_in_a_real_browser_and_shows_every_worker_and_node(graph, tmp_path):
    page = tmp_path / "graph.html"
    page.write_text(export.to_html(graph))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert f"({len(graph['nodes'])} nodes)</title>" in dom, "the page's script did not run"
    assert "Uncaught" not in result.stderr, result.stderr[-2000:]
    for worker in graph["workers"]:
        assert f">{worker}</text>" in dom
    assert dom.count('class="node"') == len(graph["nodes"])


def test_the_command_writes_the_page_from_json_and_from_a_running_context(graph, tmp_path, cluster):
    saved = tmp_path / "graph.json"
    saved.write_text(export.to_json(graph))
    out = tmp_path / "page.html"
    run = subprocess.run([sys.executable, "-m", "distautograd.cli", "graph", "--from", str(saved), "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert out.read_text().count('class="node"') == len(graph["nodes"])
    with dist_autograd.context() as context_id:
        build(context_id)
        dot = tmp_path / "live.dot"
        run = subprocess.run([sys.executable, "-m", "distautograd.cli", "graph", "--coordinator", cluster.coordinator,
                              "--context", str(context_id), "--out", str(dot)],
                             capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert run.returncode == 0, run.stdout + run.stderr
    assert "ExpBackward0" in dot.read_text() and "cluster_3" in dot.read_text()


def test_a_trace_has_a_row_per_worker_spans_and_paired_message_arrows(tmp_path):
    path = tmp_path / "step.json"
    with dist_autograd.context(trace=str(path)) as context_id:
        x, loss = build(context_id)
        dist_autograd.backward(context_id, [loss])
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    workers = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert workers == {"trainer", "worker1", "worker2", "worker3"}
    spans = [e for e in events if e["ph"] == "X"]
    assert any(e["name"].startswith("rpc ") for e in spans) and any(e["name"].startswith("run ") for e in spans)
    assert any(e["name"] == "dist_autograd.backward" for e in spans)
    assert sum(1 for e in spans if e["name"].startswith("backward:")) >= 4
    starts = {e["id"] for e in events if e["ph"] == "s"}
    finishes = {e["id"] for e in events if e["ph"] == "f"}
    assert starts and starts == finishes, "every message must have both ends"
    root = next(e for e in spans if e["name"] == "dist_autograd.backward")
    for e in spans:  # clocks aligned: every worker's backward work lies within the root's pass
        if e["name"].startswith(("backward:", "gradients from")):
            assert root["ts"] - 1000 <= e["ts"] <= root["ts"] + root["dur"] + 1000, e
    assert "dist_autograd.backward" in export.trace_to_html(trace)


def test_without_asking_nothing_is_recorded():
    from distautograd.views import trace

    with dist_autograd.context() as context_id:
        x, loss = build(context_id)
        dist_autograd.backward(context_id, [loss])
        assert trace.take(context_id) == []
        assert all(rpc.rpc_sync(w, remote.trace_events, args=(context_id,)) == []
                   for w in ("worker1", "worker2", "worker3"))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (the README's test command installs it)")
def test_a_formula_that_wraps_keeps_every_line_clear_of_the_next(graph, tmp_path):
    """The formula panel as chromium lays it out: each wrapped line of a formula is a box of its own,
    and no line's box may reach into the next one's (a later line's background painted over the
    underscores of the line above: mm_mat1_backward read as "mm mat1 backward")."""
    shown = copy.deepcopy(graph)
    node = next(n for n in shown["nodes"] if n.get("formulas"))
    formula = "mm_mat1_backward(grad, mat2, self.sym_sizes(), self.sym_strides(), self.layout(), alpha) " * 3
    node["formulas"] = {"self": formula}
    page = tmp_path / "graph.html"
    measure = ("<pre id=geometry></pre><script>document.getElementById('geometry').textContent = JSON.stringify("
               "[...document.querySelectorAll('#detail code')].map(c => [c.textContent, "
               "[...c.getClientRects()].map(r => [r.top, r.bottom])]));</script></body>")
    page.write_text(export.to_html(shown).replace("</body>", measure))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                             "--dump-dom", page.as_uri() + "#" + node["id"]], capture_output=True, text=True, timeout=120)
    geometry = json.loads(html.unescape(re.search(r'<pre id="geometry">(.*?)</pre>', result.stdout, re.S).group(1)))
    (lines,) = [boxes for text, boxes in geometry if text == formula]
    assert len(lines) >= 3, lines  # it wraps
    for (_, bottom), (top, _) in zip(lines, lines[1:]):
        assert bottom <= top, lines


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (the README's test command installs it)")
def test_a_short_slices_label_stays_inside_its_bar(tmp_path):
    """Chromium is asked what it painted just past the right end of each bar, on the label's line:
    never the bar's own label (long names of short slices ran over their neighbours)."""
    name = "MmBackward0 AddmmBackward0 ViewBackward0 on Worker2"
    trace = {"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "worker1"}}] + [
        {"ph": "X", "name": f"{name} {i}", "pid": 1, "tid": 1, "ts": 1000.0 * i, "dur": 900.0, "cat": "backward"}
        for i in range(20)]}
    page = tmp_path / "trace.html"
    probe = ("<pre id=probe></pre><script>document.getElementById('probe').textContent = JSON.stringify("
             "[...document.querySelectorAll('g.span')].map(g => { const r = g.querySelector('rect')"
             ".getBoundingClientRect(); const hit = document.elementFromPoint(r.right + 2, r.top + 10); "
             "return [r.width, g.querySelector('text') ? g.querySelector('text').textContent : null, "
             "hit ? hit.textContent : null]; }));</script></body>")
    page.write_text(export.trace_to_html(trace).replace("</body>", probe))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,400",
                             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    spans = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S).group(1)))
    assert len(spans) == 20 and all(label and label.startswith(name) for _, label, _ in spans), spans
    assert all(width < 60 for width, _, _ in spans)  # each bar far shorter than its label
    for width, label, painted_past_it in spans:
        assert painted_past_it != label, (width, label)

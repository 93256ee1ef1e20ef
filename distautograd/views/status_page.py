"""The coordinator's live status page: its workers, open contexts and recent deaths, as JSON and as HTML.

The page is static: it fetches ``status.json`` every second and draws it, with no network beyond
this server and no build step. Each open context links to its graph page (views.export) where the
server can draw one (a coordinator inside a worker); a standalone coordinator runs no worker and
says how to draw it instead.
"""

from __future__ import annotations

import time
from typing import Iterable, List

from distautograd.protocol.v1 import messages_pb2 as pb


def transport_of(entry: pb.WorkerEntry) -> str:
    """How peers reach a worker: the paths it offers, best first (gRPC is always there)."""
    paths = (["unix"] if entry.unix_path else []) + (["tcp"] if entry.socket_address else []) + ["grpc"]
    return ", ".join(paths)


def status_json(reply: pb.StatusReply, events: Iterable[dict], heartbeat_timeout: float, graphs: bool) -> dict:
    """What the page shows, from the coordinator's Status reply and its membership's recent events."""
    names = {w.worker.rank: w.worker.name for w in reply.workers}
    names.update({d.rank: d.name for d in reply.departed if d.rank not in names})
    workers: List[dict] = []
    for status in sorted(reply.workers, key=lambda w: w.worker.rank):
        entry = status.worker
        age = status.seconds_since_heartbeat
        state = "unreachable" if entry.unreachable else ("late" if age > heartbeat_timeout / 2 else "alive")
        workers.append({"name": entry.name, "rank": entry.rank, "address": entry.address,
                        "transport": transport_of(entry), "messages": entry.message_path, "heartbeat_age": round(age, 2), "state": state,
                        "daemon": entry.daemon, "pid": entry.pid, "host": entry.host, "contexts": status.contexts,
                        "passes": status.passes})
    for departure in reply.departed:
        if departure.rank not in {w["rank"] for w in workers}:
            workers.append({"name": departure.name, "rank": departure.rank, "address": "", "transport": "",
                            "messages": "", "heartbeat_age": None, "state": "dead" if departure.failed else "left",
                            "reason": departure.reason})
    contexts = [{"id": str(c.context_id), "participants": [names.get(r, f"rank {r}") for r in c.participants],
                 "passes": c.passes, "in_flight": c.passes_in_flight} for c in reply.contexts]
    return {"time": time.time(), "heartbeat_timeout": heartbeat_timeout, "graphs": graphs, "workers": workers,
            "contexts": contexts, "events": [e for e in events if e["what"] != "joined"][-30:][::-1]}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distautograd status</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; min-width: 40em; }
th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #e4e4e4; }
th { font-weight: 600; color: #555; }
.alive { color: #17703a; } .late { color: #a66300; } .unreachable { color: #b35c00; font-weight: 600; }
.dead { color: #b00020; font-weight: 600; } .left { color: #666; }
#when { color: #777; } #error { color: #b00020; }
code { font-size: .95em; }
</style></head>
<body>
<h1>distautograd</h1>
<div id="when">loading…</div><div id="error"></div>
<h2>Workers</h2>
<table id="workers"><thead><tr><th>name</th><th>rank</th><th>address</th><th>transport</th>
<th>messages</th><th>heartbeat</th><th>state</th><th>contexts</th><th>passes</th></tr></thead><tbody></tbody></table>
<h2>Open contexts</h2>
<table id="contexts"><thead><tr><th>context</th><th>participants</th><th>passes</th><th>in flight</th>
<th>graph</th></tr></thead><tbody></tbody></table>
<h2>Recent deaths, rejoins and silences</h2>
<table id="events"><thead><tr><th>when</th><th>worker</th><th>what</th><th>why</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function fill(id, items, draw) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of items) { const row = document.createElement("tr"); draw(row, item); body.appendChild(row); }
  if (!items.length) cell(body.appendChild(document.createElement("tr")), "none");
}
function clock(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }
async function refresh() {
  try {
    const answer = await fetch("status.json", {cache: "no-store"});
    if (!answer.ok) throw new Error(answer.status + " " + (await answer.text()));
    const s = await answer.json();
    document.getElementById("error").textContent = "";
    document.getElementById("when").textContent = "as of " + clock(s.time) + "; a worker silent for "
      + s.heartbeat_timeout + " s is unreachable";
    fill("workers", s.workers, (row, w) => {
      row.dataset.worker = w.name;
      cell(row, w.name); cell(row, w.rank); cell(row, w.address); cell(row, w.transport); cell(row, w.messages);
      cell(row, w.heartbeat_age === null ? "" : w.heartbeat_age.toFixed(1) + " s ago");
      cell(row, w.state + (w.reason ? ": " + w.reason : ""), w.state).className += " state";
      cell(row, w.contexts); cell(row, w.passes);
    });
    fill("contexts", s.contexts, (row, c) => {
      cell(row, c.id); cell(row, c.participants.join(", ")); cell(row, c.passes); cell(row, c.in_flight);
      const graph = cell(row, "");
      if (s.graphs) {
        const a = document.createElement("a"); a.href = "graph/" + c.id; a.textContent = "graph"; graph.appendChild(a);
      } else {
        const code = document.createElement("code");
        code.textContent = "distautograd graph --context " + c.id + " --out graph.html";
        graph.appendChild(code);
      }
    });
    fill("events", s.events, (row, e) => {
      cell(row, clock(e.time)); cell(row, e.name + " (rank " + e.rank + ")"); cell(row, e.what); cell(row, e.reason);
    });
  } catch (err) {
    document.getElementById("error").textContent = "cannot reach the coordinator: " + err.message;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""

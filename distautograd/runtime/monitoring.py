"""A process's HTTP port for operators (metrics_port): its metrics, and on a coordinator the live status page and each open context's graph.

A worker serves /metrics, with gauges read from its stores at each scrape. A coordinator adds
/ (the status page), /status.json, and — inside a worker, which can gather a context's parts
from its participants — /graph/<context id>, the graph page drawn live.
"""

from __future__ import annotations

import json
from distautograd import errors, ids, metrics
from distautograd.runtime import inspection
from distautograd.runtime.options import UNSET_TIMEOUT
from distautograd.transport.http import HttpServer, Page
from distautograd.transport.security import Security
from distautograd.views import export, status_page

_HTML = "text/html; charset=utf-8"


def serve(host: str, port: int, security: Security, agent=None, coordinator=None) -> HttpServer:
    """Starts the port on ``host`` (``port`` 0: any free one; see transport.http for who may read it)."""
    server = HttpServer(host, port, security)
    if agent is not None:
        metrics.watch(metrics.OPEN_CONTEXTS, agent.contexts.count)
        metrics.watch(metrics.LIVE_RREFS, agent.rrefs.owned_count)
        pool = agent.connector.pool
        metrics.watch(metrics.SHARED_MEMORY, pool.lent_bytes if pool is not None else lambda: 0)
    if coordinator is not None:
        for state in ("reachable", "unreachable"):
            metrics.watch(metrics.MEMBERS.labels(state), lambda state=state: coordinator.membership.count(state))
        server.route("/", lambda _: (200, _HTML, status_page.PAGE.encode()))
        server.route("/status.json", lambda _: _status(coordinator, graphs=agent is not None))
        server.route("/graph/", lambda rest: _graph(agent, rest))
    return server


def _status(coordinator, graphs: bool) -> Page:
    reply = coordinator.status()
    data = status_page.status_json(reply, list(coordinator.membership.events), coordinator.settings.heartbeat_timeout,
                                   graphs)
    return 200, "application/json", json.dumps(data).encode()


def _graph(agent, rest: str) -> Page:
    if agent is None:
        raise errors.NotFound("this coordinator runs no worker, so it cannot gather a graph: draw it with "
                              f"`distautograd graph --context {rest} --out graph.html`")
    try:
        context_id = int(rest)
    except ValueError:
        raise errors.NotFound(f"{rest!r} is not a context id (a whole number)") from None
    owner = ids.rank_of(context_id)
    if agent.world.entry(owner) is None:
        raise errors.NotFound(f"context {context_id} was made by rank {owner}, which is not in the world")
    graph = agent.calls.invoke(agent.world.resolve(owner), inspection.whole_graph, (context_id,), {},
                               UNSET_TIMEOUT).wait()
    return 200, _HTML, export.to_html(graph, title=f"distautograd: context {context_id}").encode()

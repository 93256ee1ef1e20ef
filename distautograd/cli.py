"""The ``distautograd`` command: run a coordinator or a worker, ask for status or health, run the demo.

Each command imports what it needs when it runs: ``distautograd health``, a liveness probe run
every few seconds, must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

log = logging.getLogger("distautograd")


def _env(name: str, default=None):
    return os.environ.get(name, default)


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (each also from its DISTAUTOGRAD_* variable)")
    group.add_argument("--token", default=_env("DISTAUTOGRAD_TOKEN"), help="shared token (DISTAUTOGRAD_TOKEN)")
    group.add_argument("--tls-cert", default=_env("DISTAUTOGRAD_TLS_CERT"), help="PEM certificate (DISTAUTOGRAD_TLS_CERT)")
    group.add_argument("--tls-key", default=_env("DISTAUTOGRAD_TLS_KEY"), help="PEM private key (DISTAUTOGRAD_TLS_KEY)")
    group.add_argument("--tls-ca", default=_env("DISTAUTOGRAD_TLS_CA"), help="PEM CA for peers (DISTAUTOGRAD_TLS_CA)")
    group.add_argument(
        "--tls-server-name", default=_env("DISTAUTOGRAD_TLS_SERVER_NAME"), help="name expected in server certificates"
    )


def _security(args):
    from distautograd.transport.security import Security

    return Security(args.token, args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name)


def _stop_on_signals() -> threading.Event:
    """Installed before anything starts, so a SIGTERM during start-up is a clean stop too."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait(stop: threading.Event) -> None:
    while not stop.wait(1.0):
        pass


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "1", "true", "yes"):
        return True
    if text.lower() in ("off", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _options(args, **extra):
    """BackendOptions from the flags given; unset ones fall back to the environment, then defaults."""
    from distautograd.runtime.options import BackendOptions

    values = dict(
        token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name, **extra,
    )
    return BackendOptions(**{k: v for k, v in values.items() if v is not None})


def cmd_coordinator(args) -> int:
    from distautograd.coordinator.service import Coordinator, Settings
    from distautograd.transport.grpc_server import Server

    stop = _stop_on_signals()
    options = _options(
        args, heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
        context_ttl=args.context_ttl, allowed_modules=args.allow_module, unreachable_timeout=args.unreachable_timeout,
        metrics_port=args.metrics_port,
    )
    security = _security(args)
    server = Server(args.host, args.port, security)
    coordinator = Coordinator(server, Settings(
        security=security, heartbeat_interval=options.heartbeat_interval, heartbeat_timeout=options.heartbeat_timeout,
        context_ttl=options.context_ttl, transport=options.transport, allowed_modules=options.all_allowed_modules(),
        unreachable_timeout=options.unreachable_timeout,
    ))
    http = None
    if options.metrics_port is not None:  # before the gRPC server starts: a port it refuses stops nothing running
        from distautograd.runtime import monitoring

        http = monitoring.serve(args.host, options.metrics_port, security, coordinator=coordinator)
        print(f"status page at http://{args.host}:{http.port}/ (metrics at /metrics)", flush=True)
    server.start()
    print(f"coordinator ready at {args.host}:{server.port}", flush=True)
    _wait(stop)
    log.info("coordinator stopping")
    coordinator.stop()
    if http is not None:
        http.close()
    server.stop(grace=1.0)
    return 0


def cmd_worker(args) -> int:
    from distautograd import rpc

    stop = _stop_on_signals()
    options = _options(
        args,
        coordinator=args.coordinator,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        allowed_modules=args.allow_module,
        num_worker_threads=args.threads,
        rpc_timeout=args.rpc_timeout,
        heartbeat_interval=args.heartbeat_interval,
        context_ttl=args.context_ttl,
        transport=args.transport,
        shared_memory=args.shared_memory,
        max_message_bytes=args.max_message_bytes,
        peer_calls=args.peer_calls,
        peer_contexts=args.peer_contexts,
        peer_bytes=args.peer_bytes,
        peer_rrefs=args.peer_rrefs,
        init_timeout=args.init_timeout,
        metrics_port=args.metrics_port,
        daemon=True,
    )
    rpc.init_rpc(args.name, rank=args.rank, rpc_backend_options=options)
    info = rpc.get_worker_info()
    from distautograd.runtime import current

    print(f"worker {info.name} ready at {current.get().address} (rank {info.id})", flush=True)
    _wait(stop)
    log.info("worker %s stopping", info.name)
    rpc.shutdown(graceful=False)
    return 0


def cmd_status(args) -> int:
    import grpc

    from distautograd.protocol.v1 import messages_pb2 as pb
    from distautograd.protocol.v1.messages_pb2_grpc import CoordinatorStub
    from distautograd.transport import paths
    from distautograd.transport.grpc_server import channel

    sec = _security(args)
    with channel(args.coordinator, sec) as chan:
        try:
            if not sec.token:  # the world's token, as a process of the coordinator's user may fetch it
                endpoint = paths.coordinator_endpoint(chan, args.coordinator, args.timeout)
                paths.fetch_world_token(sec, endpoint, "distautograd-status")
            reply = CoordinatorStub(chan).Status(pb.StatusRequest(), metadata=sec.metadata(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"error: {args.coordinator}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"error: {args.coordinator}: {exc}", file=sys.stderr)
            return 1
    print(f"{'NAME':<20} {'RANK':>5}  {'ADDRESS':<28} {'LAST HEARTBEAT':>14}  {'CONTEXTS':>8} {'PASSES':>6}  "
          f"{'MESSAGES':<13}  ROLE")
    for w in reply.workers:
        role = "daemon" if w.worker.daemon else "member"
        if w.worker.unreachable:
            role += ", unreachable"
        print(f"{_safe(w.worker.name):<20} {w.worker.rank:>5}  {_safe(w.worker.address):<28} "
              f"{w.seconds_since_heartbeat:>12.1f} s  {w.contexts:>8} {w.passes:>6}  "
              f"{_safe(w.worker.message_path) or '?':<13}  {role}")
    print(f"\nopen contexts: {len(reply.contexts)}")
    for c in reply.contexts:
        leaves = ", ".join(f"rank {r}: {n}" for r, n in sorted(c.leaves_with_gradients.items())) or "none"
        print(
            f"  {c.context_id:#x}: participants {list(c.participants)}, passes {c.passes} "
            f"({c.passes_in_flight} in flight), leaves with gradients: {leaves}"
        )
    shares = [(w.worker.name, s) for w in reply.workers for s in w.shares]
    if shares:
        print("\npeer shares (what peers hold on a worker, of their per-peer limit):")
        for worker, s in shares:
            print(f"  {_safe(worker)}: {_safe(s.peer)} holds {s.used} of {s.limit} {_safe(s.resource)}")
    if reply.departed:
        print("\ndeparted:")
        for d in reply.departed[-10:]:
            print(f"  {_safe(d.name)} (rank {d.rank}) {'failed' if d.failed else 'left'}: {_safe(d.reason)}")
    return 0


def _safe(text: str, limit: int = 200) -> str:
    """Text a peer chose, as it may be printed on a terminal: no control characters, bounded."""
    text = text[:limit]
    return text if text.isprintable() else repr(text)


def cmd_health(args) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from distautograd.transport.grpc_server import channel

    with channel(args.address, _security(args)) as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_graph(args) -> int:
    """Writes a context's graph: from a JSON file saved before, or asked of the worker that owns it."""
    import json

    from distautograd.views import export

    if args.source:
        with open(args.source) as f:
            graph = json.load(f)
    else:
        if not (args.coordinator and args.context):
            raise ValueError("name a saved graph with --from FILE, or a running context with --coordinator and --context")
        graph = _graph_of_running_context(args)
    fmt = args.format or os.path.splitext(args.out)[1].lstrip(".") or "html"
    writers = {"html": export.to_html, "dot": export.to_dot, "json": export.to_json}
    if fmt not in writers:
        raise ValueError(f"unknown format {fmt!r}: use html, dot or json")
    with open(args.out, "w") as f:
        f.write(writers[fmt](graph))
    print(f"wrote the graph of {len(graph['nodes'])} nodes on {len(graph['workers'])} workers to {args.out}")
    return 0


def _graph_of_running_context(args) -> dict:
    from distautograd import rpc
    from distautograd.ids import rank_of
    from distautograd.runtime import inspection
    from distautograd.runtime.options import BackendOptions

    options = BackendOptions(coordinator=args.coordinator, daemon=True, rpc_timeout=args.timeout,
                             token=args.token or None)
    rpc.init_rpc(f"graph-tool-{os.getpid()}", rpc_backend_options=options)
    try:
        return rpc.rpc_sync(rank_of(args.context), inspection.whole_graph, args=(args.context,))
    finally:
        rpc.shutdown(graceful=False)


def cmd_demo(args) -> int:
    from distautograd.demo import main as demo_main

    return demo_main(steps=args.steps, check_every=args.check_every, trace=args.trace or "", graph=args.graph or "")


def _add_metrics_port(p, what: str) -> None:
    p.add_argument("--metrics-port", type=int, help=f"serve {what} over HTTP on this port, on the listen address "
                   "(0 = any free port; DISTAUTOGRAD_METRICS_PORT; default off). Beyond loopback it needs the token "
                   "as a bearer token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distautograd", description=__doc__)
    parser.add_argument("--log-level", default=_env("DISTAUTOGRAD_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("coordinator", help="run a standalone coordinator until SIGTERM")
    p.add_argument("--host", default=_env("DISTAUTOGRAD_HOST", "127.0.0.1"), help="listen address (DISTAUTOGRAD_HOST)")
    p.add_argument("--port", type=int, default=int(_env("DISTAUTOGRAD_PORT", "29500")), help="listen port (DISTAUTOGRAD_PORT)")
    p.add_argument("--heartbeat-interval", type=float, help="DISTAUTOGRAD_HEARTBEAT_INTERVAL; default 1 s")
    p.add_argument("--heartbeat-timeout", type=float, help="DISTAUTOGRAD_HEARTBEAT_TIMEOUT; default 10 s")
    p.add_argument("--unreachable-timeout", type=float,
                   help="seconds a worker may stay unreachable before it is dead (DISTAUTOGRAD_UNREACHABLE_TIMEOUT; 300)")
    p.add_argument("--context-ttl", type=float, help="DISTAUTOGRAD_CONTEXT_TTL; default 30 s")
    p.add_argument("--allow-module", action="append", default=[], help="module whose exception types may be rebuilt")
    _add_metrics_port(p, "metrics and the live status page")
    _add_security(p)
    p.set_defaults(run=cmd_coordinator)

    p = sub.add_parser("worker", help="run a worker that serves calls until SIGTERM")
    p.add_argument("--name", default=_env("DISTAUTOGRAD_NAME"), required=_env("DISTAUTOGRAD_NAME") is None)
    p.add_argument("--coordinator", default=_env("DISTAUTOGRAD_COORDINATOR"), required=_env("DISTAUTOGRAD_COORDINATOR") is None,
                   help="HOST:PORT of the coordinator (DISTAUTOGRAD_COORDINATOR)")
    p.add_argument("--rank", type=int, default=int(_env("RANK", "-1")), help="-1 lets the coordinator choose")
    p.add_argument("--host", default=_env("DISTAUTOGRAD_HOST", "127.0.0.1"), help="listen address (DISTAUTOGRAD_HOST)")
    p.add_argument("--port", type=int, default=int(_env("DISTAUTOGRAD_PORT", "0")), help="listen port, 0 = any free")
    p.add_argument("--advertise-host", default=_env("DISTAUTOGRAD_ADVERTISE_HOST"),
                   help="host others use to reach this worker (DISTAUTOGRAD_ADVERTISE_HOST)")
    p.add_argument("--allow-module", action="append", default=[],
                   help="module whose functions and classes callers may use (repeatable; adds to DISTAUTOGRAD_ALLOW_MODULES)")
    p.add_argument("--threads", type=int, help="threads running incoming calls (DISTAUTOGRAD_THREADS; default 16)")
    p.add_argument("--rpc-timeout", type=float, help="DISTAUTOGRAD_RPC_TIMEOUT; default 60 s")
    p.add_argument("--heartbeat-interval", type=float, help="DISTAUTOGRAD_HEARTBEAT_INTERVAL; default 1 s")
    p.add_argument("--context-ttl", type=float, help="DISTAUTOGRAD_CONTEXT_TTL; default 30 s")
    p.add_argument("--transport", choices=["auto", "tcp", "grpc"], help="DISTAUTOGRAD_TRANSPORT; default auto")
    p.add_argument("--shared-memory", type=_on_off, help="on or off (DISTAUTOGRAD_SHARED_MEMORY; default on)")
    p.add_argument("--max-message-bytes", type=int, help="DISTAUTOGRAD_MAX_MESSAGE_BYTES; default 4 GiB")
    p.add_argument("--peer-calls", type=int, help="requests one peer may have waiting or running here "
                   "(DISTAUTOGRAD_PEER_CALLS; default 4096)")
    p.add_argument("--peer-rrefs", type=int, help="RRefs one peer may hold to values here "
                   "(DISTAUTOGRAD_PEER_RREFS; default 65536)")
    p.add_argument("--peer-bytes", type=int, help="bytes of tensors one peer's requests may hold here "
                   "(DISTAUTOGRAD_PEER_BYTES; default 8 GiB)")
    p.add_argument("--peer-contexts", type=int, help="autograd contexts one peer may bring here "
                   "(DISTAUTOGRAD_PEER_CONTEXTS; default 65536)")
    p.add_argument("--init-timeout", type=float, help="seconds to wait for the coordinator; default the rpc timeout")
    _add_metrics_port(p, "metrics")
    _add_security(p)
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("status", help="print the workers and open contexts a coordinator knows")
    p.add_argument("--coordinator", default=_env("DISTAUTOGRAD_COORDINATOR"), required=_env("DISTAUTOGRAD_COORDINATOR") is None)
    p.add_argument("--timeout", type=float, default=5.0)
    _add_security(p)
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("health", help="standard gRPC health check; exit 0 when SERVING")
    p.add_argument("address", help="HOST:PORT")
    p.add_argument("--service", default="", help="service name; empty = the whole process")
    p.add_argument("--timeout", type=float, default=3.0)
    _add_security(p)
    p.set_defaults(run=cmd_health)

    p = sub.add_parser("graph", help="write a context's backward graph as an HTML page, DOT or JSON")
    p.add_argument("--out", required=True, help="the file to write; its extension picks the format")
    p.add_argument("--format", choices=["html", "dot", "json"], help="html, dot or json (default: from --out)")
    p.add_argument("--from", dest="source", help="a graph saved as JSON (dist_autograd.graph, or --format json)")
    p.add_argument("--coordinator", default=_env("DISTAUTOGRAD_COORDINATOR"), help="a running cluster's coordinator")
    p.add_argument("--context", type=int, help="the id of an open context (its owner is asked)")
    p.add_argument("--timeout", type=float, default=30.0)
    _add_security(p)
    p.set_defaults(run=cmd_graph)

    p = sub.add_parser("demo", help="train a 3-stage MLP across local workers and check its gradients")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--check-every", type=int, default=50)
    p.add_argument("--trace", help="write one more step's trace here (.json: Chrome trace / Perfetto; .html: a timeline)")
    p.add_argument("--graph", help="write one step's backward graph here (.html page, .dot or .json)")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        return args.run(args) or 0
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

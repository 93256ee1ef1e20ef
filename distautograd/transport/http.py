"""The process's HTTP port for operators: Prometheus metrics at /metrics, and pages the owner adds (the coordinator's status).

Off unless asked (``metrics_port``). With a configured token, or bound beyond loopback, it answers
only requests carrying the token: as a bearer token (``Authorization: Bearer <token>``, which
Prometheus's scrape config sends with ``authorization``) or as the password of basic auth (a
browser asks for it). On loopback without a configured token (the embedded default) it answers any
process of this host — other users' too — that names it as localhost (a web page elsewhere cannot
reach it by DNS rebinding). Beyond loopback it will not start without a token, nor while the RPC
ports use TLS (this plain HTTP would carry the token in the clear).
"""

from __future__ import annotations

import base64
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from distautograd import errors, metrics
from distautograd.transport.security import Security, is_loopback, token_matches

log = logging.getLogger("distautograd")

HANDLER_SECONDS = 10.0
Page = Tuple[int, str, bytes]  # status, content type, body
Route = Callable[[str], Page]  # called with the path after the route's prefix


class HttpServer:
    """Serves /metrics and the routes added with ``route``; each request on a thread of its own."""

    def __init__(self, host: str, port: int, security: Security):
        self.loopback = is_loopback(host)
        self.needs_token = not self.loopback or security.configured_token
        if not self.loopback and not security.token:
            raise errors.InvalidArgument(
                f"the metrics port would listen on {host}, beyond loopback, without a token: set DISTAUTOGRAD_TOKEN "
                "(scrapers send it as a bearer token), or listen on 127.0.0.1")
        if not self.loopback and security.tls:
            raise errors.InvalidArgument(
                f"the metrics port would send the token in the clear on {host} while the RPC ports use TLS: listen on "
                "127.0.0.1 (and scrape from this host), or run without TLS")
        self._token = security.token
        self._routes: Dict[str, Route] = {"/metrics": _metrics}
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = HANDLER_SECONDS  # a client that sends nothing does not keep its thread

            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                server._answer(self)

            def log_message(self, format, *args) -> None:  # noqa: A002 (the standard library's name)
                log.debug("http: " + format, *args)

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.host, self.port = host, self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="distautograd-http", daemon=True)
        self._thread.start()
        metrics.serving(+1)
        log.info("metrics at http://%s:%d/metrics%s", host, self.port, " (bearer token required)" if self.needs_token else "")

    def route(self, prefix: str, handler: Route) -> None:
        """Serves GET requests whose path starts with ``prefix`` ("/" matches only "/" itself)."""
        self._routes[prefix] = handler

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if self.loopback and not _loopback_name(request.headers.get("Host", "")):
            # a page elsewhere whose name now points here (DNS rebinding) reads nothing
            self._send(request, (403, "text/plain; charset=utf-8", b"ask for this port as localhost or 127.0.0.1\n"))
            return
        if self.needs_token and not self._authorized(request.headers.get("Authorization", "")):
            self._send(request, (401, "text/plain; charset=utf-8",
                                 b"send the deployment's token: Authorization: Bearer <DISTAUTOGRAD_TOKEN>, or in a "
                                 b"browser any user name with the token as the password\n"),
                       {"WWW-Authenticate": 'Basic realm="distautograd: any user name, the token as password"'})
            return
        prefix = path if path in self._routes else next(
            (p for p in sorted(self._routes, key=len, reverse=True) if p != "/" and p.endswith("/") and
             path.startswith(p)), None)
        if prefix is None:
            self._send(request, (404, "text/plain; charset=utf-8",
                                 f"no page at {path}; try {', '.join(sorted(self._routes))}\n".encode()))
            return
        try:
            page = self._routes[prefix](path[len(prefix):])
        except errors.RpcError as exc:
            page = (404 if isinstance(exc, errors.NotFound) else 503, "text/plain; charset=utf-8", f"{exc}\n".encode())
        except Exception as exc:  # a page that fails says why; the server goes on serving
            log.exception("http: %s failed", path)
            page = (500, "text/plain; charset=utf-8", f"{type(exc).__name__}: {exc}\n".encode())
        self._send(request, page)

    def _authorized(self, header: str) -> bool:
        """The token as a bearer token (scrapers), or as the password of basic auth (a browser asks for
        it; any user name)."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(given.strip(), validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return token_matches(given.strip(), self._token)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, page: Page, headers: Optional[Dict[str, str]] = None) -> None:
        status, kind, body = page
        try:
            request.send_response(status)
            request.send_header("Content-Type", kind)
            request.send_header("Content-Length", str(len(body)))
            request.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the client went away

    def close(self) -> None:
        metrics.serving(-1)
        self._http.shutdown()
        self._http.server_close()


def _loopback_name(host_header: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return host.strip("[]").lower() in ("localhost", "127.0.0.1", "::1", "")


def _metrics(_: str) -> Page:
    return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY)

"""Who may talk to a process: settled once per connection, before any message is read.

Beyond loopback, every connection presents a shared token (configured), and TLS or mutual TLS
where configured. On loopback with no token configured, the coordinator makes one for the world
and hands it only to processes of the same OS user, over its Unix socket (whose peer credentials
the kernel vouches for); every TCP and gRPC connection must present it. So no other local user
gets in, and nobody has to set anything up.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Optional

import grpc

TOKEN_ENV = "DISTAUTOGRAD_TOKEN"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Where to find the coordinator's Unix socket (and, with no token configured, the token it hands out
# there): open to callers on this host; from elsewhere only with the token.
LOOPBACK_OPEN_METHODS = ("/distautograd.v1.Coordinator/GetEndpoints",)
WRONG_TOKEN = f"missing or wrong token: every process of a deployment must share the same {TOKEN_ENV}"
# Tokens printed in documentation and example files: anyone can read them, so they guard nothing.
PUBLISHED_TOKENS = frozenset({"change-me-before-you-deploy"})


def token_matches(given: str, expected: Optional[str]) -> bool:
    """Constant-time comparison, so timing does not leak how much of a guess was right."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def peer_uid(sock: socket.socket) -> Optional[int]:
    """The OS user of the process at the other end of a Unix socket, as the kernel knows it."""
    if sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


@dataclass
class Security:
    """The credentials a process presents and demands.

    token: a shared secret every process of the deployment knows; required to listen beyond
        loopback. Without one, the world's token is made by its coordinator (``generated``).
    tls_cert / tls_key: this process's certificate and key (PEM files); turns TLS on.
    tls_ca: the CA that signs peers' certificates; on a server it makes client certificates
        mandatory (mutual TLS), on a client it is what the server's certificate is checked against.
    tls_server_name: the name clients expect in server certificates, when it differs from the host.
    """

    token: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_server_name: Optional[str] = None
    generated: bool = False

    @property
    def configured_token(self) -> bool:
        return bool(self.token) and not self.generated

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_ca)

    def check_bind(self, host: str) -> None:
        if is_loopback(host):
            return
        if not self.configured_token:
            raise ValueError(
                f"refusing to listen on {host} without a shared token: anyone who can reach it could run "
                f"code here. Set the same {TOKEN_ENV} (or --token, or BackendOptions(token=...)) on every "
                f"process, or listen on 127.0.0.1."
            )
        if self.token in PUBLISHED_TOKENS:
            raise ValueError(
                f"refusing to listen on {host} with the token printed in the documentation and example files: "
                f"anyone can read it. Set {TOKEN_ENV} to a secret of your own, e.g. `openssl rand -hex 32`."
            )

    def make_world_token(self) -> None:
        """Called by a coordinator on loopback with no token configured."""
        if not self.token:
            self.token = secrets.token_hex(32)
            self.generated = True

    def adopt_world_token(self, token: str) -> None:
        """The token the coordinator handed over (see module)."""
        if not self.token and token:
            self.token = token
            self.generated = True

    def forget_world_token(self) -> None:
        """The coordinator that made the world's token is gone: its next life makes another."""
        if self.generated:
            self.token = None
            self.generated = False

    def welcome_token(self) -> str:
        """What a same-user peer on a Unix socket is told: the world's token, if it was made, not configured."""
        return self.token if self.generated and self.token else ""

    def metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def server_credentials(self) -> Optional[grpc.ServerCredentials]:
        if not self.tls:
            return None
        if not (self.tls_cert and self.tls_key):
            raise ValueError("TLS on a server needs both tls_cert and tls_key")
        ca = _read(self.tls_ca)
        return grpc.ssl_server_credentials(
            [(_read(self.tls_key), _read(self.tls_cert))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def channel_credentials(self) -> Optional[grpc.ChannelCredentials]:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca),
            private_key=_read(self.tls_key) if self.tls_key else None,
            certificate_chain=_read(self.tls_cert) if self.tls_cert else None,
        )

    def channel_options(self) -> list:
        if self.tls and self.tls_server_name:
            return [("grpc.ssl_target_name_override", self.tls_server_name)]
        return []

    @classmethod
    def from_env(cls, **overrides) -> "Security":
        values = {
            "token": os.environ.get(TOKEN_ENV) or None,
            "tls_cert": os.environ.get("DISTAUTOGRAD_TLS_CERT") or None,
            "tls_key": os.environ.get("DISTAUTOGRAD_TLS_KEY") or None,
            "tls_ca": os.environ.get("DISTAUTOGRAD_TLS_CA") or None,
            "tls_server_name": os.environ.get("DISTAUTOGRAD_TLS_SERVER_NAME") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_loopback_peer(peer: str) -> bool:
    """True for a gRPC peer string (``context.peer()``) of a caller on this host's loopback."""
    kind, _, address = urllib.parse.unquote(peer or "").partition(":")  # gRPC writes [::1] as %5B::1%5D
    host = address.rpartition(":")[0].strip("[]").removeprefix("::ffff:")
    return kind == "unix" or host.startswith("127.") or (kind == "ipv6" and host == "::1")


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call without the world's token with UNAUTHENTICATED; health checks stay open for
    probes, and the coordinator's endpoints for callers on this host (to find the Unix socket)."""

    def __init__(self, security: Security):
        self._security = security

    def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        expected = f"Bearer {self._security.token}" if self._security.token else None
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and token_matches(str(value), expected):
                return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        if details.method in LOOPBACK_OPEN_METHODS and not handler.request_streaming:
            serve = handler.unary_unary

            def local_only(request, context):
                if not is_loopback_peer(context.peer()):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN + " (only callers on the "
                                  "coordinator's host may ask for its endpoints without it)")
                return serve(request, context)

            return grpc.unary_unary_rpc_method_handler(local_only, handler.request_deserializer,
                                                       handler.response_serializer)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN)

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return make(deny, handler.request_deserializer, handler.response_serializer)

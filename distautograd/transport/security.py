"""Who may talk to a process: the shared token, TLS and mutual TLS, and the rule that only loopback may go without."""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

import grpc

TOKEN_ENV = "DISTAUTOGRAD_TOKEN"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
WRONG_TOKEN = f"missing or wrong token: every process of a deployment must share the same {TOKEN_ENV}"


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class Security:
    """The credentials a process presents and demands.

    token: a shared secret every process of the deployment knows; required to listen beyond loopback.
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

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_ca)

    def check_bind(self, host: str) -> None:
        if not is_loopback(host) and not self.token:
            raise ValueError(
                f"refusing to listen on {host} without a shared token: anyone who can reach it could run "
                f"code here. Set the same {TOKEN_ENV} (or --token, or BackendOptions(token=...)) on every "
                f"process, or listen on 127.0.0.1."
            )

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


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call without the shared token with UNAUTHENTICATED; health checks stay open for probes."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

    def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and token_matches(str(value), self._expected):
                return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN)

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return make(deny, handler.request_deserializer, handler.response_serializer)

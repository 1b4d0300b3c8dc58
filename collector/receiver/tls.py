"""TLS for the OTLP receiver: one certificate chain and private key (PEM files) for HTTP and gRPC.

Both set: OTLP/HTTP is served as HTTPS and OTLP/gRPC with server-side TLS, on the same
ports; a plain-text client is refused. Neither set: plain text, as before. One without
the other is a configuration mistake and stops the receiver at start, rather than
serving plain text to clients that meant to encrypt.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ServerTLS:
    cert_file: str
    key_file: str

    @classmethod
    def from_files(cls, cert_file: str | None, key_file: str | None) -> ServerTLS | None:
        """The TLS to serve with, None for plain text; refuses half a configuration or unreadable files."""
        if not cert_file and not key_file:
            return None
        if not cert_file or not key_file:
            raise ValueError("TLS needs both a certificate (AGENTWATCH_TLS_CERT) and its private key "
                             "(AGENTWATCH_TLS_KEY); only one is set")
        tls = cls(cert_file, key_file)
        tls.http_context()  # a wrong path or a key that does not match the certificate fails here, at start
        return tls

    def http_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        return grpc.ssl_server_credentials([pair])

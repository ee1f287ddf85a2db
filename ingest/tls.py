"""The edge's TLS: one certificate for gRPC and HTTP, optionally a client CA (mutual TLS).

Certificates are read once at start; rotating them is a rolling restart.
"""

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pulse.errors import ConfigError
from pulse.settings import IngestSettings


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the server's chain and key, and the CA that signs client certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @classmethod
    def of(cls, settings: IngestSettings) -> "TlsFiles | None":
        """The configured files, checked (ConfigError names a file that is wrong)."""
        if not settings.tls_cert_file:
            return None
        files = cls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        files.check()
        return files

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials; with a client CA, a client without a certificate it signed
        fails the handshake."""
        client_ca = _read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(_read(self.key_file), _read(self.cert_file))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """The same for uvicorn's `Config`."""
        options: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.client_ca_file:
            options |= {"ssl_ca_certs": self.client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options

    def check(self) -> None:
        """Load the pair and the CA once, so a wrong file stops the edge with one line."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(self.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            msg = f"TLS files ({self.cert_file}, {self.key_file}): {exc}"
            raise ConfigError(msg) from None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"TLS file {path}: {exc.strerror}") from None

"""Settings: environment variables AGENTWATCH_*, else an agentwatch.toml, else laptop defaults.

The toml file is looked up at $AGENTWATCH_CONFIG, else ./agentwatch.toml; its
keys are the setting names below in lower case (e.g. `otlp_http_port = 4318`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from agentwatch.schemas.store import default_data_dir


@dataclass
class Settings:
    clickhouse_dsn: str = ""  # empty: the embedded store under data_dir
    # A ClickHouse cluster name: migrations render ON CLUSTER with Replicated and Distributed tables.
    clickhouse_cluster: str = ""
    # On a cluster, the node detector shard k reads (one node of cluster shard k+1, `{shard}` standing for k);
    # empty: clickhouse_dsn (detectors/cluster_shard.py).
    detector_clickhouse_dsn: str = ""
    database: str = "agentwatch"
    data_dir: str = ""
    listen_host: str = "127.0.0.1"
    otlp_http_port: int = 4318
    otlp_grpc_port: int = 4317
    max_request_bytes: int = 64 << 20
    max_queue_bytes: int = 512 << 20
    max_converting_bytes: int = 128 << 20
    # The resident memory the receiver's process may hold; it refuses new requests (503) from this less the
    # spike headroom on (0: a fifth of it, at least 160 MiB). 0: no limit.
    max_memory_bytes: int = 0
    max_memory_spike_bytes: int = 0
    # The receiver's write-ahead spool, on a local disk: empty is data_dir/spool;
    # "off" answers requests once queued in memory (lost if the process dies).
    spool_dir: str = ""
    # The OTLP receiver (HTTP and gRPC) and the dashboard serve TLS with this PEM certificate chain and key
    # (both, or neither).
    tls_cert: str = ""
    tls_key: str = ""
    # Credential material found in captured payloads is flagged (secret_exposure) and, with "redact",
    # stored as a marker naming its type and fingerprint; "keep" stores it as sent.
    secrets: str = "redact"
    # Days each data class is kept (schemas/retention.py applies them as TTLs at start); 0 keeps it forever.
    retention_payload_days: int = 0
    retention_spans_days: int = 0
    retention_metrics_days: int = 0
    retention_anomalies_days: int = 0
    retention_audit_days: int = 0
    # Signed halt/release links in alerts: the receiver's public base URL, and the key that signs them.
    actions_url: str = ""
    actions_key: str = ""
    dashboard_port: int = 8501
    dashboard_url: str = "http://localhost:8501"
    # Dashboard sign-in (dashboard/auth.py), needed to listen beyond loopback: OpenID Connect ...
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_redirect_uri: str = ""  # empty: dashboard_url + /oauth2callback
    oidc_cookie_secret: str = ""  # empty: a random one per process (sign-ins end at a restart)
    oidc_roles_claim: str = ""  # id_token claims granting the role and the tenants; empty: not read
    oidc_tenants_claim: str = ""
    # ... or an auth proxy in front: the header carrying the user, honoured from these addresses/CIDRs only.
    trusted_proxy_header: str = ""
    trusted_proxies: str = ""
    dashboard_users: str = ""  # a TOML or JSON file: user -> role, tenants (overrides the claims)

    @property
    def spool_path(self) -> str | None:
        if self.spool_dir == "off":
            return None
        return self.spool_dir or str(Path(self.data_dir) / "spool")

    @property
    def dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{Path(self.data_dir) / 'clickhouse'}"


def load(path: str | None = None) -> Settings:
    settings = Settings(data_dir=str(default_data_dir()))
    toml_path = Path(path or os.environ.get("AGENTWATCH_CONFIG") or "agentwatch.toml")
    values: dict = {}
    if toml_path.is_file():
        values.update(tomllib.loads(toml_path.read_text()))
    for field in fields(Settings):
        env = os.environ.get(f"AGENTWATCH_{field.name.upper()}")
        if env is not None:
            values[field.name] = env
    for field in fields(Settings):
        if field.name in values:
            value = values[field.name]
            setattr(settings, field.name, int(value) if field.type == "int" else str(value))
    return settings

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
    database: str = "agentwatch"
    data_dir: str = ""
    listen_host: str = "127.0.0.1"
    otlp_http_port: int = 4318
    otlp_grpc_port: int = 4317
    max_request_bytes: int = 64 << 20
    max_queue_bytes: int = 512 << 20
    max_converting_bytes: int = 128 << 20
    # The receiver's write-ahead spool, on a local disk: empty is data_dir/spool;
    # "off" answers requests once queued in memory (lost if the process dies).
    spool_dir: str = ""
    dashboard_port: int = 8501
    dashboard_url: str = "http://localhost:8501"

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

"""The store: one clickhouse-connect client, embedded (chDB) or served, from a DSN.

`AGENTWATCH_CLICKHOUSE_DSN` picks it: `chdb://<dir>` (the default, under the
data directory) runs ClickHouse in this process; `http(s)://user:pw@host:8123/db`
talks to a server. Same SQL on both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "agentwatch"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_data_dir() -> Path:
    explicit = os.environ.get("AGENTWATCH_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "agentwatch"


def default_dsn() -> str:
    return os.environ.get("AGENTWATCH_CLICKHOUSE_DSN") or f"chdb://{default_data_dir() / 'clickhouse'}"


def database_name(dsn: str | None = None, database: str | None = None) -> str:
    """Explicit name, else AGENTWATCH_DATABASE, else a server DSN's path, else `agentwatch`."""
    name = database or os.environ.get("AGENTWATCH_DATABASE")
    if not name and dsn and not is_embedded(dsn):
        name = urlparse(dsn).path.strip("/").split("/")[0] or None
    name = name or DEFAULT_DATABASE
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r} must be letters, digits and underscores")
    return name


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def _embedded_path(dsn: str) -> str:
    # chdb://relative/dir and chdb:///abs/dir both name a directory on disk.
    rest = dsn[len("chdb://"):] if dsn.startswith("chdb://") else dsn[len("chdb:"):]
    return rest.split("?", 1)[0]


MEMORY_ENV = "AGENTWATCH_EMBEDDED_MAX_MEMORY"


def embedded_options() -> dict[str, str]:
    """Startup settings of the embedded engine (they take effect when the process first opens it).

    `AGENTWATCH_EMBEDDED_MAX_MEMORY` (bytes, or with a K/M/G suffix) caps what the engine may hold
    (`max_server_memory_usage`): past it, a query or insert fails with a memory error instead of the
    process growing (the receiver's writer retries from its spool; the detectors retry their pass).
    """
    limit = os.environ.get(MEMORY_ENV, "").strip()
    if not limit:
        return {}
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number = int(limit[:-1]) * units[limit[-1].upper()] if limit[-1].upper() in units else int(limit)
    return {"max_server_memory_usage": str(number)}


def connect(dsn: str | None = None, database: str | None = None, create: bool = True) -> Client:
    """A client on the store, its default database set (and created if asked)."""
    dsn = dsn or default_dsn()
    name = database_name(dsn, database)
    if is_embedded(dsn):
        path = _embedded_path(dsn)
        if path and path not in ("memory", ":memory:"):
            Path(path).mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(interface="chdb", path=path, chdb_options=embedded_options())
        else:
            client = clickhouse_connect.get_client(interface="chdb", chdb_options=embedded_options())
    else:
        parsed = urlparse(dsn)
        # Connect to `default` first: the agentwatch database may not exist yet.
        client = clickhouse_connect.get_client(dsn=parsed._replace(path="/default").geturl())
    if create:
        client.command(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    client.database = name
    return client


def close_quietly(client: Client | None) -> None:
    """Close a connection that may already be broken (a reader about to reconnect): best effort."""
    if client is None:
        return
    try:
        client.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
        pass

"""The store: one clickhouse-connect client, embedded (chDB) or served, from a DSN.

`AGENTWATCH_CLICKHOUSE_DSN` picks it: `chdb://<dir>` (the default, under the
data directory) runs ClickHouse in this process; `http(s)://user:pw@host:8123/db`
talks to a server. Same SQL on both.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "agentwatch"
log = logging.getLogger(__name__)
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
DIRTY_DECAY_ENV = "AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS"
_ALLOCATOR_ENV = "JE_MALLOC_CONF"  # what the embedded engine's jemalloc reads (not MALLOC_CONF)
_allocator_warned = False


def _allocator_options() -> None:
    """Have the embedded engine's allocator hand freed memory back to the system at once.

    The engine's jemalloc keeps pages its inserts freed for `dirty_decay_ms` (5 s as built) before
    returning them. Under a steady stream of large inserts (each into the traces table and its views)
    that is hundreds of MB the process holds and nothing uses: measured under 3x overload, jemalloc's
    resident memory ran up to 480 MB above what it had allocated. `AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS`
    (default 0: at once) sets it. jemalloc reads its options once, when the engine's library is loaded
    (the first embedded connection of the process), from `JE_MALLOC_CONF`; they are added there unless
    that variable already names `dirty_decay_ms`. A process that loaded the engine before cannot change
    them: it says so once.
    """
    global _allocator_warned
    decay = os.environ.get(DIRTY_DECAY_ENV, "0").strip()
    if not decay or decay == "-":  # "" or "-": leave the engine's allocator as built
        return
    if not re.fullmatch(r"-?\d+", decay):
        raise ValueError(f"{DIRTY_DECAY_ENV}={decay!r}: milliseconds expected (-1: never return pages)")
    current = os.environ.get(_ALLOCATOR_ENV, "")
    if "dirty_decay_ms" in current:
        return  # set by hand: that wins
    if "chdb" in sys.modules:  # the engine's library is loaded: too late to configure its allocator
        if not _allocator_warned and f"dirty_decay_ms:{decay}" not in current:
            _allocator_warned = True
            log.warning("%s: the embedded engine was loaded before the store was opened; its allocator keeps "
                        "freed memory as built", DIRTY_DECAY_ENV)
        return
    os.environ[_ALLOCATOR_ENV] = ",".join(filter(None, [current, f"dirty_decay_ms:{decay}"]))


def embedded_options() -> dict[str, str]:
    """Startup settings of the embedded engine (they take effect when the process first opens it).

    `AGENTWATCH_EMBEDDED_MAX_MEMORY` (bytes, or with a K/M/G suffix) caps what the engine may hold
    (`max_server_memory_usage`): past it, a query or insert fails with a memory error instead of the
    process growing (the receiver's writer retries from its spool; the detectors retry their pass).
    An insert needs about four times its batch in the engine (a 64 MiB batch through the traces table
    and its views: ~258 MB); a batch that never fits would be refused on every retry, so the receiver
    writes batches of at most an eighth of the cap (`insert_batch_bytes`).

    `AGENTWATCH_EMBEDDED_DIRTY_DECAY_MS` (default 0) is how long the engine's allocator keeps memory
    freed by its inserts before handing it back to the system (see `_allocator_options`); "-" leaves it
    as built (5000).
    """
    _allocator_options()
    cap = embedded_memory_cap()
    return {"max_server_memory_usage": str(cap)} if cap else {}


def embedded_memory_cap() -> int | None:
    """`AGENTWATCH_EMBEDDED_MAX_MEMORY` in bytes (None: unset)."""
    limit = os.environ.get(MEMORY_ENV, "").strip()
    if not limit:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(limit[:-1]) * units[limit[-1].upper()] if limit[-1].upper() in units else int(limit)


def insert_batch_bytes(dsn: str, default: int = 64 << 20) -> int:
    """The largest batch the receiver should insert at once into this store: on an embedded engine with a
    memory cap, an eighth of it (an insert needs about four times its batch), so no batch is too big to fit.

    >>> os.environ[MEMORY_ENV] = "256M"; insert_batch_bytes("chdb:///tmp/x") >> 20, insert_batch_bytes("http://h")
    (32, 67108864)
    >>> del os.environ[MEMORY_ENV]
    """
    cap = embedded_memory_cap() if is_embedded(dsn) else None
    return max(1 << 20, min(default, cap // 8)) if cap else default


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

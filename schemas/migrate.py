"""Versioned, idempotent migrations: schemas/sql/NNNN_name.sql, applied in order.

Each file's statements use IF NOT EXISTS, so a run interrupted half way is
simply run again. `schema_migrations` records what ran and the file's checksum.
With a cluster name (`AGENTWATCH_CLICKHOUSE_CLUSTER`) every statement is
rendered for the cluster first (see cluster.py); `render` prints either form.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from agentwatch.schemas import cluster as cluster_form
from agentwatch.schemas.attributes import sql_templates

log = logging.getLogger(__name__)

CLUSTER_ENV = "AGENTWATCH_CLICKHOUSE_CLUSTER"
BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ("
    "Version UInt32, Name String, Checksum String, AppliedAt DateTime64(3) DEFAULT now64(3)"
    ") ENGINE = ReplacingMergeTree(AppliedAt) ORDER BY Version"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, database: str, cluster: str = "") -> list[str]:
        # {db} names the database in SQL; {database} is its bare name, for names inside string literals
        # (a dictionary's source query, dictGet's first argument).
        rendered = self.text.format_map({"db": f"`{database}`", "database": database, **sql_templates()})
        statements = []
        for chunk in rendered.split(";\n"):
            body = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
            if body:
                statements.append(body.rstrip(";"))
        return cluster_form.render(statements, database, cluster) if cluster else statements


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("agentwatch.schemas").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def preamble(database: str, cluster: str = "") -> list[str]:
    """The database and the schema_migrations table, before any migration."""
    statements = [f"CREATE DATABASE IF NOT EXISTS `{database}`", BOOKKEEPING.format(db=f"`{database}`")]
    return cluster_form.render(statements, database, cluster) if cluster else statements


def render(database: str, cluster: str = "") -> str:
    """Every statement `apply` runs on a fresh database, as SQL text for review."""
    target = f"cluster '{cluster}'" if cluster else "a single server"
    parts = [f"-- agentwatch schema for database `{database}` on {target}\n\n"]
    parts += [statement + ";\n\n" for statement in preamble(database, cluster)]
    for migration in migrations():
        statements = migration.statements(database, cluster)
        parts.append(f"-- {migration.version:04d}_{migration.name}" + ("" if statements else ": nothing to run here")
                     + "\n\n")
        parts += [statement + ";\n\n" for statement in statements]
    return "".join(parts)


def apply(client: Client, database: str | None = None, cluster: str | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied.

    `cluster`: render for this ClickHouse cluster; None reads AGENTWATCH_CLICKHOUSE_CLUSTER,
    "" is a single server.
    """
    database = database or client.database
    cluster = os.environ.get(CLUSTER_ENV, "") if cluster is None else cluster
    settings = cluster_form.SETTINGS if cluster else None
    _check_layout(client, database, cluster)
    for statement in preamble(database, cluster):
        client.command(statement, settings=settings)
    done = dict(client.query(f"SELECT Version, Checksum FROM `{database}`.schema_migrations FINAL").result_rows)
    applied = []
    for migration in migrations():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                log.warning("migration %04d_%s changed after it was applied; add a new migration instead",
                            migration.version, migration.name)
            continue
        for statement in migration.statements(database, cluster):
            client.command(statement, settings=settings)
        client.insert(f"`{database}`.schema_migrations", [[migration.version, migration.name, migration.checksum]],
                      column_names=["Version", "Name", "Checksum"], settings=settings)
        applied.append(f"{migration.version:04d}_{migration.name}")
        log.info("applied migration %04d_%s to %s", migration.version, migration.name, database)
    return applied


def _check_layout(client: Client, database: str, cluster: str) -> None:
    """Refuse to mix the two renderings in one database (schema_migrations shows which it has)."""
    rows = client.query("SELECT engine FROM system.tables WHERE database = {d:String} AND name = 'schema_migrations'",
                        parameters={"d": database}).result_rows
    if rows and (rows[0][0] == "Distributed") != bool(cluster):
        held = "the cluster schema" if rows[0][0] == "Distributed" else "the single-server schema"
        wanted = f"cluster {cluster!r}" if cluster else f"a single server ({CLUSTER_ENV} is not set)"
        raise RuntimeError(f"database {database} holds {held}; migrations were asked to render for {wanted}")

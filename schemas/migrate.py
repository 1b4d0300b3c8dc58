"""Versioned, idempotent migrations: schemas/sql/NNNN_name.sql, applied in order.

Each file's statements use IF NOT EXISTS, so a run interrupted half way is
simply run again. `schema_migrations` records what ran and the file's checksum.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from agentwatch.schemas.attributes import sql_templates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        rendered = self.text.format_map({"db": f"`{database}`", **sql_templates()})
        statements = []
        for chunk in rendered.split(";\n"):
            body = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--")).strip()
            if body:
                statements.append(body.rstrip(";"))
        return statements


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("agentwatch.schemas").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def apply(client: Client, database: str | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied."""
    database = database or client.database
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations ("
        "Version UInt32, Name String, Checksum String, AppliedAt DateTime64(3) DEFAULT now64(3)"
        ") ENGINE = ReplacingMergeTree(AppliedAt) ORDER BY Version"
    )
    done = dict(client.query(f"SELECT Version, Checksum FROM `{database}`.schema_migrations FINAL").result_rows)
    applied = []
    for migration in migrations():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                log.warning("migration %04d_%s changed after it was applied; add a new migration instead",
                            migration.version, migration.name)
            continue
        for statement in migration.statements(database):
            client.command(statement)
        client.insert(f"`{database}`.schema_migrations", [[migration.version, migration.name, migration.checksum]],
                      column_names=["Version", "Name", "Checksum"])
        applied.append(f"{migration.version:04d}_{migration.name}")
        log.info("applied migration %04d_%s to %s", migration.version, migration.name, database)
    return applied

"""Retention: how long each class of data is kept, applied as ClickHouse TTLs from the settings.

A migration is static SQL and a retention period is configuration, so the TTLs are not
written in a migration: `apply` runs at start (after the migrations, in `agentwatch up`,
`collector`, `detect`, `dashboard` and `schema apply`) and sets each table's TTL from
`AGENTWATCH_RETENTION_<CLASS>_DAYS` with ALTER TABLE ... MODIFY TTL. It records what it set
in `retention_ttls` (migration 0013) and changes a TTL only when its setting changed: a new
TTL is materialized by rewriting the table's parts, in the background.

Every class defaults to 0, keep forever: without settings nothing changes (no TTL is set).
Setting a class back to 0 removes the TTLs agentwatch set for it.

Payload text is kept apart from the rows that describe spans: the raw OTel span and log rows
(which hold the text) expire after `payload` days, and the short attribute values the replay
index copies lose their values then too (a column TTL), while typed span rows, rollups and
the replay index's rows live for `spans` days. A raw span row is a span row as well, so it is
kept no longer than either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from agentwatch.schemas import cluster as cluster_form
from agentwatch.schemas.vocabulary import RETENTION_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One TTL: a table's rows (column '') or one column's values, timed by `time` (a SQL expression)."""

    table: str
    time: str
    classes: tuple[str, ...]  # kept for the shortest of these classes' periods that is set
    column: str = ""

    def days(self, periods: Mapping[str, int]) -> int:
        set_days = [periods.get(c, 0) for c in self.classes if periods.get(c, 0) > 0]
        return min(set_days, default=0)

    def expression(self, days: int) -> str:
        return f"toDateTime({self.time}) + INTERVAL {days} DAY" if days else ""

    def statement(self, database: str, days: int) -> str:
        table = f"`{database}`.{self.table}"
        if self.column:
            ttl = f"TTL {self.expression(days)}" if days else "REMOVE TTL"
            return f"ALTER TABLE {table} MODIFY COLUMN `{self.column}` {ttl}"
        return f"ALTER TABLE {table} MODIFY TTL {self.expression(days)}" if days else f"ALTER TABLE {table} REMOVE TTL"


SPAN_CLASSES = ("payload", "spans")
TARGETS = (
    # payload text (and span rows): the raw OTel rows
    Target("otel_traces", "Timestamp", SPAN_CLASSES),
    Target("otel_logs", "TimestampTime", SPAN_CLASSES),
    # the replay index keeps its rows for `spans`, its copies of short attribute values for `payload`
    Target("trace_span_index", "Timestamp", ("spans",)),
    Target("trace_span_index", "Timestamp", ("payload",), column="Attributes"),
    Target("trace_span_index", "Timestamp", ("payload",), column="Events.Attributes"),
    # typed span rows and the rollups made from them
    Target("agent_spans", "Timestamp", ("spans",)),
    Target("credential_events", "Timestamp", ("spans",)),
    Target("credential_uses_by_owner", "Timestamp", ("spans",)),
    Target("otel_traces_trace_id_ts", "Start", ("spans",)),
    Target("trace_summaries", "Hour", ("spans",)),
    Target("agent_minutes", "Minute", ("spans",)),
    Target("agent_hours", "Minute", ("spans",)),
    # metrics
    Target("otel_metrics_gauge", "TimeUnix", ("metrics",)),
    Target("otel_metrics_sum", "TimeUnix", ("metrics",)),
    Target("otel_metrics_histogram", "TimeUnix", ("metrics",)),
    # anomalies and what was sent about them (halts are not here: a halt stays in force until released)
    Target("anomalies", "DetectedAt", ("anomalies",)),
    Target("alert_deliveries", "SentAt", ("anomalies",)),
    Target("secret_findings", "Timestamp", ("anomalies",)),  # type and fingerprint of what was found, no value
    # the audit log
    Target("audit_log", "At", ("audit",)),
)


@dataclass(frozen=True)
class Change:
    table: str
    column: str
    data_class: str
    days: int
    statement: str

    def __str__(self) -> str:
        what = f"{self.table}.{self.column}" if self.column else self.table
        kept = f"{self.days} days" if self.days else "forever (TTL removed)"
        return f"{what} ({self.data_class}): kept {kept}"


def periods_from(settings) -> dict[str, int]:
    """Days per class from Settings (`retention_<class>_days`); refuses a negative period."""
    periods = {name: int(getattr(settings, f"retention_{name}_days", 0) or 0) for name in RETENTION_CLASSES}
    negative = [name for name, days in periods.items() if days < 0]
    if negative:
        raise ValueError(f"retention days must be 0 (keep forever) or more: {', '.join(negative)}")
    return periods


def plan(periods: Mapping[str, int], recorded: Mapping[tuple[str, str], int], tables: set[str],
         database: str) -> list[Change]:
    """The TTL changes that bring the existing `tables` to `periods`, given the days `recorded` as applied."""
    unknown = set(periods) - set(RETENTION_CLASSES)
    if unknown:
        raise ValueError(f"unknown retention classes {sorted(unknown)}; known: {', '.join(RETENTION_CLASSES)}")
    changes = []
    for target in TARGETS:
        days = target.days(periods)
        if target.table not in tables or recorded.get((target.table, target.column), 0) == days:
            continue
        changes.append(Change(target.table, target.column, "+".join(target.classes), days,
                              target.statement(database, days)))
    return changes


def apply(client: Client, periods: Mapping[str, int], database: str | None = None,
          cluster: str | None = None) -> list[Change]:
    """Set the TTLs `periods` (class -> days, 0 forever) call for; returns what changed (nothing when up to date).

    `cluster`: render for this ClickHouse cluster (None reads AGENTWATCH_CLICKHOUSE_CLUSTER, "" a single server).
    Tables a later migration adds are covered once they exist; a listed table not there yet is skipped.
    """
    database = database or client.database
    cluster = os.environ.get("AGENTWATCH_CLICKHOUSE_CLUSTER", "") if cluster is None else cluster
    suffix = cluster_form.LOCAL_SUFFIX if cluster else ""
    tables = {name.removesuffix(suffix) for (name,) in client.query(
        "SELECT name FROM system.tables WHERE database = {d:String} AND endsWith(engine, 'MergeTree')",
        parameters={"d": database}).result_rows}
    recorded = {(table, column): days for table, column, days in client.query(
        f"SELECT TableName, ColumnName, Days FROM `{database}`.retention_ttls FINAL").result_rows}
    settings = cluster_form.SETTINGS if cluster else None
    changes = plan(periods, recorded, tables, database)
    for change in changes:
        statements = cluster_form.render([change.statement], database, cluster) if cluster else [change.statement]
        for statement in statements:
            client.command(statement, settings=settings)
        target = next(t for t in TARGETS if (t.table, t.column) == (change.table, change.column))
        client.insert(f"`{database}`.retention_ttls",
                      [[change.table, change.column, change.data_class, change.days, target.expression(change.days)]],
                      column_names=["TableName", "ColumnName", "DataClass", "Days", "Expression"], settings=settings)
        log.info("retention: %s", change)
    return changes


def in_force(client: Client, database: str | None = None) -> list[tuple[str, str, str, int]]:
    """(table, column, class, days) of every TTL agentwatch set and has not removed."""
    database = database or client.database
    return [tuple(row) for row in client.query(
        f"SELECT TableName, ColumnName, DataClass, Days FROM `{database}`.retention_ttls FINAL "
        "WHERE Days > 0 ORDER BY TableName, ColumnName").result_rows]

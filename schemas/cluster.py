"""The cluster rendering of the migrations: ON CLUSTER, Replicated* engines, Distributed tables.

One set of .sql files (schemas/sql) serves a single server and a cluster. With
`AGENTWATCH_CLICKHOUSE_CLUSTER=NAME` each single-node statement is rewritten by the
rules below (`render`):

- `CREATE TABLE t ... ENGINE = XMergeTree(args)` becomes `t_local`, created ON CLUSTER
  with `ReplicatedXMergeTree('/clickhouse/tables/{shard}/<db>/t_local', '{replica}', args)`,
  then `t` ON CLUSTER as `Distributed(NAME, <db>, t_local, <sharding key of t>)`: every
  query, insert and dashboard keeps the public table names.
- `CREATE MATERIALIZED VIEW v TO t AS SELECT ... FROM s` reads `s_local` on every node (a
  view fires on the node that receives the insert into its source, so it must watch the
  local table). It writes `t_local` when `t` and `s` share their sharding key (the rows are
  already on the right shard) and through the Distributed `t` otherwise (re-sharding).
- `ALTER TABLE v MODIFY QUERY` replaces a view's query ON CLUSTER, reading the local tables as
  its `CREATE` does.
- `ALTER TABLE t MODIFY SETTING` goes to `t_local`, less the settings in LEFT_OUT; column
  changes go to `t_local` and `t`. TTLs (`MODIFY TTL`, `REMOVE TTL`, a column's `TTL`) and
  `DELETE WHERE` go to `t_local` only: the rows live there, a Distributed table holds none.
- `DROP VIEW`, `DROP TABLE`, `CREATE DATABASE` and `CREATE DICTIONARY` run ON CLUSTER; a
  dictionary's source query reads the Distributed tables, so every node holds all of it.
- `INSERT ... SELECT` (the backfills) runs once, as written, through the Distributed tables.

Any other statement stops the rendering: a new kind of statement needs a rule here, and a
new table a sharding key in SHARDING.
"""

from __future__ import annotations

import re

# The Distributed tables' sharding keys, chosen for how each table is read. Keys are
# deterministic functions of the row, never rand(): a batch repeated with its
# insert_deduplication_token must split into the same blocks per shard as the first
# time, or a shard would drop new rows as duplicates of a block it already holds.
SHARDING = {
    # A trace stays on one shard: replay reads one shard, and the per-trace views below
    # (start/end per trace, the replay index) are complete where they are computed.
    "otel_traces": "cityHash64(TraceId)",
    "otel_traces_trace_id_ts": "cityHash64(TraceId)",
    "trace_span_index": "cityHash64(TraceId)",
    # A log line sits with its trace's spans; logs outside a trace spread by service and time.
    "otel_logs": "if(TraceId != '', cityHash64(TraceId), cityHash64(ServiceName, Timestamp))",
    # A metric series (service and metric) stays on one shard, so rates and sums over it
    # need no cross-shard merge of points.
    "otel_metrics_gauge": "cityHash64(ServiceName, MetricName)",
    "otel_metrics_sum": "cityHash64(ServiceName, MetricName)",
    "otel_metrics_histogram": "cityHash64(ServiceName, MetricName)",
    # Typed rows by tenant, the function `agentwatch detect --shard k/N` uses
    # (cityHash64(Tenant) % N = k): with N equal-weight shards, shard k+1 of the cluster
    # holds exactly detector shard k's tenants, and every tenant rollup is complete on
    # one shard. Their views from otel_traces re-shard from trace to tenant.
    "agent_spans": "cityHash64(Tenant)",
    "credential_events": "cityHash64(Tenant)",
    # A credential's uses by other tenants, with its owner: the owner's detector shard reads them there.
    "credential_uses_by_owner": "cityHash64(CredentialTenant)",
    "agent_minutes": "cityHash64(Tenant)",
    "agent_hours": "cityHash64(Tenant)",
    "trace_summaries": "cityHash64(Tenant)",
    # Small tables with row versions (ReplacingMergeTree, read with FINAL): every version
    # of a row must land on the shard that holds the others.
    "anomalies": "cityHash64(AnomalyId)",
    "alert_deliveries": "cityHash64(AnomalyId)",
    "detector_state": "cityHash64(Detector, Shard)",
    "api_keys": "cityHash64(KeyHash)",
    "demo_incidents": "cityHash64(RunId)",
    "schema_migrations": "cityHash64(Version)",
    # Every claim of a role on one shard: the claims of one epoch meet in the same
    # Replicated table, whose deduplication keeps the first (detectors/lease.py).
    "leases": "cityHash64(Role)",
    # Every decision about a tenant's traces, agents and itself on one shard: the latest per target is
    # read there (schemas/halts.py).
    "halts": "cityHash64(Tenant)",
    # Findings by tenant, like agent_spans: a detector shard reads its tenants' findings on one shard.
    "secret_findings": "cityHash64(Tenant)",
    # One row (the store's fingerprint key), read through the Distributed table by every receiver.
    "secret_keys": "cityHash64(Key)",
    # Append-only and read whole, newest first: rows spread over the shards by who acted.
    "audit_log": "cityHash64(Actor)",
    # Every version of a price row on one shard (read with FINAL by the price dictionary, through the
    # Distributed table, so every node's dictionary holds every price).
    "model_prices": "cityHash64(Provider, Model)",
    # A handful of rows, every version of one table's TTL on one shard (read with FINAL).
    "retention_ttls": "cityHash64(TableName, ColumnName)",
}

# Single-node settings that have no place on Replicated tables, and why.
LEFT_OUT = {
    # Replicated tables deduplicate inserts by their own window (replicated_deduplication_window,
    # kept in Keeper); this one only applies to a non-replicated MergeTree.
    "non_replicated_deduplication_window",
}

# Settings for the statements and inserts of a migration run on a cluster: an insert into a
# Distributed table returns once every shard has the rows (not queued to send later), so a
# migration's backfill and its schema_migrations row are there when the next step reads them.
SETTINGS = {"distributed_foreground_insert": 1}

LOCAL_SUFFIX = "_local"
_CLUSTER_NAME = re.compile(r"^[\w.{}-]+$")
_ENGINE = re.compile(r"ENGINE = (\w*MergeTree)\b(?:\(([^()]*)\))?")
_COLUMN_CHANGE = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR) COLUMN\b")
_ROWS_CHANGE = re.compile(r"^(MODIFY TTL|REMOVE TTL|DELETE WHERE|MODIFY COLUMN `?[\w.]+`? (REMOVE )?TTL)\b")
_SETTINGS_CLAUSE = re.compile(r"(\s)SETTINGS (.*)$", re.S)  # a CREATE TABLE's last clause


def _kept_settings(assignments: str) -> str:
    """`a = 1, b = 2` less the settings in LEFT_OUT (values here never hold a comma)."""
    return ", ".join(s.strip() for s in assignments.split(",") if s.split("=")[0].strip() not in LEFT_OUT)


def _without_left_out(clause: re.Match) -> str:
    kept = _kept_settings(clause[2])
    return f"{clause[1]}SETTINGS {kept}" if kept else ""


def local(table: str) -> str:
    return table + LOCAL_SUFFIX


def zookeeper_path(database: str, table: str) -> str:
    """Where a local table's replicas meet in Keeper: one path per shard and table."""
    return f"/clickhouse/tables/{{shard}}/{database}/{local(table)}"


def render(statements: list[str], database: str, cluster: str) -> list[str]:
    """The cluster form of single-node statements (as Migration.statements renders them)."""
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r}: letters, digits, '_', '.', '-' (or a {{macro}})")
    renderer = _Renderer(database, cluster)
    return [out for statement in statements for out in renderer.statement(statement)]


class _Renderer:
    def __init__(self, database: str, cluster: str) -> None:
        self.database = database
        self.db = f"`{database}`"
        self.on = f"ON CLUSTER '{cluster}'"
        self.cluster = cluster
        self.ref = re.compile(re.escape(self.db) + r"\.(\w+)")

    def statement(self, sql: str) -> list[str]:
        for prefix, rule in (("CREATE TABLE ", self.create_table), ("CREATE MATERIALIZED VIEW ", self.create_view),
                             ("ALTER TABLE ", self.alter), ("DROP VIEW ", self.drop_view),
                             ("DROP TABLE ", self.drop_table), ("CREATE DATABASE ", self.create_database),
                             ("CREATE DICTIONARY ", self.create_dictionary), ("INSERT INTO ", lambda s: [s])):
            if sql.startswith(prefix):
                return rule(sql)
        raise ValueError(f"no cluster rule for this statement; add one to schemas/cluster.py:\n{sql}")

    def head(self, pattern: str, sql: str) -> re.Match:
        """`pattern` matched at the start of `sql` (DB: the database as the migrations write it), the rest in `rest`."""
        match = re.match(pattern.replace("DB", re.escape(self.db)) + r"(?P<rest>.*)$", sql, re.S)
        if not match:
            raise ValueError(f"no cluster rule for this form of statement:\n{sql}")
        return match

    def key(self, table: str) -> str:
        if table not in SHARDING:
            raise ValueError(f"table {table} has no sharding key: add one to SHARDING in schemas/cluster.py")
        return SHARDING[table]

    def to_local(self, sql: str) -> str:
        return self.ref.sub(lambda m: f"{self.db}.{local(m.group(1))}" if m.group(1) in SHARDING else m.group(0), sql)

    def create_table(self, sql: str) -> list[str]:
        m = self.head(r"CREATE TABLE IF NOT EXISTS DB\.(?P<name>\w+)(?P<space>\s+)", sql)
        name, key = m["name"], self.key(m["name"])
        rest, engines = _ENGINE.subn(lambda e: self.replicated(e, name), m["rest"], count=1)
        if not engines:
            raise ValueError(f"table {name}: only MergeTree-family engines have a cluster form:\n{sql}")
        rest = _SETTINGS_CLAUSE.sub(_without_left_out, rest)
        return [
            f"CREATE TABLE IF NOT EXISTS {self.db}.{local(name)} {self.on}{m['space']}{self.to_local(rest)}",
            f"CREATE TABLE IF NOT EXISTS {self.db}.{name} {self.on} AS {self.db}.{local(name)}\n"
            f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{local(name)}', {key})",
        ]

    def replicated(self, engine: re.Match, table: str) -> str:
        family, args = engine[1], engine[2]
        if family.startswith("Replicated"):
            raise ValueError(f"table {table}: write the single-node engine; the cluster form adds Replicated")
        params = [f"'{zookeeper_path(self.database, table)}'", "'{replica}'"] + ([args] if args else [])
        return f"ENGINE = Replicated{family}({', '.join(params)})"

    def create_dictionary(self, sql: str) -> list[str]:
        # On every node, reading its source through the Distributed tables (all shards), as written.
        m = self.head(r"CREATE DICTIONARY IF NOT EXISTS DB\.(?P<name>\w+)", sql)
        return [f"CREATE DICTIONARY IF NOT EXISTS {self.db}.{m['name']} {self.on}{m['rest']}"]

    def create_view(self, sql: str) -> list[str]:
        m = self.head(r"CREATE MATERIALIZED VIEW IF NOT EXISTS DB\.(?P<view>\w+)\s+TO DB\.(?P<target>\w+)"
                      r"(?P<space>\s+)AS(?=\s)", sql)
        sources = {name for name in self.ref.findall(m["rest"]) if name in SHARDING}
        if len(sources) != 1:
            raise ValueError(f"view {m['view']}: the cluster form needs exactly one source table, not {sources}")
        source, target = sources.pop(), m["target"]
        # Rows already on their shard stay there; otherwise the Distributed table sends them on.
        into = local(target) if self.key(target) == self.key(source) else target
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.db}.{m['view']} {self.on} TO {self.db}.{into}"
                f"{m['space']}AS{self.to_local(m['rest'])}"]

    def alter(self, sql: str) -> list[str]:
        m = self.head(r"ALTER TABLE DB\.(?P<name>\w+)\s+", sql)
        name, action = m["name"], m["rest"]
        if action.startswith("MODIFY QUERY"):  # a view's query, replaced in place on every node
            return [f"ALTER TABLE {self.db}.{name} {self.on} {self.to_local(action)}"]
        self.key(name)
        if action.startswith("MODIFY SETTING "):
            kept = _kept_settings(action[len("MODIFY SETTING "):])
            if not kept:
                return []
            return [f"ALTER TABLE {self.db}.{local(name)} {self.on} MODIFY SETTING {kept}"]
        if _ROWS_CHANGE.match(action):  # subqueries keep the Distributed names: they read every shard
            return [f"ALTER TABLE {self.db}.{local(name)} {self.on} {action}"]
        if _COLUMN_CHANGE.match(action):  # the Distributed table must show the same columns
            return [f"ALTER TABLE {self.db}.{table} {self.on} {action}" for table in (local(name), name)]
        raise ValueError(f"no cluster rule for this ALTER; add one to schemas/cluster.py:\n{sql}")

    def drop_view(self, sql: str) -> list[str]:
        m = self.head(r"DROP VIEW IF EXISTS DB\.(?P<view>\w+)", sql)
        if m["rest"].strip():
            raise ValueError(f"no cluster rule for this DROP VIEW:\n{sql}")
        return [f"DROP VIEW IF EXISTS {self.db}.{m['view']} {self.on}"]

    def drop_table(self, sql: str) -> list[str]:
        m = self.head(r"DROP TABLE IF EXISTS DB\.(?P<name>\w+)", sql)
        if m["rest"].strip():
            raise ValueError(f"no cluster rule for this DROP TABLE:\n{sql}")
        # SYNC: the replicas leave Keeper before the statement returns, so the path is free again.
        return [f"DROP TABLE IF EXISTS {self.db}.{table} {self.on} SYNC" for table in (m["name"], local(m["name"]))]

    def create_database(self, sql: str) -> list[str]:
        m = self.head(r"CREATE DATABASE IF NOT EXISTS DB", sql)
        if m["rest"].strip():
            raise ValueError(f"no cluster rule for this CREATE DATABASE:\n{sql}")
        return [f"CREATE DATABASE IF NOT EXISTS {self.db} {self.on}"]

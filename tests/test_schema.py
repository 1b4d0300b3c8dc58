"""The data contract: migrations and the public table shapes of DESIGN.md."""

from __future__ import annotations

from agentwatch.schemas import migrate, store

# Column names and types the OpenTelemetry Collector's clickhouseexporter inserts.
COLLECTOR_TRACE_COLUMNS = [
    ("Timestamp", "DateTime64(9)"), ("TraceId", "String"), ("SpanId", "String"), ("ParentSpanId", "String"),
    ("TraceState", "String"), ("SpanName", "LowCardinality(String)"), ("SpanKind", "LowCardinality(String)"),
    ("ServiceName", "LowCardinality(String)"), ("ResourceAttributes", "Map(LowCardinality(String), String)"),
    ("ScopeName", "String"), ("ScopeVersion", "String"), ("SpanAttributes", "Map(LowCardinality(String), String)"),
    ("Duration", "UInt64"), ("StatusCode", "LowCardinality(String)"), ("StatusMessage", "String"),
    ("Events.Timestamp", "Array(DateTime64(9))"), ("Events.Name", "Array(LowCardinality(String))"),
    ("Events.Attributes", "Array(Map(LowCardinality(String), String))"),
    ("Links.TraceId", "Array(String)"), ("Links.SpanId", "Array(String)"), ("Links.TraceState", "Array(String)"),
    ("Links.Attributes", "Array(Map(LowCardinality(String), String))"),
]
DESIGN_COLUMNS = {
    "agent_spans": ["Timestamp", "TraceId", "SpanId", "ParentSpanId", "Tenant", "ServiceName", "AgentId", "AgentName",
                    "Operation", "Provider", "Model", "InputTokens", "OutputTokens", "CachedInputTokens",
                    "ReasoningTokens", "CostUSD", "Duration", "StatusCode", "IngestedAt"],
    "credential_events": ["Timestamp", "TraceId", "SpanId", "Tenant", "AgentId", "Event", "CredentialId",
                          "CredentialTenant", "Scope", "Resource", "ResourceTenant", "Action", "IngestedAt"],
    "anomalies": ["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score", "Summary",
                  "Evidence", "Status", "FirstSeen", "LastSeen"],
}


def columns(client, table: str) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind, *_ in client.query(f"DESCRIBE TABLE {table}").result_rows]


def test_migrations_are_versioned_and_idempotent(dsn):
    client = store.connect(dsn, "t_schema_fresh")
    client.command("DROP DATABASE IF EXISTS t_schema_fresh")
    first = migrate.apply(client, "t_schema_fresh")
    assert first == [f"{m.version:04d}_{m.name}" for m in migrate.migrations()]
    assert migrate.apply(client, "t_schema_fresh") == []
    recorded = client.query("SELECT Version FROM t_schema_fresh.schema_migrations FINAL ORDER BY Version").result_rows
    assert [version for (version,) in recorded] == [m.version for m in migrate.migrations()]


def test_otel_tables_are_column_compatible_with_the_collector_exporter(client):
    assert columns(client, "otel_traces") == COLLECTOR_TRACE_COLUMNS
    assert columns(client, "otel_traces_trace_id_ts") == [("TraceId", "String"), ("Start", "DateTime"),
                                                          ("End", "DateTime")]
    for table in ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram", "otel_logs"):
        assert columns(client, table)


def test_agent_tables_have_the_design_columns(client):
    for table, expected in DESIGN_COLUMNS.items():
        names = [name for name, _ in columns(client, table)]
        assert [name for name in names if name in expected] == expected, table
    assert dict(columns(client, "agent_spans"))["CostUSD"] == "Nullable(Float64)"
    sorting = client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
                           "AND name = 'agent_spans'").result_rows[0][0]
    assert sorting == "Tenant, Timestamp"

"""Retention per data class (AGENTWATCH_RETENTION_<CLASS>_DAYS), applied as TTLs at start: what is set in the
store, that expired rows go away on a merge, that span rows outlive their payloads, and the cluster form."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch import config
from agentwatch.schemas import cluster, retention
from tests.helpers import wait_for

DAY_NS = 86_400 * 10**9
CLASSES = ("payload", "spans", "metrics", "anomalies", "audit")


def settings_with(monkeypatch, **days) -> config.Settings:
    for name in CLASSES:
        monkeypatch.setenv(f"AGENTWATCH_RETENTION_{name.upper()}_DAYS", str(days.get(name, 0)))
    return config.load("/nonexistent/agentwatch.toml")


def engine_full(client, table: str) -> str:
    return client.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                        "AND name = {t:String}", parameters={"t": table}).result_rows[0][0]


def create_query(client, table: str) -> str:
    return client.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                        "AND name = {t:String}", parameters={"t": table}).result_rows[0][0]


def send_spans(receiver, tenant: str, ages_days: dict[str, float]) -> None:
    """One model-call span per name, `age` days old, with its prompt as a (short) message attribute."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": "retention-agent",
                                                        "agentwatch.tenant.id": tenant}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("retention-test")
    for name, age in ages_days.items():
        start = time.time_ns() - int(age * DAY_NS)
        span = tracer.start_span(name, start_time=start, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.input.messages": f'[{{"role": "user", "parts": [{{"content": "secret plan {name}"}}]}}]'})
        span.end(end_time=start + 10**9)
    provider.shutdown()


def count(client, sql: str, **params) -> int:
    return client.query(sql, parameters=params).result_rows[0][0]


def test_without_settings_nothing_is_set_and_everything_is_kept(client, monkeypatch):
    assert retention.apply(client, retention.periods_from(settings_with(monkeypatch))) == []
    for table in {target.table for target in retention.TARGETS}:
        assert " TTL " not in engine_full(client, table), table
    assert retention.in_force(client) == []


def test_each_class_gets_its_ttl_once(client, monkeypatch):
    settings = settings_with(monkeypatch, payload=1, spans=3, metrics=7, anomalies=30, audit=365)
    changes = retention.apply(client, retention.periods_from(settings))
    expected = {
        "otel_traces": "toDateTime(Timestamp) + toIntervalDay(1)",  # payload text: the shorter of payload, spans
        "otel_logs": "toDateTime(TimestampTime) + toIntervalDay(1)",
        "trace_span_index": "toDateTime(Timestamp) + toIntervalDay(3)",
        "agent_spans": "toDateTime(Timestamp) + toIntervalDay(3)",
        "credential_events": "toDateTime(Timestamp) + toIntervalDay(3)",
        "credential_uses_by_owner": "toDateTime(Timestamp) + toIntervalDay(3)",
        "otel_traces_trace_id_ts": "toDateTime(Start) + toIntervalDay(3)",
        "trace_summaries": "toDateTime(Hour) + toIntervalDay(3)",
        "agent_minutes": "toDateTime(Minute) + toIntervalDay(3)",
        "agent_hours": "toDateTime(Minute) + toIntervalDay(3)",
        "otel_metrics_gauge": "toDateTime(TimeUnix) + toIntervalDay(7)",
        "otel_metrics_sum": "toDateTime(TimeUnix) + toIntervalDay(7)",
        "otel_metrics_histogram": "toDateTime(TimeUnix) + toIntervalDay(7)",
        "anomalies": "toDateTime(DetectedAt) + toIntervalDay(30)",
        "alert_deliveries": "toDateTime(SentAt) + toIntervalDay(30)",
        "secret_findings": "toDateTime(Timestamp) + toIntervalDay(30)",
        "audit_log": "toDateTime(At) + toIntervalDay(365)",
    }
    for table, ttl in expected.items():
        assert f" TTL {ttl}" in engine_full(client, table), table
    # the replay index's copies of attribute values are payload text: a column TTL of one day
    index = create_query(client, "trace_span_index")
    for column in ("`Attributes`", "`Events.Attributes`"):
        assert "TTL toDateTime(Timestamp) + toIntervalDay(1)" in index.split(column, 1)[1].split(", `", 1)[0]
    assert " TTL " not in engine_full(client, "halts"), "a halt stays in force until released"
    assert {(c.table, c.column) for c in changes} == {(t.table, t.column) for t in retention.TARGETS}
    assert len(retention.in_force(client)) == len(retention.TARGETS)
    assert retention.apply(client, retention.periods_from(settings)) == [], "applied once, not at every start"


def test_expired_rows_go_away_and_span_rows_outlive_their_payloads(receiver, client, monkeypatch):
    tenant = f"ret-{uuid.uuid4().hex[:6]}"
    retention.apply(client, retention.periods_from(settings_with(monkeypatch)))  # stored before retention is set
    send_spans(receiver, tenant, {"fresh": 0, "two-days-old": 2, "five-days-old": 5})
    wait_for(lambda: count(client, "SELECT count() FROM agent_spans WHERE Tenant = {t:String}", t=tenant) == 3)
    traces = dict(client.query("SELECT SpanName, TraceId FROM agent_spans WHERE Tenant = {t:String}",
                               parameters={"t": tenant}).result_rows)
    retention.apply(client, retention.periods_from(settings_with(monkeypatch, payload=1, spans=3)))

    def merged_away() -> bool:
        for table in ("otel_traces", "agent_spans", "trace_span_index", "trace_summaries", "agent_minutes"):
            client.command(f"OPTIMIZE TABLE {table} FINAL")
        return count(client, "SELECT count() FROM agent_spans WHERE Tenant = {t:String}", t=tenant) == 2 \
            and count(client, "SELECT count() FROM otel_traces WHERE TraceId IN {ids:Array(String)}",
                      ids=list(traces.values())) == 1

    wait_for(merged_away, timeout_s=60, interval_s=0.5)
    raw = [name for (name,) in client.query("SELECT SpanName FROM otel_traces WHERE TraceId IN {ids:Array(String)}",
                                            parameters={"ids": list(traces.values())}).result_rows]
    assert raw == ["fresh"], "raw rows (payload text) older than a day are gone"
    typed = {name for (name,) in client.query("SELECT SpanName FROM agent_spans WHERE Tenant = {t:String}",
                                              parameters={"t": tenant}).result_rows}
    assert typed == {"fresh", "two-days-old"}, "typed rows live 3 days"
    index = dict(client.query("SELECT SpanName, Attributes FROM trace_span_index WHERE TraceId IN {ids:Array(String)}",
                              parameters={"ids": list(traces.values())}).result_rows)
    assert set(index) == {"fresh", "two-days-old"}
    assert "secret plan fresh" in index["fresh"]["gen_ai.input.messages"]
    assert index["two-days-old"] == {}, "the replay index keeps the span, not its text"
    assert count(client, "SELECT count() FROM trace_summaries WHERE Tenant = {t:String}", t=tenant) == 2


def test_a_class_set_back_to_zero_is_kept_forever_again(client, monkeypatch):
    retention.apply(client, retention.periods_from(settings_with(monkeypatch, payload=1, spans=3, metrics=7)))
    changes = retention.apply(client, retention.periods_from(settings_with(monkeypatch, spans=3)))
    assert {(c.table, c.column, c.days) for c in changes} == {
        ("otel_traces", "", 3), ("otel_logs", "", 3),  # now the spans period alone
        ("trace_span_index", "Attributes", 0), ("trace_span_index", "Events.Attributes", 0),
        ("otel_metrics_gauge", "", 0), ("otel_metrics_sum", "", 0), ("otel_metrics_histogram", "", 0)}
    assert " TTL " not in engine_full(client, "otel_metrics_gauge")
    assert "toIntervalDay(3)" in engine_full(client, "otel_traces")
    assert "TTL" not in create_query(client, "trace_span_index").split("ENGINE")[0]
    assert {row[0] for row in retention.in_force(client)} == {
        "otel_traces", "otel_logs", "trace_span_index", "agent_spans", "credential_events", "otel_traces_trace_id_ts",
        "trace_summaries", "agent_minutes", "agent_hours", "credential_uses_by_owner"}
    retention.apply(client, retention.periods_from(settings_with(monkeypatch)))
    assert retention.in_force(client) == []
    assert all(" TTL " not in engine_full(client, t.table) for t in retention.TARGETS)


def test_the_cluster_form_sets_ttls_on_the_local_tables_and_parses(client):
    tables = {target.table for target in retention.TARGETS}
    changes = retention.plan({"payload": 1, "spans": 3, "metrics": 7, "anomalies": 30, "audit": 365}, {}, tables,
                             "agentwatch")
    rendered = cluster.render([c.statement for c in changes], "agentwatch", "aw")
    assert len(rendered) == len(changes)
    for statement in rendered:
        assert statement.startswith("ALTER TABLE `agentwatch`.") and "_local ON CLUSTER 'aw' " in statement
        formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
        assert "ON CLUSTER aw" in formatted
    removals = retention.plan({}, {("otel_traces", ""): 1, ("trace_span_index", "Attributes"): 1}, tables, "agentwatch")
    assert cluster.render([c.statement for c in removals], "agentwatch", "aw") == [
        "ALTER TABLE `agentwatch`.otel_traces_local ON CLUSTER 'aw' REMOVE TTL",
        "ALTER TABLE `agentwatch`.trace_span_index_local ON CLUSTER 'aw' MODIFY COLUMN `Attributes` REMOVE TTL"]


def test_settings_come_from_the_environment_and_a_negative_period_is_refused(monkeypatch):
    assert retention.periods_from(settings_with(monkeypatch, payload=7, audit=400)) == {
        "payload": 7, "spans": 0, "metrics": 0, "anomalies": 0, "audit": 400}
    with pytest.raises(ValueError, match="payload"):
        retention.periods_from(settings_with(monkeypatch, payload=-1))


# The TTLs on the cluster rendering of the schema (tests/cluster_dry_run.py: one embedded shard, ON CLUSTER and
# Replicated stripped), in its own process (one data path per process).
ON_ONE_SHARD = """
import json, sys
from pathlib import Path
import clickhouse_connect
from tests import cluster_dry_run as dry
from agentwatch.schemas import retention
directory = Path(sys.argv[1])
dry.run(directory)
raw = clickhouse_connect.get_client(interface="chdb", path=str(directory / "data"),
                                    chdb_options={"config-file": str(directory / "config.xml")})
raw.database = dry.DATABASE
client = dry.OneShard(raw)
periods = {"payload": 1, "spans": 3}
changes = retention.apply(client, periods, dry.DATABASE, dry.CLUSTER)
print(json.dumps({"changed": len(changes), "again": len(retention.apply(client, periods, dry.DATABASE, dry.CLUSTER)),
                  "engines": dict(raw.query("SELECT name, engine_full FROM system.tables WHERE database = 'agentwatch'")
                                  .result_rows),
                  "in_force": retention.in_force(client, dry.DATABASE)}))
"""


def test_on_a_cluster_the_local_tables_get_the_ttls_once(tmp_path):
    done = subprocess.run([sys.executable, "-c", ON_ONE_SHARD, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["changed"] == 12 and report["again"] == 0
    assert "TTL toDateTime(Timestamp) + toIntervalDay(1)" in report["engines"]["otel_traces_local"]
    assert "TTL toDateTime(Minute) + toIntervalDay(3)" in report["engines"]["agent_hours_local"]
    assert " TTL " not in report["engines"]["otel_traces"], "the Distributed table holds no rows to expire"
    assert len(report["in_force"]) == 12

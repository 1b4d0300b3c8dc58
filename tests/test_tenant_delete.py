"""`agentwatch tenant delete TENANT`: two tenants with rows in every table, sent through the real receiver (with
their API keys), typed by the views, run through the detectors and the alert dispatcher; one is deleted. Its
rows are gone from every table that holds a tenant's rows, the other's are untouched, the command prints the
counts and the audit log records the deletion."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch import cli
from agentwatch.collector.receiver import api_keys
from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import audit, halts, store, tenant_delete
from agentwatch.schemas.vocabulary import AUDIT_TENANT_DELETED, AUDIT_TRACE_OPENED
from tests.helpers import JsonWebhook, wait_for

SUFFIX = uuid.uuid4().hex[:6]
GONE, KEPT = f"acme-{SUFFIX}", f"globex-{SUFFIX}"
KEYS: dict[str, str] = {}  # tenant -> its ingest API key

# Tables every tenant of this fleet has rows in, read here by what each table says about its tenant
# (independently of the deletion's own conditions).
BY_TENANT = {
    "otel_traces": "ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
    "otel_logs": "ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
    "otel_metrics_gauge": "ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
    "otel_metrics_sum": "ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
    "otel_metrics_histogram": "ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
    "agent_spans": "Tenant = {t:String}",
    "credential_events": "Tenant = {t:String}",
    "agent_minutes": "Tenant = {t:String}",
    "agent_hours": "Tenant = {t:String}",
    "trace_summaries": "Tenant = {t:String}",
    "anomalies": "Tenant = {t:String}",
    "halts": "Tenant = {t:String}",
    "api_keys": "Tenant = {t:String}",
    # keyed to the tenant through its traces and anomalies (their ids as stored before any deletion)
    "trace_span_index": "TraceId IN {traces:Array(String)}",
    "otel_traces_trace_id_ts": "TraceId IN {traces:Array(String)}",
    "alert_deliveries": "AnomalyId IN {anomalies:Array(String)}",
}
IDS: dict[str, dict[str, list[str]]] = {}  # tenant -> its trace ids and anomaly ids, read before the deletion


def rows_of(client, tenant: str) -> dict[str, int]:
    parameters = {"t": tenant, **IDS[tenant]}
    return {table: client.query(f"SELECT count() FROM {table} WHERE {where}",
                                parameters=parameters).result_rows[0][0] for table, where in BY_TENANT.items()}


def tenant_tables(client) -> list[str]:
    return [table for (table,) in client.query(
        "SELECT DISTINCT table FROM system.columns WHERE database = currentDatabase() AND name = 'Tenant' "
        "AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND endsWith(engine, 'MergeTree'))").result_rows]


def by_tenant_column(client, tenant: str) -> dict[str, int]:
    return {table: client.query(f"SELECT count() FROM {table} WHERE Tenant = {{t:String}}",
                                parameters={"t": tenant}).result_rows[0][0] for table in tenant_tables(client)}


def send_fleet(receiver, tenant: str, other: str, key: str) -> None:
    """A trace (agent, model call with its messages, tool) whose agent uses the other tenant's credential, a log
    line and three kinds of metric, all sent with the tenant's API key."""
    base = f"http://127.0.0.1:{receiver.http_port}/v1"
    headers = {"authorization": f"Bearer {key}"}
    resource = Resource.create({"service.name": f"{tenant}-agent"})
    spans = TracerProvider(resource=resource)
    spans.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/traces", headers=headers)))
    tracer = spans.get_tracer("fleet")
    with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": f"{tenant}-planner",
            "gen_ai.agent.name": "planner"}) as agent:
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300, "gen_ai.agent.id": f"{tenant}-planner",
                "gen_ai.input.messages": f'[{{"role": "user", "parts": [{{"content": "plan for {tenant}"}}]}}]'}):
            pass
        with tracer.start_as_current_span("execute_tool search", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                "gen_ai.agent.id": f"{tenant}-planner"}):
            pass
        agent.add_event("agentwatch.credential.use", {
            "agentwatch.credential.id": f"{other}-github-token", "agentwatch.credential.tenant.id": other,
            "agentwatch.resource.name": f"repo:{other}/api", "agentwatch.resource.tenant.id": other,
            "agentwatch.credential.action": "read", "gen_ai.agent.id": f"{tenant}-planner"})
    spans.shutdown()

    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{base}/logs", headers=headers)))
    logger = logging.getLogger(f"fleet.{tenant}")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=logs))
    logger.warning("planner finished for %s", tenant)
    logs.shutdown()

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/metrics", headers=headers),
                                           export_interval_millis=60_000)
    meters = MeterProvider(metric_readers=[reader], resource=resource)
    meter = meters.get_meter("fleet")
    meter.create_counter("agent.tasks").add(3)
    meter.create_gauge("hw.gpu.utilization").set(0.75, {"hw.id": "GPU-0"})
    meter.create_histogram("agent.step.seconds").record(1.5)
    meters.shutdown()


@pytest.fixture(scope="module")
def fleet(dsn, database, receiver, client):
    """Both tenants' rows everywhere; returns the rows per table of each before any deletion."""
    KEYS.update({tenant: api_keys.create_key(client, tenant, "ingest") for tenant in (GONE, KEPT)})
    receiver.keys.refresh()
    for tenant, other in ((GONE, KEPT), (KEPT, GONE)):
        send_fleet(receiver, tenant, other, KEYS[tenant])
    assert receiver.flush(timeout_s=60)
    wait_for(lambda: all(by_tenant_column(client, t)["credential_events"] for t in (GONE, KEPT)))

    def connect():
        return store.connect(dsn, database)

    DetectorWorker(connect, DetectorConfig()).catch_up()  # each agent used the other tenant's credential
    wait_for(lambda: all(by_tenant_column(client, t)["anomalies"] for t in (GONE, KEPT)))
    webhook = JsonWebhook()
    try:
        dispatcher = AlertDispatcher(connect, AlertConfig(webhook_urls=[webhook.url], backoff_s=0.05))
        dispatcher.run_once()
        dispatcher.close()
    finally:
        webhook.stop()
    for tenant in (GONE, KEPT):
        ids = {"traces": "SELECT DISTINCT TraceId FROM otel_traces "
                         "WHERE ResourceAttributes['agentwatch.tenant.id'] = {t:String}",
               "anomalies": "SELECT DISTINCT AnomalyId FROM anomalies WHERE Tenant = {t:String}"}
        IDS[tenant] = {name: [value for (value,) in client.query(sql, parameters={"t": tenant}).result_rows]
                       for name, sql in ids.items()}
        halts.record(client, [halts.decision(tenant, "tenant", tenant, "halt", reason="contain it",
                                             decided_by="cli:oncall")])
        audit.record(client, "cli:oncall", AUDIT_TRACE_OPENED, tenant=tenant, target="a trace")
    before = {tenant: rows_of(client, tenant) for tenant in (GONE, KEPT)}
    for tenant in (GONE, KEPT):
        empty = [table for table, rows in before[tenant].items() if not rows]
        assert not empty, f"{tenant} has no rows in {empty}"
    return before


def test_without_confirmation_the_command_only_counts(fleet, client, dsn, database, monkeypatch, capsys):
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_DSN", dsn)
    monkeypatch.setenv("AGENTWATCH_DATABASE", database)
    assert cli.main(["tenant", "delete", GONE]) == 1
    out = capsys.readouterr().out
    assert f"agent_spans {fleet[GONE]['agent_spans']:>12} rows".replace(" ", "") in out.replace(" ", "")
    assert "nothing deleted" in out
    assert rows_of(client, GONE) == fleet[GONE]


def test_delete_removes_every_row_of_the_tenant_and_only_its_rows(fleet, client, dsn, database, monkeypatch, capsys):
    kept_by_column = by_tenant_column(client, KEPT)
    kept_scoped = {c.table: c.rows for c in tenant_delete.count(client, KEPT)}
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_DSN", dsn)
    monkeypatch.setenv("AGENTWATCH_DATABASE", database)
    assert cli.main(["tenant", "delete", GONE, "--yes", "--by", "dana"]) == 0
    printed = {line.split()[0]: int(line.split()[1]) for line in capsys.readouterr().out.splitlines()
               if line.endswith("rows deleted")}
    for table, rows in fleet[GONE].items():
        assert printed[table] == rows, table  # the counts printed are the rows that were there

    assert rows_of(client, GONE) == dict.fromkeys(BY_TENANT, 0)
    left = {table for table, n in by_tenant_column(client, GONE).items() if n}
    assert left == {"audit_log"}, "every table with a tenant column is empty of it, but the record of who did what"
    assert tenant_delete.count(client, GONE) == []
    assert rows_of(client, KEPT) == fleet[KEPT]
    assert by_tenant_column(client, KEPT) == kept_by_column
    assert {c.table: c.rows for c in tenant_delete.count(client, KEPT)} == kept_scoped


def test_the_audit_log_keeps_the_tenants_entries_and_records_the_deletion(fleet, client):
    entries = audit.entries(client, tenant=GONE)
    assert [e.action for e in entries][:2] == [AUDIT_TENANT_DELETED, AUDIT_TRACE_OPENED]
    deletion = entries[0]
    assert deletion.actor == "cli:dana" and deletion.target == GONE
    assert deletion.detail["rows"]["agent_spans"] == fleet[GONE]["agent_spans"]
    assert deletion.detail["total"] == sum(deletion.detail["rows"].values())


def test_the_deleted_tenants_api_key_is_refused_and_the_others_still_works(fleet, receiver):
    receiver.keys.refresh()  # a receiver reloads its keys every 10 s; this one now
    empty = ExportTraceServiceRequest().SerializeToString()
    answers = {tenant: httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/traces", content=empty,
                                  headers={"Content-Type": "application/x-protobuf",
                                           "Authorization": f"Bearer {KEYS[tenant]}"}).status_code
               for tenant in (GONE, KEPT)}
    assert answers == {GONE: 401, KEPT: 200}


def test_tables_are_found_from_their_columns(client, database):
    columns = tenant_delete.table_columns(client, database)
    found, untouched = tenant_delete.scopes(columns, "acme", database)
    how = {s.table: s.how for s in found}
    assert how["agent_spans"] == how["anomalies"] == how["api_keys"] == "tenant"
    assert how["otel_traces"] == how["otel_logs"] == how["otel_metrics_sum"] == "attributes"
    assert how["trace_span_index"] == "spans" and how["otel_traces_trace_id_ts"] == "traces"
    assert how["alert_deliveries"] == "anomalies"
    assert {"audit_log", "schema_migrations", "leases", "detector_state"} <= set(untouched)
    # a table a later migration adds is covered by its columns alone
    later, _ = tenant_delete.scopes({"tenant_budgets": {"Tenant", "Budget"}}, "acme", database)
    assert [(s.table, s.how) for s in later] == [("tenant_budgets", "tenant")]
    # keyed tables go first: their conditions read the rows of agent_spans and anomalies
    order = [s.table for s in found]
    assert order.index("alert_deliveries") < order.index("anomalies")
    assert order.index("trace_span_index") < order.index("agent_spans")


def test_a_tenant_name_is_quoted_not_spliced(client, database):
    (scope,), _ = tenant_delete.scopes({"api_keys": {"Tenant"}}, "x') OR ('1' = '1", database)
    assert client.query(f"SELECT count() FROM api_keys WHERE {scope.condition}").result_rows[0][0] == 0


def test_the_cluster_form_deletes_on_the_local_tables_on_every_node_and_parses(client, database):
    found, _ = tenant_delete.scopes(tenant_delete.table_columns(client, database), "acme", "agentwatch")
    for scope in found:
        (statement,) = tenant_delete.statements(scope, "agentwatch", "aw")
        assert statement.startswith(f"ALTER TABLE `agentwatch`.{scope.table}_local ON CLUSTER 'aw' DELETE WHERE ")
        assert "_local" not in statement.split("DELETE WHERE", 1)[1], "subqueries read every shard"
        formatted = client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0]
        assert "ON CLUSTER aw" in formatted


# The deletion on the cluster rendering of the schema (tests/cluster_dry_run.py: one embedded shard, ON CLUSTER and
# Replicated stripped, Distributed tables over the local ones), in its own process (one data path per process).
ON_ONE_SHARD = """
import json, sys
from pathlib import Path
import clickhouse_connect
from tests import cluster_dry_run as dry
from agentwatch.schemas import tenant_delete
directory = Path(sys.argv[1])
dry.run(directory)  # the cluster schema, with spans of acme and globex
raw = clickhouse_connect.get_client(interface="chdb", path=str(directory / "data"),
                                    chdb_options={"config-file": str(directory / "config.xml")})
raw.database = dry.DATABASE
client = dry.OneShard(raw)
def rows(tenant):
    return {c.table: c.rows for c in tenant_delete.count(client, tenant, dry.DATABASE, dry.CLUSTER)}
before = {"acme": rows("acme"), "globex": rows("globex")}
deleted = tenant_delete.delete(client, "acme", "cli:test", dry.DATABASE, dry.CLUSTER)
print(json.dumps({"before": before, "deleted": {d.table: d.rows for d in deleted if d.rows},
                  "after": {"acme": rows("acme"), "globex": rows("globex")},
                  "local_spans": [t for (t,) in raw.query("SELECT Tenant FROM agent_spans_local").result_rows],
                  "deletes": [s for s in client.statements if " DELETE WHERE " in s]}))
"""


def test_on_a_cluster_the_local_tables_lose_the_tenants_rows(tmp_path):
    done = subprocess.run([sys.executable, "-c", ON_ONE_SHARD, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["before"]["acme"]["agent_spans"] == 2 and report["before"]["globex"]["agent_spans"] == 2
    assert report["deleted"] == report["before"]["acme"]
    assert report["after"] == {"acme": {}, "globex": report["before"]["globex"]}
    assert report["local_spans"] == ["globex", "globex"]
    assert report["deletes"] and all("_local DELETE WHERE" in s for s in report["deletes"])

"""The OTLP receiver over real HTTP and gRPC, against the embedded store."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch.collector.receiver import api_keys
from agentwatch.collector.receiver.pricing import reference_cost
from tests.helpers import fresh_database, prometheus_value, start_receiver

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def url(receiver, signal="traces") -> str:
    return f"http://127.0.0.1:{receiver.http_port}/v1/{signal}"


def provider_with(exporter, **resource) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout-agent", **resource}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def count(client, sql: str, **params) -> int:
    return client.query(sql, parameters=params).result_rows[0][0]


def metric_value(receiver, name: str, **labels) -> float:
    return prometheus_value(httpx.get(f"http://127.0.0.1:{receiver.http_port}/metrics").text, name, **labels)


def otlp_request(trace_id: bytes, spans: int = 1, name: str = "chat gpt-4o", **attributes) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="raw")))
    scope = resource_spans.scope_spans.add()
    for index in range(spans):
        span = Span(trace_id=trace_id, span_id=os.urandom(8), name=name, kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns() + 1000)
        for key, value in attributes.items():
            span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
        scope.spans.append(span)
    return request.SerializeToString()


def test_stock_http_exporter_spans_are_stored_typed_and_priced(receiver, client):
    provider = provider_with(HttpSpanExporter(endpoint=url(receiver)), **{"agentwatch.tenant.id": "acme"})
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent planner", attributes={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "planner-1", "gen_ai.agent.name": "planner",
    }) as root:
        with tracer.start_as_current_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 12_000, "gen_ai.usage.cache_read.input_tokens": 2_000,
            "gen_ai.usage.output_tokens": 3_000, "gen_ai.usage.reasoning.output_tokens": 2_500,
            "gen_ai.agent.id": "planner-1",
        }):
            pass
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")
    receiver.flush()

    rows = client.query(
        "SELECT Tenant, AgentId, AgentName, Operation, ParentSpanId = '', Model, Provider, InputTokens, "
        "CachedInputTokens, OutputTokens, ReasoningTokens, CostUSD FROM agent_spans "
        "WHERE TraceId = {t:String} ORDER BY Timestamp", parameters={"t": trace_id}).result_rows
    assert [row[:5] for row in rows] == [
        ("acme", "planner-1", "planner", "invoke_agent", True),
        ("acme", "planner-1", "", "chat", False),
    ]
    chat = rows[1]
    assert chat[5:11] == ("gpt-4o", "openai", 12_000, 2_000, 3_000, 2_500)
    # Cached reads at the cache rate, reasoning inside output at the output rate: the library's own figure.
    assert chat[11] == pytest.approx(float(reference_cost("gpt-4o", "openai", 12_000, 2_000, 3_000)))
    assert rows[0][11] is None  # no model, no tokens: no cost, never a made-up 0
    assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=trace_id) == 2
    assert count(client, "SELECT count() FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}", t=trace_id) >= 1


def test_stock_grpc_exporter_works_unchanged(receiver, client):
    provider = provider_with(GrpcSpanExporter(endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True))
    with provider.get_tracer("test").start_as_current_span("execute_tool search", attributes={
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}) as span:
        pass
    provider.shutdown()
    receiver.flush()
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert client.query("SELECT Operation, ToolName, Tenant FROM agent_spans WHERE TraceId = {t:String}",
                        parameters={"t": trace_id}).result_rows == [("execute_tool", "search", "default")]


def test_metrics_reach_the_gauge_and_sum_tables(receiver, client):
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=url(receiver, "metrics")),
                                           export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "gpu-box"}))
    meter = meter_provider.get_meter("test")
    meter.create_counter("agent.tasks").add(3, {"tenant": "acme"})
    meter.create_gauge("hw.gpu.utilization").set(0.75, {"hw.id": "GPU-0"})
    meter_provider.shutdown()
    receiver.flush()
    assert client.query("SELECT Value FROM otel_metrics_sum WHERE MetricName = 'agent.tasks' "
                        "AND ServiceName = 'gpu-box'").result_rows == [(3.0,)]
    assert client.query("SELECT Value, Attributes['hw.id'] FROM otel_metrics_gauge "
                        "WHERE MetricName = 'hw.gpu.utilization' AND ServiceName = 'gpu-box'").result_rows == [
        (0.75, "GPU-0")]


def test_otlp_json_as_the_spec_writes_it(receiver, client):
    trace_hex = uuid.uuid4().hex
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}},
                                    {"key": "agentwatch.tenant.id", "value": {"stringValue": "initech"}}]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
            {"traceId": trace_hex.upper(), "spanId": "00F067AA0BA902B7", "name": "chat o3", "kind": 3,
             "startTimeUnixNano": "1732400000000000001", "endTimeUnixNano": "1732400001500000001",
             "status": {"code": 2, "message": "rate limited"},
             "attributes": [
                 {"key": "gen_ai.request.model", "value": {"stringValue": "o3"}},
                 {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "9000000000"}},
                 {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 10}},
                 {"key": "retry", "value": {"boolValue": True}},
                 {"key": "temperature", "value": {"doubleValue": 0.2}},
                 {"key": "stops", "value": {"arrayValue": {"values": [{"stringValue": "END"}]}}}],
             "events": [{"timeUnixNano": "1732400000500000000", "name": "agentwatch.credential.use",
                         "attributes": [{"key": "agentwatch.credential.id", "value": {"stringValue": "k1"}}]}]},
            {"traceId": trace_hex.lower(), "spanId": "00f067aa0ba902b8", "parentSpanId": "00f067aa0ba902b7",
             "name": "execute_tool fetch", "kind": 1,
             "startTimeUnixNano": "1732400000100000000", "endTimeUnixNano": "1732400000200000000"},
        ]}]}]}
    response = httpx.post(url(receiver), json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    receiver.flush()
    rows = client.query(
        "SELECT SpanId, ParentSpanId, SpanKind, StatusCode, StatusMessage, SpanAttributes['gen_ai.usage.input_tokens'],"
        " SpanAttributes['retry'], SpanAttributes['temperature'], SpanAttributes['stops'], Duration,"
        " toUnixTimestamp64Nano(Timestamp), Events.Name FROM otel_traces WHERE TraceId = {t:String} ORDER BY SpanId",
        parameters={"t": trace_hex}).result_rows
    assert rows == [
        ("00f067aa0ba902b7", "", "Client", "Error", "rate limited", "9000000000", "true", "0.2", '["END"]',
         1_500_000_000, 1732400000000000001, ["agentwatch.credential.use"]),
        ("00f067aa0ba902b8", "00f067aa0ba902b7", "Internal", "Unset", "", "", "", "", "", 100_000_000,
         1732400000100000000, []),
    ]
    assert client.query("SELECT Tenant, InputTokens FROM agent_spans WHERE TraceId = {t:String} AND Model = 'o3'",
                        parameters={"t": trace_hex}).result_rows == [("initech", 9_000_000_000)]
    assert client.query("SELECT CredentialId, Event FROM credential_events WHERE TraceId = {t:String}",
                        parameters={"t": trace_hex}).result_rows == [("k1", "use")]


def test_gzip_body_is_accepted(receiver, client):
    trace_id = os.urandom(16)
    body = gzip.compress(otlp_request(trace_id, spans=3))
    response = httpx.post(url(receiver), content=body, headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    receiver.flush()
    assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=trace_id.hex()) == 3


def test_partial_success_refuses_only_the_bad_spans(receiver, client):
    trace_id = os.urandom(16)
    request = ExportTraceServiceRequest.FromString(otlp_request(trace_id, spans=2))
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01\x02"  # not 8 bytes
    response = httpx.post(url(receiver), content=request.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "span_id must be 8" in answer.partial_success.error_message
    receiver.flush()
    assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=trace_id.hex()) == 1


@pytest.mark.parametrize("case, headers, body, status, reason", [
    ("malformed protobuf", PROTOBUF, b"\xff\xff\xff\xff not protobuf", 400, "bad_body"),
    ("malformed json", {"Content-Type": "application/json"}, b"{not json", 400, "bad_body"),
    ("json of the wrong shape", {"Content-Type": "application/json"}, b'{"resourceSpans": 7}', 400, "bad_body"),
    ("corrupt gzip", {**PROTOBUF, "Content-Encoding": "gzip"}, b"\x1f\x8b\x08 broken", 400, "bad_body"),
    ("wrong content type", {"Content-Type": "text/plain"}, b"hello", 415, "unsupported_media_type"),
    ("unknown encoding", {**PROTOBUF, "Content-Encoding": "br"}, b"x", 415, "unsupported_media_type"),
])
def test_bad_input_gets_its_status_and_the_receiver_keeps_serving(receiver, client, case, headers, body, status,
                                                                  reason):
    before = metric_value(receiver, "agentwatch_receiver_bad_requests_total", reason=reason)
    response = httpx.post(url(receiver), content=body, headers=headers)
    assert response.status_code == status, case
    assert response.content  # a google.rpc.Status saying why
    assert metric_value(receiver, "agentwatch_receiver_bad_requests_total", reason=reason) == before + 1
    trace_id = os.urandom(16)
    assert httpx.post(url(receiver), content=otlp_request(trace_id), headers=PROTOBUF).status_code == 200
    receiver.flush()
    assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=trace_id.hex()) == 1


def test_oversized_bodies_get_413_plain_and_gzipped(dsn, database):
    small = start_receiver(dsn, database, max_request_bytes=64 * 1024, grpc_port=None)
    try:
        big = otlp_request(os.urandom(16), **{"gen_ai.output.messages": "x" * 100_000})
        response = httpx.post(url(small), content=big, headers=PROTOBUF)
        assert response.status_code == 413
        # A gzip bomb is measured after inflating, not by its compressed size.
        bomb = gzip.compress(big)
        assert len(bomb) < 64 * 1024
        response = httpx.post(url(small), content=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"})
        assert response.status_code == 413
        assert metric_value(small, "agentwatch_receiver_bad_requests_total", reason="too_large") == 2
        assert httpx.post(url(small), content=otlp_request(os.urandom(16)), headers=PROTOBUF).status_code == 200
    finally:
        small.stop()


def test_an_8mb_payload_comes_back_byte_for_byte(receiver, client):
    reasoning = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(8 * 1024 * 1024)) + "\u00e9\u4e2d\U0001f600"
    trace_id = os.urandom(16)
    response = httpx.post(url(receiver), content=otlp_request(trace_id, **{"gen_ai.output.messages": reasoning}),
                          headers=PROTOBUF, timeout=60)
    assert response.status_code == 200
    receiver.flush()
    stored = client.query("SELECT SpanAttributes['gen_ai.output.messages'] FROM otel_traces "
                          "WHERE TraceId = {t:String}", parameters={"t": trace_id.hex()}).result_rows[0][0]
    assert stored == reasoning


def test_unknown_model_gets_no_cost_and_is_counted_and_a_carried_cost_is_kept(receiver, client):
    trace_id = os.urandom(16)
    before = metric_value(receiver, "agentwatch_cost_unknown_model_spans_total", model="house-model-9")
    httpx.post(url(receiver), content=otlp_request(trace_id, **{
        "gen_ai.request.model": "house-model-9", "gen_ai.usage.input_tokens": 100}), headers=PROTOBUF)
    carried = os.urandom(16)
    httpx.post(url(receiver), content=otlp_request(carried, **{
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100, "agentwatch.cost.usd": "1.25"}),
        headers=PROTOBUF)
    receiver.flush()
    assert client.query("SELECT Model, CostUSD FROM agent_spans WHERE TraceId = {t:String}",
                        parameters={"t": trace_id.hex()}).result_rows == [("house-model-9", None)]
    assert metric_value(receiver, "agentwatch_cost_unknown_model_spans_total", model="house-model-9") == before + 1
    assert client.query("SELECT CostUSD FROM agent_spans WHERE TraceId = {t:String}",
                        parameters={"t": carried.hex()}).result_rows == [(1.25,)]


def test_api_key_tenant_overrides_the_claimed_tenant(dsn):
    database = fresh_database(dsn, "t_receiver_keys")
    from agentwatch.schemas import store

    client = store.connect(dsn, database)
    key = api_keys.create_key(client, "globex", "ci")
    keyed = start_receiver(dsn, database)
    try:
        trace_id = os.urandom(16)
        claim = otlp_request(trace_id, **{"agentwatch.tenant.id": "acme"})
        assert httpx.post(url(keyed), content=claim, headers=PROTOBUF).status_code == 401
        assert httpx.post(url(keyed), content=claim,
                          headers={**PROTOBUF, "Authorization": "Bearer aw_wrong"}).status_code == 401
        assert httpx.post(url(keyed), content=claim,
                          headers={**PROTOBUF, "Authorization": f"Bearer {key}"}).status_code == 200
        provider = provider_with(GrpcSpanExporter(endpoint=f"127.0.0.1:{keyed.grpc_port}", insecure=True,
                                                  headers={"authorization": f"Bearer {key}"}),
                                 **{"agentwatch.tenant.id": "acme"})
        with provider.get_tracer("t").start_as_current_span("grpc span") as grpc_span:
            pass
        provider.shutdown()
        keyed.flush()
        assert client.query("SELECT SpanAttributes['agentwatch.tenant.id'], "
                            "SpanAttributes['agentwatch.tenant.claimed_id'] FROM otel_traces "
                            "WHERE TraceId = {t:String}", parameters={"t": trace_id.hex()}).result_rows == [
            ("globex", "acme")]
        grpc_trace = format(grpc_span.get_span_context().trace_id, "032x")
        assert client.query("SELECT Tenant FROM agent_spans WHERE TraceId IN ({a:String}, {b:String})",
                            parameters={"a": trace_id.hex(), "b": grpc_trace}).result_rows == [
            ("globex",), ("globex",)]
        assert metric_value(keyed, "agentwatch_receiver_bad_requests_total", reason="unauthorized") == 2
        assert client.query("SELECT count() FROM api_keys WHERE KeyHash = {k:String}",
                            parameters={"k": key}).result_rows == [(0,)]  # only the hash is stored
    finally:
        keyed.stop()


def test_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted(dsn):
    from agentwatch.schemas import store

    name = fresh_database(dsn, "t_receiver_outage")
    client = store.connect(dsn, name)
    outage = start_receiver(dsn, name, max_queue_bytes=1, grpc_port=None)
    client.command("RENAME TABLE otel_traces TO otel_traces_away")  # every insert now fails, as in an outage
    try:
        first = os.urandom(16)
        assert httpx.post(url(outage), content=otlp_request(first, spans=5), headers=PROTOBUF).status_code == 200
        refused = httpx.post(url(outage), content=otlp_request(os.urandom(16)), headers=PROTOBUF)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert httpx.get(f"http://127.0.0.1:{outage.http_port}/healthz").json()["queue_rows"] == 5
        client.command("RENAME TABLE otel_traces_away TO otel_traces")  # the store comes back
        assert outage.flush(timeout_s=30)
        assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=first.hex()) == 5
        assert metric_value(outage, "agentwatch_receiver_write_errors_total") >= 1
    finally:
        outage.stop()


def test_sigterm_writes_everything_accepted_before_exit(tmp_path):
    env = {**os.environ, "AGENTWATCH_DATA_DIR": str(tmp_path), "AGENTWATCH_CLICKHOUSE_DSN": "",
           "AGENTWATCH_OTLP_HTTP_PORT": "0", "AGENTWATCH_OTLP_GRPC_PORT": "0"}
    collector = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "collector"], env=env,
                                 stdout=subprocess.PIPE, text=True)
    try:
        banner = collector.stdout.readline()
        port = int(banner.split("OTLP/HTTP on ")[1].split(",")[0].rsplit(":", 1)[1])
        trace_id = os.urandom(16)
        for _ in range(20):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/traces", content=otlp_request(trace_id, spans=100),
                                  headers=PROTOBUF)
            assert response.status_code == 200
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(120) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
    # The embedded store belongs to one process at a time: count from a fresh one.
    counted = subprocess.run(
        [sys.executable, "-c", "import sys; from agentwatch.schemas import store; "
         f"c = store.connect('chdb://{tmp_path}/clickhouse', 'agentwatch', create=False); "
         f"print(c.query(\"SELECT count() FROM otel_traces WHERE TraceId = '{trace_id.hex()}'\").result_rows[0][0])"],
        capture_output=True, text=True, check=True)
    assert counted.stdout.strip() == "2000"


def test_healthz_and_prometheus_metrics(receiver):
    health = httpx.get(f"http://127.0.0.1:{receiver.http_port}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    text = httpx.get(f"http://127.0.0.1:{receiver.http_port}/metrics").text
    for name in ("agentwatch_receiver_received_items_total", "agentwatch_receiver_written_rows_total",
                 "agentwatch_receiver_queue_bytes", "agentwatch_receiver_write_seconds_bucket",
                 "agentwatch_receiver_bad_requests_total"):
        assert name in text
    assert metric_value(receiver, "agentwatch_receiver_written_rows_total", table="otel_traces") > 0
    assert json.loads(health.text)["written_rows"] > 0


def test_logs_reach_otel_logs_with_their_trace_context(receiver, client):
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    logger_provider = LoggerProvider(resource=Resource.create({"service.name": "log-agent"}))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=url(receiver, "logs"))))
    logger = logging.getLogger("agent.audit")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=logger_provider))
    tracer_provider = TracerProvider()
    with tracer_provider.get_tracer("t").start_as_current_span("tool call") as span:
        logger.warning("refund tool called twice for order %s", 991)
    logger_provider.shutdown()
    receiver.flush()
    rows = client.query("SELECT Body, SeverityText, TraceId FROM otel_logs WHERE ServiceName = 'log-agent'").result_rows
    assert rows == [("refund tool called twice for order 991", "WARN",
                     format(span.get_span_context().trace_id, "032x"))]


def test_a_killed_conversion_worker_is_replaced_and_the_receiver_keeps_serving(dsn, database, client):
    worker_receiver = start_receiver(dsn, database, grpc_port=None)
    try:
        for pid in list(worker_receiver._pool._processes):
            os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
        time.sleep(0.5)
        first = httpx.post(url(worker_receiver), content=otlp_request(os.urandom(16)), headers=PROTOBUF)
        assert first.status_code in (200, 503)  # 503 + retry while new workers start; never a crash
        trace_id = os.urandom(16)
        assert httpx.post(url(worker_receiver), content=otlp_request(trace_id), headers=PROTOBUF).status_code == 200
        worker_receiver.flush()
        assert count(client, "SELECT count() FROM otel_traces WHERE TraceId = {t:String}", t=trace_id.hex()) == 1
    finally:
        worker_receiver.stop()

"""Spans from third-party GenAI instrumentations around the real `openai` SDK.

The `openai` client calls a fake OpenAI-compatible server this test starts on
loopback; the instrumentation's spans go through the stock OTLP exporter to
our receiver, and must land typed, with model, tokens and cost.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch.collector.receiver.pricing import reference_cost
from agentwatch.collector.sdk import instrumentors

PROMPT = "Summarise the incident report for ticket 4711."
ANSWER = "The nightly job retried 40 times against a revoked token."


class FakeOpenAI(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server API)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 1732400000,
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER}}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                      "prompt_tokens_details": {"cached_tokens": 200},
                      "completion_tokens_details": {"reasoning_tokens": 120}},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_instrumentation_of_agentwatch():
    """These tests instrument the client themselves: an earlier `agentwatch.init` in this process
    must not hold the client instrumented (its instrumentor would then refuse to instrument again)."""
    instrumentors.uninstrument()


@pytest.fixture(scope="module")
def fake_openai():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def traced_chat(receiver, fake_openai, instrumentor, tenant: str) -> str:
    provider = TracerProvider(resource=Resource.create({"service.name": "openai-app",
                                                        "agentwatch.tenant.id": tenant}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/traces")))
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=fake_openai, api_key="test-key")
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        assert reply.choices[0].message.content == ANSWER
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    receiver.flush()
    return tenant


def test_official_openai_v2_instrumentation(receiver, client, fake_openai, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    tenant = traced_chat(receiver, fake_openai, OpenAIInstrumentor(), "tenant-otel")
    rows = client.query(
        "SELECT Operation, Provider, Model, InputTokens, OutputTokens, CachedInputTokens, CostUSD, TraceId "
        "FROM agent_spans WHERE Tenant = {t:String}", parameters={"t": tenant}).result_rows
    assert len(rows) == 1
    operation, provider, model, input_tokens, output_tokens, cached, cost, trace_id = rows[0]
    assert (operation, provider, model, input_tokens, output_tokens) == ("chat", "openai", "gpt-4o-mini", 1200, 300)
    # Priced from what the span reports (this instrumentation version reports no cache reads).
    expected = reference_cost("gpt-4o-mini", "openai", 1200, cached, 300)
    assert cost == pytest.approx(float(expected))
    messages = client.query("SELECT SpanAttributes['gen_ai.input.messages'], SpanAttributes['gen_ai.output.messages'] "
                            "FROM otel_traces WHERE TraceId = {t:String}", parameters={"t": trace_id}).result_rows[0]
    assert PROMPT in messages[0] and ANSWER in messages[1]


def test_openinference_openai_instrumentation(receiver, client, fake_openai):
    from openinference.instrumentation.openai import OpenAIInstrumentor

    tenant = traced_chat(receiver, fake_openai, OpenAIInstrumentor(), "tenant-openinference")
    rows = client.query(
        "SELECT Operation, Model, InputTokens, OutputTokens, CachedInputTokens, ReasoningTokens, CostUSD, TraceId "
        "FROM agent_spans WHERE Tenant = {t:String}", parameters={"t": tenant}).result_rows
    assert len(rows) == 1
    operation, model, input_tokens, output_tokens, cached, reasoning, cost, trace_id = rows[0]
    assert (operation, model, input_tokens, output_tokens, cached, reasoning) == (
        "chat", "gpt-4o-mini", 1200, 300, 200, 120)
    assert cost == pytest.approx(float(reference_cost("gpt-4o-mini", "openai", 1200, 200, 300)))
    value = client.query("SELECT SpanAttributes['input.value'] FROM otel_traces WHERE TraceId = {t:String}",
                         parameters={"t": trace_id}).result_rows[0][0]
    assert PROMPT in value

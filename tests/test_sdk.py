"""The drop-in SDK (agentwatch.collector.sdk), against the real OpenTelemetry SDK.

Spans are read back from the SDK's InMemorySpanExporter on a TracerProvider
that `init(tracer_provider=...)` joins, or from OTLP requests a local
receiver stub decodes, so what is asserted is what leaves the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import agentwatch
from agentwatch.collector.sdk import gpu
from agentwatch.schemas import attributes as A

AGENT_PARENT_ID = "agentwatch.agent.parent.id"


# --- helpers -------------------------------------------------------------------
@dataclass
class Recorder:
    memory: InMemorySpanExporter
    provider: TracerProvider
    telemetry: agentwatch.Telemetry

    def spans(self):
        return list(self.memory.get_finished_spans())

    def one(self, name):
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


@pytest.fixture
def record():
    """init() joined to a fresh TracerProvider whose spans land in memory."""
    made = []

    def make(**options):
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        options.setdefault("gpu_interval", None)
        telemetry = agentwatch.init(tracer_provider=provider, **options)
        made.append(telemetry)
        return Recorder(memory, provider, telemetry)

    yield make
    for telemetry in made:
        telemetry.shutdown()


class OtlpHttpSink:
    """A stand-in OTLP/HTTP receiver: keeps every request; can hold responses back."""

    def __init__(self, held: bool = False):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.release = threading.Event()
        if not held:
            self.release.set()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.release.wait(30)
                sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace_requests(self):
        return [(headers, body) for path, headers, body in self.requests if path == "/v1/traces"]

    def spans(self):
        """(resource attributes, span) for every span received."""
        out = []
        for _, body in self.trace_requests():
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = kv(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out

    def close(self):
        self.release.set()
        self.server.shutdown()


def kv(pairs):
    """OTLP KeyValue list -> dict of plain values."""
    out = {}
    for pair in pairs:
        value = pair.value
        out[pair.key] = getattr(value, value.WhichOneof("value"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def short_export_timeout(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"):
        monkeypatch.setenv(name, "1")


class Boom(Exception):
    pass


# --- the agent tree ------------------------------------------------------------
def test_nested_agent_tool_llm_make_one_tree_with_gen_ai_attributes(record):
    rec = record()

    @agentwatch.llm("gpt-4o", provider="openai")
    def chat(messages):
        agentwatch.record_usage(input_tokens=12, output_tokens=3)
        return "42"

    @agentwatch.tool("calculator")
    def calculate(expression):
        return chat([{"role": "user", "parts": [{"type": "text", "content": expression}]}])

    @agentwatch.agent("planner", agent_id="agent-1")
    def plan(task):
        return calculate(task)

    assert plan("6*7") == "42"

    agent_span = rec.one("invoke_agent planner")
    tool_span = rec.one("execute_tool calculator")
    llm_span = rec.one("chat gpt-4o")
    assert agent_span.parent is None
    assert tool_span.parent.span_id == agent_span.context.span_id
    assert llm_span.parent.span_id == tool_span.context.span_id
    assert len({s.context.trace_id for s in rec.spans()}) == 1

    assert agent_span.attributes[A.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert tool_span.attributes[A.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert tool_span.attributes[A.GEN_AI_TOOL_NAME] == "calculator"
    assert llm_span.attributes[A.GEN_AI_OPERATION_NAME] == "chat"
    assert llm_span.attributes[A.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert llm_span.attributes[A.GEN_AI_PROVIDER_NAME] == "openai"
    assert llm_span.kind is SpanKind.CLIENT
    assert agent_span.kind is SpanKind.INTERNAL
    for s in (agent_span, tool_span, llm_span):
        assert s.attributes[A.GEN_AI_AGENT_ID] == "agent-1"
        assert s.attributes[A.GEN_AI_AGENT_NAME] == "planner"

    assert json.loads(agent_span.attributes[A.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "6*7"}]}
    ]
    assert json.loads(agent_span.attributes[A.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "42"}], "finish_reason": "stop"}
    ]
    assert json.loads(tool_span.attributes[A.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"expression": "6*7"}
    assert tool_span.attributes[A.GEN_AI_TOOL_CALL_RESULT] == "42"
    assert json.loads(llm_span.attributes[A.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "6*7"
    assert llm_span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 12


def test_sub_agents_carry_their_parent_and_stamp_their_own_children(record):
    rec = record()

    @agentwatch.tool("lookup")
    def lookup():
        return "x"

    @agentwatch.agent("worker")
    def worker():
        return lookup()

    @agentwatch.agent("boss")
    def boss():
        return [worker(), worker()]

    boss()
    boss_span = rec.one("invoke_agent boss")
    workers = [s for s in rec.spans() if s.name == "invoke_agent worker"]
    lookups = [s for s in rec.spans() if s.name == "execute_tool lookup"]
    boss_id = boss_span.attributes[A.GEN_AI_AGENT_ID]
    worker_ids = {w.attributes[A.GEN_AI_AGENT_ID] for w in workers}
    assert len(worker_ids) == 2 and boss_id not in worker_ids  # a new id per invocation
    for worker_span in workers:
        assert worker_span.attributes[AGENT_PARENT_ID] == boss_id
        assert worker_span.parent.span_id == boss_span.context.span_id
        assert uuid.UUID(worker_span.attributes[A.GEN_AI_AGENT_ID]).version == 4
    assert AGENT_PARENT_ID not in boss_span.attributes
    for lookup_span in lookups:
        parent = next(w for w in workers if w.context.span_id == lookup_span.parent.span_id)
        assert lookup_span.attributes[A.GEN_AI_AGENT_ID] == parent.attributes[A.GEN_AI_AGENT_ID]
        assert lookup_span.attributes[A.GEN_AI_AGENT_NAME] == "worker"


def test_spans_from_plain_otel_tracers_inside_an_agent_are_stamped(record):
    rec = record()
    third_party = rec.provider.get_tracer("some.instrumentation")

    with agentwatch.tenant("acme"):
        with agentwatch.agent("planner", agent_id="a-1"):
            with third_party.start_as_current_span("POST /v1/chat/completions"):
                pass
            with third_party.start_as_current_span("other", attributes={A.GEN_AI_AGENT_ID: "theirs"}):
                pass
            with third_party.start_as_current_span(
                "invoke_agent helper",
                attributes={A.GEN_AI_OPERATION_NAME: "invoke_agent", A.GEN_AI_AGENT_ID: "helper-1"},
            ):
                pass
    with third_party.start_as_current_span("outside"):
        pass

    inside = rec.one("POST /v1/chat/completions")
    assert inside.attributes[A.GEN_AI_AGENT_ID] == "a-1"
    assert inside.attributes[A.GEN_AI_AGENT_NAME] == "planner"
    assert inside.attributes[A.TENANT_ID] == "acme"
    assert rec.one("other").attributes[A.GEN_AI_AGENT_ID] == "theirs"  # set by its instrumentation: kept
    helper = rec.one("invoke_agent helper")
    assert helper.attributes[A.GEN_AI_AGENT_ID] == "helper-1"
    assert helper.attributes[AGENT_PARENT_ID] == "a-1"
    outside = rec.one("outside")
    assert A.GEN_AI_AGENT_ID not in outside.attributes and A.TENANT_ID not in outside.attributes


def test_context_manager_form(record):
    rec = record()
    with agentwatch.agent("planner", agent_id="a-1") as agent_span:
        agent_span.set_attribute("custom", 1)
        with agentwatch.tool("search") as tool_span:
            assert trace.get_current_span() is tool_span
        with pytest.raises(Boom):
            with agentwatch.span("risky"):
                raise Boom("no")
    assert rec.one("invoke_agent planner").attributes["custom"] == 1
    assert rec.one("execute_tool search").parent.span_id == rec.one("invoke_agent planner").context.span_id
    assert rec.one("execute_tool search").attributes[A.GEN_AI_AGENT_ID] == "a-1"
    assert rec.one("risky").status.status_code is StatusCode.ERROR


def test_bare_decorators_take_the_function_name(record):
    rec = record()

    @agentwatch.tool
    def search(query):
        return [query]

    @agentwatch.agent
    def researcher():
        return search("q")

    @agentwatch.span
    def helper():
        return None

    assert researcher() == ["q"]
    helper()
    assert rec.one("execute_tool search").attributes[A.GEN_AI_TOOL_NAME] == "search"
    assert rec.one("invoke_agent researcher").attributes[A.GEN_AI_AGENT_NAME] == "researcher"
    assert search.__name__ == "search"
    rec.one("helper")


# --- kinds of callables ----------------------------------------------------------
def test_async_functions(record):
    rec = record()

    @agentwatch.tool("fetch")
    async def fetch(url):
        await asyncio.sleep(0)
        return {"url": url, "status": 200}

    @agentwatch.agent("crawler", agent_id="c-1")
    async def crawl(urls):
        return await asyncio.gather(*(fetch(u) for u in urls))

    assert asyncio.run(crawl(["a", "b"])) == [{"url": "a", "status": 200}, {"url": "b", "status": 200}]
    agent_span = rec.one("invoke_agent crawler")
    fetches = [s for s in rec.spans() if s.name == "execute_tool fetch"]
    assert len(fetches) == 2
    for s in fetches:
        assert s.parent.span_id == agent_span.context.span_id
        assert s.attributes[A.GEN_AI_AGENT_ID] == "c-1"
    assert sorted(json.loads(s.attributes[A.GEN_AI_TOOL_CALL_RESULT])["url"] for s in fetches) == ["a", "b"]


def test_generator_span_lives_until_consumed_and_joins_text(record):
    rec = record()
    inner = rec.provider.get_tracer("inner")

    @agentwatch.llm("m")
    def stream(messages):
        for word in ("Hel", "lo", "!"):
            with inner.start_as_current_span("chunk"):
                pass
            yield word

    chunks = stream([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
    assert next(chunks) == "Hel"
    assert [s.name for s in rec.spans()] == ["chunk"]  # the model-call span is still open
    assert trace.get_current_span() is not None and not trace.get_current_span().is_recording()  # caller's context
    assert list(chunks) == ["lo", "!"]
    llm_span = rec.one("chat m")
    assert json.loads(llm_span.attributes[A.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] == "Hello!"
    for chunk in (s for s in rec.spans() if s.name == "chunk"):
        assert chunk.parent.span_id == llm_span.context.span_id  # the body ran inside the span


def test_generator_return_send_throw_and_early_close(record):
    rec = record()

    @agentwatch.span("echo")
    def echo():
        received = []
        try:
            while True:
                value = yield len(received)
                received.append(value)
        except Boom:
            yield "recovered"
        return received

    stream = echo()
    assert next(stream) == 0
    assert stream.send("a") == 1
    assert stream.throw(Boom()) == "recovered"
    with pytest.raises(StopIteration) as stop:
        next(stream)
    assert stop.value.value == ["a"]
    assert rec.one("echo").status.status_code is StatusCode.UNSET

    @agentwatch.tool("numbers")
    def numbers():
        yield from range(100)

    for n in numbers():
        if n == 2:
            break
    # Closed after three items (the loop dropped it): the span ended, with what was produced.
    span = rec.one("execute_tool numbers")
    assert json.loads(span.attributes[A.GEN_AI_TOOL_CALL_RESULT]) == [0, 1, 2]


def test_async_generator(record):
    rec = record()

    @agentwatch.agent("talker", agent_id="t-1")
    async def talk(prompt):
        for part in ("a", "b", "c"):
            await asyncio.sleep(0)
            yield part

    async def consume():
        got = [part async for part in talk("go")]
        stream = talk("again")
        first = await stream.__anext__()
        await stream.aclose()
        return got, first

    got, first = asyncio.run(consume())
    assert got == ["a", "b", "c"] and first == "a"
    spans = [s for s in rec.spans() if s.name == "invoke_agent talker"]
    assert len(spans) == 2
    outputs = sorted(json.loads(s.attributes[A.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] for s in spans)
    assert outputs == ["a", "abc"]


def test_methods_instance_class_and_static(record):
    rec = record()

    class Agent:
        def __init__(self, name):
            self.name = name

        @agentwatch.agent("member")
        def run(self, task):
            return f"{self.name}:{task}"

        @classmethod
        @agentwatch.tool("inner_classmethod")
        def make(cls, value):
            return cls.__name__ + value

        @agentwatch.tool("outer_classmethod")
        @classmethod
        def make_outer(cls, value):
            return cls.__name__ + value

        @agentwatch.tool("static")
        @staticmethod
        def add(a, b):
            return a + b

    assert Agent("x").run("t") == "x:t"
    assert Agent.make("!") == "Agent!"
    assert Agent.make_outer("?") == "Agent?"
    assert Agent.add(1, 2) == 3 and Agent("y").add(2, 3) == 5
    assert json.loads(rec.one("invoke_agent member").attributes[A.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "t"
    assert json.loads(rec.one("execute_tool inner_classmethod").attributes[A.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"value": "!"}
    assert json.loads(rec.one("execute_tool outer_classmethod").attributes[A.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"value": "?"}
    statics = [s for s in rec.spans() if s.name == "execute_tool static"]
    assert [json.loads(s.attributes[A.GEN_AI_TOOL_CALL_ARGUMENTS]) for s in statics] == [{"a": 1, "b": 2}, {"a": 2, "b": 3}]


# --- exceptions ------------------------------------------------------------------
def test_exceptions_are_recorded_and_propagate_unchanged(record):
    rec = record()
    error = Boom("tool broke")

    @agentwatch.tool("breaks")
    def breaks():
        raise error

    @agentwatch.agent("a")
    async def agent_breaks():
        raise KeyError("k")

    @agentwatch.span("gen")
    def gen():
        yield 1
        raise ValueError("mid-stream")

    with pytest.raises(Boom) as info:
        breaks()
    assert info.value is error
    with pytest.raises(KeyError):
        asyncio.run(agent_breaks())
    with pytest.raises(ValueError):
        list(gen())

    tool_span = rec.one("execute_tool breaks")
    assert tool_span.status.status_code is StatusCode.ERROR
    assert "tool broke" in tool_span.status.description
    assert tool_span.attributes["error.type"] == f"{__name__}.Boom"
    (event,) = tool_span.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == "tool broke"
    assert "raise error" in event.attributes["exception.stacktrace"]
    assert rec.one("invoke_agent a").attributes["error.type"] == "KeyError"
    gen_span = rec.one("gen")
    assert gen_span.attributes["error.type"] == "ValueError"
    assert gen_span.attributes["agentwatch.output"] == "[1]"  # what was produced before the failure


def test_our_failures_never_reach_user_code(record):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no str")

    def broken_redactor(name, value):
        raise RuntimeError("redactor bug")

    rec = record()

    @agentwatch.tool("t")
    def t(thing):
        return "ok"

    assert t(Unprintable()) == "ok"
    span = rec.one("execute_tool t")
    assert A.GEN_AI_TOOL_CALL_ARGUMENTS not in span.attributes
    assert span.attributes[A.GEN_AI_TOOL_CALL_RESULT] == "ok"

    record(redact=broken_redactor)
    assert t("secret") == "ok"

    def broken_clock():
        raise RuntimeError("clock bug")

    record(clock=broken_clock)
    assert t("x") == "ok"
    agentwatch.credentials.use("k", resource="r")
    agentwatch.record_usage(input_tokens=1)


# --- capture settings ------------------------------------------------------------
def test_capture_opt_out_per_decorator(record):
    rec = record()

    @agentwatch.tool("private", capture=False)
    def private(secret):
        return secret

    @agentwatch.tool("public")
    def public(value):
        return value

    private("s3cret")
    public("v")
    assert A.GEN_AI_TOOL_CALL_ARGUMENTS not in rec.one("execute_tool private").attributes
    assert A.GEN_AI_TOOL_CALL_RESULT not in rec.one("execute_tool private").attributes
    assert rec.one("execute_tool private").attributes[A.GEN_AI_TOOL_NAME] == "private"
    assert rec.one("execute_tool public").attributes[A.GEN_AI_TOOL_CALL_RESULT] == "v"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_capture_opt_out_globally(record, monkeypatch, how):
    if how == "argument":
        rec = record(capture_content=False)
    else:
        monkeypatch.setenv("AGENTWATCH_CAPTURE_CONTENT", "false")
        rec = record()

    @agentwatch.agent("a")
    def run(task):
        agentwatch.record_usage(input_tokens=5, output_messages="answer")
        return "done"

    run("secret task")
    span = rec.one("invoke_agent a")
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 5  # numbers are not content
    for name in (A.GEN_AI_INPUT_MESSAGES, A.GEN_AI_OUTPUT_MESSAGES):
        assert name not in span.attributes


def test_redaction_hook_sees_every_value_and_can_drop_it(record):
    seen = []

    def redact(name, value):
        seen.append(name)
        if name == A.GEN_AI_TOOL_CALL_ARGUMENTS:
            return {k: ("***" if k == "password" else v) for k, v in value.items()}
        if name == A.GEN_AI_TOOL_CALL_RESULT:
            return None
        return value

    rec = record(redact=redact)

    @agentwatch.tool("login")
    def login(user, password):
        agentwatch.record_usage(input_messages="hello")
        return "token-123"

    login("ann", password="hunter2")
    span = rec.one("execute_tool login")
    assert json.loads(span.attributes[A.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"user": "ann", "password": "***"}
    assert A.GEN_AI_TOOL_CALL_RESULT not in span.attributes
    assert set(seen) == {A.GEN_AI_TOOL_CALL_ARGUMENTS, A.GEN_AI_TOOL_CALL_RESULT, A.GEN_AI_INPUT_MESSAGES}


def test_unusual_values_are_serialised_not_lost(record):
    rec = record()

    @agentwatch.span("values")
    def values(array, data, blob, obj):
        return {1: "int key"}

    @agentwatch.span("huge")
    def huge(number, array):
        return number

    values(numpy.arange(3), {"s": {1, 2}}, b"\xffbytes", object())
    huge(2**70, numpy.arange(2))  # beyond orjson's 64-bit integers
    attrs = rec.one("values").attributes
    captured = json.loads(attrs["agentwatch.input"])
    assert captured["array"] == [0, 1, 2]
    assert sorted(captured["data"]["s"]) == [1, 2]
    assert captured["blob"] == "\\xffbytes"
    assert captured["obj"].startswith("<object object")
    assert json.loads(attrs["agentwatch.output"]) == {"1": "int key"}
    huge_attrs = rec.one("huge").attributes
    assert json.loads(huge_attrs["agentwatch.input"]) == {"number": 2**70, "array": [0, 1]}
    assert huge_attrs["agentwatch.output"] == str(2**70)


def test_eight_megabyte_values_are_captured_byte_for_byte(record):
    rec = record()
    thought = "chain of thought " * (512 * 1024) + "é🙂\"\\\n"  # 8 MiB and some

    @agentwatch.agent("thinker")
    def think(chain_of_thought):
        return chain_of_thought

    assert think(thought) is thought
    span = rec.one("invoke_agent thinker")
    assert json.loads(span.attributes[A.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == thought
    assert json.loads(span.attributes[A.GEN_AI_OUTPUT_MESSAGES])[0]["parts"][0]["content"] == thought


# --- usage, credentials, tenant, clock ---------------------------------------------
def test_record_usage_sets_gen_ai_attributes(record):
    rec = record()
    reasoning = [
        {
            "role": "assistant",
            "parts": [{"type": "reasoning", "content": "think " * 1000}, {"type": "text", "content": "4"}],
            "finish_reason": "stop",
        }
    ]

    @agentwatch.llm("o3", provider="openai")
    def ask(messages):
        agentwatch.record_usage(
            model="o3",
            response_model="o3-2025-04-16",
            provider="openai",
            input_tokens=1000,
            output_tokens=500,
            cached_input_tokens=800,
            reasoning_tokens=400,
            input_messages=messages,
            output_messages=reasoning,
            system_instructions="be brief",
            cost_usd=0.0123,
        )
        return "4"

    ask([{"role": "user", "parts": [{"type": "text", "content": "2+2"}]}])
    attrs = rec.one("chat o3").attributes
    assert attrs[A.GEN_AI_REQUEST_MODEL] == "o3"
    assert attrs[A.GEN_AI_RESPONSE_MODEL] == "o3-2025-04-16"
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 1000
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 500
    assert attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 800
    assert attrs[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 400
    assert attrs[A.COST_USD] == pytest.approx(0.0123)
    assert json.loads(attrs[A.GEN_AI_OUTPUT_MESSAGES]) == reasoning  # not replaced by the return value
    assert json.loads(attrs[A.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "2+2"
    assert json.loads(attrs[A.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "be brief"}]


def test_record_usage_on_a_given_span_or_without_any(record):
    rec = record()
    other = rec.provider.get_tracer("x").start_span("openai call")
    with agentwatch.span("current"):
        agentwatch.record_usage(input_tokens=7, span=other)
    other.end()
    agentwatch.record_usage(model="m", input_tokens=3, output_tokens=1)
    assert rec.one("openai call").attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 7
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in rec.one("current").attributes
    alone = rec.one("chat m")  # no span to carry it: a span of its own
    assert alone.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 1
    assert alone.kind is SpanKind.CLIENT


def test_credential_events_on_current_span_and_without_one(record):
    rec = record()
    with agentwatch.tenant("acme"):
        with agentwatch.agent("worker", agent_id="w-1"):
            agentwatch.credentials.grant("key-1", tenant="acme", scope="s3:read")
            agentwatch.credentials.use(
                "key-1", resource="s3://globex/data", resource_tenant="globex", action="read", credential_tenant="acme"
            )
            agentwatch.credentials.revoke("key-1", tenant="acme")
    agentwatch.credentials.use("key-2", resource="db://x")

    grant, use, revoke = rec.one("invoke_agent worker").events
    assert grant.name == A.CREDENTIAL_GRANT
    assert dict(grant.attributes) == {
        A.CREDENTIAL_ID: "key-1",
        A.CREDENTIAL_TENANT_ID: "acme",
        A.CREDENTIAL_SCOPE: "s3:read",
    }
    assert use.name == A.CREDENTIAL_USE
    assert dict(use.attributes) == {
        A.CREDENTIAL_ID: "key-1",
        A.CREDENTIAL_TENANT_ID: "acme",
        A.RESOURCE_NAME: "s3://globex/data",
        A.RESOURCE_TENANT_ID: "globex",
        A.CREDENTIAL_ACTION: "read",
    }
    assert revoke.name == A.CREDENTIAL_REVOKE
    assert dict(revoke.attributes) == {A.CREDENTIAL_ID: "key-1", A.CREDENTIAL_TENANT_ID: "acme"}

    (orphan,) = rec.one("credential use").events
    assert orphan.name == A.CREDENTIAL_USE
    assert orphan.attributes[A.CREDENTIAL_ID] == "key-2"


def test_many_credential_uses_in_one_span_are_all_kept(short_export_timeout):
    memory = InMemorySpanExporter()
    telemetry = agentwatch.init(endpoint="http://127.0.0.1:9", gpu_interval=None)  # our own provider and limits
    try:
        telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
        with agentwatch.agent("busy"):
            for i in range(1000):
                agentwatch.credentials.use(f"k{i}", resource="r")
        (span,) = memory.get_finished_spans()
        assert len(span.events) == 1000  # the SDK's default would keep 128
    finally:
        telemetry.shutdown()


def test_tenant_context(record):
    rec = record()

    @agentwatch.tool("work")
    def work():
        return 1

    with agentwatch.tenant("acme"):
        work()
        with agentwatch.tenant("globex"):
            with rec.provider.get_tracer("t").start_as_current_span("plain"):
                pass
        with agentwatch.agent("a"):
            work()
    work()

    tenants = [s.attributes.get(A.TENANT_ID) for s in rec.spans() if s.name == "execute_tool work"]
    assert tenants == ["acme", "acme", None]
    assert rec.one("plain").attributes[A.TENANT_ID] == "globex"
    assert rec.one("invoke_agent a").attributes[A.TENANT_ID] == "acme"


def test_configured_clock_drives_span_and_event_times(record):
    base = 946_684_800 * 10**9  # 2000-01-01: far from now
    ticks = iter(range(base, base + 10**6, 1000))
    rec = record(clock=lambda: next(ticks))

    @agentwatch.tool("t")
    def t():
        agentwatch.credentials.use("k", resource="r")
        raise Boom("x")

    with pytest.raises(Boom):
        t()
    agentwatch.credentials.grant("k", tenant="acme")  # its own span
    span = rec.one("execute_tool t")
    use, exception = span.events
    assert span.start_time == base
    assert use.timestamp == base + 1000
    assert exception.timestamp == base + 2000
    assert span.end_time == base + 3000
    orphan = rec.one("credential grant")
    assert orphan.start_time == orphan.events[0].timestamp == orphan.end_time == base + 4000


# --- export ----------------------------------------------------------------------
def test_otlp_http_export_carries_whole_values_resource_and_api_key(monkeypatch):
    sink = OtlpHttpSink()
    monkeypatch.setenv("AGENTWATCH_ENDPOINT", sink.url)
    big = "x" * (8 * 1024 * 1024) + "end"
    telemetry = agentwatch.init(
        "svc-a", tenant="acme", api_key="k-123", resource_attributes={"deployment.environment": "test"}, gpu_interval=None
    )
    try:

        @agentwatch.tool("read")
        def read(document):
            return len(document)

        assert read(big) == len(big)
        assert telemetry.flush(timeout_s=30)
        ((resource, span),) = sink.spans()
        assert resource["service.name"] == "svc-a"
        assert resource[A.TENANT_ID] == "acme"
        assert resource["deployment.environment"] == "test"
        attrs = kv(span.attributes)
        assert json.loads(attrs[A.GEN_AI_TOOL_CALL_ARGUMENTS])["document"] == big
        assert span.name == "execute_tool read"
        headers, _ = sink.trace_requests()[0]
        assert headers["authorization"] == "Bearer k-123"
        assert telemetry.dropped_spans == 0
    finally:
        telemetry.shutdown()
        sink.close()


def test_otlp_grpc_export():
    received = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append((request, dict(context.invocation_metadata())))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    telemetry = agentwatch.init(
        "svc-g", endpoint=f"127.0.0.1:{port}", protocol="grpc", api_key="g-1", gpu_interval=None
    )
    try:
        with agentwatch.agent("over-grpc"):
            pass
        assert telemetry.flush(timeout_s=30)
        ((request, metadata),) = received
        (span,) = request.resource_spans[0].scope_spans[0].spans
        assert span.name == "invoke_agent over-grpc"
        assert metadata["authorization"] == "Bearer g-1"
    finally:
        telemetry.shutdown()
        server.stop(0)


def test_full_export_queue_counts_drops_and_never_blocks():
    sink = OtlpHttpSink(held=True)  # the receiver takes the first batch and does not answer
    telemetry = agentwatch.init(endpoint=sink.url, max_queue_size=4, gpu_interval=None)
    try:

        @agentwatch.span("step")
        def step(i):
            return i

        started = time.perf_counter()
        for i in range(200):
            step(i)
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0  # 200 spans against a stuck exporter: no waiting on it
        dropped = telemetry.dropped_spans
        assert 150 <= dropped <= 196

        started = time.perf_counter()
        assert telemetry.flush(timeout_s=0.5) is False  # the export is still stuck: flush gives up on time
        assert time.perf_counter() - started < 2.0

        sink.release.set()
        assert telemetry.flush(timeout_s=30)
        assert abs(len(sink.spans()) + dropped - 200) <= 4
    finally:
        sink.release.set()
        telemetry.shutdown()
        sink.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_unreachable_endpoint_never_raises_into_user_code(short_export_timeout, protocol):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    telemetry = agentwatch.init(endpoint=endpoint, protocol=protocol, gpu_interval=None, max_queue_size=16)

    @agentwatch.agent("a")
    def run(i):
        agentwatch.credentials.use("k", resource="r")
        return i * 2

    started = time.perf_counter()
    assert [run(i) for i in range(100)] == [i * 2 for i in range(100)]
    assert time.perf_counter() - started < 2.0
    telemetry.flush(timeout_s=5)
    telemetry.shutdown()
    agentwatch.flush()
    agentwatch.shutdown()
    assert run(3) == 6  # after shutdown, still just the function


def test_global_tracer_provider_is_set_only_when_none_was():
    code = """
import agentwatch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
first = agentwatch.init("svc", endpoint="http://127.0.0.1:9", gpu_interval=None)
assert trace.get_tracer_provider() is first.tracer_provider
second = agentwatch.init(tracer_provider=TracerProvider(), gpu_interval=None)
assert trace.get_tracer_provider() is first.tracer_provider
assert second.tracer_provider is not first.tracer_provider
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_decorated_code_runs_without_init():
    code = """
import agentwatch
@agentwatch.agent("a")
def run(x):
    agentwatch.record_usage(input_tokens=1)
    agentwatch.credentials.grant("k", tenant="t")
    return x + 1
assert run(1) == 2
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- GPU sampler -------------------------------------------------------------------
def fake_nvml(fail_init: bool = False):
    """A stand-in for pynvml: two GPUs, the second without power readings."""

    class NVMLError(Exception):
        pass

    def nvmlInit():
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    def power(handle):
        if handle == 1:
            raise NVMLError("Not Supported")
        return 250_000  # milliwatts

    def memory(handle, version=None):
        # v1 counts the driver's reservation as used; device 1's driver has no v2 call
        if version is None:
            return types.SimpleNamespace(used=2**30 + 480 * 2**20, total=80 * 2**30)
        if handle == 1:
            raise NVMLError("Function Not Found")
        return types.SimpleNamespace(used=2**30, total=80 * 2**30, reserved=480 * 2**20)

    def processes(handle):
        return [types.SimpleNamespace(pid=4242, usedGpuMemory=1024), types.SimpleNamespace(pid=7, usedGpuMemory=None)]

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=nvmlInit,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetUUID=lambda handle: f"GPU-{handle}",
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100" if handle == 0 else "NVIDIA H200",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=75 + handle, memory=10),
        nvmlMemory_v2=33554472,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetComputeRunningProcesses=processes,
    )


def metric_points(reader):
    points = {}
    for resource_metrics in reader.get_metrics_data().resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    return points


def test_gpu_sampler_emits_hardware_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    reader = InMemoryMetricReader()
    sampler = gpu.GpuSampler(MeterProvider(metric_readers=[reader]), interval_s=0.01)
    assert sampler.start()
    try:
        points = metric_points(reader)
    finally:
        sampler.stop()
    device0 = {"hw.id": "GPU-0", "hw.name": "NVIDIA H100", "hw.vendor": "NVIDIA", "hw.type": "gpu"}
    device1 = {**device0, "hw.id": "GPU-1", "hw.name": "NVIDIA H200"}
    assert sorted(points["hw.gpu.utilization"], key=lambda p: p[0]["hw.id"]) == [(device0, 0.75), (device1, 0.76)]
    memory_used = sorted(points["hw.gpu.memory.usage"], key=lambda p: p[0]["hw.id"])
    assert memory_used == [(device0, 2**30), (device1, 2**30 + 480 * 2**20)]  # v2 where the driver has it
    assert (device1, 80 * 2**30) in points["hw.gpu.memory.limit"]
    assert points["hw.power"] == [(device0, 250.0)]  # device 1 does not report power: left out
    assert ({**device0, "process.pid": 4242}, 1024) in points["process.gpu.memory.usage"]
    assert all(attrs["process.pid"] != 7 for attrs, _ in points["process.gpu.memory.usage"])
    assert not sampler.running


def test_gpu_sampler_stays_off_without_nvml_and_logs_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(fail_init=True))
    monkeypatch.setattr(gpu, "_unavailable_logged", False)
    caplog.set_level(logging.INFO, logger="agentwatch.sdk.gpu")
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    assert not gpu.GpuSampler(provider, 1.0).start()
    assert not gpu.GpuSampler(provider, 1.0).start()
    assert [r.getMessage() for r in caplog.records].count(
        "agentwatch GPU sampler off: NVML unavailable (Driver Not Loaded)"
    ) == 1


@pytest.mark.parametrize("nvml_works", [True, False])
def test_init_starts_the_gpu_sampler_only_when_nvml_initialises(monkeypatch, short_export_timeout, nvml_works):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(fail_init=not nvml_works))
    telemetry = agentwatch.init(endpoint="http://127.0.0.1:9", gpu_interval=60)
    try:
        assert isinstance(telemetry.meter_provider, MeterProvider)
        assert (telemetry.gpu_sampler is not None and telemetry.gpu_sampler.running) is nvml_works
    finally:
        telemetry.shutdown()
    assert telemetry.gpu_sampler is None or not telemetry.gpu_sampler.running

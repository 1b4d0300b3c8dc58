"""The SDK's guard against the real receiver: a halt in the store stops the calls it covers, in the agent's
own code path, whatever shape the agent has; a release lets them run again, in the same process."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import agentwatch
from agentwatch import cli
from agentwatch.collector.sdk.guard import Guard
from agentwatch.schemas import audit, halts
from tests.provider_server import ProviderServer
from tests.helpers import wait_for

POLL_S = 0.05


@pytest.fixture
def guarded(receiver):
    """`start(**init options)`: init joined to an in-memory provider, the guard polling the test receiver."""
    made = []

    def start(**options):
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        options = {"gpu_interval": None, "instrument": False, "guard": f"http://127.0.0.1:{receiver.http_port}",
                   "guard_interval": POLL_S, **options}
        telemetry = agentwatch.init(tracer_provider=provider, **options)
        made.append(telemetry)
        wait_for(lambda: telemetry.guard.state == "ok")
        telemetry.memory = memory
        telemetry.provider = provider
        return telemetry

    yield start
    for telemetry in made:
        telemetry.shutdown()


@pytest.fixture
def responder(dsn, database, monkeypatch):
    """`run("halt", "--tenant", ...)`: the `agentwatch` command line on the test store."""
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_DSN", dsn)
    monkeypatch.setenv("AGENTWATCH_DATABASE", database)
    return lambda *argv: cli.main(list(argv))


def halt(client, telemetry, tenant: str, scope: str, target: str, **fields) -> halts.Decision:
    """Write a halt and wait until the guard enforces it."""
    decision = halts.record(client, [halts.decision(tenant, scope, target, "halt", decided_by="cli:oncall",
                                                    reason="contain it", **fields)])[0]
    wait_for(lambda: any(v.halt_id == decision.halt_id for v in telemetry.guard.verdicts))
    return decision


@agentwatch.llm("gpt-4o-mini", provider="openai")
def think(prompt: str) -> str:
    return f"thought about {prompt}"


@agentwatch.tool()
def search(query: str) -> list[str]:
    return [query]


def test_a_halted_trace_stops_its_next_model_call_and_the_agent_span_says_why(guarded, client):
    telemetry = guarded(tenant="acme")
    started, halted_calls, made = threading.Event(), threading.Event(), []

    @agentwatch.agent("researcher")
    def researcher():
        trace_ids.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
        think("first")
        made.append(1)
        started.set()
        halted_calls.wait(30)
        think("second")  # the trace is halted by now
        made.append(2)

    trace_ids: list[str] = []
    caught: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(researcher, caught))
    worker.start()
    assert started.wait(30)
    decision = halt(client, telemetry, "acme", "trace", trace_ids[0], anomaly_id="f" * 32, kind="fanout",
                    summary="Runaway fan-out: 60 model calls")
    halted_calls.set()
    worker.join(30)

    (error,) = caught
    assert isinstance(error, agentwatch.AgentHalted)
    assert (error.anomaly_id, error.kind, error.summary) == ("f" * 32, "fanout", "Runaway fan-out: 60 model calls")
    assert (error.scope, error.target, error.halt_id, error.call) == ("trace", trace_ids[0], decision.halt_id, "model")
    assert made == [1]
    spans = {s.name: s for s in telemetry.memory.get_finished_spans()}
    assert "chat gpt-4o-mini" in spans and len([s for s in telemetry.memory.get_finished_spans()
                                                 if s.name == "chat gpt-4o-mini"]) == 1  # the halted call: no span
    agent_span = spans["invoke_agent researcher"]
    assert agent_span.status.status_code == StatusCode.ERROR
    (event,) = [e for e in agent_span.events if e.name == "agentwatch.halted"]
    assert event.attributes["agentwatch.halt.scope"] == "trace"
    assert event.attributes["agentwatch.halt.target"] == trace_ids[0]
    assert event.attributes["agentwatch.anomaly.id"] == "f" * 32
    assert event.attributes["agentwatch.halt.call"] == "model"
    assert telemetry.guard.halted_calls == 1

    # Another trace of the same tenant runs on.
    @agentwatch.agent("researcher")
    def fresh():
        return think("elsewhere")

    assert fresh() == "thought about elsewhere"


def test_a_person_halts_an_agent_everywhere_and_the_release_lets_it_carry_on(guarded, responder, client):
    telemetry = guarded(tenant="acme")

    @agentwatch.agent("crawler", agent_id="crawler-7")
    def crawler():
        return search("acme docs")

    @agentwatch.agent("writer", agent_id="writer-1")
    def writer():
        return think("draft")

    assert crawler() == ["acme docs"]
    assert responder("halt", "--tenant", "acme", "--agent", "crawler-7", "--reason", "credential leak",
                     "--by", "dana") == 0
    wait_for(lambda: "crawler-7" in {v.target for v in telemetry.guard.verdicts})
    with pytest.raises(agentwatch.AgentHalted) as halted:
        crawler()  # stopped at its own start: its id is halted
    assert (halted.value.scope, halted.value.decided_by, halted.value.reason) == ("agent", "cli:dana",
                                                                                    "credential leak")
    assert writer() == "thought about draft"  # other agents of the tenant are not affected

    assert responder("release", "--tenant", "acme", "--agent", "crawler-7") == 0
    wait_for(lambda: "crawler-7" not in {v.target for v in telemetry.guard.verdicts})
    assert crawler() == ["acme docs"]  # the same process, no restart
    assert responder("release", "--tenant", "acme", "--agent", "crawler-7") == 1  # nothing left to release
    # both decisions are in the audit log, under the person's name
    assert [(e.action, e.target) for e in audit.entries(client, actor="cli:dana")] == [("halt", "crawler-7")]
    assert [e.target for e in audit.entries(client, action="release", tenant="acme")][:1] == ["crawler-7"]


def test_a_tenant_over_budget_loses_its_model_calls_not_its_tools(guarded, client):
    telemetry = guarded(tenant="globex")

    @agentwatch.agent("analyst")
    def analyst():
        found = search("q3 numbers")
        try:
            think("q3")
        except agentwatch.AgentHalted as error:
            return found, error
        return found, None

    halt(client, telemetry, "globex", "tenant", "globex", calls="model", anomaly_id="c" * 32, kind="cost_spike")
    found, error = analyst()
    assert found == ["q3 numbers"] and error is not None and error.kind == "cost_spike"
    with agentwatch.tenant("initech"):  # this process serves another tenant too: its calls go on
        assert analyst() == (["q3 numbers"], None)


def test_every_shape_of_agent_is_stopped_in_its_own_code_path(guarded, client):
    telemetry = guarded(tenant="acme")

    @agentwatch.llm("gpt-4o-mini")
    async def athink(prompt):
        return prompt

    @agentwatch.llm("gpt-4o-mini")
    def stream(prompt):
        yield from prompt.split()

    @agentwatch.llm("gpt-4o-mini")
    async def astream(prompt):
        for word in prompt.split():
            yield word

    def context_manager():
        with agentwatch.llm("gpt-4o-mini"):
            return "unreachable"

    async def consume():
        return [word async for word in astream("a b")]

    outcomes: dict[str, str] = {}

    def attempt(name, run):
        try:
            run()
            outcomes[name] = "ran"
        except agentwatch.AgentHalted:
            outcomes[name] = "halted"

    @agentwatch.agent("shapes", agent_id="shapes-1")
    def shapes():
        attempt("function", lambda: think("x"))
        attempt("coroutine", lambda: asyncio.run(athink("x")))
        attempt("generator", lambda: list(stream("a b")))
        attempt("async generator", lambda: asyncio.run(consume()))
        attempt("with block", context_manager)
        with ThreadPoolExecutor(2) as pool:  # the context goes with the work
            attempt("thread pool", lambda: pool.submit(contextvars.copy_context().run, think, "x").result())

        async def task_group():
            await asyncio.gather(*(athink(str(k)) for k in range(3)))

        attempt("asyncio tasks", lambda: asyncio.run(task_group()))

    shapes()
    assert set(outcomes.values()) == {"ran"}
    halt(client, telemetry, "acme", "agent", "shapes-1", calls="model")
    outcomes.clear()
    shapes()  # calls="model": the agent starts; every model call of it is stopped, each where it is made
    assert outcomes == dict.fromkeys(["function", "coroutine", "generator", "async generator", "with block",
                                      "thread pool", "asyncio tasks"], "halted")


def test_an_instrumentations_span_in_a_halted_trace_stops_its_call_before_the_request(guarded, client):
    provider_server = ProviderServer()
    try:
        telemetry = guarded(tenant="acme", instrument=["openai"])
        assert "openai" in telemetry.instrumented
        model = openai.OpenAI(base_url=f"{provider_server.url}/v1", api_key="test-key")
        http = telemetry.provider.get_tracer("some.http.instrumentation")  # any other instrumentation
        started, go, trace_ids = threading.Event(), threading.Event(), []

        def ask():
            return model.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        def fetch():
            with http.start_as_current_span("GET /orders"):
                return "orders"

        @agentwatch.agent("support")
        def support():  # calls the client directly: only the instrumentation's span can be checked
            trace_ids.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
            ask()
            started.set()
            go.wait(30)
            outcomes = {}
            for name, call in (("openai", ask), ("http", fetch)):
                try:
                    call()
                    outcomes[name] = "ran"
                except agentwatch.AgentHalted as error:
                    outcomes[name] = f"halted {error.call}"
            return outcomes

        with ThreadPoolExecutor(1) as pool:
            outcome = pool.submit(support)
            assert started.wait(30)
            halt(client, telemetry, "acme", "trace", trace_ids[0])
            go.set()
            assert outcome.result(30) == {"openai": "halted model", "http": "halted other"}
        assert len(provider_server.requests) == 1  # the halted call sent no request
        # Outside any agent, a span that is no GenAI call is never stopped.
        assert fetch() == "orders"
    finally:
        provider_server.stop()


def test_verdicts_are_held_through_a_blip_then_dropped():
    """Fail-open: a receiver gone for longer than hold_s no longer halts anything."""
    verdicts = {"tenant": None, "verdicts": [{"halt_id": "h1", "tenant": "acme", "scope": "agent",
                                               "target": "bot-1", "action": "halt", "calls": "all"}]}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            body = json.dumps(verdicts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    guard = Guard(f"http://127.0.0.1:{server.server_address[1]}", hold_s=3, timeout_s=1)
    assert guard.refresh() and guard.state == "ok" and [v.target for v in guard.verdicts] == ["bot-1"]
    server.shutdown()
    server.server_close()
    assert not guard.refresh()
    assert guard.state == "unreachable" and [v.target for v in guard.verdicts] == ["bot-1"]  # a blip: held
    wait_for(lambda: not guard.refresh() and not guard.verdicts, timeout_s=10)
    assert guard.state == "unreachable" and guard.failures >= 2


# --- helpers --------------------------------------------------------------------------------------------

def _capture(run, caught: list) -> None:
    try:
        run()
    except BaseException as error:  # noqa: BLE001 - handed to the test thread
        caught.append(error)

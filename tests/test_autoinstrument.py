"""`agentwatch.init` alone captures every model call of the installed clients.

Each client library (openai, anthropic, google-genai) calls, through its own HTTP
client, a provider on loopback that answers in that provider's documented format,
whole and streamed (tests/provider_server.py). Spans go through the stock OTLP
exporter to the real receiver into the embedded store; the stored rows are checked:
tokens by kind, model, cost, agent, tenant and the messages, byte for byte.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from opentelemetry import trace
from opentelemetry.util._once import Once

import agentwatch
from agentwatch.collector.receiver.pricing import PROVIDER_IDS, reference_cost
from tests.provider_server import ANSWER, THOUGHT, ProviderServer

PROMPT = "Summarise the incident report for ticket 4711 — with the retry counts, exactly as logged."
MESSAGES = [{"role": "user", "content": PROMPT}]
GPT, CLAUDE, GEMINI = "gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.0-flash"
# Tokens by kind as the GenAI conventions count them (input includes cached reads, output
# includes reasoning), from the usage each provider reports in tests/provider_server.py.
OPENAI_TOKENS = (1200, 300, 200, 120)
ANTHROPIC_TOKENS = (1200, 250, 300, 0)
GEMINI_TOKENS = (1000, 250, 400, 50)
# Bedrock and the frameworks the test extra installs (tests/test_frameworks.py runs them).
OTHERS = {
    "bedrock": "opentelemetry-instrumentation-bedrock",
    "langchain": "openinference-instrumentation-langchain",
    "openai-agents": "opentelemetry-instrumentation-openai-agents",
}


@pytest.fixture(scope="module")
def provider():
    server = ProviderServer()
    yield server
    server.stop()


@pytest.fixture
def watch(receiver, monkeypatch):
    """`start(**init options)`: agentwatch.init as an agent process calls it, exporting to the receiver.

    An agent process has one init, and its provider becomes the global one (which the
    anthropic SDK's own tracing uses); the test process resets the global provider to get that.
    """
    for name in ("AGENTWATCH_INSTRUMENT", "AGENTWATCH_CAPTURE_CONTENT", "ANTHROPIC_OPEN_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    started = []

    def start(**options):
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
        options.setdefault("gpu_interval", None)
        telemetry = agentwatch.init("auto-agent", endpoint=f"http://127.0.0.1:{receiver.http_port}", **options)
        started.append(telemetry)
        return telemetry

    yield start
    for telemetry in started:
        telemetry.shutdown()
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def stored(receiver, client, tenant: str, where: str = "Operation IN ('chat', 'generate_content')") -> list[dict]:
    """agent_spans rows of the tenant (model calls by default), each with the span's messages."""
    agentwatch.flush()
    receiver.flush()
    rows = client.query(
        "SELECT Operation, Provider, Model, InputTokens, OutputTokens, CachedInputTokens, ReasoningTokens, "
        "CostUSD, AgentId, AgentName, Tenant, TraceId, SpanId FROM agent_spans "
        f"WHERE Tenant = {{t:String}} AND {where} ORDER BY Timestamp", parameters={"t": tenant}).named_results()
    out = []
    for row in rows:
        attributes = client.query(
            "SELECT SpanAttributes FROM otel_traces WHERE TraceId = {t:String} AND SpanId = {s:String}",
            parameters={"t": row["TraceId"], "s": row["SpanId"]}).result_rows[0][0]
        for column, key in (("input", "gen_ai.input.messages"), ("output", "gen_ai.output.messages")):
            row[column] = json.loads(attributes[key]) if key in attributes else None
        row["attributes"] = attributes
        out.append(row)
    return out


def tokens(row: dict) -> tuple:
    return row["InputTokens"], row["OutputTokens"], row["CachedInputTokens"], row["ReasoningTokens"]


def expected_cost(row: dict) -> float:
    provider = row["Provider"].lower()
    return float(reference_cost(row["Model"], PROVIDER_IDS.get(provider, provider), row["InputTokens"],
                                row["CachedInputTokens"], row["OutputTokens"]))


def assert_attributed(row: dict, agent_span: dict, tenant: str) -> None:
    assert (row["AgentId"], row["AgentName"], row["Tenant"]) == (agent_span["AgentId"], "triage", tenant)
    assert row["AgentId"]


def text_of(messages: list) -> str:
    """The text of the messages' text parts, joined (a streamed answer arrives in pieces). A message
    the decorator captured from its `messages` argument keeps the client's own format."""
    if all("parts" not in message for message in messages):
        return "".join(message["content"] for message in messages)
    return "".join(part["content"] for message in messages for part in message["parts"] if part["type"] == "text")


def the_prompt(messages: list) -> str:
    (message,) = messages
    assert message["role"] == "user"
    return text_of([message])


# --- the clients, called as an agent calls them ----------------------------------------------------
def call_openai(url: str, stream: bool) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="test-key")
    if not stream:
        return client.chat.completions.create(model=GPT, messages=MESSAGES).choices[0].message.content
    chunks = client.chat.completions.create(model=GPT, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def call_anthropic(url: str, stream: bool) -> str:
    client = anthropic.Anthropic(base_url=url, api_key="test-key")
    if not stream:
        return client.messages.create(model=CLAUDE, max_tokens=512, messages=MESSAGES).content[0].text
    events = client.messages.create(model=CLAUDE, max_tokens=512, messages=MESSAGES, stream=True)
    return "".join(e.delta.text for e in events if e.type == "content_block_delta")


def call_gemini(url: str, stream: bool) -> str:
    client = genai.Client(api_key="test-key", http_options=genai_types.HttpOptions(base_url=url))
    if not stream:
        return client.models.generate_content(model=GEMINI, contents=PROMPT).text
    return "".join(chunk.text or "" for chunk in client.models.generate_content_stream(model=GEMINI, contents=PROMPT))


CALLS = {"openai": call_openai, "anthropic": call_anthropic, "google-genai": call_gemini}


def run_agent(call, url: str, stream: bool, tenant: str) -> None:
    @agentwatch.agent("triage")
    def triage():
        assert call(url, stream) == ANSWER

    with agentwatch.tenant(tenant):
        triage()


def agent_row(receiver, client, tenant: str) -> dict:
    (row,) = stored(receiver, client, tenant, "Operation = 'invoke_agent'")
    return row


# --- init alone --------------------------------------------------------------------------------
def test_init_enables_exactly_one_instrumentation_per_installed_client(watch, provider, receiver, client):
    telemetry = watch()
    # openai has three installed (official, OpenLLMetry, OpenInference): the official one is chosen.
    # The anthropic SDK traces itself: no instrumentation goes on top of it.
    assert telemetry.instrumented == {
        "openai": "opentelemetry-instrumentation-openai-v2",
        "anthropic": "anthropic",
        "google-genai": "opentelemetry-instrumentation-google-genai",
        **OTHERS,
    }
    tenant = new_tenant()
    for name, call in CALLS.items():
        run_agent(call, provider.url, False, tenant)
    rows = stored(receiver, client, tenant)
    # One span per call: OpenInference's and OpenLLMetry's openai instrumentations, installed too,
    # record nothing (switched off by an earlier init of the process, they are silenced).
    assert sorted(row["Provider"] for row in rows) == ["anthropic", "gemini", "openai"]
    (openai_row,) = [row for row in rows if row["Provider"] == "openai"]
    assert "openinference.span.kind" not in openai_row["attributes"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_chat_through_init_alone(watch, provider, receiver, client, stream):
    watch()
    tenant = new_tenant()
    run_agent(call_openai, provider.url, stream, tenant)
    (row,) = stored(receiver, client, tenant)
    assert (row["Operation"], row["Provider"], row["Model"]) == ("chat", "openai", GPT)
    # The official instrumentation reports input and output tokens of chat completions (not their details).
    assert tokens(row)[:2] == OPENAI_TOKENS[:2]
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert the_prompt(row["input"]) == PROMPT
    assert text_of(row["output"]) == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_through_init_alone(watch, provider, receiver, client, stream):
    watch()
    tenant = new_tenant()
    run_agent(call_anthropic, provider.url, stream, tenant)
    (row,) = stored(receiver, client, tenant)
    assert (row["Operation"], row["Provider"], row["Model"]) == ("chat", "anthropic", CLAUDE)
    assert tokens(row) == ANTHROPIC_TOKENS  # cache reads added back into the input tokens
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert the_prompt(row["input"]) == PROMPT
    if not stream:  # the SDK's own tracing leaves a streamed answer's text out
        assert text_of(row["output"]) == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_gemini_through_init_alone(watch, provider, receiver, client, stream):
    watch()
    tenant = new_tenant()
    run_agent(call_gemini, provider.url, stream, tenant)
    (row,) = stored(receiver, client, tenant)
    assert (row["Operation"], row["Model"]) == ("generate_content", GEMINI)
    assert tokens(row) == GEMINI_TOKENS
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert the_prompt(row["input"]) == PROMPT
    assert text_of(row["output"]) == ANSWER


def test_content_capture_off_reaches_the_instrumentations(watch, provider, receiver, client):
    watch(capture_content=False)
    tenant = new_tenant()
    for call in CALLS.values():
        run_agent(call, provider.url, False, tenant)
    rows = stored(receiver, client, tenant)
    assert len(rows) == 3 and all(row["InputTokens"] > 0 for row in rows)
    for row in rows:
        assert not [key for key, value in row["attributes"].items() if PROMPT in value or ANSWER[:30] in value]


def test_instrument_chooses_or_switches_off(watch, provider, receiver, client):
    telemetry = watch(instrument={"openai": "openinference", "google-genai": False})
    assert telemetry.instrumented == {"openai": "openinference-instrumentation-openai", "anthropic": "anthropic",
                                      **OTHERS}
    tenant = new_tenant()
    run_agent(call_openai, provider.url, False, tenant)
    run_agent(call_gemini, provider.url, False, tenant)
    (row,) = stored(receiver, client, tenant)  # the Gemini call is not recorded
    assert row["attributes"]["openinference.span.kind"] == "LLM"
    assert (row["Model"], *tokens(row)) == (GPT, *OPENAI_TOKENS)
    assert row["CostUSD"] == pytest.approx(expected_cost(row))

    telemetry = watch(instrument=False)
    assert telemetry.instrumented == {}
    tenant = new_tenant()
    run_agent(call_openai, provider.url, False, tenant)
    assert stored(receiver, client, tenant) == []


def test_agentwatch_instrument_setting_says_the_same(watch, monkeypatch):
    monkeypatch.setenv("AGENTWATCH_INSTRUMENT", "openai=openinference,google-genai=off")
    assert watch().instrumented == {"openai": "openinference-instrumentation-openai", "anthropic": "anthropic",
                                    **OTHERS}
    monkeypatch.setenv("AGENTWATCH_INSTRUMENT", "false")
    assert watch().instrumented == {}
    assert watch(instrument=["google-genai"]).instrumented == {
        "google-genai": "opentelemetry-instrumentation-google-genai"}


def test_unknown_client_or_project_is_refused(watch):
    with pytest.raises(ValueError, match="unknown client"):
        watch(instrument=["opneai"])
    with pytest.raises(ValueError, match="must be one of"):
        watch(instrument={"openai": "langfuse"})


# --- @agentwatch.llm reads the response itself -------------------------------------------------
READS = [
    ("openai", False, call_openai, OPENAI_TOKENS),
    ("openai", True, call_openai, OPENAI_TOKENS),
    ("anthropic", False, call_anthropic, ANTHROPIC_TOKENS),
    ("anthropic", True, call_anthropic, ANTHROPIC_TOKENS),
    ("gcp.gen_ai", False, call_gemini, GEMINI_TOKENS),
    ("gcp.gen_ai", True, call_gemini, GEMINI_TOKENS),
]


def decorated(call_name: str, url: str, stream: bool):
    """The client call inside an @agentwatch.llm function that returns the response (or the stream)."""
    if call_name == "openai":
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="test-key")
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}

        @agentwatch.llm()
        def think(messages):
            return client.chat.completions.create(model=GPT, messages=messages, **extra)

        return think, lambda r: "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else \
            r.choices[0].message.content
    if call_name == "anthropic":
        client = anthropic.Anthropic(base_url=url, api_key="test-key")

        @agentwatch.llm()
        def think(messages):
            return client.messages.create(model=CLAUDE, max_tokens=512, messages=messages, stream=stream)

        return think, lambda r: "".join(e.delta.text for e in r if e.type == "content_block_delta") if stream else \
            r.content[0].text
    client = genai.Client(api_key="test-key", http_options=genai_types.HttpOptions(base_url=url))

    @agentwatch.llm()
    def think(messages):
        contents = messages[0]["content"]
        if stream:
            return client.models.generate_content_stream(model=GEMINI, contents=contents)
        return client.models.generate_content(model=GEMINI, contents=contents)

    return think, lambda r: "".join(c.text or "" for c in r) if stream else r.text


@pytest.mark.parametrize(("provider_name", "stream", "call", "expected"), READS,
                         ids=[f"{p}-{'streamed' if s else 'whole'}" for p, s, _, _ in READS])
def test_llm_decorator_reads_usage_from_the_response(watch, provider, receiver, client, monkeypatch,
                                                     provider_name, stream, call, expected):
    watch(instrument=False)  # nothing but the decorator:
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")  # not even the anthropic SDK's own tracing
    tenant = new_tenant()
    think, text = decorated(call.__name__.removeprefix("call_"), provider.url, stream)

    @agentwatch.agent("triage")
    def triage():
        assert text(think(MESSAGES)) == ANSWER

    with agentwatch.tenant(tenant):
        triage()
    (row,) = stored(receiver, client, tenant)
    assert row["attributes"]["gen_ai.provider.name"] == provider_name
    assert tokens(row) == expected
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert the_prompt(row["input"]) == PROMPT
    assert text_of(row["output"]) == ANSWER
    assert row["output"][0]["finish_reason"] in ("stop", "end_turn")


@pytest.mark.parametrize("traced", [False, True], ids=["decorator-alone", "with-sdk-tracing"])
def test_llm_decorator_reads_anthropic_stream_helper(watch, provider, receiver, client, monkeypatch, traced):
    if traced:
        watch()  # the anthropic SDK's own span of the request folds into the decorator's
    else:
        watch(instrument=False)
        monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    tenant = new_tenant()
    anthropic_client = anthropic.Anthropic(base_url=provider.url, api_key="test-key")

    @agentwatch.llm()
    def think(messages):
        return anthropic_client.messages.stream(model=CLAUDE, max_tokens=512, messages=messages)

    @agentwatch.agent("triage")
    def triage():
        with think(MESSAGES) as stream:  # the request is made here, inside the model call
            assert "".join(stream.text_stream) == ANSWER

    with agentwatch.tenant(tenant):
        triage()
    (row,) = stored(receiver, client, tenant)
    assert (row["Provider"], row["Model"], *tokens(row)) == ("anthropic", CLAUDE, *ANTHROPIC_TOKENS)
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert the_prompt(row["input"]) == PROMPT
    assert text_of(row["output"]) == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_llm_decorator_reads_openai_responses_api(watch, provider, receiver, client, stream):
    watch(instrument=False)
    tenant = new_tenant()
    openai_client = openai.OpenAI(base_url=f"{provider.url}/v1", api_key="test-key")

    @agentwatch.llm()
    def think(messages):
        return openai_client.responses.create(model=GPT, input=messages, stream=stream)

    with agentwatch.tenant(tenant):
        result = think(MESSAGES)
        if stream:
            assert [event.type for event in result][-1] == "response.completed"
        else:
            assert result.output_text == ANSWER
    (row,) = stored(receiver, client, tenant)
    assert (row["Model"], *tokens(row)) == (GPT, *OPENAI_TOKENS)
    assert row["output"] == [{"role": "assistant", "finish_reason": "stop", "parts": [
        {"type": "reasoning", "content": THOUGHT}, {"type": "text", "content": ANSWER}]}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_decorator_and_instrumentation_make_one_model_span(watch, provider, receiver, client, stream):
    watch()  # openai-v2 instruments the client the decorated function calls
    tenant = new_tenant()
    think, text = decorated("openai", provider.url, stream)

    @agentwatch.agent("triage")
    def triage():
        assert text(think(MESSAGES)) == ANSWER

    with agentwatch.tenant(tenant):
        triage()
    (row,) = stored(receiver, client, tenant)
    # The instrumentation's span is folded into the decorator's: its attributes are kept, and the
    # decorator adds what the instrumentation leaves out (the cached and reasoning tokens).
    assert row["attributes"]["gen_ai.response.id"] in ("chatcmpl-aw1", "chatcmpl-aw2")
    assert tokens(row) == OPENAI_TOKENS
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert text_of(row["output"]) == ANSWER
    spans = client.query("SELECT count() FROM otel_traces WHERE TraceId = {t:String}",
                         parameters={"t": row["TraceId"]}).result_rows[0][0]
    assert spans == 2  # the agent and one model span


def test_credential_events_and_tools_under_instrumented_spans_are_attributed(watch, provider, receiver, client):
    watch()
    tenant = new_tenant()
    framework = trace.get_tracer("a-framework")  # as LangChain's or CrewAI's instrumentation makes its spans

    @agentwatch.tool()
    def fetch_repo(name):
        agentwatch.credentials.use("gh-token-9", resource=f"repo:{name}", resource_tenant=tenant, action="read")
        return "ok"

    @agentwatch.agent("triage")
    def triage():
        with framework.start_as_current_span("chain run"):
            assert call_openai(provider.url, False) == ANSWER
            agentwatch.credentials.use("gh-token-9", resource="repo:acme/api", resource_tenant=tenant)
            fetch_repo("acme/web")

    with agentwatch.tenant(tenant):
        triage()
    agent = agent_row(receiver, client, tenant)
    (model,) = stored(receiver, client, tenant)
    (tool,) = stored(receiver, client, tenant, "Operation = 'execute_tool'")
    for row in (model, tool):
        assert_attributed(row, agent, tenant)
    events = client.query("SELECT AgentId, Tenant, Resource FROM credential_events WHERE Tenant = {t:String} "
                          "ORDER BY Resource", parameters={"t": tenant}).result_rows
    assert events == [(agent["AgentId"], tenant, "repo:acme/api"), (agent["AgentId"], tenant, "repo:acme/web")]


def test_anthropic_sdk_span_folds_into_the_decorators(watch, provider, receiver, client):
    watch()  # the anthropic SDK's own tracing records the call the decorated function makes
    tenant = new_tenant()
    think, text = decorated("anthropic", provider.url, False)
    with agentwatch.tenant(tenant):
        assert text(think(MESSAGES)) == ANSWER
    (row,) = stored(receiver, client, tenant)
    assert row["attributes"]["anthropic.message.stop_reason"] == "end_turn"  # the SDK span's, folded in
    assert tokens(row) == ANTHROPIC_TOKENS


def test_the_readme_first_example_records_the_model_call(watch, provider, receiver, client, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Instrument an agent"):]
    example = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    assert "record_usage" not in example
    monkeypatch.setenv("OPENAI_BASE_URL", f"{provider.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    watch(instrument=False)  # only to reset the process's global provider, as in a fresh agent process
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    namespace: dict = {}
    exec(example.replace("http://127.0.0.1:4318", f"http://127.0.0.1:{receiver.http_port}"), namespace)
    try:
        assert namespace["plan"](PROMPT) == ANSWER
        (row,) = stored(receiver, client, "acme")
        agent = agent_row(receiver, client, "acme")
    finally:
        agentwatch.shutdown()
    assert (row["Provider"], row["Model"], *tokens(row)[:2]) == ("openai", "gpt-4o", *OPENAI_TOKENS[:2])
    assert (row["AgentId"], row["AgentName"]) == (agent["AgentId"], "planner")
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert the_prompt(row["input"]) == PROMPT
    assert client.query("SELECT AgentId, CredentialId FROM credential_events WHERE Tenant = 'acme'").result_rows == [
        (agent["AgentId"], "github-token-7")]

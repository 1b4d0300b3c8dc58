"""`init(redact=...)` and `capture_content=False` reach what the instrumentations record.

Real clients through `init` alone (tests/provider_server.py on loopback), each
instrumentation writing messages its own way: openai-v2's and the anthropic
SDK's GenAI messages, OpenInference's flattened `llm.input_messages.*` and
`input.value`, a LangGraph agent's chains, model calls and tool. Nothing the
hook hides may reach the store, on any span.
"""

from __future__ import annotations

import pytest

import agentwatch
from tests.provider_server import ANSWER, TOOL_ARGUMENTS
from tests.test_autoinstrument import (  # noqa: F401 (fixtures)
    CALLS,
    MESSAGES,
    PROMPT,
    decorated,
    new_tenant,
    provider,
    run_agent,
    stored,
    text_of,
    the_prompt,
    watch,
)
from tests.test_frameworks import REPORT, run_triage

SECRET = "4711"  # the ticket number: in the prompt, the tool's arguments and the tool's report
MASK = "####"


def mask(value, secret: str = SECRET):
    """Hides the secret wherever it is in a value: text, a number, or inside parsed JSON."""
    if isinstance(value, str):
        return value.replace(secret, MASK)
    if isinstance(value, int) and str(value) == secret:
        return -1
    if isinstance(value, list):
        return [mask(item, secret) for item in value]
    if isinstance(value, dict):
        return {key: mask(item, secret) for key, item in value.items()}
    return value


class Hook:
    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.seen: dict[str, object] = {}

    def __call__(self, name, value):
        self.seen[name] = value
        return mask(value, self.secret)


def trace_attributes(client, tenant: str) -> list[dict]:
    """The attributes of every span the tenant's traces stored."""
    return [attributes for (attributes,) in client.query(
        "SELECT SpanAttributes FROM otel_traces WHERE TraceId IN "
        "(SELECT TraceId FROM agent_spans WHERE Tenant = {t:String})", parameters={"t": tenant}).result_rows]


def leaks(client, tenant: str, *secrets: str) -> list[str]:
    return [f"{key}={value[:80]}" for attributes in trace_attributes(client, tenant)
            for key, value in attributes.items() if any(secret in value for secret in secrets)]


@pytest.mark.parametrize("openai_family", ["opentelemetry", "openinference"])
def test_redaction_reaches_each_clients_instrumentation(watch, provider, receiver, client, openai_family):
    hook = Hook()
    watch(redact=hook, instrument={"openai": openai_family})
    tenant = new_tenant()
    for call in CALLS.values():
        run_agent(call, provider.url, False, tenant)
    rows = stored(receiver, client, tenant)
    assert len(rows) == 3 and all(row["InputTokens"] > 0 for row in rows)
    assert leaks(client, tenant, SECRET) == []
    for row in rows:
        if row["input"] is not None:  # OpenInference writes its own flattened messages instead
            assert the_prompt(row["input"]) == PROMPT.replace(SECRET, MASK)
        if row["output"] is not None:
            assert text_of(row["output"]) == ANSWER  # what the hook leaves as it was is kept
    # The hook sees a JSON document parsed, as the decorators hand it their values.
    assert isinstance(hook.seen["gen_ai.input.messages"], list)
    if openai_family == "openinference":
        assert "llm.input_messages.0.message.content" in hook.seen
        (openinference,) = [row for row in rows if row["Provider"] == "openai"]
        assert openinference["attributes"]["llm.input_messages.0.message.content"] == PROMPT.replace(SECRET, MASK)


def test_redaction_reaches_what_an_instrumentation_folds_into_the_decorators_span(watch, provider, receiver,
                                                                                  client):
    hook = Hook("revoked")  # a word of the answer this time: the instrumentation's span brings it
    watch(redact=hook, instrument={"openai": "opentelemetry"})
    tenant = new_tenant()
    think, text = decorated("openai", provider.url, False)
    with agentwatch.tenant(tenant):
        assert text(think(MESSAGES)) == ANSWER
    (row,) = stored(receiver, client, tenant)
    assert row["attributes"]["gen_ai.response.id"] == "chatcmpl-aw1"  # openai-v2's span, folded in
    assert text_of(row["output"]) == ANSWER.replace("revoked", MASK)
    assert leaks(client, tenant, "revoked") == []


def test_redaction_reaches_a_langgraph_agent(watch, provider, receiver, client):
    hook = Hook()
    watch(redact=hook, instrument={"openai": "opentelemetry", "langchain": "openinference"})
    tenant = new_tenant()
    assert run_triage(provider.url, False, tenant) == [TOOL_ARGUMENTS["ticket_id"]]
    assert leaks(client, tenant, SECRET) == []
    (tool_row,) = stored(receiver, client, tenant, "Operation = 'execute_tool'")
    assert tool_row["attributes"]["input.value"] == '{"ticket_id":-1}'
    tool_turn, answer_turn = stored(receiver, client, tenant)
    assert the_prompt(tool_turn["input"]) == PROMPT.replace(SECRET, MASK)
    assert text_of(answer_turn["output"]) == ANSWER


def test_a_failing_hook_drops_the_content(watch, provider, receiver, client):
    def broken(name, value):
        raise RuntimeError("redactor bug")

    watch(redact=broken, instrument={"openai": "opentelemetry"})
    tenant = new_tenant()
    run_agent(CALLS["openai"], provider.url, False, tenant)
    (row,) = stored(receiver, client, tenant)
    assert row["InputTokens"] > 0 and row["input"] is None and row["output"] is None
    assert leaks(client, tenant, SECRET, ANSWER[:30]) == []


def test_content_capture_off_holds_for_a_langgraph_agent(watch, provider, receiver, client):
    watch(capture_content=False, instrument={"openai": "opentelemetry", "langchain": "openinference"})
    tenant = new_tenant()
    run_triage(provider.url, False, tenant)
    rows = stored(receiver, client, tenant)
    assert len(rows) == 2 and all(row["InputTokens"] > 0 for row in rows)
    assert leaks(client, tenant, PROMPT[:30], REPORT[:30], ANSWER[:30]) == []

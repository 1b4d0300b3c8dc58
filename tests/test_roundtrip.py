"""Decorated agent code, over real OTLP, into otel_traces, agent_spans and credential_events."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import agentwatch
from agentwatch.collector.receiver.pricing import reference_cost

REASONING = "".join(f"step {i}: weigh option {i % 17} against the budget, then " for i in range(160_000))
assert len(REASONING) > 8 * 1024 * 1024


@pytest.fixture(scope="module")
def telemetry(receiver):
    handle = agentwatch.init("roundtrip-agents", endpoint=f"http://127.0.0.1:{receiver.http_port}",
                             tenant="acme", gpu_interval=None)
    yield handle
    agentwatch.shutdown()


@agentwatch.tool()
def lookup_invoice(invoice_id: str) -> dict:
    agentwatch.credentials.use("erp-token", resource="erp/invoices", resource_tenant="acme", action="read",
                               credential_tenant="acme")
    return {"invoice_id": invoice_id, "amount": 1250.0}


@agentwatch.llm(model="o3", provider="openai")
def think(messages: list[dict]) -> str:
    agentwatch.record_usage(input_tokens=20_000, cached_input_tokens=5_000, output_tokens=9_000,
                            reasoning_tokens=8_000,
                            output_messages=[{"role": "assistant", "parts": [
                                {"type": "reasoning", "content": REASONING},
                                {"type": "text", "content": "Refund approved."}]}])
    return "Refund approved."


@agentwatch.agent("auditor")
async def auditor(invoice_id: str) -> str:
    return think([{"role": "user", "content": f"check {lookup_invoice(invoice_id)}"}])


@agentwatch.agent("planner")
def planner(invoice_id: str) -> str:
    agentwatch.credentials.grant("erp-token", tenant="acme", scope="invoices:read")
    return asyncio.run(auditor(invoice_id))


def test_decorated_agents_round_trip_with_tree_tokens_cost_and_whole_reasoning(telemetry, receiver, client):
    assert planner("INV-77") == "Refund approved."
    assert telemetry.flush()
    receiver.flush()

    spans = client.query(
        "SELECT SpanId, ParentSpanId, Operation, AgentName, AgentId, ToolName, Model, InputTokens, "
        "CachedInputTokens, OutputTokens, ReasoningTokens, CostUSD, Tenant, TraceId "
        "FROM agent_spans WHERE ServiceName = 'roundtrip-agents' ORDER BY Timestamp").result_rows
    assert [row[2] for row in spans] == ["invoke_agent", "invoke_agent", "execute_tool", "chat"]
    by_id = {row[0]: row for row in spans}
    planner_span, auditor_span, tool_span, chat_span = spans
    # The tree: planner -> auditor -> (tool, chat), one trace, one tenant.
    assert planner_span[1] == ""
    assert auditor_span[1] == planner_span[0]
    assert tool_span[1] == auditor_span[0] and chat_span[1] == auditor_span[0]
    assert len({row[13] for row in spans}) == 1 and {row[12] for row in spans} == {"acme"}
    # Child spans are attributed to the innermost agent.
    assert (planner_span[3], auditor_span[3]) == ("planner", "auditor")
    assert tool_span[4] == chat_span[4] == auditor_span[4] != planner_span[4]
    assert tool_span[5] == "lookup_invoice"
    assert chat_span[6:11] == ("o3", 20_000, 5_000, 9_000, 8_000)
    assert chat_span[11] == pytest.approx(float(reference_cost("o3", "openai", 20_000, 5_000, 9_000)))
    assert by_id[tool_span[0]][11] is None

    trace_id = spans[0][13]
    stored = client.query("SELECT SpanAttributes['gen_ai.output.messages'], SpanAttributes['gen_ai.tool.call.result']"
                          " FROM otel_traces WHERE TraceId = {t:String} AND SpanId IN ({c:String}, {u:String}) "
                          "ORDER BY SpanName", parameters={"t": trace_id, "c": chat_span[0], "u": tool_span[0]}
                          ).result_rows
    chat_messages = orjson.loads(stored[0][0])
    assert chat_messages[0]["parts"][0] == {"type": "reasoning", "content": REASONING}  # 8 MB, byte for byte
    assert orjson.loads(stored[1][1]) == {"invoice_id": "INV-77", "amount": 1250.0}

    events = client.query("SELECT Event, CredentialId, Scope, Resource, ResourceTenant, Action, AgentId, Tenant "
                          "FROM credential_events WHERE TraceId = {t:String} ORDER BY Timestamp",
                          parameters={"t": trace_id}).result_rows
    assert events == [
        ("grant", "erp-token", "invoices:read", "", "", "", planner_span[4], "acme"),
        ("use", "erp-token", "", "erp/invoices", "acme", "read", tool_span[4], "acme"),
    ]


def test_a_failing_tool_is_recorded_and_the_error_reaches_the_caller(telemetry, receiver, client):
    @agentwatch.tool("flaky_fetch")
    def flaky_fetch(url: str) -> str:
        raise TimeoutError(f"{url} did not answer")

    with pytest.raises(TimeoutError):
        flaky_fetch("https://example.invalid/slow")
    assert telemetry.flush()
    receiver.flush()
    rows = client.query("SELECT StatusCode, StatusMessage, SpanAttributes['error.type'], Events.Name "
                        "FROM otel_traces WHERE SpanName = 'execute_tool flaky_fetch'").result_rows
    assert len(rows) == 1
    status, message, error_type, events = rows[0]
    assert status == "Error" and "did not answer" in message
    assert error_type == "TimeoutError" and "exception" in events

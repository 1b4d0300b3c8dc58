"""Agent frameworks and Amazon Bedrock through `agentwatch.init` alone, for real.

A LangGraph ReAct graph and an OpenAI Agents SDK agent, each with one tool, their
model calls going through the openai client to the loopback OpenAI-compatible
provider (tests/provider_server.py), which answers the first turn with a call of
the tool and the second with the final answer. The framework's instrumentation
and the openai client's both see each model call; the stored agent_spans rows
must hold each call once, with its tokens, model, cost and messages, the tool
call with its arguments, and the agent and tenant on every one of them. Bedrock:
boto3's own HTTP client calling the provider's Converse API.
"""

from __future__ import annotations

import asyncio
import json

import boto3
import openai
import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import agentwatch
from agentwatch.schemas.attributes import TOOL_ARGUMENTS_KEYS, first
from tests.provider_server import ANSWER, BEDROCK_USAGE, TOOL_ARGUMENTS, TOOL_CALL_USAGE
from tests.test_autoinstrument import (  # noqa: F401 (fixtures)
    GPT,
    OPENAI_TOKENS,
    PROMPT,
    agent_row,
    assert_attributed,
    call_openai,
    expected_cost,
    new_tenant,
    provider,
    stored,
    text_of,
    tokens,
    watch,
)

REPORT = "Ticket 4711: the nightly job retried 40 times with a revoked token."
LANGCHAIN = {  # the preferred one last: what later tests of the process find enabled
    "openllmetry": "opentelemetry-instrumentation-langchain",
    "openinference": "openinference-instrumentation-langchain",
}
TOOL_CALL_TOKENS = (TOOL_CALL_USAGE["prompt_tokens"], TOOL_CALL_USAGE["completion_tokens"], 0, 0)


def react_graph(url: str, stream: bool, looked_up: list):
    """The ReAct loop as LangGraph builds it: a model node, a tool node, and back until no tool is called."""

    @tool
    def lookup_ticket(ticket_id: int) -> str:
        """The incident report of a ticket."""
        looked_up.append(ticket_id)
        agentwatch.credentials.use("tickets-token", resource=f"ticket:{ticket_id}", action="read")
        return REPORT

    model = ChatOpenAI(model=GPT, base_url=f"{url}/v1", api_key="test-key", streaming=stream,
                       stream_usage=True).bind_tools([lookup_ticket])

    def agent(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([lookup_ticket]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def run_triage(url: str, stream: bool, tenant: str, run_async: bool = False) -> list:
    looked_up: list = []
    graph = react_graph(url, stream, looked_up)
    task = {"messages": [{"role": "user", "content": PROMPT}]}

    @agentwatch.agent("triage")
    def triage() -> str:
        return graph.invoke(task)["messages"][-1].content

    @agentwatch.agent("triage")
    async def triage_async() -> str:
        return (await graph.ainvoke(task))["messages"][-1].content

    with agentwatch.tenant(tenant):
        assert (asyncio.run(triage_async()) if run_async else triage()) == ANSWER
    return looked_up


def triage_row(receiver, client, tenant: str) -> dict:
    (row,) = stored(receiver, client, tenant, "SpanName = 'invoke_agent triage'")
    return row


@pytest.mark.parametrize("mode", ["whole", "streamed", "async"])
@pytest.mark.parametrize("family", list(LANGCHAIN))
def test_langgraph_react_agent_through_init_alone(watch, provider, receiver, client, family, mode):
    telemetry = watch(instrument={"langchain": family, "openai": "opentelemetry"})
    assert telemetry.instrumented["langchain"] == LANGCHAIN[family]
    assert telemetry.instrumented["openai"] == "opentelemetry-instrumentation-openai-v2"
    tenant = new_tenant()
    assert run_triage(provider.url, mode == "streamed", tenant, mode == "async") == [TOOL_ARGUMENTS["ticket_id"]]

    agent = triage_row(receiver, client, tenant)
    expected_agent = (agent["AgentId"], "triage", tenant)
    # One row per model call: the framework's model span and the openai client's are one call.
    calls = stored(receiver, client, tenant)
    assert len(calls) == 2
    for row in calls:
        assert (row["Operation"], row["Provider"], row["Model"]) == ("chat", "openai", GPT)
        assert row["CostUSD"] == pytest.approx(expected_cost(row))
        assert (row["AgentId"], row["AgentName"], row["Tenant"]) == expected_agent
    tool_turn, answer_turn = calls
    assert tokens(tool_turn) == TOOL_CALL_TOKENS
    # OpenLLMetry's LangChain instrumentation (0.62) reports the cached tokens but not the reasoning part
    # of the output tokens, and the openai-v2 span folded into it neither (the cost is the same).
    assert tokens(answer_turn) == (OPENAI_TOKENS[:3] + (0,) if family == "openllmetry" else OPENAI_TOKENS)
    assert text_of(tool_turn["input"]) == PROMPT
    (call,) = [part for message in tool_turn["output"] for part in message["parts"] if part["type"] == "tool_call"]
    assert (call["name"], call["arguments"]) == ("lookup_ticket", TOOL_ARGUMENTS)
    assert REPORT in json.dumps(answer_turn["input"])
    assert text_of(answer_turn["output"]) == ANSWER

    (tool_row,) = stored(receiver, client, tenant, "Operation = 'execute_tool'")
    assert client.query("SELECT ToolName FROM agent_spans WHERE SpanId = {s:String}",
                        parameters={"s": tool_row["SpanId"]}).result_rows == [("lookup_ticket",)]
    assert json.loads(first(tool_row["attributes"], TOOL_ARGUMENTS_KEYS)) == TOOL_ARGUMENTS
    assert (tool_row["AgentId"], tool_row["AgentName"], tool_row["Tenant"]) == expected_agent
    assert client.query("SELECT AgentId, Tenant, CredentialId, Resource FROM credential_events "
                        "WHERE Tenant = {t:String}", parameters={"t": tenant}).result_rows == [
        (agent["AgentId"], tenant, "tickets-token", "ticket:4711")]
    # Every span of the run, the framework's chains and nodes included, is the tenant's and the agent's,
    # but for an agent span of the framework's own with an id of its own (OpenLLMetry's LangGraph run).
    rows = client.query("SELECT Operation, AgentId, Tenant FROM agent_spans WHERE TraceId = {t:String}",
                        parameters={"t": agent["TraceId"]}).result_rows
    assert len(rows) > 5 and {row_tenant for _, _, row_tenant in rows} == {tenant}
    assert {agent_id for operation, agent_id, _ in rows if operation != "invoke_agent"} == {agent["AgentId"]}


def test_a_later_init_switching_the_instrumentation_records_with_the_new_one_only(watch, provider, receiver,
                                                                                  client):
    # OpenLLMetry's LangChain instrumentation (0.62) leaves its wrappers in place when removed.
    for family in ("openllmetry", "openinference", "openllmetry", "openinference"):
        watch(instrument={"langchain": family, "openai": "opentelemetry"})
        tenant = new_tenant()
        run_triage(provider.url, False, tenant)
        calls = stored(receiver, client, tenant)
        assert len(calls) == 2
        assert {"openinference.span.kind" in row["attributes"] for row in calls} == {family == "openinference"}
        assert len(stored(receiver, client, tenant, "Operation = 'execute_tool'")) == 1


@pytest.mark.parametrize("family", list(LANGCHAIN))
def test_a_client_call_in_a_langgraph_node_stays_its_own_model_call(watch, provider, receiver, client, family):
    """Not every open framework span around a client's call is a model call: a node's is not."""
    watch(instrument={"langchain": family, "openai": "opentelemetry"})
    tenant = new_tenant()

    def summarise(state: MessagesState) -> dict:
        return {"messages": [{"role": "assistant", "content": call_openai(provider.url, False)}]}

    graph = StateGraph(MessagesState)
    graph.add_node("summarise", summarise)
    graph.add_edge(START, "summarise")
    graph = graph.compile()

    @agentwatch.agent("triage")
    def triage() -> str:
        return graph.invoke({"messages": [{"role": "user", "content": PROMPT}]})["messages"][-1].content

    with agentwatch.tenant(tenant):
        assert triage() == ANSWER
    (row,) = stored(receiver, client, tenant)
    assert row["attributes"]["gen_ai.response.id"] == "chatcmpl-aw1"  # the openai client's own span
    assert tokens(row)[:2] == OPENAI_TOKENS[:2]
    assert_attributed(row, triage_row(receiver, client, tenant), tenant)
    nodes = stored(receiver, client, tenant, "SpanName IN ('summarise', 'execute_task summarise')")
    assert len(nodes) == 1 and "gen_ai.response.id" not in nodes[0]["attributes"]


def test_openai_agents_sdk_agent_through_init_alone(watch, provider, receiver, client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the SDK's own trace export to OpenAI stays off
    telemetry = watch(instrument={"openai": "opentelemetry"})
    assert telemetry.instrumented["openai-agents"] == "opentelemetry-instrumentation-openai-agents"
    tenant = new_tenant()
    looked_up = []

    @function_tool
    def lookup_ticket(ticket_id: int) -> str:
        """The incident report of a ticket."""
        looked_up.append(ticket_id)
        return REPORT

    model = OpenAIChatCompletionsModel(model=GPT, openai_client=openai.AsyncOpenAI(
        base_url=f"{provider.url}/v1", api_key="test-key"))
    responder = Agent(name="responder", instructions="Answer from the incident report.", model=model,
                      tools=[lookup_ticket])

    @agentwatch.agent("triage")
    def triage(task: str) -> str:
        return Runner.run_sync(responder, task).final_output

    with agentwatch.tenant(tenant):
        assert triage(PROMPT) == ANSWER
    assert looked_up == [TOOL_ARGUMENTS["ticket_id"]]
    agent = triage_row(receiver, client, tenant)
    calls = stored(receiver, client, tenant)
    assert len(calls) == 2  # the SDK's model span and the openai client's are one call
    for row in calls:
        assert (row["Operation"], row["Provider"], row["Model"]) == ("chat", "openai", GPT)
        assert row["CostUSD"] == pytest.approx(expected_cost(row))
        assert_attributed(row, agent, tenant)
    tool_turn, answer_turn = calls
    assert tokens(tool_turn)[:2] == TOOL_CALL_TOKENS[:2]
    assert tokens(answer_turn)[:2] == OPENAI_TOKENS[:2]
    assert PROMPT in text_of([m for m in tool_turn["input"] if m["role"] == "user"])
    assert text_of(answer_turn["output"]) == ANSWER
    (tool_row,) = stored(receiver, client, tenant, "Operation = 'execute_tool'")
    assert json.loads(first(tool_row["attributes"], TOOL_ARGUMENTS_KEYS)) == TOOL_ARGUMENTS
    assert_attributed(tool_row, agent, tenant)


def test_bedrock_converse_through_init_alone(watch, provider, receiver, client):
    telemetry = watch()
    assert telemetry.instrumented["bedrock"] == "opentelemetry-instrumentation-bedrock"
    tenant = new_tenant()
    bedrock = boto3.client("bedrock-runtime", endpoint_url=provider.url, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")

    @agentwatch.agent("triage")
    def triage(task: str) -> str:
        reply = bedrock.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                                 messages=[{"role": "user", "content": [{"text": task}]}])
        return reply["output"]["message"]["content"][0]["text"]

    with agentwatch.tenant(tenant):
        assert triage(PROMPT) == ANSWER
    (row,) = stored(receiver, client, tenant)
    # OpenLLMetry names the model without Bedrock's vendor prefix ("anthropic.").
    assert (row["Operation"], row["Provider"], row["Model"]) == ("chat", "aws.bedrock", "claude-3-haiku-20240307-v1:0")
    cached = BEDROCK_USAGE["cacheReadInputTokens"]
    assert tokens(row) == (BEDROCK_USAGE["inputTokens"] + cached, BEDROCK_USAGE["outputTokens"], cached, 0)
    assert row["CostUSD"] == pytest.approx(expected_cost(row))
    assert_attributed(row, agent_row(receiver, client, tenant), tenant)
    assert text_of(row["input"]) == PROMPT
    assert text_of(row["output"]) == ANSWER

"""The stock fleet: spans of the public conventions, sent by the stock OpenTelemetry SDK, as stored.

Twenty simulated minutes of ``agentwatch.demo.stock`` (GenAI / openai-v2,
OpenInference, OpenLLMetry spans; no agentwatch SDK) go over OTLP/HTTP into a
real receiver. Everything below is read back from ``agent_spans``,
``credential_events`` and ``otel_traces``: the typing of each convention, the
export order (a parent after its children), the fleet's shape, and each
labelled incident's magnitude against the normal it was drawn from, both
computed from the stored rows, not from the generator's constants.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentwatch.demo import stock
from agentwatch.schemas.attributes import TOOL_ARGUMENTS_KEYS
from tests.helpers import start_receiver

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
START_NS = 1_750_075_200 * NS  # Monday 2025-06-16 12:00 UTC
DURATION_S = 20 * 60
SEED = 7
PRICED_MODELS = {
    "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-2025-04-14", "o1-2024-12-17",
    "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-opus-4-1-20250805", "gemini-2.5-flash",
}


@pytest.fixture(scope="module")
def receiver(dsn, database):
    # short write batches, so that arrival order shows in IngestedAt
    running = start_receiver(dsn, database, flush_interval_s=0.02)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def run(receiver, client):
    result = stock.run_stock_fleet(endpoint=f"http://127.0.0.1:{receiver.http_port}", duration_s=DURATION_S,
                                   start_ns=START_NS, seed=SEED, flush_every=200)
    assert receiver.flush(timeout_s=120)
    return result


@pytest.fixture(scope="module")
def rows(run, client) -> list[dict]:
    """Every stored span: its agent_spans row, its convention and (tool spans) its arguments."""
    args = ", ".join(f"nullIf(o.SpanAttributes['{key}'], '')" for key in TOOL_ARGUMENTS_KEYS)
    result = client.query(
        "SELECT a.TraceId, a.SpanId, a.ParentSpanId, a.Tenant, a.ServiceName, a.AgentId, a.AgentName, a.Operation, "
        "a.ToolName, a.Provider, a.Model, a.InputTokens, a.OutputTokens, a.CostUSD, a.StatusCode, "
        "toUnixTimestamp64Nano(a.Timestamp) AS Start, a.Duration, toUnixTimestamp64Micro(a.IngestedAt) AS Ingested, "
        "multiIf(o.SpanAttributes['openinference.span.kind'] != '', 'openinference', "
        "o.SpanAttributes['traceloop.span.kind'] != '' OR o.SpanAttributes['llm.request.type'] != '', 'traceloop', "
        "o.SpanAttributes['gen_ai.operation.name'] != '', 'genai', '') AS Family, "
        f"coalesce({args}, '') AS Arguments, "
        "mapKeys(o.SpanAttributes) AS Keys "
        "FROM agent_spans AS a INNER JOIN otel_traces AS o ON a.TraceId = o.TraceId AND a.SpanId = o.SpanId")
    return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]


@pytest.fixture(scope="module")
def credential_uses(run, client) -> list[dict]:
    result = client.query("SELECT TraceId, SpanId, Tenant, AgentId, Event, CredentialId, CredentialTenant, Resource, "
                          "ResourceTenant, toUnixTimestamp64Nano(Timestamp) AS Ts FROM credential_events")
    return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]


@pytest.fixture(scope="module")
def traces(rows) -> dict[str, dict]:
    """Per trace, from the stored spans: start, kind (its first agent span's name), model calls, sub-agents,
    most identical tool calls, the root agent span."""
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_trace[r["TraceId"]].append(r)
    out = {}
    for trace_id, spans in by_trace.items():
        agents = sorted((s for s in spans if s["Operation"] == "invoke_agent"), key=lambda s: s["Start"])
        identical = Counter((s["ToolName"], s["Arguments"]) for s in spans if s["Operation"] == "execute_tool")
        out[trace_id] = {
            "spans": spans,
            "start": min(s["Start"] for s in spans),
            "end": max(s["Start"] + s["Duration"] for s in spans),
            "kind": agents[0]["AgentName"] if agents else "",
            "root_agent": agents[0] if agents else None,
            "calls": sum(s["Operation"] == "chat" for s in spans),
            "forks": len(agents) - 1,
            "max_identical": max(identical.values(), default=0),
        }
    return out


def _incident(run, kind: str):
    (incident,) = [i for i in run.incidents if i.kind == kind]
    return incident


def _nearest_agent(spans_by_id: dict[tuple[str, str], dict], trace_id: str, span_id: str) -> str:
    span = spans_by_id[(trace_id, span_id)]
    while span["Operation"] != "invoke_agent":
        span = spans_by_id[(trace_id, span["ParentSpanId"])]
    return span["SpanId"]


# --- the conventions, typed ---------------------------------------------------------------------------------

def test_all_three_conventions_are_stored_with_operation_model_tokens_and_names(run, rows):
    assert run.spans == len(rows) > 5_000
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_family[r["Family"]].append(r)
    assert set(by_family) == {"genai", "openinference", "traceloop"}
    for family, spans in by_family.items():
        operations = Counter(s["Operation"] for s in spans)
        assert {"chat", "execute_tool", "invoke_agent"} <= set(operations), (family, operations)
        chats = [s for s in spans if s["Operation"] == "chat" and s["StatusCode"] != "Error"]
        assert chats and all(s["Model"] in PRICED_MODELS for s in chats), family
        assert all(s["InputTokens"] > 0 and s["OutputTokens"] > 0 and s["Provider"] for s in chats), family
        assert all(s["CostUSD"] is not None and s["CostUSD"] > 0 for s in chats), family
        tools = [s for s in spans if s["Operation"] == "execute_tool"]
        assert all(s["ToolName"] and s["Arguments"].startswith("{") for s in tools), family
        agents = [s for s in spans if s["Operation"] == "invoke_agent"]
        assert all(s["AgentName"] in stock._KIND_BODIES or s["AgentName"] in stock._SUB_POOLS for s in agents)
        if family == "genai":
            assert all(s["AgentId"].startswith("asst_") for s in agents)
    # each convention's own spelling is what got typed
    genai_chat = next(s for s in by_family["genai"] if s["Operation"] == "chat" and s["StatusCode"] != "Error")
    assert "gen_ai.input.messages" in genai_chat["Keys"] and "gen_ai.agent.id" not in genai_chat["Keys"]
    assert any("gen_ai.system" in s["Keys"] and "gen_ai.provider.name" not in s["Keys"] for s in by_family["genai"])
    oi = by_family["openinference"]
    assert Counter(s["Operation"] for s in oi)["chain"] > 0  # LangGraph nodes between the agent and its calls
    oi_chat = next(s for s in oi if s["Operation"] == "chat" and s["StatusCode"] != "Error")
    assert {"llm.token_count.prompt", "llm.input_messages.0.message.role", "input.value"} <= set(oi_chat["Keys"])
    tl = by_family["traceloop"]
    assert {"invoke_workflow", "task"} <= {s["Operation"] for s in tl}
    assert any("gen_ai.usage.prompt_tokens" in s["Keys"] for s in tl)  # older OpenLLMetry names
    assert any("gen_ai.usage.input_tokens" in s["Keys"] for s in tl)
    assert any("gen_ai.prompt.0.content" in s["Keys"] for s in tl)


def test_only_agent_spans_name_an_agent(rows):
    calls = [r for r in rows if r["Operation"] in ("chat", "execute_tool")]
    assert len(calls) > 3_000
    assert all(r["AgentId"] == "" and r["AgentName"] == "" for r in calls)
    assert not any(k.startswith("gen_ai.agent.") for r in calls for k in r["Keys"])
    agents = [r for r in rows if r["Operation"] == "invoke_agent"]
    assert agents and all(r["AgentName"] for r in agents)


def test_credential_uses_are_span_events_without_an_agent(rows, credential_uses):
    assert len(credential_uses) > 500
    assert {u["Event"] for u in credential_uses} == {"use"}
    assert all(u["AgentId"] == "" for u in credential_uses)
    operations = {(r["TraceId"], r["SpanId"]): r["Operation"] for r in rows}
    carriers = Counter(operations[(u["TraceId"], u["SpanId"])] for u in credential_uses)
    assert set(carriers) == {"chat", "execute_tool"}  # on tool spans, and chat spans of vault-keyed services


# --- export order and the shape of the fleet --------------------------------------------------------------------

def test_a_span_reaches_the_store_after_its_children_and_the_root_last(rows, traces):
    children: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["ParentSpanId"]:
            children[(r["TraceId"], r["ParentSpanId"])].append(r)
    checked = later = 0
    for r in rows:
        kids = children.get((r["TraceId"], r["SpanId"]))
        if kids:
            assert r["Ingested"] >= max(k["Ingested"] for k in kids), r
            assert r["Start"] + r["Duration"] >= max(k["Start"] + k["Duration"] for k in kids)
            checked += 1
            later += r["Ingested"] > min(k["Ingested"] for k in kids)
    assert checked > 1_000
    assert later >= 10  # in other inserts than some of their children: the order shows
    forked = [t for t in traces.values() if t["forks"] >= 2]
    assert len(forked) > 20
    for t in forked:
        root = next(s for s in t["spans"] if not s["ParentSpanId"])
        assert root["Ingested"] == max(s["Ingested"] for s in t["spans"])
        chats = [s["Ingested"] for s in t["spans"] if s["Operation"] == "chat"]
        assert t["root_agent"]["Ingested"] >= max(chats)
        # the sub-agents' spans were exported before the root's
        subs = [s for s in t["spans"] if s["Operation"] == "invoke_agent" and s is not t["root_agent"]]
        assert min(s["Ingested"] for s in subs) <= root["Ingested"]


def test_some_normal_trees_stay_open_ten_minutes_or_more(run, traces):
    labelled = {i.trace_id for i in run.incidents}
    long_lived = [t for tid, t in traces.items() if tid not in labelled and t["end"] - t["start"] >= 10 * MINUTE]
    assert long_lived
    assert {t["kind"] for t in long_lived} == {"deploy-watcher"}


def test_tenants_services_and_traffic(run, rows):
    per_tenant = Counter(r["Tenant"] for r in rows)
    assert len(per_tenant) == stock.MAX_TENANTS
    assert min(per_tenant.values()) * 20 < max(per_tenant.values())  # one tiny tenant among larger ones
    services = defaultdict(set)
    for r in rows:
        services[r["Tenant"]].add(r["ServiceName"])
    assert max(len(s) for s in services.values()) == 2
    # tenants arriving mid-run send nothing before their time
    first = {tenant: min(r["Start"] for r in rows if r["Tenant"] == tenant) for tenant in per_tenant}
    for tenant in stock._TENANTS:
        if tenant.arrives:
            assert first[tenant.name] >= START_NS + tenant.arrives * DURATION_S * NS
    # some calls fail (rate limits, tool timeouts) and are retried
    errors = Counter(r["Operation"] for r in rows if r["StatusCode"] == "Error")
    assert errors["chat"] and errors["execute_tool"] and sum(errors.values()) < 0.05 * len(rows)
    assert min(r["Start"] for r in rows) >= START_NS


# --- labels -------------------------------------------------------------------------------------------------------

class _RecordingCollector:
    """An OTLP/HTTP endpoint on loopback that accepts everything and keeps the order spans arrived in."""

    def __init__(self) -> None:
        arrived: list[tuple[bytes, bytes, bytes, int]] = []  # (trace id, span id, parent span id, request)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server API)
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(arrived) and arrived[-1][3] + 1
                    arrived.extend((span.trace_id, span.span_id, span.parent_span_id, n)
                                   for resource_spans in request.resource_spans
                                   for scope_spans in resource_spans.scope_spans for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.arrived = arrived
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def test_same_seed_same_fleet_and_labels_and_every_span_sent_after_its_children(run):
    sink = _RecordingCollector()
    try:
        again = stock.run_stock_fleet(endpoint=sink.url, duration_s=DURATION_S, start_ns=START_NS, seed=SEED,
                                      flush_every=100)
    finally:
        sink.stop()
    assert again.spans == run.spans == len(sink.arrived)
    assert again.incidents == run.incidents
    # a span is exported when it ends: each one after all of its children (or in the same request,
    # where OTLP groups spans by instrumentation scope), the root of a trace in its last request
    request = {(trace, span): n for trace, span, _, n in sink.arrived}
    last_of_trace: dict[bytes, int] = {}
    later = 0
    for trace, span, parent, n in sink.arrived:
        if parent:
            assert request[(trace, parent)] >= n
            later += request[(trace, parent)] > n
        last_of_trace[trace] = max(n, last_of_trace.get(trace, 0))
    assert later > 500
    roots = {trace: request[(trace, span)] for trace, span, parent, _ in sink.arrived if not parent}
    assert roots == last_of_trace
    other = stock.plan_stock_fleet(duration_s=DURATION_S, start_ns=START_NS, seed=SEED + 1)
    assert {i.trace_id for i in other.incidents}.isdisjoint({i.trace_id for i in run.incidents})
    quiet = stock.plan_stock_fleet(duration_s=DURATION_S, start_ns=START_NS, seed=SEED, incidents=False)
    assert quiet.incidents == [] and quiet.spans < run.spans


def test_incidents_are_labelled_after_the_first_fifth_of_the_run(run, traces):
    assert sorted(i.kind for i in run.incidents) == sorted(stock.KINDS)
    for incident in run.incidents:
        assert incident.started_at_ns >= START_NS + DURATION_S * NS // 5
        assert incident.ended_at_ns > incident.started_at_ns
        assert "factor" in incident.description and "measured" in incident.description
        trace = traces[incident.trace_id]
        root = trace["root_agent"]
        assert incident.agent_id == (root["AgentId"] or root["AgentName"])
        assert incident.tenant == root["Tenant"] or incident.kind == "credential_fanout"
    assert _incident(run, "credential_fanout").credential_id
    assert _incident(run, "cross_tenant").credential_id


# --- magnitudes, from the stored rows ---------------------------------------------------------------------------

def _within(ratio: float) -> bool:
    return 3.0 <= ratio <= 10.0


def test_fanout_magnitude(run, traces):
    incident = _incident(run, "fanout")
    normal = [t for t in traces.values() if t["kind"] == "batch-enricher" and t["start"] < incident.started_at_ns]
    assert len(normal) >= 5
    trace = traces[incident.trace_id]
    mean_calls = sum(t["calls"] for t in normal) / len(normal)
    mean_forks = sum(t["forks"] for t in normal) / len(normal)
    assert _within(trace["calls"] / mean_calls), (trace["calls"], mean_calls)
    assert _within(trace["forks"] / mean_forks), (trace["forks"], mean_forks)
    assert trace["forks"] <= stock.FANOUT_MAX_FORKS
    per_minute = Counter(s["Start"] // MINUTE for s in trace["spans"] if s["Operation"] == "chat")
    assert max(per_minute.values()) < 1_000  # below the calls-per-minute guard rail too
    # a runaway tree: the root's agent span is open throughout and closes last
    root = trace["root_agent"]
    assert root["Start"] + root["Duration"] >= max(s["Start"] + s["Duration"] for s in trace["spans"]
                                                     if s["Operation"] != "invoke_workflow")


def test_loop_magnitude(run, traces):
    incident = _incident(run, "loop")
    normal = [t for t in traces.values() if t["kind"] == "support-agent" and t["start"] < incident.started_at_ns]
    assert len(normal) >= 20
    most = max(t["max_identical"] for t in normal)
    assert 2 <= most <= 3  # normal traces repeat a call 1-2 times
    repeats = traces[incident.trace_id]["max_identical"]
    assert _within(repeats / most), (repeats, most)
    assert repeats <= stock.LOOP_MAX_REPEATS


def test_cost_spike_magnitude(run, rows):
    incident = _incident(run, "cost_spike")
    start, end = incident.started_at_ns, incident.ended_at_ns
    before = max(run.started_at_ns, start - HOUR)

    def spend(a: int, b: int) -> float:
        return sum(r["CostUSD"] or 0 for r in rows if r["Tenant"] == incident.tenant and a <= r["Start"] < b)

    normal = spend(before, start) / (start - before) * MINUTE
    spike = spend(start, end) / (end - start) * MINUTE
    assert normal > 0
    assert _within(spike / normal), (spike, normal)
    assert spike < stock.COST_MAX_USD_PER_MINUTE
    models = {r["Model"] for r in rows if r["TraceId"] == incident.trace_id and r["Operation"] == "chat"}
    assert models & {"o1-2024-12-17", "claude-opus-4-1-20250805"}


def test_credential_fanout_magnitude(run, rows, credential_uses):
    incident = _incident(run, "credential_fanout")
    spans_by_id = {(r["TraceId"], r["SpanId"]): r for r in rows}
    uses = [(u["Ts"], _nearest_agent(spans_by_id, u["TraceId"], u["SpanId"]))
            for u in credential_uses if u["CredentialId"] == incident.credential_id]
    assert all(u["CredentialTenant"] == incident.tenant == u["ResourceTenant"]
               for u in credential_uses if u["CredentialId"] == incident.credential_id)

    def agents(a: int, b: int) -> int:
        return len({agent for ts, agent in uses if a <= ts < b})

    t = incident.started_at_ns
    window = 5 * MINUTE
    h0 = max(run.started_at_ns, t - HOUR)
    normal = max(agents(max(h0, t - (k + 1) * window), t - k * window)
                 for k in range(max(1, (t - h0) // window)))
    burst = agents(t, t + window)
    assert normal >= 1
    assert _within(burst / normal), (burst, normal)
    assert burst <= stock.CREDENTIAL_MAX_AGENTS


def test_cross_tenant_magnitude(run, rows, traces, credential_uses):
    incident = _incident(run, "cross_tenant")
    operations = {(r["TraceId"], r["SpanId"]): r["Operation"] for r in rows}
    tool_uses = Counter(u["TraceId"] for u in credential_uses
                        if operations[(u["TraceId"], u["SpanId"])] == "execute_tool")
    normal_traces = [tid for tid, t in traces.items()
                     if t["kind"] == "sql-analyst" and t["start"] < incident.started_at_ns]
    assert len(normal_traces) >= 5
    normal = sum(tool_uses[tid] for tid in normal_traces) / len(normal_traces)
    crossing = [u for u in credential_uses if u["Tenant"] != u["CredentialTenant"]]
    assert {u["TraceId"] for u in crossing} == {incident.trace_id}  # nothing else crosses tenants
    assert all(u["Tenant"] == incident.tenant and u["CredentialId"] == incident.credential_id
               and u["ResourceTenant"] == u["CredentialTenant"] != incident.tenant for u in crossing)
    assert _within(len(crossing) / normal), (len(crossing), normal)


def test_the_trace_finder_lists_agent_spans_as_agents_and_no_empty_agent(run, client):
    rows = client.query("SELECT TraceId, groupUniqArrayArray(Agents) FROM trace_summaries GROUP BY TraceId"
                        ).result_rows
    assert rows and all("" not in agents for _, agents in rows)
    # each agent span is an agent run (OpenInference and OpenLLMetry ones carry a name but no id; an
    # openai-v2 agent invoked twice in a trace keeps its id): between one agent and one per agent span
    spans = dict(client.query("SELECT TraceId, countIf(Operation = 'invoke_agent') FROM agent_spans "
                              "GROUP BY TraceId").result_rows)
    listed = {trace: len(agents) for trace, agents in rows}
    assert all(min(1, spans[t]) <= listed[t] <= spans[t] for t in spans)
    assert max(listed.values()) > 1  # trees of several agents are there

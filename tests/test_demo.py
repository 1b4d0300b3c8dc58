"""The demo fleet: its spans carry the ground truth its incident labels claim.

The fleet runs in fast-forward through the real SDK into an in-memory
exporter on our own TracerProvider (the OTel global provider can only be set
once per process, so spans are read from this provider, not the global one).
Trace and span ids come from a seeded id generator, reset before each run, so
that two runs with the same seed can be compared label for label.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict

import pytest
from genai_prices import Usage, calc_price
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator

import agentwatch
from agentwatch import demo

NS = 1_000_000_000
START_NS = 1_750_075_200 * NS  # 2025-06-16 12:00 UTC
DURATION_S = 1200
SEED = 7

OP = "gen_ai.operation.name"
AGENT_ID = "gen_ai.agent.id"
TENANT = "agentwatch.tenant.id"
USE = "agentwatch.credential.use"
GRANT = "agentwatch.credential.grant"


class SeededIds(IdGenerator):
    def __init__(self) -> None:
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


class Run:
    def __init__(self, result: demo.DemoResult, spans, wall_s: float) -> None:
        self.result = result
        self.spans = spans
        self.wall_s = wall_s
        self.by_trace = defaultdict(list)
        for s in spans:
            self.by_trace[f"{s.context.trace_id:032x}"].append(s)

    def incident(self, kind: str) -> demo.Incident:
        (found,) = [i for i in self.result.incidents if i.kind == kind]
        return found

    def credential_uses(self):
        """(span, event attributes) of every credential use."""
        return [(s, e.attributes) for s in self.spans for e in s.events if e.name == USE]


@pytest.fixture(scope="module")
def fleet():
    ids = SeededIds()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = demo.make_clock(START_NS)
    agentwatch.init("agentwatch-demo-test", tracer_provider=provider, clock=clock, gpu_interval=None)

    def run(**kwargs) -> Run:
        ids.reset(SEED)
        exporter.clear()
        began = time.monotonic()
        result = demo.run_fleet(duration_s=DURATION_S, seed=SEED, start_ns=START_NS, **kwargs)
        wall = time.monotonic() - began
        spans = exporter.get_finished_spans()
        exporter.clear()
        return Run(result, spans, wall)

    runs = {"incidents": run(), "again": run(), "normal": run(incidents=False)}
    runs["clock"] = clock
    runs["exporter"] = exporter
    yield runs
    provider.shutdown()


def test_labels_cover_every_kind_after_the_baseline(fleet):
    run = fleet["incidents"]
    result = run.result
    assert sorted(i.kind for i in result.incidents) == sorted(demo.KINDS)
    assert result.started_at_ns == START_NS
    assert result.ended_at_ns >= START_NS + DURATION_S * NS
    assert result.spans == len(run.spans)
    for incident in result.incidents:
        assert incident.started_at_ns >= START_NS + 0.2 * DURATION_S * NS, incident
        assert incident.started_at_ns < incident.ended_at_ns <= result.ended_at_ns
        assert len(incident.trace_id) == 32 and int(incident.trace_id, 16)
        assert incident.trace_id in run.by_trace, incident
        assert incident.tenant and incident.agent_id and incident.description
    assert len({i.incident_id for i in result.incidents}) == len(result.incidents)


def test_fanout_trace_is_12000_model_calls_under_15_sub_agents_in_two_minutes(fleet):
    run = fleet["incidents"]
    incident = run.incident("fanout")
    spans = run.by_trace[incident.trace_id]
    (root,) = [s for s in spans if s.parent is None]
    assert root.attributes[OP] == "invoke_agent" and root.attributes[AGENT_ID] == incident.agent_id
    subs = [s for s in spans if s.attributes.get(OP) == "invoke_agent" and s.parent is not None]
    assert all(s.parent.span_id == root.context.span_id for s in subs)
    sub_ids = {s.attributes[AGENT_ID] for s in subs}
    assert len(subs) == len(sub_ids) == 15
    assert all(s.attributes["agentwatch.agent.parent.id"] == incident.agent_id for s in subs)
    # each sub-agent was granted its own credential
    granted = {e.attributes["agentwatch.credential.id"] for s in subs for e in s.events if e.name == GRANT}
    assert len(granted) == 15
    chats = [s for s in spans if s.attributes.get(OP) == "chat" and s.attributes[AGENT_ID] in sub_ids]
    assert len(chats) >= 12_000
    assert {s.attributes[AGENT_ID] for s in chats} == sub_ids
    assert sum(1 for s in spans if s.attributes.get(OP) == "chat") - len(chats) <= 2  # the planner's own
    window = max(s.end_time for s in chats) - min(s.start_time for s in chats)
    assert window < 120 * NS
    assert incident.started_at_ns <= min(s.start_time for s in spans)
    assert max(s.end_time for s in spans) <= incident.ended_at_ns


def test_loop_trace_repeats_the_same_tool_call(fleet):
    run = fleet["incidents"]
    incident = run.incident("loop")
    calls = Counter((s.attributes["gen_ai.tool.name"], s.attributes["gen_ai.tool.call.arguments"])
                    for s in run.by_trace[incident.trace_id] if s.attributes.get(OP) == "execute_tool")
    (tool_and_args, count), = calls.most_common(1)
    assert count >= 40
    assert tool_and_args[0] == "http_get"
    assert all(s.attributes[AGENT_ID] == incident.agent_id
               for s in run.by_trace[incident.trace_id] if s.attributes.get(OP) == "execute_tool")


def _max_repeats(run: Run, skip: set[str] = frozenset()) -> int:
    worst = 0
    for trace_id, spans in run.by_trace.items():
        if trace_id in skip:
            continue
        calls = Counter((s.attributes["gen_ai.tool.name"], s.attributes["gen_ai.tool.call.arguments"])
                        for s in spans if s.attributes.get(OP) == "execute_tool")
        worst = max([worst, *calls.values()])
    return worst


def test_cross_tenant_trace_uses_another_tenants_credential_on_its_resources(fleet):
    run = fleet["incidents"]
    incident = run.incident("cross_tenant")
    uses = [(s, e) for s, e in run.credential_uses() if f"{s.context.trace_id:032x}" == incident.trace_id]
    foreign = [(s, e) for s, e in uses if e["agentwatch.credential.tenant.id"] != s.attributes[TENANT]]
    assert len(foreign) >= 2
    for span, event in foreign:
        assert span.attributes[TENANT] == incident.tenant
        assert span.attributes[AGENT_ID] == incident.agent_id
        assert event["agentwatch.credential.id"] == incident.credential_id
        victim = event["agentwatch.credential.tenant.id"]
        assert event["agentwatch.resource.tenant.id"] == victim != incident.tenant
        assert event["agentwatch.resource.name"].startswith(f"{victim}/")
    # Every foreign use in the run is one of the labelled incidents.
    labelled = {run.incident("cross_tenant").credential_id, run.incident("credential_fanout").credential_id}
    assert {e["agentwatch.credential.id"] for s, e in run.credential_uses()
            if e["agentwatch.credential.tenant.id"] != s.attributes[TENANT]} == labelled


def _agents_per_credential_window(run: Run, window_ns: int = 300 * NS) -> dict[str, tuple[int, int]]:
    """credential -> (most distinct agents in any window, distinct agent tenants overall)."""
    uses = defaultdict(list)
    for span, event in run.credential_uses():
        uses[event["agentwatch.credential.id"]].append((event_time(span, event), span.attributes[AGENT_ID],
                                                         span.attributes[TENANT]))
    out = {}
    for cred, items in uses.items():
        items.sort()
        best = 0
        for i, (t0, _, _) in enumerate(items):
            best = max(best, len({a for t, a, _ in items[i:] if t - t0 <= window_ns}))
        out[cred] = (best, len({tenant for _, _, tenant in items}))
    return out


def event_time(span, event_attributes) -> int:
    for e in span.events:
        if e.attributes is event_attributes:
            return e.timestamp
    raise AssertionError("event not found")


def test_credential_fanout_credential_is_used_by_many_agents_across_tenants(fleet):
    run = fleet["incidents"]
    incident = run.incident("credential_fanout")
    uses = [(s, e) for s, e in run.credential_uses() if e["agentwatch.credential.id"] == incident.credential_id]
    window = [(s, e) for s, e in uses if incident.started_at_ns <= event_time(s, e) <= incident.ended_at_ns]
    agents = {s.attributes[AGENT_ID] for s, _ in window}
    tenants = {s.attributes[TENANT] for s, _ in window}
    assert len(agents) >= 40
    assert len(tenants) >= 3 and incident.tenant in tenants
    assert incident.ended_at_ns - incident.started_at_ns <= 300 * NS
    per_credential = _agents_per_credential_window(run)
    assert per_credential[incident.credential_id][0] >= 40
    others = [best for cred, (best, _) in per_credential.items() if cred != incident.credential_id]
    assert max(others) * 2 <= len(agents)


def _tokens(span) -> int:
    return span.attributes.get("gen_ai.usage.input_tokens", 0) + span.attributes.get("gen_ai.usage.output_tokens", 0)


def test_cost_spike_agent_burns_far_more_per_minute_than_its_normal(fleet):
    run = fleet["incidents"]
    incident = run.incident("cost_spike")
    chats = [s for s in run.spans if s.attributes.get(OP) == "chat" and s.attributes.get(AGENT_ID) == incident.agent_id]
    spike = [s for s in chats if f"{s.context.trace_id:032x}" == incident.trace_id]
    normal = [s for s in chats if f"{s.context.trace_id:032x}" != incident.trace_id]
    assert len(spike) >= 8 and normal, "the spiking agent also has a normal baseline"
    spike_minutes = (incident.ended_at_ns - incident.started_at_ns) / 60 / NS
    assert spike_minutes >= 2.5
    spike_rate = sum(map(_tokens, spike)) / spike_minutes
    normal_rate = sum(map(_tokens, normal)) / (DURATION_S / 60)
    assert spike_rate >= 20 * normal_rate, (spike_rate, normal_rate)
    # expensive model, huge contexts, long reasoning
    models = {s.attributes["gen_ai.request.model"] for s in spike}
    assert models <= {"o1", "claude-opus-4-1", "gemini-2.5-pro"}
    assert min(s.attributes["gen_ai.usage.input_tokens"] for s in spike) >= 140_000
    assert min(s.attributes["gen_ai.usage.reasoning.output_tokens"] for s in spike) >= 6_000


def _busiest_agent_tokens_per_window(run: Run, skip: set[str], window_ns: int = 300 * NS) -> float:
    buckets = Counter()
    for s in run.spans:
        if s.attributes.get(OP) == "chat" and f"{s.context.trace_id:032x}" not in skip:
            buckets[(s.attributes[AGENT_ID], s.start_time // window_ns)] += _tokens(s)
    return max(buckets.values())


def test_normal_run_has_none_of_the_incidents(fleet):
    incident_run, normal = fleet["incidents"], fleet["normal"]
    assert normal.result.incidents == []
    assert normal.result.ended_at_ns - normal.result.started_at_ns >= DURATION_S * NS
    assert len(normal.spans) > 3000
    # no fan-out: no trace near 12,000 model calls, no planner with more than a handful of sub-agents
    for spans in normal.by_trace.values():
        assert sum(1 for s in spans if s.attributes.get(OP) == "chat") < 200
        assert sum(1 for s in spans if s.attributes.get(OP) == "invoke_agent") <= 5
    # no loops: a tool is never called with the same arguments more than twice in a trace
    assert _max_repeats(normal) <= 2
    loop = incident_run.incident("loop").trace_id
    assert _max_repeats(incident_run, {loop}) <= 2
    # no foreign credentials, every credential stays within its tenant and a few agents
    uses = normal.credential_uses()
    assert uses
    for span, event in uses:
        assert event["agentwatch.credential.tenant.id"] == span.attributes[TENANT]
        assert event["agentwatch.resource.tenant.id"] == span.attributes[TENANT]
    per_credential = _agents_per_credential_window(normal)
    assert all(tenants == 1 for _, tenants in per_credential.values())
    assert max(best for best, _ in per_credential.values()) < 20
    # no cost spike: even the busiest agent of the normal run burns far less per minute than the spike
    incident = incident_run.incident("cost_spike")
    spike = incident.trace_id
    spike_tokens = sum(_tokens(s) for s in incident_run.by_trace[spike] if s.attributes.get(OP) == "chat")
    spike_per_minute = spike_tokens / ((incident.ended_at_ns - incident.started_at_ns) / 60 / NS)
    busiest_per_minute = _busiest_agent_tokens_per_window(normal, set()) / 5
    assert spike_per_minute >= 4 * busiest_per_minute, (spike_per_minute, busiest_per_minute)
    # the same normal traffic runs underneath the incidents
    def shape(run: Run) -> Counter:
        return Counter((s.name, s.attributes.get(AGENT_ID), s.start_time, s.end_time) for s in run.spans)

    assert not shape(normal) - shape(incident_run)


def test_same_seed_gives_identical_labels(fleet):
    a, b = fleet["incidents"].result, fleet["again"].result
    assert [asdict(i) for i in a.incidents] == [asdict(i) for i in b.incidents]
    assert a.spans == b.spans
    assert a.run_id != b.run_id


def test_spans_look_like_a_real_fleet(fleet):
    run = fleet["normal"]
    chats = [s for s in run.spans if s.attributes.get(OP) == "chat"]
    tools = Counter(s.attributes["gen_ai.tool.name"] for s in run.spans if s.attributes.get(OP) == "execute_tool")
    assert set(tools) == {"search", "read_document", "run_sql", "http_get", "write_report"}
    tenants = Counter(s.attributes[TENANT] for s in run.spans)
    assert len(tenants) == 6 and max(tenants.values()) > 2 * min(tenants.values())
    # every model is one the price database knows, under its OTel provider name
    providers = {"openai": "openai", "anthropic": "anthropic", "gcp.gemini": "google"}
    models = {(s.attributes["gen_ai.provider.name"], s.attributes["gen_ai.request.model"],
               s.attributes["gen_ai.response.model"]) for s in chats}
    assert {m[0] for m in models} == set(providers)
    for provider, request, response in models:
        for model in (request, response):
            price = calc_price(Usage(input_tokens=1000, output_tokens=1000), model_ref=model,
                               provider_id=providers[provider])
            assert price.total_price > 0
    # token counts are consistent and messages are GenAI-shaped, reasoning included, whole
    reasoning_sizes = []
    for s in chats:
        a = s.attributes
        assert a["gen_ai.usage.input_tokens"] >= a.get("gen_ai.usage.cache_read.input_tokens", 0)
        assert a["gen_ai.usage.output_tokens"] >= a.get("gen_ai.usage.reasoning.output_tokens", 0)
        messages = json.loads(a["gen_ai.input.messages"])
        assert messages[0]["role"] == "user" and messages[0]["parts"]
        (out,) = json.loads(a["gen_ai.output.messages"])
        assert out["role"] == "assistant"
        for part in out["parts"]:
            if part["type"] == "reasoning":
                reasoning_sizes.append(len(part["content"]))
                assert len(part["content"]) >= 3 * a["gen_ai.usage.reasoning.output_tokens"]
    reasoning_sizes.sort()
    assert 1_000 <= reasoning_sizes[len(reasoning_sizes) // 2] <= 20_000  # a few KB typically
    assert reasoning_sizes[-1] >= 100_000  # occasionally hundreds of KB
    # span time is simulated: the run covers the requested period, durations are latencies
    assert min(s.start_time for s in run.spans) >= START_NS
    assert all(s.end_time >= s.start_time for s in run.spans)
    # credentials are granted to the agents that use them (except the leaked ones in incidents)
    assert any(e.name == GRANT for s in run.spans for e in s.events)


def test_daily_shape_follows_each_tenants_busy_hours():
    sim = demo._Sim(runtime=None, seed=SEED, tenants=demo._TENANTS[:6], duration_ns=24 * 3600 * NS,
                    start_ns=START_NS - 12 * 3600 * NS, fast_forward=True)
    per_hour = Counter()
    for offset, _, _ in sim.normal_events():
        per_hour[offset // (3600 * NS)] += 1
    assert len(per_hour) == 24
    assert max(per_hour.values()) >= 1.5 * min(per_hour.values())


def test_fast_forward_is_quick(fleet):
    # 20 simulated minutes with every incident, 12,000-call fan-out included
    run = fleet["incidents"]
    assert run.wall_s < 120, run.wall_s
    assert 15_000 <= len(run.spans) <= 40_000


def test_real_time_follows_the_wall_clock(fleet):
    clock, exporter = fleet["clock"], fleet["exporter"]
    exporter.clear()
    simulated_ns = clock()
    began_ns = time.time_ns()
    began = time.monotonic()
    # two minutes of fleet activity at 60x: traces start on the wall clock, latencies are slept
    result = demo.run_fleet(duration_s=120, fast_forward=False, incidents=False, tenants=2, speed=60)
    wall = time.monotonic() - began
    finished_ns = time.time_ns()
    spans = exporter.get_finished_spans()
    exporter.clear()
    assert result.spans == len(spans) > 0
    assert 2 <= wall < 90
    assert began_ns <= result.started_at_ns <= result.ended_at_ns <= finished_ns
    # the SDK holds the simulated clock: it followed the wall for this run, then went back
    assert all(began_ns <= s.start_time <= s.end_time <= finished_ns for s in spans)
    assert {s.attributes[TENANT] for s in spans} == {"acme", "globex"}
    assert clock() == clock() == simulated_ns
    # a sub-agent forked on another thread is still in its planner's trace and tenant
    subs = [s for s in spans if s.attributes.get(OP) == "invoke_agent" and s.parent is not None]
    ids = {s.context.span_id: s for s in spans}
    assert all(s.parent.span_id in ids and ids[s.parent.span_id].attributes[TENANT] == s.attributes[TENANT]
               for s in subs)


def test_incidents_to_json_and_demo_incidents_table(fleet, tmp_path):
    result = fleet["incidents"].result
    doc = json.loads(demo.incidents_to_json(result))
    assert doc["run_id"] == result.run_id and doc["spans"] == result.spans
    assert [i["kind"] for i in doc["incidents"]] == [i.kind for i in result.incidents]
    assert doc["incidents"][0]["trace_id"] == result.incidents[0].trace_id
    labels = tmp_path / "labels.json"
    labels.write_text(demo.incidents_to_json(result))
    # the embedded store allows one data path per process: write through a subprocess
    script = f"""
import json
from agentwatch import demo
from agentwatch.schemas import migrate, store
doc = json.load(open({str(labels)!r}))
client = store.connect("chdb://{tmp_path / 'ch'}", "demo_test")
migrate.apply(client)
incidents = [demo.Incident(**{{k: v for k, v in i.items() if k not in ("started_at", "ended_at")}})
             for i in doc["incidents"]]
demo.record_incidents(client, doc["run_id"], incidents)
rows = client.query("SELECT Kind, TraceId, CredentialId, toUnixTimestamp64Nano(StartedAt), "
                    "toUnixTimestamp64Nano(EndedAt) FROM demo_incidents WHERE RunId = {{r:String}} "
                    "ORDER BY StartedAt", parameters={{"r": doc["run_id"]}}).result_rows
print(json.dumps([list(r) for r in rows]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert rows == [[i.kind, i.trace_id, i.credential_id, i.started_at_ns, i.ended_at_ns] for i in result.incidents]

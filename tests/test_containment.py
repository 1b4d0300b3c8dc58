"""Containment end to end: a runaway agent, through the real SDK, receiver, detector worker and guard, is
stopped by AgentHalted soon after its anomaly is raised; a released agent carries on; with the receiver
down the agent is not affected. And the policy that turns anomalies into halts, on the real store."""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry.sdk.trace import TracerProvider

import agentwatch
from agentwatch import cli
from agentwatch.detectors.anomalies import Anomaly
from agentwatch.detectors.containment import Containment, Policy, Rule
from agentwatch.detectors.worker import DetectorConfig, DetectorWorker
from agentwatch.schemas import halts, migrate, store
from tests.helpers import wait_for

MAX_CALLS = 60  # the fanout guard rail of this test's detectors: model calls per trace
PACE_S = 0.01  # a model call takes this long
THREADS = 4
POLL_S = 1.0  # the guard's default interval
# Calls one runaway of THREADS loops can make between the anomaly and the halt: the guard's poll, the
# receiver's 250 ms cache, and slack for a machine shared with other work.
BOUND = int(THREADS * (POLL_S + 1.5) / PACE_S)
CAP = 2_000  # calls per loop if nothing stopped it (20 s)


# --- the pipeline: receiver (conftest), a detector worker running as `agentwatch detect` runs it -------------

@pytest.fixture(scope="module")
def worker(dsn, database, receiver):
    running = DetectorWorker(lambda: store.connect(dsn, database),
                             DetectorConfig(fanout_max_model_calls=MAX_CALLS, audit_interval_s=0))
    stop = threading.Event()
    thread = threading.Thread(target=running.run_forever, args=(stop, 0.1), daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(60)


@pytest.fixture
def agent_process(receiver):
    """`start(tenant)`: agentwatch.init as an agent process calls it, with the guard on at its defaults."""
    made = []

    def start(tenant: str, **options):
        options = {"gpu_interval": None, "instrument": False, "guard": True, **options}
        telemetry = agentwatch.init("runaway", endpoint=f"http://127.0.0.1:{receiver.http_port}", tenant=tenant,
                                    **options)
        made.append(telemetry)
        wait_for(lambda: telemetry.guard.state == "ok")
        return telemetry

    yield start
    for telemetry in made:
        telemetry.shutdown()


def detected_at(client, anomaly_id: str) -> float:
    rows = client.query("SELECT toUnixTimestamp64Milli(DetectedAt) FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                        parameters={"a": anomaly_id}).result_rows
    return rows[0][0] / 1000


def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


class Runaway:
    """A crawler that forks THREADS fetchers, each calling its model in a loop: runaway fan-out."""

    def __init__(self) -> None:
        self.calls: list[float] = []  # wall-clock time of every model call made

        @agentwatch.llm("gpt-4o-mini", provider="openai")
        def think(k: int) -> str:
            self.calls.append(time.time())
            time.sleep(PACE_S)
            agentwatch.record_usage(input_tokens=1_000, output_tokens=200)
            return f"page {k}"

        @agentwatch.llm("gpt-4o-mini", provider="openai")
        async def athink(k: int) -> str:
            self.calls.append(time.time())
            await asyncio.sleep(PACE_S)
            agentwatch.record_usage(input_tokens=1_000, output_tokens=200)
            return f"page {k}"

        @agentwatch.agent("fetcher")
        def fetcher() -> None:
            for k in range(CAP):
                think(k)

        @agentwatch.agent("fetcher")
        async def afetcher() -> None:
            for k in range(CAP):
                await athink(k)

        @agentwatch.agent("crawler")
        def crawler() -> None:
            with ThreadPoolExecutor(THREADS) as pool:
                work = [pool.submit(contextvars.copy_context().run, fetcher) for _ in range(THREADS)]
                for done in work:
                    done.result()  # a fetcher's AgentHalted comes out here

        @agentwatch.agent("crawler")
        async def acrawler() -> None:
            await asyncio.gather(*(afetcher() for _ in range(THREADS)))

        self.crawler, self.acrawler = crawler, acrawler


@pytest.mark.parametrize("flavour", ["threads", "asyncio"])
def test_a_runaway_agent_is_halted_within_a_poll_of_its_anomaly(flavour, worker, agent_process, client, receiver):
    telemetry = agent_process(new_tenant())
    runaway = Runaway()
    with pytest.raises(agentwatch.AgentHalted) as halted:
        runaway.crawler() if flavour == "threads" else asyncio.run(runaway.acrawler())
    stopped_at = time.time()
    error = halted.value
    assert (error.kind, error.scope, error.decided_by) == ("fanout", "trace", "policy")
    assert error.anomaly_id and "Runaway fan-out" in error.summary

    raised_at = detected_at(client, error.anomaly_id)
    after = [t for t in runaway.calls if t > raised_at]
    print(f"{flavour}: {len(runaway.calls)} calls, {len(after)} in the {stopped_at - raised_at:.2f}s after the "
          f"anomaly (bound {BOUND})")
    assert len(after) <= BOUND, f"{len(after)} calls in the {stopped_at - raised_at:.2f}s after the anomaly"
    assert len(runaway.calls) < THREADS * CAP / 4  # stopped long before it would have ended by itself
    # nothing after the halt: every loop stops at its next call
    assert max(runaway.calls) <= stopped_at

    # The halt is on record: the policy, the anomaly, its trace.
    (decision,) = [d for d in halts.for_anomalies(client, [error.anomaly_id]) if d.action == "halt"]
    assert (decision.scope, decision.target, decision.decided_by) == ("trace", error.target, "policy")
    # The halted calls are span events in the stored trace, and the guard's state a stored metric.
    assert telemetry.flush(30) and receiver.flush(30)
    events = client.query("SELECT count() FROM otel_traces WHERE TraceId = {t:String} "
                          "AND has(Events.Name, 'agentwatch.halted')", parameters={"t": error.target}).result_rows
    assert events[0][0] >= 1
    reachable = client.query("SELECT Value, Attributes['agentwatch.guard.state'] FROM otel_metrics_gauge "
                             "WHERE MetricName = 'agentwatch.guard.reachable' "
                             "AND ResourceAttributes['agentwatch.tenant.id'] = {t:String} ORDER BY TimeUnix",
                             parameters={"t": telemetry.guard.default_tenant}).result_rows
    assert reachable and reachable[-1] == (1, "ok"), (reachable, telemetry.guard.last_error)


def test_a_released_agent_carries_on_in_the_same_process(worker, agent_process, client, dsn, database, monkeypatch):
    """The policy halts a runaway trace; a person looks, releases it; the agent, retrying, finishes its work."""
    agent_process(tenant := new_tenant())
    progress = {"done": 0, "halted": 0, "until": CAP * THREADS}  # its work: until told how much is left
    halted = threading.Event()
    trace_ids: list[str] = []

    @agentwatch.llm("gpt-4o-mini", provider="openai")
    def think() -> None:
        time.sleep(PACE_S)

    @agentwatch.agent("batch")
    def batch() -> None:
        from opentelemetry import trace

        trace_ids.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
        while progress["done"] < progress["until"]:
            try:
                think()
                progress["done"] += 1
            except agentwatch.AgentHalted:
                progress["halted"] += 1
                halted.set()
                time.sleep(0.05)  # the agent's own back-off before it retries

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(batch)
        assert halted.wait(60), "the runaway was not halted"
        monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_DSN", dsn)
        monkeypatch.setenv("AGENTWATCH_DATABASE", database)
        assert cli.main(["release", "--tenant", tenant, "--trace", trace_ids[0], "--reason", "reviewed: a big crawl",
                         "--by", "dana"]) == 0
        released_at = progress["done"]
        progress["until"] = released_at + 50  # 50 more calls, then it is done
        running.result(120)
    assert progress["done"] == released_at + 50 and progress["halted"] >= 1
    # a person released it: the policy does not halt it again for the same anomaly, however it grows
    (in_force,) = halts.current(client, targets=[(tenant, "trace", trace_ids[0])])
    assert (in_force.action, in_force.decided_by) == ("release", "cli:dana")


def test_with_the_receiver_down_the_agent_is_not_affected():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    telemetry = agentwatch.init(tracer_provider=TracerProvider(), tenant="acme", gpu_interval=None, instrument=False,
                                guard=f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: telemetry.guard.state == "unreachable")

        @agentwatch.llm("gpt-4o-mini")
        def think(k: int) -> int:
            return k

        @agentwatch.agent("steady")
        def steady() -> int:
            return sum(think(k) for k in range(500))

        assert steady() == sum(range(500))
        assert telemetry.guard.state == "unreachable" and telemetry.guard.failures >= 1
        assert telemetry.guard.halted_calls == 0
    finally:
        telemetry.shutdown()


# --- the policy ----------------------------------------------------------------------------------------------

def anomaly(kind: str, tenant: str, *, trace: str = "", agent: str = "", severity: str = "critical",
            status: str = "open", evidence: dict | None = None) -> Anomaly:
    return Anomaly(uuid.uuid4().hex, kind, tenant, trace or agent, agent, trace, severity, 3.0, 0, 0,
                   int(time.time() * 1000), status=status, summary=f"a {kind} anomaly", evidence=evidence or {})


def trace_id() -> str:
    return uuid.uuid4().hex


def test_the_default_policy_halts_runaways_their_trace_budgets_their_tenant_and_cross_tenant_use_its_agent(client):
    tenant = new_tenant()
    fanout = anomaly("fanout", tenant, trace=trace_id(), agent="open:1f2e")  # root agent not arrived yet
    loop = anomaly("loop", tenant, trace=trace_id(), agent="poller-2", severity="warning")
    budget = anomaly("cost_spike", tenant, trace=trace_id(), evidence={"over_budget": True})
    spike = anomaly("cost_spike", tenant, evidence={"over_budget": False})  # learned baseline only: not halted
    crossing = anomaly("cross_tenant", tenant, trace=trace_id(), agent="thief-9")
    sharing = anomaly("credential_fanout", tenant, agent="bot-3")

    decisions = Containment(Policy()).apply(client, [fanout, loop, budget, spike, crossing, sharing])

    assert sorted((d.anomaly_id, d.scope, d.target, d.calls) for d in decisions) == sorted([
        (fanout.anomaly_id, "trace", fanout.trace_id, "all"),
        (loop.anomaly_id, "trace", loop.trace_id, "all"),
        (budget.anomaly_id, "tenant", tenant, "model"),
        (crossing.anomaly_id, "agent", "thief-9", "all")])
    in_force = {(d.scope, d.target): d for d in halts.open_halts(client, tenant)}
    assert set(in_force) == {("trace", fanout.trace_id), ("trace", loop.trace_id), ("tenant", tenant),
                             ("agent", "thief-9")}
    assert all(d.decided_by == "policy" and d.reason.startswith(f"policy: {d.kind}") for d in in_force.values())
    # what was halted is in the anomaly, so in its alert
    assert fanout.summary == f"a fanout anomaly Halt issued (agents with the guard on stop at their next call): trace {fanout.trace_id}."
    assert budget.summary.endswith(f"Halt issued (agents with the guard on stop at their next call): the model calls of tenant {tenant}.")
    assert [(c["scope"], c["action"]) for c in crossing.evidence["containment"]] == [("agent", "halt")]
    assert "containment" not in spike.evidence and spike.summary == "a cost_spike anomaly"


def test_a_restarted_worker_decides_nothing_twice_and_respects_a_persons_release(client):
    tenant = new_tenant()
    first = anomaly("fanout", tenant, trace=trace_id(), agent="crawler-1")
    second = anomaly("loop", tenant, trace=trace_id(), agent="poller-1")
    assert len(Containment(Policy()).apply(client, [first, second])) == 2
    (loop_halt,) = halts.current(client, targets=[(tenant, "trace", second.trace_id)])
    halts.record(client, [halts.released(loop_halt, reason="expected retries", decided_by="cli:dana")])

    restarted = Containment(Policy())  # a replay of the same batch, or a later update of the same anomalies
    first.summary, second.summary = "a fanout anomaly", "a loop anomaly"
    assert restarted.apply(client, [first, second]) == []
    assert [d.target for d in halts.open_halts(client, tenant)] == [first.trace_id]
    assert first.summary.endswith(f"Halt issued (agents with the guard on stop at their next call): trace {first.trace_id}.")  # told again, from the store
    assert second.summary.endswith(f"Released: trace {second.trace_id}.")


def test_a_resolved_anomaly_releases_its_policy_halts_not_a_persons(client):
    tenant = new_tenant()
    policy = Containment(Policy())
    quiet = anomaly("loop", tenant, trace=trace_id(), agent="poller-1")
    reviewed = anomaly("fanout", tenant, trace=trace_id(), agent="crawler-1")
    policy.apply(client, [quiet, reviewed])
    # a person takes over the fanout's trace halt: now theirs
    halts.record(client, [halts.decision(tenant, "trace", reviewed.trace_id, "halt", reason="keep it stopped",
                                         decided_by="cli:dana")])
    quiet.status = reviewed.status = "resolved"
    released = policy.apply(client, [quiet, reviewed])
    assert [(d.action, d.target, d.decided_by) for d in released] == [("release", quiet.trace_id, "policy")]
    assert [(d.target, d.decided_by) for d in halts.open_halts(client, tenant)] == [(reviewed.trace_id, "cli:dana")]


def test_the_policy_is_configured_per_tenant(client, tmp_path, monkeypatch):
    spec = {"rules": [{"kind": "fanout", "scope": "agent", "min_severity": "critical"}],
            "tenants": {"sandbox": [], "acme": [{"kind": "loop", "scope": "tenant", "calls": "model"}]}}
    policy = Policy.from_env({"AGENTWATCH_CONTAINMENT_POLICY": json.dumps(spec)})
    assert policy.rules_for("globex") == (Rule("fanout", "agent", min_severity="critical"),)
    assert policy.rules_for("sandbox") == () and policy.rules_for("acme") == (Rule("loop", "tenant", calls="model"),)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(spec))
    assert Policy.from_env({"AGENTWATCH_CONTAINMENT_POLICY": str(path)}) == policy
    assert Policy.from_env({"AGENTWATCH_CONTAINMENT_POLICY": "off"}).rules_for("acme") == ()
    assert Policy.from_env({}) == Policy()
    for bad in ('{"rules": [{"kind": "fanot", "scope": "trace"}]}', '{"rules": [{"kind": "loop", "scope": "fleet"}]}',
                '{"rule": []}', "{not json"):
        with pytest.raises(ValueError, match="AGENTWATCH_CONTAINMENT_POLICY|containment rule"):
            Policy.from_env({"AGENTWATCH_CONTAINMENT_POLICY": bad})

    globex, sandbox = "globex-" + uuid.uuid4().hex[:6], "sandbox"
    warning = anomaly("fanout", globex, trace=trace_id(), agent="crawler-1", severity="warning")
    critical = anomaly("fanout", globex, trace=trace_id(), agent="crawler-2")
    free = anomaly("fanout", sandbox, trace=trace_id(), agent="crawler-3")
    decided = Containment(policy).apply(client, [warning, critical, free])
    assert [(d.scope, d.target) for d in decided] == [("agent", "crawler-2")]
    # the worker reads the setting at start
    monkeypatch.setenv("AGENTWATCH_CONTAINMENT_POLICY", "off")
    assert DetectorWorker(lambda: client, DetectorConfig()).containment.policy.rules_for("acme") == ()


def test_a_store_that_refuses_the_halts_never_stops_detection_and_the_next_change_decides(dsn):
    database = "t_containment_refused"
    bare = store.connect(dsn, database)
    bare.command(f"DROP DATABASE IF EXISTS {database}")
    bare.command(f"CREATE DATABASE {database}")  # no halts table yet
    runaway = anomaly("fanout", new_tenant(), trace=trace_id(), agent="crawler-1")
    policy = Containment(Policy())
    assert policy.apply(bare, [runaway]) == [] and policy.errors == 1
    assert runaway.summary == "a fanout anomaly"  # nothing claimed that was not done
    migrate.apply(bare, database)
    runaway.summary = "a fanout anomaly"
    (decision,) = policy.apply(bare, [runaway])  # the anomaly's next change
    assert (decision.scope, decision.target) == ("trace", runaway.trace_id)
    assert [d.target for d in halts.open_halts(bare)] == [runaway.trace_id]
    bare.close()

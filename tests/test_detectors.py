"""The detector worker, judged against the demo's labelled incidents.

The demo fleet runs in fast-forward (one hour, fixed seed and start) through
the SDK and a real OTLP receiver into two fresh databases: one with the five
labelled incidents, one with the same normal traffic and none. The worker then
tails the store like it does in production: killed mid-stream, in other batch
sizes, in live arrival order, split in shards. Unit tests on hand-made rows
cover the watermark and late spans, partial windows, acknowledgement and
resolution, the budget guard rail, shard routing, commit-order tailing, run_forever
and the learned baselines (cold start, floor, daily seasonality).
"""

from __future__ import annotations

import threading
import time

import pytest

import agentwatch
from agentwatch import demo
from agentwatch.detectors import evaluation
from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.anomalies import anomaly_id
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.worker import DetectorWorker, parse_shard
from agentwatch.schemas import store
from agentwatch.schemas.vocabulary import CREDENTIAL_KINDS, SPAN_KINDS
from tests.helpers import JsonWebhook, fresh_database, start_receiver

NS = 1_000_000_000
MINUTE = 60 * NS
START_NS = 1_750_075_200 * NS  # 2025-06-16 12:00 UTC
HOUR_S = 3600
SEED = 7


# --- the demo hour, twice -------------------------------------------------------------------------------

def _drive_fleet(dsn: str, database: str, incidents: bool) -> demo.DemoResult:
    receiver = start_receiver(dsn, database)
    try:
        clock = demo.make_clock(START_NS)
        telemetry = agentwatch.init("detector-fleet", endpoint=f"http://127.0.0.1:{receiver.http_port}",
                                    clock=clock, gpu_interval=None, max_queue_size=65_536)
        try:
            result = demo.run_fleet(duration_s=HOUR_S, seed=SEED, start_ns=START_NS, incidents=incidents)
            assert telemetry.flush(timeout_s=300)
            assert telemetry.dropped_spans == 0
        finally:
            agentwatch.shutdown()
        assert receiver.flush(timeout_s=300)
    finally:
        receiver.stop()
    client = store.connect(dsn, database)
    demo.record_incidents(client, result.run_id, result.incidents)
    client.close()
    return result


@pytest.fixture(scope="module")
def fleet(dsn):
    incidents_db = fresh_database(dsn, "t_detectors_incidents")
    normal_db = fresh_database(dsn, "t_detectors_normal")
    return {"incidents": (incidents_db, _drive_fleet(dsn, incidents_db, True)),
            "normal": (normal_db, _drive_fleet(dsn, normal_db, False))}


class Detected:
    def __init__(self, rows, stats, seconds, spans, labels):
        self.rows = rows
        self.stats = stats
        self.seconds = seconds
        self.spans = spans
        self.labels = labels

    @property
    def ids(self) -> set[str]:
        return {r.anomaly_id for r in self.rows}

    def subjects(self) -> set[tuple[str, str, str]]:
        return {(r.kind, r.tenant, _subject(r)) for r in self.rows}


def _subject(r: evaluation.Row) -> str:
    if r.kind in ("fanout", "loop"):
        return r.trace_id
    if r.kind in ("cross_tenant", "credential_fanout"):
        return r.credential_id
    return ""


def _reset(client) -> None:
    client.command("TRUNCATE TABLE anomalies")
    client.command("TRUNCATE TABLE detector_state")


def detect(dsn: str, database: str, *, max_rows: int = 50_000, shard=(0, 1), reset: bool = True,
           **config) -> Detected:
    """Run a fresh worker on `database` until it has caught up; the anomalies and how long it took."""
    client = store.connect(dsn, database)
    if reset:
        _reset(client)
    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig(**config),
                            shard=shard)
    began = time.perf_counter()
    worker.catch_up(max_rows)
    seconds = time.perf_counter() - began
    stats = worker.status()
    worker.close()
    rows = evaluation.load_anomalies(client)
    spans = client.query("SELECT count() FROM agent_spans").result_rows[0][0]
    labels = evaluation.load_labels(client)
    client.close()
    return Detected(rows, stats, seconds, spans, labels)


@pytest.fixture(scope="module")
def detected(dsn, fleet):
    return detect(dsn, fleet["incidents"][0])


@pytest.fixture(scope="module")
def detected_normal(dsn, fleet):
    return detect(dsn, fleet["normal"][0])


def _one_match(rows, label) -> evaluation.Row:
    found = [r for r in rows if evaluation.matches(r, label)]
    assert len(found) == 1, (label, [(r.kind, r.tenant, r.summary) for r in found])
    return found[0]


# --- quality on the labelled scenario ----------------------------------------------------------------------

def test_every_incident_is_detected_once_with_its_kind_and_tenant(fleet, detected):
    labels = [evaluation.Label.of(i) for i in fleet["incidents"][1].incidents]
    assert sorted(x.kind for x in labels) == sorted(SPAN_KINDS + CREDENTIAL_KINDS)
    report = evaluation.score(detected.rows, labels)
    print("\nper kind:", report.per_kind)
    print(f"throughput: {detected.spans / detected.seconds:,.0f} spans/s ({detected.spans} spans, "
          f"{detected.stats['rows']} rows in {detected.seconds:.2f}s)")
    assert not report.missed, report.missed
    for label in labels:
        a = _one_match(detected.rows, label)
        assert a.kind == label.kind and a.tenant == label.tenant
        assert a.severity in ("warning", "critical") and a.score >= 1
        # raised close to the incident in event time, not long after
        assert label.started_at_ns - 5 * MINUTE <= a.first_seen_ns <= label.ended_at_ns, (label, a)
    assert all(v["recall"] == 1.0 for v in report.per_kind.values())


def test_no_false_positives_on_the_labelled_scenario(fleet, detected):
    labels = [evaluation.Label.of(i) for i in fleet["incidents"][1].incidents]
    report = evaluation.score(detected.rows, labels)
    assert not report.false_positives, [(r.kind, r.tenant, r.summary) for r in report.false_positives]
    assert all(v["precision"] == 1.0 for v in report.per_kind.values())
    # The only extra anomalies: the leaked credential of credential_fanout is genuinely used across tenants.
    leak = next(x for x in labels if x.kind == "credential_fanout")
    extra = [r for r in detected.rows if not any(evaluation.matches(r, x) for x in labels)]
    assert extra and all(r.kind == "cross_tenant" and r.credential_id == leak.credential_id for r in extra)
    assert len({r.tenant for r in extra}) == len(extra)  # one per actor tenant, not one per use


def test_a_normal_only_run_of_the_same_length_raises_nothing(dsn, fleet, detected_normal):
    assert fleet["normal"][1].incidents == []
    assert detected_normal.spans > 25_000
    assert detected_normal.stats["span_rows"] == detected_normal.spans
    assert detected_normal.rows == [], [(r.kind, r.tenant, r.summary) for r in detected_normal.rows]
    # and so no alert: the dispatcher, pointed at a webhook on loopback, sends nothing
    webhook = JsonWebhook()
    try:
        database = fleet["normal"][0]
        dispatcher = AlertDispatcher(lambda: store.connect(dsn, database), AlertConfig(webhook_urls=[webhook.url]))
        dispatcher.run_once()
        dispatcher.close()
    finally:
        webhook.stop()
    assert webhook.received == []


def test_summaries_and_evidence_carry_the_numbers(fleet, detected):
    labels = {i.kind: evaluation.Label.of(i) for i in fleet["incidents"][1].incidents}
    by_kind = {kind: _one_match(detected.rows, label) for kind, label in labels.items()}
    for a in by_kind.values():
        assert any(ch.isdigit() for ch in a.summary) and a.tenant in a.summary
        assert a.evidence.get("trace_id") == a.trace_id and a.trace_id
        assert a.agent_id

    fanout = by_kind["fanout"]
    e = fanout.evidence
    assert fanout.severity == "critical" and fanout.trace_id == labels["fanout"].trace_id
    assert e["sub_agents"] == 15 and e["model_calls"] >= 12_000 and e["duration_s"] < 120
    assert e["root_agent_name"] == "bulk-enricher" and fanout.agent_id == labels["fanout"].agent_id
    assert len(e["sub_agent_ids"]) == 15 and e["span_ids"]
    assert e["metrics"]["sub_agents"]["baseline"]["warm"]  # against what a bulk-enricher normally does
    assert e["metrics"]["sub_agents"]["baseline"]["mean"] < 5
    assert "12," in fanout.summary and "15 sub-agents" in fanout.summary

    cost = by_kind["cost_spike"]
    e = cost.evidence
    assert cost.agent_id == labels["cost_spike"].agent_id
    assert e["tenant_baseline"]["warm"] and e["tenant_usd"] > 5 * e["tenant_baseline"]["mean"]
    assert e["agents_over_baseline"][0]["agent_name"] == "research-planner"
    assert e["top_spans"] and e["top_spans"][0]["trace_id"] == labels["cost_spike"].trace_id
    assert "$" in cost.summary

    cross = by_kind["cross_tenant"]
    assert cross.severity == "critical" and cross.credential_id == labels["cross_tenant"].credential_id
    assert cross.evidence["uses"] >= 2 and cross.evidence["events"][0]["span_id"]
    assert cross.agent_id == labels["cross_tenant"].agent_id
    assert all(r.severity == "critical" for r in detected.rows if r.kind == "cross_tenant")

    fan = by_kind["credential_fanout"]
    e = fan.evidence
    assert e["distinct_agents"] >= 40 and e["distinct_tenants"] >= 3 and e["first_seen_count"] >= 30
    assert e["first_seen_pairs"][0]["span_id"] and e["baseline"]["warm"]

    loop = by_kind["loop"]
    e = loop.evidence
    assert e["tool"] == "http_get" and e["repeats"] >= 40 and len(e["span_ids"]) >= 40
    assert "refunds" in e["arguments_preview"] and loop.agent_id == labels["loop"].agent_id


def test_anomaly_ids_follow_the_contract(detected):
    for r in detected.rows:
        assert len(r.anomaly_id) == 32
        assert r.anomaly_id in {anomaly_id(r.kind, r.tenant, _subject(r), r.first_seen_ns + d * MINUTE)
                                for d in range(-15, 1)}


# --- crash, restart, batch boundaries, arrival order ---------------------------------------------------------

def test_batch_boundaries_do_not_change_verdicts(dsn, fleet, detected):
    small = detect(dsn, fleet["incidents"][0], max_rows=4_000)
    assert small.stats["batches"] > 8
    assert small.ids == detected.ids


def test_a_worker_killed_mid_stream_raises_each_incident_once(dsn, fleet, detected):
    database = fleet["incidents"][0]
    client = store.connect(dsn, database)
    _reset(client)
    config = DetectorConfig()

    def connect():
        return store.connect(dsn, database)

    first = DetectorWorker(connect, config)
    for _ in range(3):
        assert first.run_once(3_000) > 0
    del first  # killed between two batches: the next worker starts from the store

    before_crash = client.query("SELECT toUnixTimestamp64Micro(max(UpdatedAt)) FROM anomalies").result_rows[0][0]
    second = DetectorWorker(connect, config)
    crashed: list[int] = []

    def save_checkpoint(position: str, state: str) -> None:
        if second.stats["last_batch_written"] and not crashed:
            crashed.append(second.stats["last_batch_written"])
            raise RuntimeError("killed after writing anomalies, before the checkpoint")
        DetectorWorker.save_checkpoint(second, position, state)

    second.save_checkpoint = save_checkpoint
    with pytest.raises(RuntimeError, match="before the checkpoint"):
        while second.run_once(3_000):
            pass
    assert crashed
    in_crashed_batch = dict(client.query(
        "SELECT AnomalyId, toUnixTimestamp64Milli(DetectedAt) FROM anomalies FINAL "
        "WHERE toUnixTimestamp64Micro(UpdatedAt) > {t:Int64}", parameters={"t": before_crash}).result_rows)
    assert len(in_crashed_batch) == crashed[0]
    max_written = client.query("SELECT toUnixTimestamp64Micro(max(UpdatedAt)) FROM anomalies").result_rows[0][0]
    del second

    third = DetectorWorker(connect, config)
    while third.run_once(3_000):
        pass
    assert third.stats["restores"] == 1
    rows = evaluation.load_anomalies(client)
    assert {r.anomaly_id for r in rows} == detected.ids
    assert client.query("SELECT count() FROM anomalies FINAL").result_rows[0][0] == len(detected.ids)
    for label in detected.labels:
        _one_match(rows, label)
    # the replay wrote new versions of the same anomalies (the batch was never checkpointed), keeping
    # DetectedAt: when they were first raised, before the crash
    after = dict(client.query("SELECT AnomalyId, toUnixTimestamp64Milli(DetectedAt) FROM anomalies FINAL "
                              "WHERE AnomalyId IN {ids:Array(String)} "
                              "AND toUnixTimestamp64Micro(UpdatedAt) > {t:Int64}",
                              parameters={"ids": list(in_crashed_batch), "t": max_written}).result_rows)
    assert after == in_crashed_batch
    client.close()


def test_live_arrival_order_gives_the_same_verdicts(dsn, fleet, detected):
    """Spans arrive when they end (a root agent span last), not in the order fast-forward wrote them."""
    source = fleet["incidents"][0]
    live = "t_detectors_live_order"
    client = store.connect(dsn, source)
    client.command(f"DROP DATABASE IF EXISTS {live}")
    client.command(f"CREATE DATABASE {live}")
    for table in ("agent_spans", "credential_events", "otel_traces", "anomalies", "detector_state",
                  "demo_incidents"):
        client.command(f"CREATE TABLE {live}.{table} AS {source}.{table}")
    # one insert per 30 s of arrival (a span arrives when it ends), in arrival order: commit order is
    # what the worker reads by
    end_us = "intDiv(toUnixTimestamp64Nano(Timestamp) + Duration, 1000) + 200000"
    client.command(f"CREATE TABLE {live}.arrivals ENGINE = Memory AS SELECT TraceId, SpanId, {end_us} AS Arrival "
                   f"FROM {source}.agent_spans")
    columns = ("Timestamp, TraceId, SpanId, Tenant, AgentId, Event, CredentialId, CredentialTenant, Scope, "
               "Resource, ResourceTenant, Action")
    buckets = [r[0] for r in client.query(f"SELECT DISTINCT intDiv(Arrival, 30000000) AS b FROM {live}.arrivals "
                                          "ORDER BY b").result_rows]
    for b in buckets:
        client.command(f"INSERT INTO {live}.agent_spans SELECT s.* REPLACE (fromUnixTimestamp64Micro(a.Arrival) AS "
                       f"IngestedAt) FROM {source}.agent_spans AS s INNER JOIN {live}.arrivals AS a "
                       f"ON s.TraceId = a.TraceId AND s.SpanId = a.SpanId WHERE intDiv(a.Arrival, 30000000) = {b}")
        client.command(f"INSERT INTO {live}.credential_events ({columns}, IngestedAt) "
                       f"SELECT {', '.join('c.' + c for c in columns.split(', '))}, "
                       f"fromUnixTimestamp64Micro(a.Arrival) FROM {source}.credential_events AS c INNER JOIN "
                       f"{live}.arrivals AS a ON c.TraceId = a.TraceId AND c.SpanId = a.SpanId "
                       f"WHERE intDiv(a.Arrival, 30000000) = {b}")
    client.command(f"INSERT INTO {live}.otel_traces SELECT * FROM {source}.otel_traces "
                   f"WHERE SpanAttributes['gen_ai.tool.call.arguments'] != ''")
    client.command(f"INSERT INTO {live}.demo_incidents SELECT * FROM {source}.demo_incidents")
    # the arrival order really differs: root agent spans come after their children
    first_root = client.query(f"SELECT count() FROM (SELECT TraceId, argMin(ParentSpanId = '', (_block_number, "
                              f"Timestamp)) AS root_first FROM {live}.agent_spans GROUP BY TraceId) "
                              f"WHERE root_first").result_rows[0][0]
    traces = client.query(f"SELECT uniqExact(TraceId) FROM {live}.agent_spans").result_rows[0][0]
    assert first_root < traces * 0.2
    client.close()

    in_live_order = detect(dsn, live, max_rows=10_000)
    assert in_live_order.subjects() == detected.subjects()
    for label in detected.labels:
        _one_match(in_live_order.rows, label)


# --- shards -----------------------------------------------------------------------------------------------

def test_shards_split_tenants_with_no_overlap(dsn, fleet, detected):
    database = fleet["incidents"][0]
    client = store.connect(dsn, database)
    owner = dict(client.query("SELECT Tenant, cityHash64(Tenant) % 2 FROM agent_spans GROUP BY Tenant").result_rows)
    assert set(owner.values()) == {0, 1}, "the demo's tenants should fall to both shards"
    total_spans = client.query("SELECT count() FROM agent_spans").result_rows[0][0]
    client.close()

    shards = [detect(dsn, database, shard=(k, 2)) for k in (0, 1)]
    assert shards[0].stats["span_rows"] + shards[1].stats["span_rows"] == total_spans
    for k, result in enumerate(shards):
        assert result.rows
        assert all(owner[r.tenant] == k for r in result.rows)
    # each incident is raised by the one shard that owns it (credential_fanout: the credential's tenant,
    # cross_tenant: the actor's), never twice
    for label in detected.labels:
        found = [k for k, result in enumerate(shards) if any(evaluation.matches(r, label) for r in result.rows)]
        assert found == [owner[label.tenant]], label


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    with pytest.raises(ValueError):
        DetectorWorker(lambda: None, DetectorConfig(), shard=(2, 2))


# --- unit level: hand-made rows -------------------------------------------------------------------------------

class Rows:
    """Writes agent_spans / credential_events rows directly, with increasing IngestedAt."""

    SPAN_COLUMNS = ["Timestamp", "TraceId", "SpanId", "ParentSpanId", "Tenant", "AgentId", "AgentName", "Operation",
                    "Model", "CostUSD", "IngestedAt"]
    CREDENTIAL_COLUMNS = ["Timestamp", "TraceId", "SpanId", "Tenant", "AgentId", "Event", "CredentialId",
                          "CredentialTenant", "Resource", "ResourceTenant", "Action", "IngestedAt"]

    def __init__(self, client) -> None:
        self.client = client
        self.ingested_us = 1_700_000_000_000_000
        self.n = 0

    def _next(self) -> int:
        self.ingested_us += 1_000
        self.n += 1
        return self.ingested_us

    def spans(self, items) -> None:
        rows = []
        for ts, tenant, cost, *rest in items:
            name = rest[0] if rest else "planner"
            self.n += 1
            rows.append([ts, f"{self.n:032x}", f"{self.n:016x}", "", tenant, f"{tenant}-{name}-1", name, "chat",
                         "gpt-4o", cost, self._next()])
        self.client.insert("agent_spans", rows, column_names=self.SPAN_COLUMNS)

    def credential_uses(self, items) -> None:
        rows = [[ts, f"{self._next():032x}", f"{self.n:016x}", tenant, agent, "use", credential, credential_tenant,
                 f"{credential_tenant}/db", credential_tenant, "read", self.ingested_us]
                for ts, tenant, agent, credential, credential_tenant in items]
        self.client.insert("credential_events", rows, column_names=self.CREDENTIAL_COLUMNS)


@pytest.fixture
def unit_db(dsn, request):
    name = fresh_database(dsn, "t_detectors_unit_" + request.node.name.removeprefix("test_")[:40])
    client = store.connect(dsn, name)
    yield name, client, Rows(client)
    client.close()


def _worker(dsn, database, **config) -> DetectorWorker:
    return DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig(**config))


def _catch_up(worker: DetectorWorker) -> None:
    while worker.run_once(10_000):
        pass


def _steady(tenant: str, minutes: range, usd_per_minute: float, per_minute: int = 4):
    """Normal traffic: `per_minute` chat spans spread over each minute."""
    return [(START_NS + m * MINUTE + i * (MINUTE // per_minute), tenant, usd_per_minute / per_minute)
            for m in minutes for i in range(per_minute)]


UNIT = dict(allowed_lateness_s=120, quiet_period_s=180, cost_min_history=5, tenant_budget_usd_per_minute=0)


def test_watermark_late_spans_and_partial_windows(dsn, unit_db):
    database, client, rows = unit_db
    worker = _worker(dsn, database, **UNIT)
    rows.spans(_steady("acme", range(0, 30), 0.5))
    _catch_up(worker)
    assert evaluation.load_anomalies(client) == []
    status = worker.status()
    assert status["span_watermark_ns"] == START_NS + 29 * MINUTE + 45 * NS - 120 * NS

    # a $50 call 20 minutes behind the newest span: later than the allowed lateness, its window is final
    rows.spans([(START_NS + 10 * MINUTE + 5 * NS, "acme", 50.0)])
    _catch_up(worker)
    assert worker.status()["late_span_rows"] == 1
    assert evaluation.load_anomalies(client) == []

    # the same call 1.5 minutes behind: out of order but within the lateness, its window is still open,
    # and the partial window raises at once (no waiting for the window to close)
    rows.spans([(START_NS + 28 * MINUTE + 30 * NS, "acme", 50.0)])
    _catch_up(worker)
    assert worker.status()["late_span_rows"] == 1
    (a,) = evaluation.load_anomalies(client)
    assert (a.kind, a.tenant, a.status) == ("cost_spike", "acme", "open")
    assert a.first_seen_ns == START_NS + 28 * MINUTE
    assert a.anomaly_id == anomaly_id("cost_spike", "acme", "", START_NS + 28 * MINUTE)
    assert a.evidence["tenant_baseline"]["warm"] and a.evidence["tenant_baseline"]["mean"] == pytest.approx(0.5)
    assert a.score > 5 and a.severity == "critical"

    # a person acknowledges it; the condition goes on: the worker updates it but does not reopen it
    client.command("INSERT INTO anomalies SELECT * REPLACE ('acknowledged' AS Status, now64(6) AS UpdatedAt) "
                   "FROM anomalies FINAL")
    rows.spans([(START_NS + 29 * MINUTE + 50 * NS, "acme", 80.0)])
    _catch_up(worker)
    (b,) = evaluation.load_anomalies(client)
    assert b.anomaly_id == a.anomaly_id and b.status == "acknowledged" and b.last_seen_ns > a.last_seen_ns

    # quiet for the quiet period (past the lateness): resolved, same anomaly, no new one
    rows.spans(_steady("acme", range(30, 36), 0.5))
    _catch_up(worker)
    (c,) = evaluation.load_anomalies(client)
    assert c.anomaly_id == a.anomaly_id and c.status == "resolved"

    # learning stayed clean: the spike windows taught the baseline nothing, so the next spike is caught too
    rows.spans(_steady("acme", range(36, 40), 0.5) + [(START_NS + 39 * MINUTE + 10 * NS, "acme", 20.0)])
    _catch_up(worker)
    found = evaluation.load_anomalies(client)
    assert len(found) == 2 and {x.status for x in found} == {"resolved", "open"}


def test_the_same_rows_in_any_batches_give_the_same_anomalies(dsn, unit_db):
    database, client, rows = unit_db
    items = _steady("acme", range(0, 20), 0.5) + [(START_NS + 19 * MINUTE + 50 * NS, "acme", 30.0)]
    items += _steady("acme", range(20, 30), 0.5)
    rows.spans(items)
    results = []
    for batch in (100_000, 11, 2):
        _reset(client)
        worker = _worker(dsn, database, **UNIT)
        while worker.run_once(batch):
            pass
        results.append([(x.anomaly_id, x.status, x.score, x.first_seen_ns, x.last_seen_ns)
                        for x in evaluation.load_anomalies(client)])
    assert results[0] and results[0] == results[1] == results[2]


def test_budget_guard_rail(dsn, unit_db):
    database, client, rows = unit_db
    worker = _worker(dsn, database, **{**UNIT, "tenant_budget_usd_per_minute": 10.0,
                                       "tenant_budgets": {"bigco": 100.0}})
    # no history at all (cold start): only the budget can flag
    rows.spans([(START_NS + i * NS, "tiny", 5.0) for i in range(3)])  # $15 in one minute, budget $10
    rows.spans([(START_NS + i * NS, "bigco", 5.0) for i in range(3)])  # $15, its own budget is $100
    rows.spans([(START_NS + i * NS, "small", 3.0) for i in range(3)])  # $9, under the budget
    # a tenant whose normal is above the budget is still flagged: no history buys past the guard rail
    rows.spans(_steady("rich", range(0, 15), 20.0))
    _catch_up(worker)
    found = {a.tenant: a for a in evaluation.load_anomalies(client)}
    assert set(found) == {"tiny", "rich"}
    tiny = found["tiny"]
    assert tiny.kind == "cost_spike" and tiny.severity == "critical"
    assert tiny.evidence["over_budget"] and tiny.evidence["budget_usd_per_minute"] == 10.0
    assert tiny.evidence["tenant_baseline"] is None or not tiny.evidence["tenant_baseline"]["warm"]
    assert "budget of $10.00" in tiny.summary and "$15.00" in tiny.summary
    assert found["rich"].evidence["over_budget"]

    # with the guard rail off, a cold tenant's spend raises nothing
    _reset(client)
    off = _worker(dsn, database, **{**UNIT, "tenant_budget_usd_per_minute": 0.0})
    _catch_up(off)
    assert evaluation.load_anomalies(client) == []


def test_shard_filter_and_credential_routing(dsn, unit_db):
    database, client, rows = unit_db
    tenants = [f"tenant{i}" for i in range(16)]
    shard_of = dict(client.query("SELECT t, cityHash64(t) % 2 FROM (SELECT arrayJoin({ts:Array(String)}) AS t)",
                                 parameters={"ts": tenants}).result_rows)
    assert set(shard_of.values()) == {0, 1}
    owner = tenants[0]
    # every tenant uses its neighbour's credential (cross_tenant, owned by the actor's shard) ...
    n = len(tenants)
    uses = [(START_NS + i * NS, t, f"{t}-agent", f"cred-{tenants[(i + 1) % n]}", tenants[(i + 1) % n])
            for i, t in enumerate(tenants)]
    # ... and the owner's key is used by agents of four tenants, at least one of them on the other shard
    # (credential_fanout belongs to the credential's tenant, whoever the users are)
    users = [owner, next(t for t in tenants if shard_of[t] != shard_of[owner])]
    users += [t for t in tenants if t not in users][:2]
    uses += [(START_NS + 30 * NS + i * NS, t, f"{t}-bot-{i}", f"cred-{owner}-api", owner)
             for i, t in enumerate(users)]
    rows.credential_uses(uses)
    rows.spans([(START_NS + i * NS, t, 0.01) for i, t in enumerate(tenants)])

    seen = {}
    for k in (0, 1):
        _reset(client)
        worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig(), shard=(k, 2))
        _catch_up(worker)
        seen[k] = (worker.stats["span_rows"], evaluation.load_anomalies(client))
    assert seen[0][0] + seen[1][0] == n
    for k, (span_rows, found) in seen.items():
        assert span_rows == sum(1 for t in tenants if shard_of[t] == k)
        cross = {a.tenant for a in found if a.kind == "cross_tenant"}
        assert cross >= {t for t in tenants if shard_of[t] == k} and all(shard_of[t] == k for t in cross)
        fan = [a for a in found if a.kind == "credential_fanout"]
        if k == shard_of[owner]:
            (a,) = fan
            assert a.tenant == owner and a.evidence["distinct_tenants"] == 4
        else:
            assert fan == []


def test_config_from_env():
    config = DetectorConfig.from_env({
        "AGENTWATCH_DETECT_TENANT_BUDGET_USD_PER_MINUTE": "25",
        "AGENTWATCH_DETECT_TENANT_BUDGETS": "acme=5, globex=12.5",
        "AGENTWATCH_DETECT_QUIET_PERIOD_S": "600",
        "AGENTWATCH_DETECT_FANOUT_MAX_SUB_AGENTS": "40",
        "AGENTWATCH_DETECT_START_AT_LATEST": "true",
        "AGENTWATCH_DETECT_SIGMAS": "",
    })
    assert config.tenant_budget_usd_per_minute == 25.0 and config.quiet_period_s == 600.0
    assert config.budget_for("acme") == 5.0 and config.budget_for("globex") == 12.5
    assert config.budget_for("initech") == 25.0
    assert config.fanout_max_sub_agents == 40 and config.start_at_latest is True
    assert config.sigmas == DetectorConfig().sigmas
    with pytest.raises(ValueError, match="AGENTWATCH_DETECT_WINDOW_S"):
        DetectorConfig.from_env({"AGENTWATCH_DETECT_WINDOW_S": "soon"})


def test_learned_baseline_cold_start_floor_and_daily_seasonality():
    import pickle

    from agentwatch.detectors.baselines import HOUR_NS, Baseline, Limits, evaluate

    limits = Limits(floor=2.0, sigmas=6.0, ratio=3.0, peak_factor=1.5, min_history=10, hard=50.0)
    b = Baseline(window=60)
    t0 = START_NS
    for i in range(9):
        b.learn(0.1, t0 + i * MINUTE)
    # cold: the learned baseline may not flag, only the hard limit can
    assert b.threshold(t0, limits) is None
    assert evaluate(10.0, t0, b, limits)[0] is False and evaluate(60.0, t0, b, limits)[0] is True
    b.learn(0.1, t0 + 9 * MINUTE)
    # warm, but tiny numbers never alert: the floor holds even though 1.0 is 10x the mean
    assert b.threshold(t0, limits) == 2.0 and evaluate(1.0, t0, b, limits)[0] is False
    assert evaluate(2.5, t0, b, limits)[:2] == (True, 1.25)

    # daily seasonality: busy 18:00-19:00, quiet the rest of the day; only once two days are learned
    def day(b: Baseline, start: int) -> None:
        for m in range(24 * 60):
            t = start + m * MINUTE
            b.learn(10.0 if (t // HOUR_NS) % 24 == 18 else 1.0, t)

    midnight = START_NS - 12 * HOUR_NS  # 2025-06-16 00:00 UTC
    seasonal = Baseline(window=60)
    day(seasonal, midnight)
    busy, quiet = midnight + 18 * HOUR_NS + 30 * MINUTE, midnight + 3 * HOUR_NS
    assert not seasonal.seasonal(busy)  # one day of history: no seasonality yet
    day(seasonal, midnight + 24 * HOUR_NS)
    day(seasonal, midnight + 48 * HOUR_NS)
    assert seasonal.seasonal(busy) and seasonal.seasonal(quiet)
    assert seasonal.expected(busy)[0] == pytest.approx(10.0, rel=0.05)
    assert seasonal.expected(quiet)[0] == pytest.approx(1.0, rel=0.05)
    # what the busy hour normally does is no anomaly at the busy hour
    assert evaluate(11.0, busy, seasonal, Limits(floor=2.0, ratio=1.5, peak_factor=0, min_history=10))[0] is False
    assert evaluate(11.0, quiet, seasonal, Limits(floor=2.0, ratio=1.5, peak_factor=0, min_history=10))[0] is True
    # it all goes into the checkpoint
    restored = pickle.loads(pickle.dumps(seasonal))
    assert restored.expected(busy) == seasonal.expected(busy) and restored.n == seasonal.n


def test_an_insert_that_commits_late_is_processed_once(dsn, unit_db):
    """IngestedAt is taken when an insert starts: one that commits after a later insert was read carries
    an older stamp. The worker tails by commit order, so it is read on the next batch, once, and not
    again after a restart; the audit finds every stored row processed exactly once."""
    database, client, rows = unit_db
    worker = _worker(dsn, database, **UNIT)
    rows.spans(_steady("acme", range(0, 5), 0.5))
    started_early = rows.ingested_us + 1_000_000
    rows.ingested_us += 5_000_000
    rows.spans(_steady("acme", range(5, 10), 0.5))
    rows.credential_uses([(START_NS + 9 * MINUTE, "acme", "acme-planner-1", "cred-acme-db", "acme")])
    assert worker.run_once() == 41
    later = rows.ingested_us
    rows.ingested_us = started_early  # the slow inserts: begun before the rows above, visible only now
    rows.spans(_steady("acme", range(10, 12), 0.5))
    rows.credential_uses([(START_NS + 11 * MINUTE, "globex", "globex-planner-1", "cred-acme-db", "acme")])
    assert rows.ingested_us < later
    assert worker.run_once() == 9
    assert worker.run_once() == 0
    assert worker.status()["span_rows"] == 48
    # the late cross-tenant use was judged like any other
    assert [a.kind for a in evaluation.load_anomalies(client)] == ["cross_tenant"]
    assert worker.audit() == {"agent_spans": {"stored": 48, "processed": 48, "pending": 0},
                              "credential_events": {"stored": 2, "processed": 2, "pending": 0},
                              "secret_findings": {"stored": 0, "processed": 0, "pending": 0}}
    restarted = _worker(dsn, database, **UNIT)
    assert restarted.run_once() == 0
    assert restarted.audit()["agent_spans"] == {"stored": 48, "processed": 48, "pending": 0}


def test_a_part_merged_during_the_read_is_read_again(dsn, unit_db):
    """The worker reads only the parts that can hold new rows; a merge between listing them and reading
    them must not hide rows."""
    from agentwatch.detectors.tailing import Tail

    database, client, rows = unit_db
    for m in range(4):
        rows.spans(_steady("acme", range(m, m + 1), 0.5))
    tail = Tail("agent_spans")
    listed = tail.candidate_parts(client, 0)
    real = Tail.candidate_parts
    merged = []

    def list_then_merge(self, c, position):
        out = real(self, c, position)
        if not merged:
            c.command("OPTIMIZE TABLE agent_spans FINAL")  # the listed parts are merged away
            merged.append(True)
        return out

    tail.candidate_parts = list_then_merge.__get__(tail)
    batch = tail.read(client, 0, "SpanId", "SpanId", 1_000)
    assert len(listed[0]) == 4 and len(batch.rows) == 16 and tail.retries == 1


def test_block_numbers_survive_merges_and_are_never_read_from_a_projection(dsn, unit_db):
    """agent_spans has a projection ordered by trace, whose parts do not keep each row's block number: a
    read by block number answered from it would read rows again, or never, once parts are merged."""
    from agentwatch.detectors.tailing import Tail

    database, client, rows = unit_db
    for m in range(4):
        rows.spans(_steady("acme", range(m, m + 1), 0.5))
    blocks = [b for (b,) in client.query("SELECT DISTINCT _block_number FROM agent_spans ORDER BY 1 "
                                         "SETTINGS optimize_use_projections = 0").result_rows]
    client.command("OPTIMIZE TABLE agent_spans FINAL")
    # the hazard: answered from the projection, the rows of the merged part read as other blocks
    from_projection = client.query(
        "SELECT count() FROM (SELECT SpanId FROM agent_spans WHERE _block_number > {b:UInt64} ORDER BY TraceId) "
        "SETTINGS force_optimize_projection = 1", parameters={"b": blocks[1]}).result_rows[0][0]
    assert from_projection != 8
    after_second = Tail("agent_spans").read(client, blocks[1], "SpanId", "Timestamp, TraceId, SpanId", 1_000)
    assert len(blocks) == 4 and len(after_second.rows) == 8 and after_second.position == blocks[3]
    worker = _worker(dsn, database, **UNIT)
    assert worker.catch_up() == 16
    assert worker.audit()["agent_spans"] == {"stored": 16, "processed": 16, "pending": 0}


def test_run_forever_raises_on_new_rows_and_checkpoints_when_stopped(dsn, unit_db):
    import json

    database, client, rows = unit_db
    worker = DetectorWorker(lambda: store.connect(dsn, database),
                            DetectorConfig(checkpoint_interval_s=3600, **UNIT))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), kwargs={"poll_s": 0.05}, daemon=True)
    thread.start()
    try:
        rows.ingested_us = time.time_ns() // 1_000
        rows.spans(_steady("acme", range(0, 20), 0.5))
        rows.ingested_us = max(rows.ingested_us, time.time_ns() // 1_000)  # IngestedAt only moves forward
        inserted = time.monotonic()
        rows.spans([(START_NS + 19 * MINUTE + 50 * NS, "acme", 40.0)])
        while not evaluation.load_anomalies(client):  # how fast: bench/detection_latency.py
            assert time.monotonic() - inserted < 60, "the running worker never raised it"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    position, _ = worker.load_checkpoint()  # written when stopping, though the interval never came
    assert json.loads(position)["agent_spans"] == int(client.query(
        "SELECT max(_block_number) FROM agent_spans").result_rows[0][0])
    assert json.loads(position)["processed"]["agent_spans"] == 81
    assert worker.stats["errors"] == 0


def _cluster_worker(dsn: str, database: str, shard=(0, 1)) -> DetectorWorker:
    """A worker that reads as it does on a cluster (part_tail.py, credential uses by owner), on this store."""
    from agentwatch.detectors.part_tail import PartTail
    from agentwatch.detectors.shard_reader import OWNER_TABLE, TABLES

    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig(), shard=shard)
    worker.reader.tails = {table: PartTail(table) for table in TABLES + (OWNER_TABLE,)}
    return worker


def test_on_a_cluster_a_credentials_uses_by_other_shards_tenants_reach_its_owners_shard(dsn, fleet, detected):
    """On a cluster credential_events is sharded by the actor; credential_fanout is the owner's. The owner's
    shard reads the uses of its credentials by other shards' tenants from credential_uses_by_owner."""
    database = fleet["incidents"][0]
    client = store.connect(dsn, database)
    crossing = client.query("SELECT count() FROM credential_events WHERE CredentialTenant != '' "
                            "AND cityHash64(CredentialTenant) % 2 != cityHash64(Tenant) % 2").result_rows[0][0]
    assert crossing > 0, "the scenario should use credentials across the two shards"
    _reset(client)
    processed = 0
    for k in (0, 1):
        worker = _cluster_worker(dsn, database, shard=(k, 2))
        worker.catch_up()
        processed += worker.audit()["credential_uses_by_owner"]["processed"]
        worker.close()
    assert processed == crossing
    assert {r.anomaly_id for r in evaluation.load_anomalies(client)} == detected.ids
    client.close()


def test_the_cluster_tailing_by_part_ranges_gives_the_same_verdicts(dsn, fleet, detected):
    """On a cluster the worker tails by the block ranges of the parts it has read (part_tail.py), not by one
    block number; over the same rows, in batches, it must reach the same anomalies and read every row once."""
    database = fleet["incidents"][0]
    client = store.connect(dsn, database)
    _reset(client)
    worker = _cluster_worker(dsn, database)
    worker.catch_up(4_000)
    assert worker.stats["batches"] > 8
    assert all(isinstance(p, dict) for p in worker.status()["positions"].values())
    audit = worker.audit()
    assert all(a["stored"] == a["processed"] and a["pending"] == 0 for a in audit.values()), audit
    assert audit["agent_spans"]["processed"] == detected.spans
    worker.close()
    assert {r.anomaly_id for r in evaluation.load_anomalies(client)} == detected.ids
    client.close()


@pytest.mark.parametrize("mean, usual, expected", [
    (-0.0, -0.0, "spent $40.12 in the min from 07:24 UTC, against its usual $0.00/min (threshold $0.53), over its budget "
                 "of $10.00/min; planner (acme-planner-1) spent $40.02 against its usual $0.00."),
    (2.0, 1.5, "spent $40.12 in the min from 07:24 UTC, 20.1x its usual $2.00/min (threshold $0.53), over its budget "
               "of $10.00/min; planner (acme-planner-1) spent $40.02 against its usual $1.50."),
])
def test_a_cost_spike_from_no_usual_spend_reads_as_money_not_as_infinity(mean, usual, expected):
    """A tenant that normally spends nothing: no 'infx its usual', no '$-0.00'."""
    from agentwatch.detectors.anomalies import Anomaly
    from agentwatch.detectors.cost_spike import CostCase, CostWindow, render

    start = 1_700_000_000 * 10**9 - (1_700_000_000 * 10**9) % (86_400 * 10**9) + (7 * 60 + 24) * 60 * 10**9
    window = CostWindow("acme", start, 60 * 10**9)
    window.total = 40.12
    case = CostCase(window, {"tenant_baseline": {"warm": True, "mean": mean, "threshold": 0.53},
                             "over_budget": True, "budget_usd_per_minute": 10.0,
                             "agents_over_baseline": [{"agent_name": "planner", "agent_id": "acme-planner-1",
                                                       "usd": 40.02, "baseline": {"mean": usual}}]})
    anomaly = Anomaly("a1", "cost_spike", "acme", "", "", "", "critical", 9.0, start, start, 0, ctx=case)
    summary, _ = render(anomaly, case)
    assert summary == "Cost spike: acme " + expected

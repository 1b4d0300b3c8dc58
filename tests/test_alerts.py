"""The alert dispatcher over real HTTP to receivers on loopback, driven by rows in `anomalies`."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.anomalies import Anomaly
from agentwatch.detectors.containment import Containment, Policy
from agentwatch.detectors.sinks import PAGERDUTY_EVENTS_URL
from agentwatch.schemas import halts, store

DASHBOARD = "http://dash.example:8501"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefSECRET"
BASE_KEYS = {"kind", "severity", "tenant", "agent", "trace_id", "summary", "detected_at", "status", "url",
             "event", "anomaly_id", "score", "first_seen", "last_seen", "evidence"}


class HookReceiver:
    """A loopback HTTP server recording every POST; `script[path]` lists the answers to give
    (status, headers) before falling back to 200 (202 for PagerDuty)."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict, float]] = []
        self.script: dict[str, list[tuple[int, dict]]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append((self.path, dict(self.headers), json.loads(body), time.monotonic()))
                queued = owner.script.get(self.path.split("?")[0])
                status, headers = queued.pop(0) if queued else (202 if self.path.startswith("/pd") else 200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                reply = b"ok" if status < 300 else b"receiver says no"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def bodies(self, path: str) -> list[dict]:
        return [body for p, _, body, _ in self.requests if p.split("?")[0] == path]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks():
    receiver = HookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def db(database, client):
    """The module's database, emptied: the dispatcher's checkpoint and log start empty."""
    for table in ("anomalies", "detector_state", "alert_deliveries", "leases", "halts"):
        client.command(f"TRUNCATE TABLE {table}")
    return database, client


def config(hooks, **overrides) -> AlertConfig:
    settings = dict(webhook_urls=[hooks.url("/hook?token=s3cr3t")],
                    slack_webhook_urls=[hooks.url("/services/T000/B000/SLACKSECRET")],
                    pagerduty_routing_key=ROUTING_KEY, pagerduty_url=hooks.url("/pd/v2/enqueue"),
                    dashboard_url=DASHBOARD, backoff_s=0.01, backoff_max_s=0.05, timeout_s=5)
    settings.update(overrides)
    return AlertConfig(**settings)


_made: list[AlertDispatcher] = []


@pytest.fixture(autouse=True)
def close_dispatchers():
    yield
    while _made:
        _made.pop().close()


def dispatcher(dsn, db, cfg, clock=None) -> AlertDispatcher:
    name, _ = db
    kwargs = {"clock": clock} if clock else {}
    made = AlertDispatcher(lambda: store.connect(dsn, name), cfg, **kwargs)
    _made.append(made)
    return made


_tick = itertools.count()
T0 = datetime(2025, 6, 3, 3, 0, 0, tzinfo=timezone.utc)


def write(db, anomaly_id, *, kind="cost_spike", severity="warning", tenant="acme", agent="agent-7",
          trace_id="4bf92f3577b34da6a3ce929d0e0e4736", status="open", score=4.2, summary=None, evidence=None):
    """One version of an anomaly, as the detector worker (or the dashboard) writes it."""
    _, client = db
    updated = datetime.now(timezone.utc) + timedelta(microseconds=next(_tick))
    client.insert("anomalies", [[
        anomaly_id, T0 + timedelta(seconds=5), kind, severity, tenant, agent, trace_id, score,
        summary or f"{agent} of {tenant} spent $41.20 in one minute, 9.8x its learned baseline of $4.20/min.",
        json.dumps(evidence if evidence is not None else {"cost_usd": 41.2, "baseline_usd": 4.2, "z": 6.1,
                                                           "span_ids": ["a1", "b2"]}),
        status, T0, T0 + timedelta(seconds=90), updated]],
        column_names=["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score",
                      "Summary", "Evidence", "Status", "FirstSeen", "LastSeen", "UpdatedAt"])


def deliveries(db, anomaly_id=None):
    _, client = db
    where = "WHERE AnomalyId = {a:String}" if anomaly_id else ""
    return list(client.query(
        "SELECT DeliveryId, AnomalyId, Sink, Target, Event, Attempt, HttpStatus, Delivered, Error, Payload "
        f"FROM alert_deliveries {where} ORDER BY SentAt, Attempt", parameters={"a": anomaly_id}).named_results())


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text)


# --- events ----------------------------------------------------------------------------------------

def test_new_anomaly_is_one_webhook_post_with_the_contract_keys(dsn, db, hooks):
    write(db, "a" * 32, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key=""))
    assert alerts.run_once() == 1
    [body] = hooks.bodies("/hook")
    assert set(body) == BASE_KEYS
    assert body["event"] == "new" and body["anomaly_id"] == "a" * 32
    assert (body["kind"], body["severity"], body["tenant"], body["agent"], body["status"]) == (
        "cost_spike", "warning", "acme", "agent-7", "open")
    assert body["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert body["summary"].startswith("agent-7 of acme spent $41.20")
    assert parse_iso(body["detected_at"]) == T0 + timedelta(seconds=5)
    assert parse_iso(body["first_seen"]) == T0 and parse_iso(body["last_seen"]) == T0 + timedelta(seconds=90)
    assert body["url"] == f"{DASHBOARD}/?anomaly={'a' * 32}&trace=4bf92f3577b34da6a3ce929d0e0e4736"
    assert body["score"] == pytest.approx(4.2)
    assert body["evidence"] == {"cost_usd": 41.2, "baseline_usd": 4.2, "z": 6.1, "span_ids": ["a1", "b2"]}
    path, headers, _, _ = hooks.requests[0]
    assert path == "/hook?token=s3cr3t" and headers["Content-Type"] == "application/json"
    assert headers["X-Agentwatch-Event"] == "new" and headers["X-Agentwatch-Delivery"]

    [row] = deliveries(db)
    assert (row["AnomalyId"], row["Sink"], row["Event"], row["Attempt"], row["HttpStatus"], row["Delivered"]) == (
        "a" * 32, "webhook", "new", 1, 200, True)
    assert row["DeliveryId"] == headers["X-Agentwatch-Delivery"]
    assert "s3cr3t" not in row["Target"] and row["Target"].endswith("/hook?token=***")
    assert json.loads(row["Payload"]) == body
    # Nothing changed: nothing more is sent.
    assert alerts.run_once() == 0
    assert len(hooks.requests) == 1


def test_same_severity_sends_nothing_escalation_sends_escalated_acknowledged_sends_nothing(dsn, db, hooks):
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key=""))
    write(db, "b" * 32, severity="warning", score=3.0)
    assert alerts.run_once() == 1
    write(db, "b" * 32, severity="warning", score=3.9)  # the condition lasts, same severity
    assert alerts.run_once() == 0
    write(db, "b" * 32, severity="critical", score=8.5, summary="now far worse")
    assert alerts.run_once() == 1
    write(db, "b" * 32, severity="critical", score=9.0)
    assert alerts.run_once() == 0
    events = [(b["event"], b["severity"]) for b in hooks.bodies("/hook")]
    assert events == [("new", "warning"), ("escalated", "critical")]
    assert hooks.bodies("/hook")[1]["summary"] == "now far worse"

    # A person acknowledges: those versions send nothing, even when severity rises under them.
    write(db, "c" * 32, severity="info")
    alerts.run_once()
    write(db, "c" * 32, severity="info", status="acknowledged")
    write(db, "c" * 32, severity="critical", status="acknowledged")
    assert alerts.run_once() == 0
    # Acknowledged before anyone was told: never sent at all.
    write(db, "d" * 32, severity="critical")
    write(db, "d" * 32, severity="critical", status="acknowledged")
    assert alerts.run_once() == 0
    assert [b["anomaly_id"][0] for b in hooks.bodies("/hook")] == ["b", "b", "c"]


def test_resolve_sends_resolved_and_pagerduty_resolve_with_the_trigger_dedup_key(dsn, db, hooks):
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[]))
    write(db, "e" * 32, kind="cross_tenant", severity="critical", agent="agent-x", tenant="initech")
    assert alerts.run_once() == 2
    [trigger] = hooks.bodies("/pd/v2/enqueue")
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "e" * 32
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and "cross_tenant" in payload["summary"]
    assert payload["source"] and payload["component"] == "agent-x" and payload["group"] == "initech"
    assert payload["custom_details"]["anomaly_id"] == "e" * 32
    assert set(payload["custom_details"]) == BASE_KEYS
    assert trigger["links"][0]["href"] == f"{DASHBOARD}/?anomaly={'e' * 32}&trace=4bf92f3577b34da6a3ce929d0e0e4736"

    write(db, "e" * 32, kind="cross_tenant", severity="critical", agent="agent-x", tenant="initech",
          status="resolved")
    assert alerts.run_once() == 2
    assert alerts.run_once() == 0
    resolved = hooks.bodies("/hook")[-1]
    assert (resolved["event"], resolved["status"]) == ("resolved", "resolved")
    resolve = hooks.bodies("/pd/v2/enqueue")[-1]
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]}

    pd_rows = [r for r in deliveries(db) if r["Sink"] == "pagerduty"]
    assert [(r["Event"], r["HttpStatus"], r["Delivered"]) for r in pd_rows] == [("new", 202, True),
                                                                                 ("resolved", 202, True)]
    for row in pd_rows:
        assert ROUTING_KEY not in row["Payload"] and json.loads(row["Payload"])["routing_key"] == "***"
        assert row["Target"] == hooks.url("/pd/v2/enqueue")


def test_an_anomaly_first_seen_resolved_gets_new_then_resolved(dsn, db, hooks):
    write(db, "f" * 32, severity="warning")
    write(db, "f" * 32, severity="warning", status="resolved")
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[]))
    assert alerts.run_once() == 4
    assert [b["event"] for b in hooks.bodies("/hook")] == ["new", "resolved"]
    assert [b["event_action"] for b in hooks.bodies("/pd/v2/enqueue")] == ["trigger", "resolve"]


# --- retries ---------------------------------------------------------------------------------------

def test_failing_receiver_is_retried_and_every_attempt_is_logged(dsn, db, hooks):
    hooks.script["/hook"] = [(500, {}), (500, {}), (200, {})]
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key=""))
    write(db, "1" * 32)
    assert alerts.run_once() == 1
    assert len(hooks.bodies("/hook")) == 3
    assert hooks.bodies("/hook")[0] == hooks.bodies("/hook")[2]
    rows = deliveries(db, "1" * 32)
    assert [(r["Attempt"], r["HttpStatus"], r["Delivered"]) for r in rows] == [(1, 500, False), (2, 500, False),
                                                                               (3, 200, True)]
    assert len({r["DeliveryId"] for r in rows}) == 1
    assert rows[0]["Error"].startswith("HTTP 500: receiver says no")
    assert all(r["Payload"] for r in rows)
    assert alerts.run_once() == 0


def test_retry_after_is_honoured_and_a_dead_receiver_is_given_up_on(dsn, db, hooks):
    hooks.script["/hook"] = [(429, {"Retry-After": "0.4"}), (200, {})]
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key="", max_attempts=3))
    write(db, "2" * 32)
    assert alerts.run_once() == 1
    first, second = [t for p, _, _, t in hooks.requests]
    assert second - first >= 0.35  # the backoff alone would be 0.01 s

    hooks.requests.clear()
    hooks.script["/hook"] = [(503, {})] * 3
    write(db, "3" * 32, tenant="globex")
    assert alerts.run_once() == 0
    assert len(hooks.requests) == 3
    rows = deliveries(db, "3" * 32)
    assert [(r["Attempt"], r["HttpStatus"], r["Delivered"]) for r in rows] == [(1, 503, False), (2, 503, False),
                                                                               (3, 503, False)]
    assert rows[-1]["Error"].startswith("gave up after 3 attempts: HTTP 503")
    assert alerts.run_once() == 0 and len(hooks.requests) == 3  # given up means given up, once

    hooks.script["/hook"] = [(404, {})]
    write(db, "4" * 32, tenant="hooli")
    assert alerts.run_once() == 0
    assert len(hooks.requests) == 4  # a 4xx other than 408/425/429 is not retried
    [row] = deliveries(db, "4" * 32)
    assert row["Error"].startswith("gave up: not retryable: HTTP 404")


def test_network_errors_are_retried(dsn, db, hooks):
    dead = HookReceiver()
    url = dead.url("/hook")
    dead.stop()  # nothing listens there any more: connection refused
    alerts = dispatcher(dsn, db, config(hooks, webhook_urls=[url], slack_webhook_urls=[],
                                        pagerduty_routing_key="", max_attempts=2))
    write(db, "5" * 32)
    assert alerts.run_once() == 0
    rows = deliveries(db, "5" * 32)
    assert [(r["Attempt"], r["HttpStatus"], r["Delivered"]) for r in rows] == [(1, 0, False), (2, 0, False)]
    assert "retrying" in rows[0]["Error"] and rows[1]["Error"].startswith("gave up after 2 attempts")


# --- grouping --------------------------------------------------------------------------------------

def test_a_storm_becomes_one_notification_per_sink(dsn, db, hooks):
    now = [1_000_000.0]
    alerts = dispatcher(dsn, db, config(hooks), clock=lambda: now[0])
    storm = [f"{i:032x}" for i in range(1, 31)]
    for i, anomaly_id in enumerate(storm):
        write(db, anomaly_id, kind="fanout", tenant="globex", agent=f"sub-agent-{i}",
              severity="critical" if i == 17 else "warning")
    write(db, "9" * 32, kind="fanout", tenant="acme")  # another tenant: its own notification
    assert alerts.run_once() == 6  # (storm + lone) x (webhook, slack, pagerduty)

    webhook = hooks.bodies("/hook")
    [grouped] = [b for b in webhook if b["tenant"] == "globex"]
    assert set(grouped) == BASE_KEYS | {"anomalies", "count"}
    assert grouped["count"] == 30 and {a["anomaly_id"] for a in grouped["anomalies"]} == set(storm)
    assert all(set(a) == BASE_KEYS for a in grouped["anomalies"])
    # The first (lead) anomaly is the most severe one, and the top-level keys are its.
    assert grouped["anomaly_id"] == storm[17] == grouped["anomalies"][0]["anomaly_id"]
    assert grouped["severity"] == "critical" and grouped["agent"] == "sub-agent-17"
    slack = hooks.bodies("/services/T000/B000/SLACKSECRET")
    assert len(slack) == 2 and any("30 fanout anomalies" in s["text"] for s in slack)
    pd = hooks.bodies("/pd/v2/enqueue")
    assert len(pd) == 2
    [storm_page] = [p for p in pd if p["dedup_key"] != "9" * 32]
    assert storm_page["payload"]["custom_details"]["count"] == 30
    assert storm_page["payload"]["severity"] == "critical"
    group_key = storm_page["dedup_key"]
    # Every anomaly of the storm is logged with the delivery; the payload once, on the lead's row.
    rows = [r for r in deliveries(db) if r["Sink"] == "webhook" and r["AnomalyId"] in storm]
    assert len(rows) == 30 and len({r["DeliveryId"] for r in rows}) == 1
    assert [r["AnomalyId"] for r in rows if r["Payload"]] == [storm[17]]

    # Another anomaly of the storm within the window is held, then sent as one update.
    hooks.requests.clear()
    write(db, "f" * 31 + "1", kind="fanout", tenant="globex", agent="sub-agent-31")
    assert alerts.run_once() == 0 and not hooks.requests
    now[0] += 61
    assert alerts.run_once() == 3
    [update] = hooks.bodies("/hook")
    assert update["count"] == 1 and update["anomaly_id"] == "f" * 31 + "1"
    assert hooks.bodies("/pd/v2/enqueue")[0]["dedup_key"] == group_key

    # The storm's incident closes only once all its anomalies are resolved.
    hooks.requests.clear()
    now[0] += 61
    for anomaly_id in storm:
        write(db, anomaly_id, kind="fanout", tenant="globex", status="resolved")
    assert alerts.run_once() == 2  # one grouped `resolved` to webhook and Slack; PagerDuty waits
    [resolved] = hooks.bodies("/hook")
    assert resolved["event"] == "resolved" and resolved["count"] == 30
    assert not hooks.bodies("/pd/v2/enqueue")
    write(db, "f" * 31 + "1", kind="fanout", tenant="globex", status="resolved")
    now[0] += 61
    alerts.run_once()
    assert hooks.bodies("/pd/v2/enqueue") == [{"routing_key": ROUTING_KEY, "event_action": "resolve",
                                                "dedup_key": group_key}]


def test_a_few_events_of_a_key_go_out_one_by_one(dsn, db, hooks):
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key="",
                                        group_threshold=3))
    for i in range(3):
        write(db, f"{i + 100:032x}", kind="loop", tenant="acme", agent=f"a{i}")
    assert alerts.run_once() == 3
    assert [b.get("count") for b in hooks.bodies("/hook")] == [None, None, None]


def test_group_wait_gathers_a_burst_that_spans_polls(dsn, db, hooks):
    now = [2_000_000.0]
    alerts = dispatcher(dsn, db, config(hooks, slack_webhook_urls=[], pagerduty_routing_key="", group_wait_s=2),
                        clock=lambda: now[0])
    for i in range(2):
        write(db, f"{i + 700:032x}", kind="loop", tenant="acme", agent=f"a{i}")
    assert alerts.run_once() == 0  # waiting for the rest of the burst
    now[0] += 1
    for i in range(2, 4):
        write(db, f"{i + 700:032x}", kind="loop", tenant="acme", agent=f"a{i}")
    assert alerts.run_once() == 0
    now[0] += 1.5
    assert alerts.run_once() == 1
    [grouped] = hooks.bodies("/hook")
    assert grouped["count"] == 4


# --- restarts --------------------------------------------------------------------------------------

def test_a_restarted_dispatcher_does_not_resend(dsn, db, hooks):
    cfg = config(hooks)
    first = dispatcher(dsn, db, cfg)
    write(db, "6" * 32, severity="warning")
    write(db, "7" * 32, severity="info", tenant="globex")
    assert first.run_once() == 6
    first.close()
    sent = len(hooks.requests)

    again = dispatcher(dsn, db, cfg)
    assert again.run_once() == 0 and len(hooks.requests) == sent
    write(db, "6" * 32, severity="critical")
    assert again.run_once() == 3
    again.close()
    third = dispatcher(dsn, db, cfg)
    assert third.run_once() == 0
    third.close()

    # A crash after sending but before the checkpoint was saved: alert_deliveries says what went out.
    crashing = dispatcher(dsn, db, cfg)
    crashing._save_state = lambda state: None
    write(db, "6" * 32, severity="critical", status="resolved")
    write(db, "8" * 32, severity="warning", tenant="hooli")
    assert crashing.run_once() == 6
    sent = len(hooks.requests)
    crashing._lease.release()  # stands for its lease running out: a dead process renews nothing
    recovered = dispatcher(dsn, db, cfg)
    assert recovered.run_once() == 0 and len(hooks.requests) == sent
    events = [(b["anomaly_id"][0], b["event"]) for b in hooks.bodies("/hook")]
    assert sorted(events) == sorted([("6", "new"), ("7", "new"), ("6", "escalated"), ("6", "resolved"),
                                     ("8", "new")])


def test_a_sink_that_already_has_an_event_is_not_sent_it_again(dsn, db, hooks):
    cfg = config(hooks, slack_webhook_urls=[])
    crashing = dispatcher(dsn, db, cfg)
    crashing._save_state = lambda state: None
    crashing.sinks = [s for s in crashing.sinks if s.name == "webhook"]  # it died before PagerDuty
    write(db, "c" * 32)
    assert crashing.run_once() == 1
    crashing._lease.release()  # stands for its lease running out
    recovered = dispatcher(dsn, db, cfg)
    assert recovered.run_once() == 1
    assert len(hooks.bodies("/hook")) == 1 and len(hooks.bodies("/pd/v2/enqueue")) == 1


def test_a_delivery_cut_off_by_stopping_goes_out_after_the_restart_to_that_sink_only(dsn, db, hooks):
    hooks.script["/hook"] = [(503, {"Retry-After": "30"})]
    cfg = config(hooks, slack_webhook_urls=[], timeout_s=0.5)  # also the grace given to deliveries on stop
    alerts = dispatcher(dsn, db, cfg)
    stop = threading.Event()
    thread = threading.Thread(target=alerts.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        write(db, "ef" * 16)
        wait_until(lambda: hooks.bodies("/hook") and hooks.bodies("/pd/v2/enqueue"))
        write(db, "0e" * 16, tenant="globex")  # meanwhile the checkpoint is saved again
        wait_until(lambda: len(hooks.bodies("/hook")) == 2 and len(hooks.bodies("/pd/v2/enqueue")) == 2)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # "ef" was waiting out its Retry-After at the webhook when it was stopped.
    assert [b["anomaly_id"] for b in hooks.bodies("/hook")] == ["ef" * 16, "0e" * 16]

    restarted = dispatcher(dsn, db, cfg)
    assert restarted.run_once() == 1
    assert [b["anomaly_id"] for b in hooks.bodies("/hook")] == ["ef" * 16, "0e" * 16, "ef" * 16]
    assert len(hooks.bodies("/pd/v2/enqueue")) == 2  # PagerDuty had both already
    assert restarted.run_once() == 0


# --- containment ----------------------------------------------------------------------------------

def test_alerts_name_what_was_halted_for_the_anomaly_by_the_policy_and_by_a_person(dsn, db, hooks):
    _, client = db
    trace = "7d" * 16
    raised = Anomaly(anomaly_id="ha" * 16, kind="fanout", tenant="acme", subject=trace, agent_id="planner-3",
                     trace_id=trace, severity="critical", score=40.0, first_seen_ns=0, last_seen_ns=0,
                     detected_at_ms=0, summary="planner-3 spawned 400 sub-agents in 30 s.",
                     evidence={"children": 400})
    [made] = Containment(Policy()).apply(client, [raised])  # the detectors' default policy: fanout halts its trace
    write(db, raised.anomaly_id, kind="fanout", severity="critical", agent="planner-3", trace_id=trace,
          summary=raised.summary, evidence=raised.evidence)
    alerts = dispatcher(dsn, db, config(hooks))
    assert alerts.run_once() == 3

    [body] = hooks.bodies("/hook")
    assert set(body) == BASE_KEYS | {"halts"} and "actions" not in body  # no links unless configured
    [halt] = body["halts"]
    assert {k: halt[k] for k in ("action", "scope", "target", "calls", "decided_by", "halt_id")} == {
        "action": "halt", "scope": "trace", "target": trace, "calls": "all", "decided_by": "policy",
        "halt_id": made.halt_id}
    assert parse_iso(halt["decided_at"]) and "fanout" in halt["reason"]
    [slack] = hooks.bodies("/services/T000/B000/SLACKSECRET")
    said = f"halted trace {trace} (all calls) by policy"
    assert said in slack["text"]
    assert any(said in b["text"]["text"] for b in slack["blocks"] if b["type"] == "section" and "text" in b)
    [page] = hooks.bodies("/pd/v2/enqueue")
    assert said in page["payload"]["summary"] and page["payload"]["custom_details"]["halts"] == body["halts"]

    # A person halts the agent for this anomaly too; the next alert about it names both decisions.
    halts.record(client, [halts.decision("acme", "agent", "planner-3", "halt", calls="model",
                                         anomaly_id=raised.anomaly_id, reason="stop the spend",
                                         decided_by="cli:oncall")])
    write(db, raised.anomaly_id, kind="fanout", severity="critical", agent="planner-3", trace_id=trace,
          status="resolved")
    assert alerts.run_once() == 3
    resolved = hooks.bodies("/hook")[-1]
    assert resolved["event"] == "resolved"
    assert [(h["scope"], h["target"], h["calls"], h["decided_by"]) for h in resolved["halts"]] == [
        ("trace", trace, "all", "policy"), ("agent", "planner-3", "model", "cli:oncall")]
    assert "halted agent planner-3 (model calls only) by cli:oncall" in hooks.bodies(
        "/services/T000/B000/SLACKSECRET")[-1]["text"]


# --- Slack -----------------------------------------------------------------------------------------

def test_slack_payload_is_an_incoming_webhook_message(dsn, db, hooks):
    alerts = dispatcher(dsn, db, config(hooks, webhook_urls=[], pagerduty_routing_key=""))
    write(db, "5a" * 16, kind="cross_tenant", severity="critical", tenant="initech", agent="agent-<x>",
          summary="agent-<x> of initech used credential cred-9 of tenant acme on acme/billing & more.")
    assert alerts.run_once() == 1
    [message] = hooks.bodies("/services/T000/B000/SLACKSECRET")
    assert set(message) == {"text", "blocks"}
    assert "CRITICAL" in message["text"] and "cross_tenant" in message["text"] and "initech" in message["text"]
    assert "&lt;x&gt;" in message["text"] and "&amp;" in message["text"]  # Slack's escaping
    types = [block["type"] for block in message["blocks"]]
    assert types[0] == "header" and "actions" in types and "section" in types
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text" and len(header["text"]) <= 150 and "cross_tenant" in header["text"]
    [actions] = [b for b in message["blocks"] if b["type"] == "actions"]
    button = actions["elements"][0]
    assert button["type"] == "button" and button["style"] == "danger"
    assert button["url"] == f"{DASHBOARD}/?anomaly={'5a' * 16}&trace=4bf92f3577b34da6a3ce929d0e0e4736"
    fields = [f["text"] for b in message["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert any(f.startswith("*Tenant*") and "initech" in f for f in fields)
    assert any(f.startswith("*Agent*") for f in fields)
    for block in message["blocks"]:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
    [row] = deliveries(db)
    assert row["Sink"] == "slack" and "SLACKSECRET" not in row["Target"]
    assert row["Target"] == hooks.url("/services/T000/B000/***")


def test_slack_storm_message_lists_the_most_severe_and_counts_the_rest(dsn, db, hooks):
    alerts = dispatcher(dsn, db, config(hooks, webhook_urls=[], pagerduty_routing_key=""))
    for i in range(25):
        write(db, f"{i + 500:032x}", kind="credential_fanout", tenant="umbrella", agent=f"agent-{i}",
              severity="critical" if i == 3 else "info")
    assert alerts.run_once() == 1
    [message] = hooks.bodies("/services/T000/B000/SLACKSECRET")
    assert "25 credential_fanout anomalies" in message["blocks"][0]["text"]["text"]
    listing = [b for b in message["blocks"] if b["type"] == "section"][1]["text"]["text"]
    assert "|agent-3>" in listing.splitlines()[0] and len(listing.splitlines()) == 10
    assert any("15 more" in e["text"] for b in message["blocks"] if b["type"] == "context"
               for e in b["elements"])


# --- configuration ---------------------------------------------------------------------------------

def test_config_from_environment():
    cfg = AlertConfig.from_env({
        "AGENTWATCH_ALERT_WEBHOOK_URL": "https://a.example/hook, https://b.example/hook",
        "AGENTWATCH_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B1/xyz",
        "AGENTWATCH_PAGERDUTY_ROUTING_KEY": "rk",
        "AGENTWATCH_DASHBOARD_URL": "https://watch.example",
        "AGENTWATCH_ALERT_GROUP_WINDOW_S": "30",
        "AGENTWATCH_ALERT_GROUP_THRESHOLD": "5",
        "AGENTWATCH_ALERT_MAX_ATTEMPTS": "7",
        "AGENTWATCH_ALERT_BACKOFF_S": "0.25",
    })
    assert cfg.webhook_urls == ["https://a.example/hook", "https://b.example/hook"]
    assert cfg.pagerduty_url == PAGERDUTY_EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"
    assert (cfg.dashboard_url, cfg.group_window_s, cfg.group_threshold, cfg.max_attempts, cfg.backoff_s) == (
        "https://watch.example", 30.0, 5, 7, 0.25)
    assert [s.name for s in cfg.sinks()] == ["webhook", "webhook", "slack", "pagerduty"]
    assert cfg.sinks()[2].target == "https://hooks.slack.com/services/T1/B1/***"
    assert AlertConfig.from_env({"AGENTWATCH_PAGERDUTY_URL": "http://127.0.0.1:9/x"}).pagerduty_url == \
        "http://127.0.0.1:9/x"
    assert AlertConfig.from_env({}).sinks() == [] and AlertConfig.from_env({}).dashboard_url == "http://localhost:8501"
    with pytest.raises(ValueError, match="AGENTWATCH_ALERT_MAX_ATTEMPTS"):
        AlertConfig.from_env({"AGENTWATCH_ALERT_MAX_ATTEMPTS": "many"})


def test_no_sink_configured_records_nothing_and_says_so_once(dsn, db, caplog):
    write(db, "0" * 32)
    alerts = dispatcher(dsn, db, AlertConfig())
    with caplog.at_level(logging.WARNING, logger="agentwatch.detectors.alerts"):
        assert alerts.run_once() == 0
        assert alerts.run_once() == 0
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "no sink configured" in caplog.records[0].message
    _, client = db
    assert client.query("SELECT count() FROM alert_deliveries").result_rows == [(0,)]


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_run_forever_sends_in_the_background_and_a_slow_sink_delays_nothing_else(dsn, db, hooks):
    # The first POST is told to come back in 1.5 s: that retry must not hold up the next anomaly.
    hooks.script["/hook"] = [(503, {"Retry-After": "1.5"})]
    cfg = config(hooks, slack_webhook_urls=[])
    alerts = dispatcher(dsn, db, cfg)
    stop = threading.Event()
    thread = threading.Thread(target=alerts.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        write(db, "ab" * 16, tenant="acme")
        wait_until(lambda: len(hooks.bodies("/hook")) == 1)
        started = time.monotonic()
        write(db, "cd" * 16, tenant="globex")
        wait_until(lambda: len(hooks.bodies("/hook")) == 2)
        assert time.monotonic() - started < 1.2
        assert [b["anomaly_id"] for b in hooks.bodies("/hook")] == ["ab" * 16, "cd" * 16]
        wait_until(lambda: len(hooks.bodies("/pd/v2/enqueue")) == 2)
        assert time.monotonic() - started < 1.2
        assert {b["dedup_key"] for b in hooks.bodies("/pd/v2/enqueue")} == {"ab" * 16, "cd" * 16}
        wait_until(lambda: len(hooks.bodies("/hook")) == 3)  # the retry, after Retry-After
        # The resolve of an anomaly waits for its `new` to be done, then follows it.
        write(db, "ab" * 16, tenant="acme", status="resolved")
        wait_until(lambda: len(hooks.bodies("/pd/v2/enqueue")) == 3)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert [b["event"] for b in hooks.bodies("/hook") if b["anomaly_id"] == "ab" * 16] == ["new", "new", "resolved"]
    assert hooks.bodies("/pd/v2/enqueue")[-1]["event_action"] == "resolve"
    # What it sent is in the checkpoint: a new dispatcher has nothing to send.
    assert dispatcher(dsn, db, cfg).run_once() == 0

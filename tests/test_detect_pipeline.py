"""The whole path on the demo's labelled scenario: SDK -> OTLP -> receiver -> store ->
detector worker -> anomalies -> alert dispatcher -> a JSON webhook on loopback."""

from __future__ import annotations

import time

import pytest

import agentwatch
from agentwatch import demo
from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.worker import DetectorConfig, DetectorWorker
from agentwatch.schemas import store
from tests.helpers import JsonWebhook, fresh_database, start_receiver

ALERT_KEYS = {"kind", "severity", "tenant", "agent", "trace_id", "summary", "detected_at", "status", "url"}


@pytest.fixture(scope="module")
def webhook():
    hook = JsonWebhook()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def scenario(dsn):
    """An hour of the fleet with its five incidents, sent over OTLP into a fresh database."""
    database = fresh_database(dsn, "t_detect_pipeline")
    receiver = start_receiver(dsn, database, grpc_port=None)
    try:
        clock = demo.make_clock(time.time_ns() - 3600 * 10**9)
        telemetry = agentwatch.init("demo-fleet", endpoint=f"http://127.0.0.1:{receiver.http_port}", clock=clock,
                                    gpu_interval=None, max_queue_size=65_536)
        result = demo.run_fleet(duration_s=3600, fast_forward=True, incidents=True, seed=11, start_ns=clock())
        assert telemetry.flush(timeout_s=120)
        agentwatch.shutdown()
        assert receiver.flush(timeout_s=120)
    finally:
        receiver.stop()
    return database, result


def test_every_incident_reaches_the_webhook_once_with_its_kind_and_tenant(dsn, scenario, webhook):
    database, result = scenario

    def connect():
        return store.connect(dsn, database)

    # A worker that dies half way through the stream, then a fresh one resuming from its checkpoint.
    first = DetectorWorker(connect, DetectorConfig())
    for _ in range(3):
        first.run_once(max_rows=4_000)
    del first
    resumed = DetectorWorker(connect, DetectorConfig())
    resumed.catch_up(max_rows=20_000)  # run_once alone returns 0 while the newest rows are within the safety lag

    config = AlertConfig(webhook_urls=[webhook.url], backoff_s=0.05)
    webhook.received.clear()
    for _ in range(2):  # the second, a restarted dispatcher, must send nothing again
        dispatcher = AlertDispatcher(connect, config)
        dispatcher.run_once()
        dispatcher.close()
    sent = [alert for alert in webhook.alerts() if alert.get("event", "new") == "new"]

    for incident in result.incidents:
        matching = [alert for alert in sent if alert["kind"] == incident.kind and alert["tenant"] == incident.tenant]
        assert matching, f"no alert for {incident.kind} in {incident.tenant}: {incident.description}"
    ids = [alert["anomaly_id"] for alert in sent]
    assert len(ids) == len(set(ids)), "an anomaly was alerted twice"
    for alert in sent:
        assert ALERT_KEYS <= alert.keys()
        assert alert["url"].startswith("http://localhost:8501/?anomaly=")
    logged = store.connect(dsn, database).query(
        "SELECT AnomalyId FROM alert_deliveries WHERE Event = 'new' AND Delivered").result_rows
    assert sorted(anomaly for (anomaly,) in logged) == sorted(ids)  # every delivery is in the log, once

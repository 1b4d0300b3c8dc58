"""The commands as a user runs them, as processes: `agentwatch demo` on a fresh embedded store, and
`agentwatch up` taking the demo fleet over OTLP, alerting on a loopback webhook, showing its own
health on /metrics and exiting cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import JsonWebhook, prometheus_value, wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp_path: Path, **settings) -> dict:
    env = {**os.environ, "AGENTWATCH_DATA_DIR": str(tmp_path / "data"), **settings}
    for key in ("AGENTWATCH_CLICKHOUSE_DSN", "AGENTWATCH_DATABASE", "AGENTWATCH_CONFIG"):
        env.pop(key, None)
    return env


def test_demo_sends_the_fleet_and_reports_what_the_detectors_found(tmp_path):
    demo = subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", "900"], env=clean_env(tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "(0 dropped by the export queue)" in out
    found = out[out.index("found by the detectors"):]
    for kind in ("fanout", "cost_spike", "cross_tenant", "credential_fanout", "loop"):
        assert f"\n  {kind} " in found, found
    assert "injected incidents detected: 5/5" in found


def test_up_takes_the_fleet_alerts_its_incidents_and_stops_cleanly(tmp_path):
    webhook = JsonWebhook()
    http_port = free_port()
    env = clean_env(tmp_path, AGENTWATCH_OTLP_HTTP_PORT=str(http_port), AGENTWATCH_OTLP_GRPC_PORT=str(free_port()),
                    AGENTWATCH_DASHBOARD_PORT=str(free_port()), AGENTWATCH_ALERT_WEBHOOK_URL=webhook.url,
                    AGENTWATCH_DASHBOARD_URL="http://agentwatch.example:8501")
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "up"], env=env, cwd=tmp_path, stdout=log,
                          stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        def healthy():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.get(f"{base}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout_s=120)
        labels = tmp_path / "labels.json"
        demo = subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", "900", "--endpoint", base,
                               "--labels", str(labels)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        incidents = json.loads(labels.read_text())["incidents"]
        assert {i["kind"] for i in incidents} == {"fanout", "cost_spike", "cross_tenant", "credential_fanout", "loop"}

        def alerted() -> set[tuple[str, str]]:
            return {(a["kind"], a["tenant"]) for a in webhook.alerts() if a.get("event", "new") == "new"}

        # a cold start (no history to learn from): the hard guard rails and the cross-tenant rule catch them all
        wait_for(lambda: {(i["kind"], i["tenant"]) for i in incidents} <= alerted(), timeout_s=180)
        first = webhook.alerts()[0]
        assert first["url"].startswith("http://agentwatch.example:8501/?anomaly=")

        page = httpx.get(f"{base}/metrics").text
        assert prometheus_value(page, "agentwatch_detector_rows_total", shard="0/1", table="agent_spans") > 10_000
        assert prometheus_value(page, "agentwatch_detector_rows_total", table="credential_events") > 0
        assert prometheus_value(page, "agentwatch_detector_errors_total") == 0
        # the default policy halted the runaway's trace and the loop's trace at least
        assert prometheus_value(page, "agentwatch_containment_decisions_total", shard="0/1") >= 2
        assert prometheus_value(page, "agentwatch_containment_errors_total") == 0
        assert prometheus_value(page, "agentwatch_alert_delivered_total") >= len(incidents)
        assert prometheus_value(page, "agentwatch_alert_attempts_total", sink="webhook", event="new",
                                outcome="delivered") > 0
        assert prometheus_value(page, "agentwatch_receiver_written_rows_total", table="otel_traces") > 10_000
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(timeout=120)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
        webhook.stop()
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    assert "stopped after writing" in (tmp_path / "up.log").read_text()

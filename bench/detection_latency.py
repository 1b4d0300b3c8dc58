"""Detection latency in real time: from the first anomalous span's arrival to the alert at the webhook.

One process runs the whole pipeline the way `agentwatch up` does: the OTLP
receiver on a fresh embedded store, the detector worker and the alert
dispatcher in their own threads, and a JSON webhook receiver on loopback that
notes when each alert arrives. First an hour of normal history is
fast-forwarded through it (so baselines exist), then the demo fleet runs in
real time with its incidents; the agents export with the SDK's defaults.

A span "arrives" when its row reaches the store (`IngestedAt`). For the first
alert of each incident's kind and tenant at the webhook, three latencies:

- from_raising_span_arrival: since the arrival of the span whose evidence
  raised the anomaly (`raised_by` in its Evidence) -- the pipeline's own
  delay: worker poll, detection, anomaly write, dispatcher, HTTP;
- from_raising_span_end: since that span ended in the agent process --
  adds the SDK's export batching and the receiver's write;
- from_first_incident_span: since the first of the incident's spans
  arrived -- adds the time the incident takes to build up enough evidence
  (a loop needs its repeats, a cost spike its expensive calls to finish:
  OpenTelemetry exports a span when it ends).

    python bench/detection_latency.py [--duration 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook(BaseHTTPRequestHandler):
    received: list[tuple[float, dict]] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Webhook.received.append((time.time(), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def first_alerts() -> dict[str, float]:
    """Anomaly id -> when its first new-anomaly alert reached the webhook."""
    first: dict[str, float] = {}
    for arrived, body in Webhook.received:
        for alert in body.get("anomalies") or [body]:
            if alert.get("event", "new") == "new":
                first.setdefault(alert["anomaly_id"], arrived)
    return first


def raising_span(client, anomaly_id: str) -> tuple[float, float] | None:
    """(arrival, end in the agent) in epoch seconds of the span that raised the anomaly."""
    rows = client.query("SELECT Evidence FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                        parameters={"a": anomaly_id}).result_rows
    raised = json.loads(rows[0][0]).get("raised_by") if rows else None
    if not raised:
        return None
    arrived = datetime.fromisoformat(raised["ingested_at"]).timestamp()
    ended = client.query(
        "SELECT toUnixTimestamp64Nano(Timestamp) + Duration FROM otel_traces WHERE TraceId = {t:String} "
        "AND SpanId = {s:String} LIMIT 1", parameters={"t": raised["trace_id"], "s": raised["span_id"]}
    ).result_rows
    return arrived, (ended[0][0] / 1e9 if ended else float("nan"))


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"p50_s": round(statistics.median(ordered), 2),
            "p95_s": round(ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)], 2), "max_s": round(ordered[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds of real-time fleet with incidents")
    parser.add_argument("--history", type=float, default=3600, help="seconds of normal history fast-forwarded first")
    parser.add_argument("--seed", type=int, default=7, help="the demo fleet's seed (tenants, incidents)")
    args = parser.parse_args()

    import agentwatch
    from agentwatch import demo
    from agentwatch.collector.receiver import Receiver, ReceiverConfig
    from agentwatch.detectors import evaluation
    from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
    from agentwatch.detectors.worker import DetectorConfig, DetectorWorker
    from agentwatch.schemas import migrate, store

    dsn = f"chdb://{tempfile.mkdtemp(prefix='agentwatch-latency-')}"
    client = store.connect(dsn, "agentwatch")
    migrate.apply(client)
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()

    def connect():
        return store.connect(dsn, "agentwatch")

    receiver = Receiver(connect, ReceiverConfig(http_port=0, grpc_port=None)).start()
    endpoint = f"http://127.0.0.1:{receiver.http_port}"

    history_end = time.time_ns()
    clock = demo.make_clock(history_end - int(args.history * 1e9))
    agentwatch.init("demo-fleet", endpoint=endpoint, clock=clock, gpu_interval=None, max_queue_size=65_536)
    demo.run_fleet(duration_s=args.history, fast_forward=True, incidents=False, start_ns=clock(),
                   seed=args.seed)
    agentwatch.flush()
    receiver.flush()

    stop = threading.Event()
    worker = DetectorWorker(connect, DetectorConfig.from_env())
    worker.catch_up()  # learn the history before going live
    dispatcher = AlertDispatcher(connect, AlertConfig(webhook_urls=[f"http://127.0.0.1:{webhook.server_address[1]}/"]))
    dispatcher.run_once()
    Webhook.received.clear()
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True)
               for loop in (worker.run_forever, dispatcher.run_forever)]
    for thread in threads:
        thread.start()

    agentwatch.init("demo-fleet", endpoint=endpoint, gpu_interval=None, max_queue_size=65_536)
    started = time.perf_counter()
    result = demo.run_fleet(duration_s=args.duration, fast_forward=False, incidents=True, seed=args.seed)
    agentwatch.flush()
    receiver.flush()
    time.sleep(15)  # let the last windows close and alerts go out
    stop.set()
    for thread in threads:
        thread.join(30)
    receiver.stop()

    alerts = first_alerts()
    anomalies = evaluation.load_anomalies(client)
    by_incident, measures = {}, {"from_raising_span_arrival": [], "from_raising_span_end": [],
                                 "from_first_incident_span": []}
    for incident in result.incidents:
        first_arrival = client.query(
            "SELECT toUnixTimestamp64Micro(min(IngestedAt)) FROM ("
            " SELECT IngestedAt FROM agent_spans WHERE TraceId = {t:String}"
            " UNION ALL SELECT IngestedAt FROM credential_events WHERE CredentialId = {c:String}"
            "  AND Timestamp >= fromUnixTimestamp64Nano({s:Int64}))",
            parameters={"t": incident.trace_id, "c": incident.credential_id or "-", "s": incident.started_at_ns},
        ).result_rows[0][0] / 1e6
        name = f"{incident.kind}/{incident.tenant}"
        # the incident's own anomaly (a cross_tenant alert of the same tenant may be another credential's)
        alerted_ids = [a.anomaly_id for a in anomalies
                       if evaluation.matches(a, evaluation.Label.of(incident)) and a.anomaly_id in alerts]
        if not alerted_ids:
            by_incident[name] = None
            continue
        anomaly_id = min(alerted_ids, key=alerts.get)
        alerted = alerts[anomaly_id]
        raised = raising_span(client, anomaly_id)
        latency = {"from_first_incident_span": alerted - first_arrival}
        if raised is not None:
            latency["from_raising_span_arrival"] = alerted - raised[0]
            latency["from_raising_span_end"] = alerted - raised[1]
        for key, value in latency.items():
            measures[key].append(value)
        by_incident[name] = {key: round(value, 2) for key, value in latency.items()}
    print(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "seed": args.seed,
        "real_time_seconds": round(time.perf_counter() - started, 1),
        "incidents": len(result.incidents), "alerted": sum(1 for v in by_incident.values() if v),
        "by_incident": by_incident,
        **{key: percentiles(values) for key, values in measures.items()},
        "worker": {k: worker.stats[k] for k in ("batches", "rows", "errors")},
    }, indent=2))


if __name__ == "__main__":
    main()

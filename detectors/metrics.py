"""The detector worker's and the alert dispatcher's own health, in Prometheus text.

Read from their counters at scrape time (a prometheus_client custom collector),
so the detection loop itself does no metric bookkeeping. `agentwatch up` serves
them on the receiver's /metrics; `agentwatch detect` on its own port
(`--metrics-port`, default 9464).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentwatch.detectors.alerts import AlertDispatcher
from agentwatch.detectors.worker import DetectorWorker


class DetectionCollector:
    def __init__(self, worker: DetectorWorker | None = None, dispatcher: AlertDispatcher | None = None) -> None:
        self.worker = worker
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        if self.worker is not None:
            yield from self._worker_metrics(self.worker)
        if self.dispatcher is not None:
            yield from self._dispatcher_metrics(self.dispatcher)

    @staticmethod
    def _worker_metrics(worker: DetectorWorker) -> Iterator[Metric]:
        status = worker.status()
        shard = [status["shard"]]
        rows = CounterMetricFamily("agentwatch_detector_rows", "Rows the detectors processed since this start",
                                   labels=["shard", "table"])
        rows.add_metric(shard + ["agent_spans"], status["span_rows"])
        rows.add_metric(shard + ["credential_events"], status["credential_rows"])
        yield rows
        # the audit: rows processed ever (checkpointed) against rows stored up to the worker's position,
        # equal unless a row was skipped or read twice; and rows stored after it, still to read
        for name, key, text in (
                ("agentwatch_detector_rows_processed", "processed", "Rows processed, ever (from the checkpoint)"),
                ("agentwatch_detector_rows_stored", "stored", "Rows stored up to the worker's position (audit)"),
                ("agentwatch_detector_rows_pending", "pending", "Rows stored after the worker's position (audit)")):
            family = GaugeMetricFamily(name, text, labels=["shard", "table"])
            for table, value in sorted(status.get(key, {}).items()):
                family.add_metric(shard + [table], value)
            yield family
        for name, key, text in (
                ("agentwatch_detector_merge_retries", "merge_retries", "Reads done again because a part was "
                                                                       "merged while it was read"),
                ("agentwatch_detector_batches", "batches", "Batches processed"),
                ("agentwatch_detector_errors", "errors", "Batches that failed (resumed from the checkpoint)"),
                ("agentwatch_detector_anomaly_versions_written", "anomalies_written", "Anomaly row versions written"),
                ("agentwatch_detector_checkpoints", "checkpoints", "Checkpoints written")):
            family = CounterMetricFamily(name, text, labels=["shard"])
            family.add_metric(shard, status[key])
            yield family
        # The containment policy's halts and releases, and the batches whose decisions the store refused.
        for name, value, text in (
                ("agentwatch_containment_decisions", worker.containment.decisions,
                 "Halts and releases the containment policy wrote since this start"),
                ("agentwatch_containment_errors", worker.containment.errors,
                 "Batches whose containment decisions the store refused (decided again later)")):
            family = CounterMetricFamily(name, text, labels=["shard"])
            family.add_metric(shard, value)
            yield family
        # How far behind the store the detectors are: 0 once a batch found nothing new.
        behind = GaugeMetricFamily("agentwatch_detector_behind_seconds",
                                   "Age of the newest row in the last batch; 0 when caught up", labels=["shard"])
        last = status["last_ingested_us"]
        behind.add_metric(shard, 0.0 if status["caught_up"] or not last else max(0.0, time.time() - last / 1e6))
        yield behind
        if "span_watermark_ns" in status:
            watermark = GaugeMetricFamily("agentwatch_detector_watermark_seconds",
                                          "Event-time watermark (Unix seconds): windows before it are final",
                                          labels=["shard", "stream"])
            for stream in ("span", "credential"):
                value = status[f"{stream}_watermark_ns"]
                if value > 0:
                    watermark.add_metric(shard + [stream], value / 1e9)
            yield watermark
            for name, key, text in (("agentwatch_detector_open_anomalies", "open_anomalies", "Anomalies open now"),
                                    ("agentwatch_detector_active_traces", "active_traces", "Traces being followed")):
                family = GaugeMetricFamily(name, text, labels=["shard"])
                family.add_metric(shard, status[key])
                yield family

    @staticmethod
    def _dispatcher_metrics(dispatcher: AlertDispatcher) -> Iterator[Metric]:
        attempts = CounterMetricFamily("agentwatch_alert_attempts", "HTTP attempts to deliver alerts, by outcome",
                                       labels=["sink", "event", "outcome"])
        for (sink, event, outcome), count in sorted(dispatcher.attempts.items()):
            attempts.add_metric([sink, event, outcome], count)
        yield attempts
        for name, value, text in (("agentwatch_alert_delivered", dispatcher.delivered, "Alerts delivered"),
                                  ("agentwatch_alert_failed", dispatcher.failed, "Alerts given up on")):
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            yield family


def registry_for(worker: DetectorWorker | None, dispatcher: AlertDispatcher | None,
                 registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """`registry` (a new one if None) with the detection metrics registered in it."""
    registry = registry or CollectorRegistry()
    registry.register(DetectionCollector(worker, dispatcher))
    return registry

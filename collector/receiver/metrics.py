"""The receiver's own metrics, served in Prometheus text at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("agentwatch_receiver_requests", "Export requests answered",
                                ["signal", "transport", "outcome"], registry=r)
        self.received = Counter("agentwatch_receiver_received_items", "Spans, data points and log records accepted",
                                ["signal"], registry=r)
        self.rejected = Counter("agentwatch_receiver_rejected_items",
                                "Items refused, by reason (partial success, store refusal)",
                                ["signal", "reason"], registry=r)
        self.bad_requests = Counter("agentwatch_receiver_bad_requests",
                                    "Requests refused whole: bad_body 400, unauthorized 401, too_large 413, "
                                    "unsupported_media_type 415, busy and queue_full 503, spool_unavailable 503",
                                    ["reason"], registry=r)
        self.written = Counter("agentwatch_receiver_written_rows", "Rows written to the store", ["table"], registry=r)
        self.write_errors = Counter("agentwatch_receiver_write_errors", "Failed inserts (retried)", ["table"],
                                    registry=r)
        self.write_seconds = Histogram("agentwatch_receiver_write_seconds", "Insert latency", ["table"],
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.queue_bytes = Gauge("agentwatch_receiver_queue_bytes", "Bytes accepted and not yet written",
                                 registry=r)
        self.queue_rows = Gauge("agentwatch_receiver_queue_rows", "Rows accepted and not yet written", registry=r)
        self.duplicates = Counter("agentwatch_receiver_duplicate_items",
                                  "Items of retried requests already accepted, acknowledged and not stored again",
                                  ["signal"], registry=r)
        self.spool_fsync_seconds = Histogram("agentwatch_receiver_spool_fsync_seconds",
                                             "Spool group commit: write and fsync of the requests waiting",
                                             registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                                  0.05, 0.1, 0.25, 1))
        self.unknown_model = Counter("agentwatch_cost_unknown_model_spans",
                                     "Spans with tokens whose model has no known price (cost left NULL)",
                                     ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

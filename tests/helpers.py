"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentwatch.collector.receiver import Receiver, ReceiverConfig
from agentwatch.detectors.tailing import Tail
from agentwatch.detectors.shard_reader import TABLES
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import migrate, store


def fresh_database(dsn: str, name: str) -> str:
    client = store.connect(dsn, name)
    client.command(f"DROP DATABASE IF EXISTS `{name}`")
    migrate.apply(client, name)
    client.close()
    return name


def start_receiver(dsn: str, database: str, **config) -> Receiver:
    # Durable by default, as `agentwatch up` runs it: acknowledged once spooled.
    settings = {"http_port": 0, "grpc_port": 0, "decode_processes": 1,
                "spool_dir": tempfile.mkdtemp(prefix="agentwatch-spool-"), **config}
    return Receiver(lambda: store.connect(dsn, database), ReceiverConfig(**settings)).start()


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


class JsonWebhook:
    """A webhook on loopback that answers 200 and keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        """Every alert received, grouped notifications unfolded."""
        return [alert for body in self.received for alert in (body.get("anomalies") or [body])]

    def stop(self) -> None:
        self.server.shutdown()


def prometheus_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# --- the tailing worker, watched: what it read, once or more ------------------------------------------

# a key per row, as the tail selects it and as RecordingWorker records it
ROW_KEYS = {"agent_spans": "TraceId, SpanId",
            "credential_events": "TraceId, SpanId, toUnixTimestamp64Nano(Timestamp), Event, CredentialId, Resource"}
ROW_ORDER = {"agent_spans": "Timestamp, TraceId, SpanId",
             "credential_events": "Timestamp, TraceId, SpanId, Event, CredentialId, AgentId, Resource"}


def read_from_start(client, table: str, max_rows: int = 10_000) -> Counter:
    """Every row's key as the worker's tailing reads `table` from block 0 now: key -> times read."""
    tail, position, read = Tail(table), 0, Counter()
    top = tail.top(client)
    while position < top:
        batch = tail.read(client, position, ROW_KEYS[table], ROW_ORDER[table], max_rows)
        read.update(tuple(r[1:]) for r in batch.rows)
        if batch.position <= position:
            raise AssertionError(f"{table}: no progress after block {position}")
        position = batch.position
    return read


class RecordingWorker(DetectorWorker):
    """The detector worker, noting each audit, the key of every row it reads and how long after its arrival."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.audits: list[tuple[float, dict]] = []  # (monotonic time the audit began, its result)
        self.read = {table: Counter() for table in TABLES}
        self.lag_s: list[float] = []  # per span row: read time - IngestedAt
        # every row read, through the worker's own reader
        spans, credentials = self.reader.spans, self.reader.credentials

        def read_spans(client, position, max_rows):
            rows, to = spans(client, position, max_rows)
            now_us = time.time() * 1e6
            self.read["agent_spans"].update((r.trace, r.span) for r in rows)
            self.lag_s.extend((now_us - r.ingested_us) / 1e6 for r in rows)
            return rows, to

        def read_credentials(client, table, position, max_rows):
            rows, to = credentials(client, table, position, max_rows)
            self.read.setdefault(table, Counter()).update((r.trace, r.span, r.ts, r.event, r.credential, r.resource)
                                                          for r in rows)
            return rows, to

        self.reader.spans, self.reader.credentials = read_spans, read_credentials

    def audit(self):
        began = time.monotonic()
        result = super().audit()
        self.audits.append((began, result))
        return result


@contextlib.contextmanager
def store_env(dsn: str, database: str):
    """AGENTWATCH_CLICKHOUSE_DSN and AGENTWATCH_DATABASE set to this store while inside (the dashboard's
    AppTest reads its store from them), as they were afterwards."""
    saved = {k: os.environ.get(k) for k in ("AGENTWATCH_CLICKHOUSE_DSN", "AGENTWATCH_DATABASE")}
    os.environ["AGENTWATCH_CLICKHOUSE_DSN"], os.environ["AGENTWATCH_DATABASE"] = dsn, database
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

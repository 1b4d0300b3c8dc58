"""Every span once, from the SDK to the detectors, while inserts commit concurrently.

Agents in a separate process (tests/span_sender.py: stock OpenTelemetry SDK,
BatchSpanProcessor, OTLP/HTTP protobuf, several threads and tenants, credential
use events) send as fast as the SDK exports, split between several receivers
on one embedded store in this process (each receiver writes with one insert in
flight, so it takes several receivers for inserts to overlap and commit out of
their IngestedAt order), while the detector worker tails the store in its own
thread, the way `agentwatch up` runs it. Once the receivers have written
everything and the worker has caught up: the store holds each exported span
once, and the worker read each row of agent_spans and credential_events
exactly once (its audit, its /metrics, and the keys of the rows it read),
and a worker starting afresh on the finished store would read each row once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.metrics import registry_for
from agentwatch.detectors.worker import TABLES
from agentwatch.schemas import store
from tests.helpers import (RecordingWorker, fresh_database, prometheus_value, read_from_start, start_receiver,
                           wait_for)

ROOT = Path(__file__).resolve().parents[1]
SPANS = 40_000
# Each receiver writes with one insert in flight: inserts overlap (and some commit after a later-stamped one)
# only between receivers. Two make that happen in most runs, three in all those measured.
RECEIVERS = 3
SENDER_THREADS = 6  # thread i sends to receiver i % RECEIVERS as tenant i % TENANTS: each receiver gets two tenants
TENANTS = 4
PAYLOAD_BYTES = 1024  # each model call's output message

# Blocks of a table that committed after a block whose rows arrived later (IngestedAt): the rows a cursor
# on IngestedAt would skip. Non-zero shows that the inserts of the two receivers overlapped.
LATE_BLOCKS = """
SELECT countIf(first < before), sumIf(rows, first < before) FROM (
    SELECT first, rows, max(last) OVER (ORDER BY block ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
    FROM (SELECT _block_number AS block, min(IngestedAt) AS first, max(IngestedAt) AS last, count() AS rows
          FROM {table} GROUP BY block))
"""


def test_each_span_stored_once_and_read_once_by_the_tailing_worker(dsn):
    database = fresh_database(dsn, "t_ingest_exactly_once")
    client = store.connect(dsn, database)
    receivers = [start_receiver(dsn, database, grpc_port=None) for _ in range(RECEIVERS)]
    worker = RecordingWorker(lambda: store.connect(dsn, database), DetectorConfig.from_env(audit_interval_s=0.5))
    registry_for(worker, None, receivers[0].metrics.registry)  # served on the receiver's /metrics, as in `up`
    stop = threading.Event()
    tailing = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True, name="agentwatch-detector")
    tailing.start()
    try:
        start = time.monotonic()
        sender = subprocess.run(
            [sys.executable, "-m", "tests.span_sender", "--spans", str(SPANS), "--threads", str(SENDER_THREADS),
             "--tenants", str(TENANTS), "--payload-bytes", str(PAYLOAD_BYTES)]
            + [arg for r in receivers for arg in ("--endpoint", f"http://127.0.0.1:{r.http_port}")],
            cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert sender.returncode == 0, sender.stderr
        sent = json.loads(sender.stdout.splitlines()[-1])
        assert sent["spans_exported"] == SPANS and sent["spans_failed"] == sent["spans_dropped"] == 0, sent
        assert sent["credential_events_exported"] == sent["credential_events_created"] > 0, sent

        # the receivers have written every span they acknowledged ...
        sent_at = time.monotonic()
        wait_for(lambda: sum(r.writer.written_rows for r in receivers) >= SPANS, timeout_s=120)
        written_at = time.monotonic()
        # ... and an audit begun since then finds nothing left to read
        wait_for(lambda: any(began > written_at and all(a["pending"] == 0 for a in audit.values())
                             for began, audit in worker.audits[-3:]), timeout_s=120)
        caught_up_at = time.monotonic()
        counts = {table: client.query(f"SELECT count() FROM {table}").result_rows[0][0] for table in TABLES}
        distinct_spans = client.query("SELECT uniqExact(TraceId, SpanId) FROM agent_spans").result_rows[0][0]
        assert client.query("SELECT count() FROM otel_traces").result_rows[0][0] == SPANS
        assert counts["agent_spans"] == distinct_spans == SPANS
        assert counts["credential_events"] == sent["credential_events_exported"]
        assert all(r.writer.written_rows > 0 for r in receivers)  # each took its share

        # the inserts of the two receivers overlapped: blocks committed out of IngestedAt order
        late = {table: client.query(LATE_BLOCKS.format(table=table)).result_rows[0] for table in TABLES}

        # the worker tailed while the spans came in, not only once they were all there
        assert any(began < sent_at and audit["agent_spans"]["processed"] > 0 for began, audit in worker.audits)
        # no row skipped, none read twice: every audit (while sending too), the rows the worker read
        for _, audit in worker.audits:
            for table in TABLES:
                assert audit[table]["processed"] == audit[table]["stored"], (table, audit)
        final = worker.audits[-1][1]
        for table in TABLES:
            assert final[table] == {"stored": counts[table], "processed": counts[table], "pending": 0}, final
            assert sum(worker.read[table].values()) == len(worker.read[table]) == counts[table], table
        assert worker.stats["span_rows"] == counts["agent_spans"]
        assert worker.stats["credential_rows"] == counts["credential_events"]
        assert worker.stats["errors"] == 0
        stored_keys = {(r[0], r[1]) for r in client.query("SELECT TraceId, SpanId FROM agent_spans").result_rows}
        assert set(worker.read["agent_spans"]) == stored_keys
        # a worker with no checkpoint, starting now on the merged parts, would read each row once too
        again = read_from_start(client, "agent_spans")
        assert sum(again.values()) == len(again) and set(again) == stored_keys

        # the same, as `agentwatch up` shows it on the receiver's /metrics
        page = httpx.get(f"http://127.0.0.1:{receivers[0].http_port}/metrics").text
        for table in TABLES:
            assert prometheus_value(page, "agentwatch_detector_rows_processed", shard="0/1", table=table) == \
                prometheus_value(page, "agentwatch_detector_rows_stored", shard="0/1", table=table) == counts[table]
            assert prometheus_value(page, "agentwatch_detector_rows_pending", table=table) == 0
            assert prometheus_value(page, "agentwatch_detector_rows_total", table=table) == counts[table]
        assert prometheus_value(page, "agentwatch_detector_errors_total") == 0
        late_text = ", ".join(f"{table} {blocks} ({rows})" for table, (blocks, rows) in late.items())
        print(f"\n{SPANS} spans, {counts['credential_events']} credential events; blocks (rows) committed after "
              f"a later-stamped one: {late_text}; max pending while sending "
              f"{max(a['agent_spans']['pending'] for _, a in worker.audits)} spans; "
              f"{worker.status()['merge_retries']} reads retried for a merge; sent in {sent_at - start:.1f} s "
              f"({sent['seconds']} s in the sender), written {written_at - sent_at:.1f} s later, caught up "
              f"{caught_up_at - written_at:.1f} s after that; {len(worker.audits)} audits")
    finally:
        stop.set()
        tailing.join(60)
        for r in receivers:
            r.stop()
    # what the worker checkpointed when it stopped says the same
    after_restart = worker.audit()
    worker.close()
    client.close()
    for table in TABLES:
        assert after_restart[table] == {"stored": counts[table], "processed": counts[table], "pending": 0}
    assert sum(blocks for blocks, _ in late.values()) > 0, \
        "no insert committed after a later-stamped one: the concurrent case was not exercised"

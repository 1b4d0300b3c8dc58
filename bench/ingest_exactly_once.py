"""Exactly once at scale: every span stored once and read once by the tailing detector worker.

`agentwatch up`'s pipeline in this process: TWO OTLP receivers (so that inserts
overlap and commit out of their IngestedAt order) on one fresh embedded store,
and the detector worker tailing it in its own thread. Separate sender
processes (tests/span_sender.py: stock OpenTelemetry SDK, BatchSpanProcessor,
OTLP/HTTP protobuf, several threads and tenants, a credential use event on
every third tool call) send as fast as the SDK exports, their threads split
between the receivers. When the senders are done and the receivers have
written everything, the run waits until the worker has caught up, then counts:

- spans the senders had acknowledged; rows stored in otel_traces, agent_spans,
  credential_events;
- rows the worker processed (its checkpointed count), its audit (rows stored up
  to its position vs processed, every second while sending), the keys of the
  rows it read: duplicates (reads - distinct rows read) and skipped (rows
  stored but never read);
- the detector's lag behind ingest: rows pending at each audit while sending,
  and per row the time from its arrival in the store (IngestedAt) to the
  worker reading it;
- blocks of agent_spans that committed after a later-stamped one (the rows a
  cursor on IngestedAt would have skipped);
- the finished store read again from the start by the worker's tailing alone
  (as a worker with no checkpoint would): duplicates and skipped;
- wall time and throughput.

    python bench/ingest_exactly_once.py [--spans 300000] [--senders 2] [--threads 4] [--receivers 2]
                                        [--worker-setting optimize_use_projections=0]

`--worker-setting NAME=VALUE` (repeatable) applies a ClickHouse setting to the
worker's connection (diagnosis: the same run with the engine behaving otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentwatch.collector.receiver import Receiver, ReceiverConfig  # noqa: E402
from agentwatch.detectors.config import DetectorConfig  # noqa: E402
from agentwatch.detectors.worker import TABLES  # noqa: E402
from agentwatch.schemas import migrate, store  # noqa: E402
from tests.helpers import ROW_KEYS, RecordingWorker, read_from_start  # noqa: E402

LATE_BLOCKS = """
SELECT countIf(first < before), sumIf(rows, first < before), count() FROM (
    SELECT first, rows, max(last) OVER (ORDER BY block ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
    FROM (SELECT _block_number AS block, min(IngestedAt) AS first, max(IngestedAt) AS last, count() AS rows
          FROM {table} GROUP BY block))
"""
def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s}s")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else (values or [0.0])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=300_000)
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    parser.add_argument("--threads", type=int, default=4, help="threads (TracerProviders) per sender")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--payload-bytes", type=int, default=1024, help="text of each model call's output")
    parser.add_argument("--data-dir", help="embedded store directory (default: a new temporary one)")
    parser.add_argument("--worker-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a ClickHouse setting for the worker's connection (repeatable)")
    args = parser.parse_args()

    dsn = f"chdb://{args.data_dir or tempfile.mkdtemp(prefix='agentwatch-exactly-once-')}"
    database = "agentwatch"
    client = store.connect(dsn, database)
    migrate.apply(client)
    receivers = [Receiver(lambda: store.connect(dsn, database), ReceiverConfig(http_port=0, grpc_port=None)).start()
                 for _ in range(args.receivers)]
    settings = dict(setting.split("=", 1) for setting in args.worker_setting)

    def worker_connection():
        connection = store.connect(dsn, database)
        for name, value in settings.items():
            connection.set_client_setting(name, value)
        return connection

    worker = RecordingWorker(worker_connection, DetectorConfig.from_env(audit_interval_s=1.0))
    stop = threading.Event()
    tailing = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    tailing.start()

    per_sender = [args.spans // args.senders + (1 if i < args.spans % args.senders else 0)
                  for i in range(args.senders)]
    endpoints = [arg for r in receivers for arg in ("--endpoint", f"http://127.0.0.1:{r.http_port}")]
    started = time.monotonic()
    senders = [subprocess.Popen(
        [sys.executable, "-m", "tests.span_sender", "--spans", str(n), "--threads", str(args.threads),
         "--first", str(i * args.threads), "--tenants", str(args.tenants), "--payload-bytes",
         str(args.payload_bytes)] + endpoints, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for i, n in enumerate(per_sender)]
    reports = []
    for sender in senders:
        out, _ = sender.communicate(timeout=3600)
        if sender.returncode != 0:
            raise SystemExit(f"a sender failed (exit {sender.returncode})")
        reports.append(json.loads(out.splitlines()[-1]))
    sent_at = time.monotonic()
    exported = sum(r["spans_exported"] for r in reports)
    wait_for(lambda: sum(r.writer.written_rows for r in receivers) >= exported, 600, "receivers writing")
    written_at = time.monotonic()
    wait_for(lambda: any(began > written_at and all(a["pending"] == 0 for a in audit.values())
                         for began, audit in worker.audits[-3:]), 600, "worker catching up")
    caught_up_at = time.monotonic()
    sending_audits = [a for began, a in worker.audits if began <= sent_at]
    status = worker.status()

    stop.set()
    tailing.join(120)
    for r in receivers:
        r.stop()
    after_restart = worker.audit()  # from the checkpoint it wrote when it stopped
    worker.close()

    stored = {table: client.query(f"SELECT count() FROM {table}").result_rows[0][0] for table in TABLES}
    tables = {}
    tail_client = worker_connection()
    for table in TABLES:
        keys = {tuple(r) for r in client.query(f"SELECT {ROW_KEYS[table]} FROM {table}").result_rows}
        read = worker.read[table]
        again = read_from_start(tail_client, table, max_rows=50_000)
        late_blocks, late_rows, blocks = client.query(LATE_BLOCKS.format(table=table)).result_rows[0]
        tables[table] = {
            "rows_stored": stored[table], "distinct_stored": len(keys),
            "rows_processed": after_restart[table]["processed"], "rows_read": sum(read.values()),
            "duplicates": sum(read.values()) - len(read), "skipped": len(keys - set(read)),
            "audit": after_restart[table],
            "audits_with_stored_ne_processed": sum(1 for _, a in worker.audits
                                                   if a[table]["stored"] != a[table]["processed"]),
            "max_pending_while_sending": max((a[table]["pending"] for a in sending_audits), default=0),
            "blocks": blocks, "blocks_committed_after_a_later_stamped_one": late_blocks,
            "rows_in_those_blocks": late_rows,
            "read_from_start_afterwards": {"rows_read": sum(again.values()),
                                           "duplicates": sum(again.values()) - len(again),
                                           "skipped": len(keys - set(again))},
        }
    tail_client.close()
    wall = caught_up_at - started
    print(json.dumps({
        "spans_sent": exported, "spans_failed": sum(r["spans_failed"] for r in reports),
        "spans_dropped": sum(r["spans_dropped"] for r in reports),
        "credential_events_sent": sum(r["credential_events_exported"] for r in reports),
        "spans_in_otel_traces": client.query("SELECT count() FROM otel_traces").result_rows[0][0],
        **{f"{table}": figures for table, figures in tables.items()},
        "worker_span_rows_in_memory": status["span_rows"], "worker_errors": status["errors"],
        "worker_batches": status["batches"], "merge_retries": status["merge_retries"],
        "audits": len(worker.audits),
        "lag_read_after_arrival_s": {"p50": round(percentile(worker.lag_s, 0.5), 3),
                                     "p99": round(percentile(worker.lag_s, 0.99), 3),
                                     "max": round(max(worker.lag_s, default=0.0), 3)},
        "seconds_sending": round(sent_at - started, 2), "seconds_until_written": round(written_at - started, 2),
        "seconds_until_caught_up": round(wall, 2),
        "caught_up_after_last_write_s": round(caught_up_at - written_at, 2),
        "spans_per_s_ingested": round(exported / (written_at - started)),
        "spans_per_s_end_to_end": round(exported / wall),
        "senders": args.senders, "threads_per_sender": args.threads, "receivers": args.receivers,
        "worker_settings": settings, "cores": os.cpu_count(),
    }, indent=2))
    client.close()


if __name__ == "__main__":
    main()

"""Detection quality and detector throughput on the demo's labelled scenario.

For each seed, the demo fleet is fast-forwarded (default: one hour from
2025-06-16 12:00 UTC, like tests/test_detectors.py) through the SDK and an
OTLP receiver into a fresh embedded store, once with the five labelled
incidents and once with the same normal traffic only. A detector worker then
replays each database from the start, timed until it has caught up, and its
anomalies are scored against the labels (agentwatch.detectors.evaluation):

- per kind: recall (incidents detected with their kind and tenant, and trace
  or credential) and precision (anomalies that match an incident, or point at
  a labelled incident's credential or trace, e.g. cross_tenant uses of the
  credential_fanout leak; strict precision counts only exact matches);
- anomalies on the normal-only run, and per million normal spans;
- detector throughput: spans (and all rows) per second while replaying.

    python bench/detection_quality.py [--seeds 7] [--duration 3600] [--normal-duration 3600]
                                      [--start 2025-06-16T12:00:00Z] [--batch-rows 50000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime

import agentwatch
from agentwatch import demo
from agentwatch.collector.receiver import Receiver, ReceiverConfig
from agentwatch.detectors import evaluation
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import migrate, store

NS = 1_000_000_000


def drive_fleet(dsn: str, database: str, *, seed: int, start_ns: int, duration_s: float, incidents: bool) -> dict:
    client = store.connect(dsn, database)
    migrate.apply(client)
    receiver = Receiver(lambda: store.connect(dsn, database),
                        ReceiverConfig(http_port=0, grpc_port=0, decode_processes=1)).start()
    began = time.perf_counter()
    try:
        clock = demo.make_clock(start_ns)
        telemetry = agentwatch.init("bench-fleet", endpoint=f"http://127.0.0.1:{receiver.http_port}", clock=clock,
                                    gpu_interval=None, max_queue_size=65_536)
        try:
            result = demo.run_fleet(duration_s=duration_s, seed=seed, start_ns=start_ns, incidents=incidents)
            telemetry.flush(timeout_s=600)
            dropped = telemetry.dropped_spans
        finally:
            agentwatch.shutdown()
        receiver.flush(timeout_s=600)
    finally:
        receiver.stop()
    demo.record_incidents(client, result.run_id, result.incidents)
    client.close()
    return {"spans": result.spans, "dropped": dropped, "seconds": round(time.perf_counter() - began, 1),
            "incidents": result.incidents}


def detect(dsn: str, database: str, batch_rows: int) -> dict:
    client = store.connect(dsn, database)
    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig.from_env())
    began = time.perf_counter()
    while worker.run_once(batch_rows):
        pass
    seconds = time.perf_counter() - began
    status = worker.status()
    worker.close()
    rows = evaluation.load_anomalies(client)
    labels = evaluation.load_labels(client)
    client.close()
    return {"rows": rows, "labels": labels, "seconds": seconds, "span_rows": status["span_rows"],
            "all_rows": status["rows"], "batches": status["batches"], "late_span_rows": status["late_span_rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="7", help="comma-separated demo seeds (default 7)")
    parser.add_argument("--duration", type=float, default=3600, help="seconds of fleet history with incidents")
    parser.add_argument("--normal-duration", type=float, default=None,
                        help="seconds of normal-only history (default: --duration)")
    parser.add_argument("--start", default="2025-06-16T12:00:00Z", help="UTC start of the simulated history")
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--data-dir", default=None, help="embedded store directory (default: a temp dir)")
    args = parser.parse_args()
    start_ns = int(datetime.fromisoformat(args.start.replace("Z", "+00:00")).timestamp()) * NS
    dsn = f"chdb://{args.data_dir or tempfile.mkdtemp(prefix='agentwatch-detect-')}"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    all_rows, all_labels, runs = [], [], []
    normal_total = {"spans": 0, "anomalies": 0, "summaries": []}
    throughput = []
    for seed in seeds:
        for kind, incidents, duration in (("incidents", True, args.duration),
                                          ("normal", False, args.normal_duration or args.duration)):
            database = f"bench_{kind}_{seed}"
            fleet = drive_fleet(dsn, database, seed=seed, start_ns=start_ns, duration_s=duration, incidents=incidents)
            result = detect(dsn, database, args.batch_rows)
            throughput.append({"run": database, "spans": result["span_rows"], "rows": result["all_rows"],
                               "batches": result["batches"], "seconds": round(result["seconds"], 3),
                               "spans_per_s": round(result["span_rows"] / result["seconds"]),
                               "rows_per_s": round(result["all_rows"] / result["seconds"])})
            runs.append({"run": database, "fleet_spans": fleet["spans"], "dropped": fleet["dropped"],
                         "fleet_seconds": fleet["seconds"], "anomalies": len(result["rows"]),
                         "late_span_rows": result["late_span_rows"]})
            if incidents:
                # anomalies and labels of different seeds never match each other (different traces)
                all_rows += result["rows"]
                all_labels += result["labels"]
                print(f"seed {seed}: " + "; ".join(f"{r.kind} {r.tenant} {r.severity}" for r in result["rows"]),
                      file=sys.stderr, flush=True)
            else:
                normal_total["spans"] += result["span_rows"]
                normal_total["anomalies"] += len(result["rows"])
                normal_total["summaries"] += [f"{r.kind} {r.tenant}: {r.summary}" for r in result["rows"]]

    report = evaluation.score(all_rows, all_labels)
    print(json.dumps({
        "seeds": seeds, "start": args.start, "duration_s": args.duration,
        "normal_duration_s": args.normal_duration or args.duration,
        "per_kind": report.per_kind,
        "missed": [f"{m.kind} {m.tenant} {m.trace_id or m.credential_id}" for m in report.missed],
        "false_positives": [f"{r.kind} {r.tenant}: {r.summary}" for r in report.false_positives],
        "explained": report.explained,
        "normal_only": {"spans": normal_total["spans"], "anomalies": normal_total["anomalies"],
                        "per_million_spans": round(normal_total["anomalies"] / max(normal_total["spans"], 1) * 1e6, 2),
                        "summaries": normal_total["summaries"]},
        "throughput": throughput, "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()

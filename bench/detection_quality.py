"""Detection quality on two independent scenario families, hard guard rails on and off.

Families (agentwatch.demo):

- `demo`: the demo fleet, made with agentwatch's own SDK (every span names its
  agent and tenant; incidents far past normal);
- `stock`: a fleet made with nothing but the stock OpenTelemetry SDK, spans
  shaped as openai-v2 / OpenInference / OpenLLMetry emit them (only agent spans
  name an agent, trees arrive leaves first), incidents 3-10x normal.

For each family and seed the fleet is fast-forwarded through an OTLP receiver
into a fresh embedded store, once with its labelled incidents and once with the
same normal traffic only (optionally longer: several days of diurnal traffic).
Then, for each guard-rail setting, a fresh detector worker replays each database
from the start and its anomalies are scored (agentwatch.detectors.evaluation):

- per kind: recall (incidents detected with their kind, tenant and trace or
  credential) and precision (anomalies that match an incident or point at a
  labelled incident's trace or credential);
- false alerts: anomalies on the normal-only run, per kind and per million spans;
- detector throughput while replaying.

`--rails off` switches every hard guard rail off (DetectorConfig.without_hard_limits):
what the learned baselines and novel_trace catch on their own.

    python bench/detection_quality.py [--families demo,stock] [--seeds 7,11,23] [--rails on,off]
                                      [--duration 3600] [--normal-duration 3600] [--start 2025-06-16T12:00:00Z]
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
from agentwatch.demo import stock
from agentwatch.detectors import evaluation
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.part_tail import PartTail
from agentwatch.detectors.shard_reader import OWNER_TABLE, TABLES
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import migrate, store

NS = 1_000_000_000


def drive_fleet(dsn: str, database: str, *, family: str = "demo", seed: int, start_ns: int, duration_s: float,
                incidents: bool) -> dict:
    """Fast-forward one family's fleet through a receiver into `database`; record its labels."""
    client = store.connect(dsn, database)
    migrate.apply(client)
    receiver = Receiver(lambda: store.connect(dsn, database),
                        ReceiverConfig(http_port=0, grpc_port=0, decode_processes=1)).start()
    began = time.perf_counter()
    endpoint = f"http://127.0.0.1:{receiver.http_port}"
    dropped = 0
    try:
        if family == "stock":
            result = stock.run_stock_fleet(endpoint=endpoint, duration_s=duration_s, start_ns=start_ns, seed=seed,
                                           incidents=incidents)
        else:
            clock = demo.make_clock(start_ns)
            telemetry = agentwatch.init("bench-fleet", endpoint=endpoint, clock=clock, gpu_interval=None,
                                        max_queue_size=65_536)
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


def detect(dsn: str, database: str, config: DetectorConfig, batch_rows: int = 50_000, cursor: str = "blocks") -> dict:
    """A fresh worker over the whole database; its anomalies, the labels and how fast it went.

    cursor "parts" reads as the worker does on a cluster (detectors/part_tail.py, credential uses by owner),
    here on the single-server tables."""
    client = store.connect(dsn, database)
    client.command("TRUNCATE TABLE anomalies")
    client.command("TRUNCATE TABLE detector_state")
    worker = DetectorWorker(lambda: store.connect(dsn, database), config)
    if cursor == "parts":
        worker.reader.tails = {table: PartTail(table) for table in TABLES + (OWNER_TABLE,)}
    began = time.perf_counter()
    worker.catch_up(batch_rows, timeout_s=3600)
    seconds = time.perf_counter() - began
    status = worker.status()
    audit = worker.audit()
    worker.close()
    rows = evaluation.load_anomalies(client)
    labels = evaluation.load_labels(client)
    client.close()
    return {"rows": rows, "labels": labels, "seconds": seconds, "span_rows": status["span_rows"],
            "all_rows": status["rows"], "audit": audit}


def tree_timing(dsn: str, database: str) -> list[dict]:
    """For each trace anomaly (fanout, loop): event-time seconds from the trace's first span to the end
    of the span that raised it, and from then to the end of the root span (stock instrumentations
    export the root last: a positive lead means the tree was raised while still open)."""
    client = store.connect(dsn, database)
    rows = client.query("""
        SELECT a.Kind, a.Tenant, a.TraceId,
               min(toUnixTimestamp64Nano(t.Timestamp)),
               anyIf(toUnixTimestamp64Nano(t.Timestamp) + t.Duration, t.SpanId = a.RaisedBy),
               anyIf(toUnixTimestamp64Nano(t.Timestamp) + t.Duration, t.ParentSpanId = '')
        FROM (SELECT Kind, Tenant, TraceId, JSONExtractString(Evidence, 'raised_by', 'span_id') AS RaisedBy
              FROM anomalies FINAL WHERE Kind IN ('fanout', 'loop')) AS a
        INNER JOIN otel_traces AS t ON t.TraceId = a.TraceId
        GROUP BY a.Kind, a.Tenant, a.TraceId, a.RaisedBy""").result_rows
    client.close()
    return [{"kind": kind, "tenant": tenant, "trace_id": trace,
             "raised_after_first_span_s": round((raised - first) / NS, 1),
             "root_ended_after_raise_s": round((root - raised) / NS, 1)}
            for kind, tenant, trace, first, raised, root in rows if raised]


def rails_config(rails: str) -> DetectorConfig:
    config = DetectorConfig.from_env()
    return config if rails == "on" else config.without_hard_limits()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="demo,stock", help="comma-separated: demo, stock")
    parser.add_argument("--seeds", default="7", help="comma-separated seeds (default 7)")
    parser.add_argument("--rails", default="on,off", help="hard guard rails: on, off or both (default on,off)")
    parser.add_argument("--duration", type=float, default=3600, help="seconds of fleet history with incidents")
    parser.add_argument("--normal-duration", type=float, default=None,
                        help="seconds of normal-only history (default: --duration; 0: none)")
    parser.add_argument("--start", default="2025-06-16T12:00:00Z", help="UTC start of the simulated history")
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--data-dir", default=None, help="embedded store directory (default: a temp dir)")
    parser.add_argument("--cursor", choices=("blocks", "parts"), default="blocks",
                        help="the worker's cursor: blocks (one server) or parts (as on a cluster)")
    args = parser.parse_args()
    start_ns = int(datetime.fromisoformat(args.start.replace("Z", "+00:00")).timestamp()) * NS
    dsn = f"chdb://{args.data_dir or tempfile.mkdtemp(prefix='agentwatch-detect-')}"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    rails_modes = [r.strip() for r in args.rails.split(",") if r.strip()]
    normal_duration = args.duration if args.normal_duration is None else args.normal_duration

    results: dict[str, dict] = {}
    for family in families:
        fleets = []
        for seed in seeds:
            runs = [("incidents", True, args.duration)] + ([("normal", False, normal_duration)]
                                                             if normal_duration else [])
            for kind, incidents, duration in runs:
                database = f"bench_{family}_{kind}_{seed}"
                fleet = drive_fleet(dsn, database, family=family, seed=seed, start_ns=start_ns, duration_s=duration,
                                    incidents=incidents)
                fleets.append((seed, kind, database, fleet))
                print(f"{family} seed {seed} {kind}: {fleet['spans']} spans in {fleet['seconds']} s",
                      file=sys.stderr, flush=True)
        for rails in rails_modes:
            all_rows, all_labels, throughput, normal = [], [], [], {"spans": 0, "anomalies": {}, "summaries": []}
            timing: list[dict] = []
            for seed, kind, database, fleet in fleets:
                result = detect(dsn, database, rails_config(rails), args.batch_rows, args.cursor)
                throughput.append({"run": database, "spans": result["span_rows"], "rows": result["all_rows"],
                                   "seconds": round(result["seconds"], 2),
                                   "spans_per_s": round(result["span_rows"] / max(result["seconds"], 1e-9)),
                                   "audit": result["audit"]})
                if kind == "incidents":  # anomalies and labels of different seeds never match each other
                    timing += [{"seed": seed, **t} for t in tree_timing(dsn, database)]
                    all_rows += result["rows"]
                    all_labels += result["labels"]
                else:
                    normal["spans"] += result["span_rows"]
                    for r in result["rows"]:
                        normal["anomalies"][r.kind] = normal["anomalies"].get(r.kind, 0) + 1
                        normal["summaries"].append(f"seed {seed} {r.kind} {r.tenant}: {r.summary[:240]}")
            report = evaluation.score(all_rows, all_labels)
            total = sum(normal["anomalies"].values())
            results[f"{family}/rails {rails}"] = {
                "per_kind": report.per_kind,
                "missed": [f"{m.kind} {m.tenant} {m.trace_id or m.credential_id}" for m in report.missed],
                "false_positives": [f"{r.kind} {r.tenant}: {r.summary[:240]}" for r in report.false_positives],
                "explained": report.explained,
                "normal_only": {"spans": normal["spans"], "anomalies": normal["anomalies"],
                                "per_million_spans": round(total / max(normal["spans"], 1) * 1e6, 2),
                                "summaries": normal["summaries"][:40]},
                "throughput": throughput,
                "trace_anomalies_timing": timing,
            }
            print(f"{family} rails {rails}: " + ", ".join(
                f"{k} {v['recall']}/{v['precision']}" for k, v in report.per_kind.items())
                  + f"; normal-only {total} in {normal['spans']} spans", file=sys.stderr, flush=True)
    print(json.dumps({"seeds": seeds, "start": args.start, "duration_s": args.duration,
                      "normal_duration_s": normal_duration, "results": results}, indent=2))


if __name__ == "__main__":
    main()

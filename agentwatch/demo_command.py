"""`agentwatch demo`: the simulated fleet, sent over real OTLP to a receiver, with labelled incidents.

Without --endpoint it starts the receiver in this process on the configured
store (the embedded one by default), fast-forwards the last `--duration`
seconds of fleet activity, writes the incident labels to `demo_incidents`,
prints what landed, then runs the detector worker over it (resuming from its
checkpoint, as `agentwatch detect` would) and prints what it found against
the labels. With --endpoint the receiver there, and the detectors beside it,
do that part.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import agentwatch
from agentwatch import config, demo
from agentwatch.schemas import migrate, store

log = logging.getLogger(__name__)


def _summary(client, run: demo.DemoResult) -> str:
    # Spans of forked sub-agents may end a little past the run's end: allow slack.
    slack = 600 * 10**9
    window = {"start": run.started_at_ns - slack, "end": run.ended_at_ns + slack}
    where = "Timestamp BETWEEN fromUnixTimestamp64Nano({start:Int64}) AND fromUnixTimestamp64Nano({end:Int64})"
    lines = []
    totals = client.query(f"SELECT count(), countIf(Operation = 'chat'), round(sum(CostUSD), 2), "
                          f"sum(ReasoningTokens), max(PayloadBytes) FROM agent_spans WHERE {where}",
                          parameters=window).result_rows[0]
    lines.append(f"stored {totals[0]:,} spans ({totals[1]:,} model calls), ${totals[2]:,} of model cost, "
                 f"{totals[3]:,} reasoning tokens; largest span payload {totals[4] / 1e6:.1f} MB, stored whole")
    lines.append("")
    lines.append(f"{'tenant':<14}{'spans':>10}{'agents':>8}{'cost $':>12}")
    for tenant, spans, agents, cost in client.query(
            f"SELECT Tenant, count(), uniqExact(AgentId), round(sum(CostUSD), 2) FROM agent_spans WHERE {where} "
            f"GROUP BY Tenant ORDER BY sum(CostUSD) DESC", parameters=window).result_rows:
        lines.append(f"{tenant:<14}{spans:>10,}{agents:>8}{cost or 0:>12,.2f}")
    unpriced = client.query(f"SELECT groupUniqArray(Model) FROM agent_spans WHERE {where} AND Model != '' "
                            f"AND CostUSD IS NULL AND InputTokens + OutputTokens > 0",
                            parameters=window).result_rows[0][0]
    if unpriced:
        lines.append(f"no known price (cost left empty): {', '.join(sorted(unpriced))}")
    lines.append("")
    lines.append(f"injected incidents (labels in table demo_incidents, run {run.run_id}):")
    for incident in run.incidents:
        lines.append(f"  {incident.kind:<18}{incident.tenant:<12}trace {incident.trace_id}  {incident.description}")
    if not run.incidents:
        lines.append("  none (normal traffic only)")
    return "\n".join(lines)


def _detect(settings: config.Settings, client, run: demo.DemoResult) -> str:
    from agentwatch.detectors import evaluation
    from agentwatch.detectors.worker import DetectorConfig, DetectorWorker

    began = time.perf_counter()
    worker = DetectorWorker(lambda: store.connect(settings.dsn, settings.database), DetectorConfig.from_env())
    worker.catch_up(timeout_s=900)
    seconds = time.perf_counter() - began
    rows = worker.stats["rows"]
    worker.close()
    slack = 600 * 10**9
    found = sorted((a for a in evaluation.load_anomalies(client)
                    if run.started_at_ns - slack <= a.first_seen_ns <= run.ended_at_ns + slack),
                   key=lambda a: a.first_seen_ns)
    lines = ["", f"found by the detectors ({rows:,} rows in {seconds:.1f}s):"]
    lines += [f"  {a.kind:<18}{a.tenant:<12}{a.severity:<10}{a.summary}" for a in found]
    if not found:
        lines.append("  nothing")
    labels = [evaluation.Label.of(i) for i in run.incidents]
    if labels:
        caught = sum(1 for label in labels if any(evaluation.matches(a, label) for a in found))
        lines.append(f"injected incidents detected: {caught}/{len(labels)}")
    lines.append(f"replay them: agentwatch dashboard (http://127.0.0.1:{settings.dashboard_port})")
    return "\n".join(lines)


def _run_stock(args, client, receiver, endpoint: str, start_ns: int, settings: config.Settings) -> int:
    """The stock family: stock OpenTelemetry SDK spans, fast-forwarded (agentwatch.demo.stock)."""
    from agentwatch.demo import stock

    if not args.fast_forward:
        raise SystemExit("agentwatch demo --family stock: the stock fleet runs fast-forward only")
    print(f"agentwatch demo: fast-forwarding {args.duration:.0f}s of the stock-instrumented fleet -> OTLP {endpoint}",
          flush=True)
    wall = time.perf_counter()
    try:
        result = stock.run_stock_fleet(endpoint=endpoint, duration_s=args.duration, start_ns=start_ns, seed=args.seed,
                                       incidents=args.incidents, tenants=min(args.tenants, stock.MAX_TENANTS))
    finally:
        if receiver is not None:
            receiver.flush(timeout_s=300)
    print(f"sent {result.spans:,} spans in {time.perf_counter() - wall:.1f}s wall time", flush=True)
    return _report(args, settings, client, receiver, result)


def _report(args, settings: config.Settings, client, receiver, result: demo.DemoResult) -> int:
    if args.labels:
        Path(args.labels).write_text(demo.incidents_to_json(result))
    if client is not None:
        demo.record_incidents(client, result.run_id, result.incidents)
        print(_summary(client, result), flush=True)
        if args.detect:
            print(_detect(settings, client, result), flush=True)
    else:
        print(json.dumps(json.loads(demo.incidents_to_json(result)), indent=2))
    if receiver is not None:
        receiver.stop()
    return 0


def run(args, settings: config.Settings) -> int:
    embedded = store.is_embedded(settings.dsn)
    owns_store = not args.endpoint or not embedded
    client = None
    if owns_store:
        client = store.connect(settings.dsn, settings.database)
        migrate.apply(client)

    receiver = None
    endpoint = args.endpoint
    if not endpoint:
        from agentwatch.cli import _start_receiver

        # Port 0: a demo must not collide with a collector already on 4318.
        receiver = _start_receiver(settings, http_port=0, grpc_port=0)
        endpoint = f"http://127.0.0.1:{receiver.http_port}"

    duration_ns = int(args.duration * 1e9)
    if getattr(args, "family", "demo") == "stock":
        return _run_stock(args, client, receiver, endpoint, time.time_ns() - duration_ns, settings)
    clock = demo.make_clock(time.time_ns() - duration_ns) if args.fast_forward else None
    telemetry = agentwatch.init("demo-fleet", endpoint=endpoint, clock=clock, gpu_interval=None,
                                max_queue_size=65_536)
    mode = "fast-forwarding" if args.fast_forward else "running in real time"
    print(f"agentwatch demo: {mode} {args.duration:.0f}s of a {args.tenants}-tenant agent fleet "
          f"-> OTLP {endpoint}", flush=True)
    wall = time.perf_counter()
    try:
        result = demo.run_fleet(duration_s=args.duration, fast_forward=args.fast_forward, incidents=args.incidents,
                                seed=args.seed, tenants=args.tenants,
                                start_ns=clock() if clock is not None else None)
        if not telemetry.flush(timeout_s=300):
            log.warning("some spans were still being exported after 300 s")
    finally:
        agentwatch.shutdown()
    if receiver is not None:
        receiver.flush(timeout_s=300)
    print(f"sent {result.spans:,} spans in {time.perf_counter() - wall:.1f}s wall time "
          f"({telemetry.dropped_spans} dropped by the export queue)", flush=True)
    return _report(args, settings, client, receiver, result)

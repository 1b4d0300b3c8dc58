"""Containment: what a runaway spends between its anomaly and its halt, and what the guard costs per call.

Part 1, the runaway (`--runs` times). One process runs the pipeline the way
`agentwatch up` does: the OTLP receiver on a fresh embedded store, the detector
worker in its thread at its default poll (0.5 s) with the default containment
policy; an agent process's SDK (`agentwatch.init(guard=True)`, the guard at its
default 1 s poll, the exporter at its defaults) runs a crawler that forks
`--threads` fetchers, each calling its model in a loop (`--pace` s a call,
2,000 input and 500 output tokens of gpt-4o, priced at ingest). The fanout guard
rail is set to `--max-calls` model calls per trace, so the anomaly is raised at a
known point. Per run:

- calls and dollars between the anomaly being raised (its `DetectedAt`) and the
  halt taking effect (every fetcher stopped by AgentHalted), and the seconds
  between: the guard's poll, the receiver's 250 ms cache and the decision;
- how the seconds split: anomaly -> halt row (the policy decides in the worker's
  batch), halt row -> the first AgentHalted (poll and cache);
- for context, calls and dollars from the call that crossed the rail to the
  halt (adds detection: export batch, receiver write, worker poll).

Part 2, the guard's cost per decorated call (hot path), in ns per check:
`guard.check` as the decorators call it before every model call, tool call and
agent start, with no guard, with the guard on and no verdicts, and with 1,000
verdicts of every scope (none matching) inside an agent scope with a recording
span; then a whole `@agentwatch.llm` call with the guard off and with 1,000
verdicts, and a plain OpenTelemetry span started inside an agent with and
without `GuardSpanProcessor` (the cost on other instrumentations' spans).

    python bench/containment.py [--runs 5] [--threads 4] [--pace 0.01] [--max-calls 60] [--checks 1000000]
"""

from __future__ import annotations

import argparse
import contextvars
import json
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import agentwatch
from agentwatch.collector.receiver import Receiver, ReceiverConfig
from agentwatch.detectors.worker import DetectorConfig, DetectorWorker
from agentwatch.schemas import halts, migrate, store

MODEL, INPUT_TOKENS, OUTPUT_TOKENS = "gpt-4o", 2_000, 500


# --- part 1: the runaway ---------------------------------------------------------------------------------

def run_runaway(endpoint: str, client, threads: int, pace: float, cap: int) -> dict:
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    telemetry = agentwatch.init("runaway", endpoint=endpoint, tenant=tenant, guard=True, gpu_interval=None,
                                instrument=False)
    deadline = time.monotonic() + 30
    while telemetry.guard.state != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    calls: list[float] = []
    halted_at: list[float] = []

    @agentwatch.llm(MODEL, provider="openai")
    def think() -> None:
        calls.append(time.time())
        time.sleep(pace)
        agentwatch.record_usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)

    @agentwatch.agent("fetcher")
    def fetcher() -> None:
        try:
            for _ in range(cap):
                think()
        except agentwatch.AgentHalted:
            halted_at.append(time.time())
            raise

    @agentwatch.agent("crawler")
    def crawler() -> None:
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(contextvars.copy_context().run, fetcher) for _ in range(threads)]:
                done.result()

    error = None
    began = time.time()
    try:
        crawler()
    except agentwatch.AgentHalted as halted:
        error = halted
    ended = time.time()
    telemetry.flush(60)
    telemetry.shutdown()
    if error is None:
        return {"halted": False, "calls": len(calls), "seconds": round(ended - began, 2)}
    detected = client.query("SELECT toUnixTimestamp64Micro(DetectedAt) FROM anomalies FINAL "
                            "WHERE AnomalyId = {a:String}", parameters={"a": error.anomaly_id}).result_rows[0][0] / 1e6
    (decision,) = [d for d in halts.for_anomalies(client, [error.anomaly_id]) if d.action == "halt"]
    trace_id = error.target
    return {"halted": True, "trace_id": trace_id, "calls": sorted(calls), "detected": detected,
            "decided": decision.decided_at_us / 1e6, "first_halt": min(halted_at), "last_halt": max(halted_at),
            "began": began}


def spend(client, trace_id: str, since: float) -> tuple[int, float]:
    """Model calls of the trace started at or after `since`, and what they cost (priced at ingest)."""
    rows = client.query("SELECT count(), sum(ifNull(CostUSD, 0)) FROM agent_spans "
                        "WHERE TraceId = {t:String} AND Operation = 'chat' "
                        "AND Timestamp >= fromUnixTimestamp64Micro({s:Int64})",
                        parameters={"t": trace_id, "s": int(since * 1e6)}).result_rows[0]
    return int(rows[0]), float(rows[1])


def part_runaway(args) -> list[dict]:
    data_dir = tempfile.mkdtemp(prefix="agentwatch-bench-containment-")
    dsn, database = f"chdb://{data_dir}/clickhouse", "bench_containment"
    client = store.connect(dsn, database)
    migrate.apply(client, database)
    receiver = Receiver(lambda: store.connect(dsn, database),
                        ReceiverConfig(http_port=0, grpc_port=None, decode_processes=1,
                                       spool_dir=f"{data_dir}/spool")).start()
    worker = DetectorWorker(lambda: store.connect(dsn, database),
                            DetectorConfig.from_env(fanout_max_model_calls=args.max_calls))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)  # default poll, 0.5 s
    thread.start()
    endpoint = f"http://127.0.0.1:{receiver.http_port}"
    results = []
    try:
        for run in range(args.runs):
            r = run_runaway(endpoint, client, args.threads, args.pace, args.cap)
            if not r["halted"]:
                print(json.dumps({"run": run, **r}))
                results.append(r)
                continue
            receiver.flush(60)
            calls = r["calls"]
            crossing = calls[args.max_calls] if len(calls) > args.max_calls else calls[-1]  # the call over the rail
            after_anomaly, usd_after_anomaly = spend(client, r["trace_id"], r["detected"])
            after_crossing, usd_after_crossing = spend(client, r["trace_id"], crossing)
            rate = len(calls) / max(1e-9, calls[-1] - calls[0])
            row = {
                "run": run, "calls_total": len(calls), "calls_per_s": round(rate, 1),
                "anomaly_to_halt_s": round(r["last_halt"] - r["detected"], 3),
                "anomaly_to_first_halt_s": round(r["first_halt"] - r["detected"], 3),
                "anomaly_to_halt_row_s": round(r["decided"] - r["detected"], 3),
                "halt_row_to_first_halt_s": round(r["first_halt"] - r["decided"], 3),
                "calls_after_anomaly": after_anomaly, "usd_after_anomaly": round(usd_after_anomaly, 4),
                "calls_after_anomaly_per_runaway_second": round(after_anomaly / rate, 2),
                "crossing_to_anomaly_s": round(r["detected"] - crossing, 3),
                "calls_after_crossing": after_crossing, "usd_after_crossing": round(usd_after_crossing, 4),
            }
            print(json.dumps(row))
            results.append(row)
    finally:
        stop.set()
        thread.join(60)
        receiver.stop()
    return results


# --- part 2: the hot path ---------------------------------------------------------------------------------

def interleaved(first, second, n: int, repeats: int = 9) -> tuple[float, float]:
    """ns per call of two loops measured turn about (the machine's drift hits both alike): the fastest
    repetition of each, as timeit advises (a shared machine only ever adds time)."""
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((first, a), (second, b)):
            began = time.perf_counter_ns()
            fn(n)
            out.append((time.perf_counter_ns() - began) / n)
    return min(a), min(b)


def part_hot_path(args) -> dict:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from agentwatch.collector.sdk import guard as guarding
    from agentwatch.collector.sdk.settings import SCOPE_KEY, Scope, current_scope

    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    n = args.checks
    verdicts = []
    for k in range(1_000):
        scope = ("trace", "agent", "tenant")[k % 3]
        target = uuid.uuid4().hex if scope == "trace" else f"{scope}-{k}"
        verdicts.append(guarding.Verdict({"halt_id": str(k), "tenant": f"tenant-{k}", "scope": scope,
                                          "target": target, "action": "halt", "calls": "all"}))
    full = guarding.Snapshot(tuple(verdicts))
    guard = guarding.Guard("http://127.0.0.1:9", tenant="acme")  # never started: the snapshot is set by hand
    out = {}

    span = tracer.start_span("invoke_agent bench")
    token = otel_context.attach(otel_context.set_value(SCOPE_KEY, Scope("agent-0", "bench", "acme"),
                                                       trace.set_span_in_context(span)))
    try:
        def loop_check(count: int) -> None:
            scope, check = current_scope(), guarding.check
            for _ in range(count):
                check("model", scope, None)

        def loop_empty(count: int) -> None:
            for _ in range(count):
                pass

        def with_guard(active: guarding.Guard, snapshot: guarding.Snapshot):
            def run(count: int) -> None:
                guarding.activate(active)
                active.snapshot = snapshot
                loop_check(count)
            return run

        idle = guarding.Guard("http://127.0.0.1:9", tenant="acme")
        floor, none = interleaved(loop_empty, with_guard(guarding.Guard(None), guarding.EMPTY), n)
        empty, loaded = interleaved(with_guard(idle, guarding.EMPTY), with_guard(guard, full), n)
        out["check_no_guard_ns"] = round(none - floor, 1)
        out["check_guard_on_no_verdicts_ns"] = round(empty - floor, 1)
        out["check_1000_verdicts_ns"] = round(loaded - floor, 1)
    finally:
        otel_context.detach(token)
        span.end()

    # a whole decorated call, guard off vs 1,000 verdicts (the SDK's own tracer, spans discarded)
    telemetry = agentwatch.init(tracer_provider=TracerProvider(), gpu_interval=None, instrument=False)

    @agentwatch.llm("gpt-4o-mini")
    def think(k):
        return k

    @agentwatch.agent("bench")
    def decorated(count: int) -> None:
        for k in range(count):
            think(k)

    calls = max(5_000, n // 200)
    guard.snapshot = full

    def guard_off(count: int) -> None:
        guarding.activate(guarding.Guard(None))
        decorated(count)

    def guard_on(count: int) -> None:
        guarding.activate(guard)
        decorated(count)

    off, on = interleaved(guard_off, guard_on, calls)
    out.update(llm_call_guard_off_ns=round(off), llm_call_1000_verdicts_ns=round(on))

    # another instrumentation's span inside an agent, with and without the guard's span processor
    def spans(provider_: TracerProvider):
        other = provider_.get_tracer("other.instrumentation")

        def run(count: int) -> None:
            token_ = otel_context.attach(otel_context.set_value(SCOPE_KEY, Scope("agent-0", "bench", "acme")))
            try:
                for _ in range(count):
                    other.start_span("GET /x").end()
            finally:
                otel_context.detach(token_)

        return run

    plain, guarded = TracerProvider(), TracerProvider()
    guarded.add_span_processor(guarding.GuardSpanProcessor())
    without, with_processor = interleaved(spans(plain), spans(guarded), calls)
    out.update(other_span_without_processor_ns=round(without),
               other_span_with_processor_1000_verdicts_ns=round(with_processor))
    guarding.deactivate(guard)
    telemetry.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds per model call")
    parser.add_argument("--max-calls", type=int, default=60, help="the fanout guard rail (model calls per trace)")
    parser.add_argument("--cap", type=int, default=3_000, help="calls per fetcher if nothing stops it")
    parser.add_argument("--checks", type=int, default=1_000_000, help="iterations of the hot-path loops")
    parser.add_argument("--skip-runaway", action="store_true")
    args = parser.parse_args()

    hot = part_hot_path(args)
    print(json.dumps({"hot_path": hot}))
    if args.skip_runaway:
        return
    rows = [r for r in part_runaway(args) if "anomaly_to_halt_s" in r]
    if rows:
        def summary(key: str) -> str:
            values = sorted(r[key] for r in rows)
            return f"{round(statistics.median(values), 3)} / {values[-1]}"

        print(json.dumps({"runs_halted": len(rows), "median_max": {k: summary(k) for k in (
            "anomaly_to_halt_s", "anomaly_to_halt_row_s", "halt_row_to_first_halt_s", "calls_after_anomaly",
            "usd_after_anomaly", "calls_after_anomaly_per_runaway_second", "crossing_to_anomaly_s",
            "calls_after_crossing", "usd_after_crossing", "calls_per_s")}}))


if __name__ == "__main__":
    main()

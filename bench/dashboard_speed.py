"""How fast the dashboard answers: a 12,000-span trace with 200 MB of payloads, and the overview over 10 M spans.

Data, generated here from what the demo writes:

1. `agentwatch demo --duration 3600` (a fast-forwarded hour of the simulated
   fleet, its five incidents included) into a fresh embedded store.
2. The big trace: the demo's fanout incident (one planner, 15 sub-agents,
   12,000+ model calls) copied under a new trace id with its payloads grown
   to 200 MB: every model answer carries a chain of thought of ~16 KB of the
   demo's own reasoning prose, one of them 8 MB. Written into `otel_traces`,
   so every materialized view fills as for any span.
3. History: the demo's hour copied back in time, hour after hour, under new
   trace ids, until the store holds 10 M spans (INSERT ... SELECT into
   `otel_traces`, through every materialized view; attribute values over
   256 bytes are left out of the copies, as the overview never reads them).

Then, timed in this process (chDB, the same engine `agentwatch up` embeds):
- opening the big trace: `trace_model.load` (spans, agent tree, steps, no
  payload), and the whole Trace replay page through Streamlit's AppTest;
  opening its 8 MB payload; searching the whole trace;
- the overview (`data.overview`: live spans/s, cost per minute by tenant, top
  agents, open anomalies) over the last hour, 24 hours, 7 and 30 days (all
  10 M spans), and the whole Overview page through AppTest.

Commands (from the repo root):

    .venv/bin/python bench/dashboard_speed.py                       # generate into a temp dir, measure
    .venv/bin/python bench/dashboard_speed.py --data-dir /tmp/aw-dash   # keep the data there (generating
                                                                        # tops up what is missing) ...
    .venv/bin/python bench/dashboard_speed.py --data-dir /tmp/aw-dash --reuse  # ... and measure it again
    .venv/bin/python bench/dashboard_speed.py --spans 1000000      # a smaller history
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "agentwatch"
MB = 1024 * 1024

COLUMNS = ("Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, ResourceAttributes, "
           "ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage, `Events.Timestamp`, "
           "`Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, `Links.TraceState`, "
           "`Links.Attributes`")


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def timed(fn, repeat: int = 1) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


# --- data ----------------------------------------------------------------------------------

def run_demo(data_dir: Path, duration: float) -> None:
    env = {**os.environ, "AGENTWATCH_DATA_DIR": str(data_dir), "AGENTWATCH_CLICKHOUSE_DSN": "",
           "AGENTWATCH_DATABASE": DATABASE}
    log(f"agentwatch demo --duration {duration:.0f} into {data_dir}")
    subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", str(duration)], env=env,
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def make_big_trace(client, payload_bytes: int, biggest: int = 8 * MB) -> str:
    """The demo's fanout trace again, under a new id, its model answers thinking `payload_bytes` in all."""
    from agentwatch import demo

    (fanout,) = client.query("SELECT TraceId FROM demo_incidents WHERE Kind = 'fanout' LIMIT 1").result_rows[0]
    big = hashlib.md5(f"{fanout}-big".encode()).hexdigest()
    if client.query("SELECT count() FROM otel_traces WHERE TraceId = {t:String}", parameters={"t": big}
                    ).result_rows[0][0]:
        return big
    result = client.query(f"SELECT {COLUMNS} FROM otel_traces WHERE TraceId = {{t:String}} ORDER BY Timestamp",
                          parameters={"t": fanout})
    names = list(result.column_names)
    rows = [list(r) for r in result.result_rows]
    attrs_at, trace_at = names.index("SpanAttributes"), names.index("TraceId")
    chats = [i for i, r in enumerate(rows) if r[attrs_at].get("gen_ai.operation.name") == "chat"]
    each = (payload_bytes - biggest) // max(1, len(chats) - 1)
    largest_at = chats[len(chats) // 2]
    chat_at = set(chats)
    corpus, rng = demo._Corpus(7), random.Random(7)
    log(f"big trace {big}: {len(rows):,} spans, {len(chats):,} model answers of ~{each / 1024:.0f} KB + one of "
        f"{biggest / MB:.0f} MB")
    for i, row in enumerate(rows):
        row[trace_at] = big
        if i in chat_at:
            size = biggest if i == largest_at else each
            thought = corpus.take(rng, size)
            row[attrs_at] = {**row[attrs_at], "gen_ai.output.messages": json.dumps([{
                "role": "assistant", "finish_reason": "stop",
                "parts": [{"type": "reasoning", "content": thought}, {"type": "text", "content": "billing"}]}])}
    for i in range(0, len(rows), 500):
        client.insert("otel_traces", rows[i:i + 500], column_names=names)
    return big


def grow_history(client, target_spans: int, big: str, group: int = 8) -> None:
    """Copy the demo's spans back in time, an hour per copy, until otel_traces holds target_spans."""
    lo, hi, base = client.query("SELECT toUnixTimestamp64Nano(min(Timestamp)), toUnixTimestamp64Nano(max(Timestamp)), "
                                "count() FROM otel_traces WHERE TraceId != {b:String}", parameters={"b": big}
                                ).result_rows[0]
    have = client.query("SELECT count() FROM otel_traces").result_rows[0][0]
    if have >= target_spans:
        return
    shift = max(3600, (hi - lo) // 10**9 + 60)
    copies = -(-(target_spans - have) // base)
    log(f"history: {copies} copies of {base:,} spans, {shift} s apart, to reach {target_spans:,} spans")
    done = 0
    while done < copies:
        n = min(group, copies - done)
        started = time.perf_counter()
        client.command(f"""
            INSERT INTO otel_traces ({COLUMNS})
            SELECT Timestamp - toIntervalSecond(k * {shift}),
                   lower(hex(substring(MD5(concat(TraceId, '-', toString(k))), 1, 16))),
                   SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, ResourceAttributes,
                   ScopeName, ScopeVersion, mapFilter((key, v) -> length(v) <= 256, SpanAttributes), Duration,
                   StatusCode, StatusMessage, arrayMap(t -> t - toIntervalSecond(k * {shift}), `Events.Timestamp`),
                   `Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, `Links.TraceState`,
                   `Links.Attributes`
            FROM otel_traces, (SELECT number + {done + 1} AS k FROM numbers({n})) AS copies
            WHERE TraceId != {{b:String}} AND Timestamp >= fromUnixTimestamp64Nano({{lo:Int64}})""",
                       parameters={"b": big, "lo": lo})
        done += n
        log(f"  {done}/{copies} copies ({time.perf_counter() - started:.1f} s for the last {n})")


def generate(data_dir: Path, duration: float, target_spans: int, payload_mb: int) -> None:
    from agentwatch.schemas import migrate, store

    if not (data_dir / "clickhouse").exists():
        run_demo(data_dir, duration)
    client = store.connect(f"chdb://{data_dir / 'clickhouse'}", DATABASE)
    migrate.apply(client)
    if not client.query("SELECT count() FROM demo_incidents").result_rows[0][0]:
        sys.exit(f"{data_dir} holds no demo run: use an empty --data-dir")
    big = make_big_trace(client, payload_mb * MB)
    grow_history(client, target_spans, big)
    client.close()


# --- measurements ------------------------------------------------------------------------------

def measure(data_dir: Path, repeat: int) -> dict:
    from agentwatch.dashboard import auth, data, trace_model
    from agentwatch.dashboard.auth import LOCAL_ADMIN, Viewer
    from agentwatch.schemas import store

    dsn = f"chdb://{data_dir / 'clickhouse'}"
    started = time.perf_counter()
    client = store.connect(dsn, DATABASE)
    opened = time.perf_counter() - started
    (fanout,) = client.query("SELECT TraceId FROM demo_incidents WHERE Kind = 'fanout' LIMIT 1").result_rows[0]
    big = hashlib.md5(f"{fanout}-big".encode()).hexdigest()
    spans, payload, largest = client.query(
        "SELECT count(), sum(PayloadBytes), max(PayloadBytes) FROM agent_spans WHERE TraceId = {t:String}",
        parameters={"t": big}).result_rows[0]
    total_spans, first, last = client.query("SELECT count(), min(Timestamp), max(Timestamp) FROM agent_spans"
                                            ).result_rows[0]
    out: dict = {"store": {"spans": total_spans, "from": str(first), "to": str(last), "open_s": round(opened, 3)},
                 "big_trace": {"trace_id": big, "spans": spans, "payload_mb": round(payload / MB, 1),
                               "largest_payload_mb": round(largest / MB, 2)}}
    log(f"store: {total_spans:,} spans; big trace {spans:,} spans, {payload / MB:.0f} MB of payloads")

    # The pages themselves, script and all, through Streamlit's AppTest (same process, same store), first:
    # the trace is opened here for the first time since the store was opened (ClickHouse caches cold for it).
    from streamlit.testing.v1 import AppTest

    os.environ["AGENTWATCH_CLICKHOUSE_DSN"], os.environ["AGENTWATCH_DATABASE"] = dsn, DATABASE
    auth.current_viewer = lambda: LOCAL_ADMIN  # AppTest has no loopback connection for the sign-in to recognise
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    overview_first, _ = timed(at.run)  # includes importing the app, connecting, checking migrations
    at.sidebar.selectbox(key="range").set_value("Last 24 hours")
    overview_day, _ = timed(at.run)
    at.sidebar.selectbox(key="range").set_value("Last 30 days")
    overview_month, _ = timed(at.run)
    overview_again, _ = timed(at.run, repeat)
    in_range = at.metric[1].value
    at.sidebar.radio(key="page").set_value("Trace replay").run()
    at.text_input(key="find_trace_id").set_value(big).run()
    opened_page, _ = timed(lambda: at.button(key="find_open_id").click().run())
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["trace_id"] == big and at.number_input(key="step").max > 24_000
    steps, _ = timed(lambda: at.button(key="step_next").click().run(), repeat)
    timeline, _ = timed(lambda: at.segmented_control(key="trace_view").set_value("Timeline").run())
    assert not at.exception, [e.value for e in at.exception]
    out["pages_s"] = {
        "overview_first_render_last_hour": round(overview_first[0], 3),
        "overview_last_24_hours": round(overview_day[0], 3),
        "overview_last_30_days": round(overview_month[0], 3),
        "overview_last_30_days_rerun_median": round(statistics.median(overview_again), 3),
        "overview_last_30_days_spans_shown": in_range,
        "trace_replay_open_big_trace": round(opened_page[0], 3),
        "trace_replay_next_step_median": round(statistics.median(steps), 3),
        "trace_replay_timeline_view": round(timeline[0], 3),
    }
    log(f"pages: {out['pages_s']}")

    cold, trace = timed(lambda: trace_model.load(client, LOCAL_ADMIN, big))
    warm, _ = timed(lambda: trace_model.load(client, LOCAL_ADMIN, big), repeat)
    out["big_trace"]["open_s"] = {"first": round(cold[0], 3), "median": round(statistics.median(warm), 3),
                                  "max": round(max(warm), 3), "steps": len(trace.steps), "agents": len(trace.agents)}
    chat = trace.spans.filter(trace.spans["PayloadBytes"] == trace.spans["PayloadBytes"].max()).row(0, named=True)
    chat["TraceId"] = big
    payload_times, value = timed(lambda: data.span_payload(client, LOCAL_ADMIN, chat, "gen_ai.output.messages"), repeat)
    out["big_trace"]["open_8mb_payload_s"] = {"median": round(statistics.median(payload_times), 3),
                                              "bytes": len(value.encode())}
    search_times, hits = timed(lambda: data.search_trace(client, LOCAL_ADMIN, big, "reconcile"), max(1, repeat // 2))
    out["big_trace"]["search_whole_trace_s"] = {"median": round(statistics.median(search_times), 3),
                                                "payloads_matching": len(hits)}

    # The same reads for a viewer granted only the big trace's tenant: the tenant predicate, and for payloads
    # the check that each span read is one of that tenant's.
    tenant = trace.summary()["tenant"]
    scoped = Viewer("bench", "viewer", frozenset({tenant}))
    scoped_open, _ = timed(lambda: trace_model.load(client, scoped, big), repeat)
    scoped_payload, _ = timed(lambda: data.span_payload(client, scoped, chat, "gen_ai.output.messages"), repeat)
    out["big_trace"]["as_a_viewer_of_its_tenant_s"] = {"open_median": round(statistics.median(scoped_open), 3),
                                                       "open_8mb_payload_median": round(statistics.median(
                                                           scoped_payload), 3)}
    now = datetime.now(UTC)
    out["overview_s"] = {}
    for label, width in (("last hour", timedelta(hours=1)), ("last 24 hours", timedelta(hours=24)),
                         ("last 7 days", timedelta(days=7)), ("last 30 days", timedelta(days=30))):
        end = now if last.replace(tzinfo=UTC) > now - timedelta(hours=1) else last.replace(tzinfo=UTC)
        start = end - width
        cold, o = timed(lambda: data.overview(client, LOCAL_ADMIN, start, end))
        warm, _ = timed(lambda: data.overview(client, LOCAL_ADMIN, start, end), repeat)
        out["overview_s"][label] = {"spans_in_range": o.spans, "first": round(cold[0], 3),
                                    "median": round(statistics.median(warm), 3), "max": round(max(warm), 3)}
        one_tenant, _ = timed(lambda: data.overview(client, scoped, start, end), repeat)
        out["overview_s"][label]["viewer_of_one_tenant_median"] = round(statistics.median(one_tenant), 3)
        log(f"overview {label}: {o.spans:,} spans, median {statistics.median(warm):.3f} s")
    # For comparison: the overview's main series straight from agent_spans, without the rollups.
    raw, _ = timed(lambda: data.frame(client, f"""
        SELECT toStartOfMinute(Timestamp) AS Minute, Tenant, count() AS Spans, sum(CostUSD) AS CostUSD
        FROM agent_spans WHERE Timestamp BETWEEN {data.START} AND {data.END} GROUP BY Minute, Tenant""",
                                        {"start": data.ns(end - timedelta(days=30)), "end": data.ns(end)}), repeat)
    out["overview_s"]["for comparison: cost per minute by tenant from agent_spans, 30 days, no rollup"] = {
        "median": round(statistics.median(raw), 3)}

    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="where the store goes (default: a temp dir, removed after)")
    parser.add_argument("--reuse", action="store_true", help="measure the data in --data-dir as it is (no generating)")
    parser.add_argument("--demo-duration", type=float, default=3600, help="seconds of demo fleet (default 3600)")
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans in the store (default 10 M)")
    parser.add_argument("--payload-mb", type=int, default=200, help="payload of the big trace (default 200)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentwatch-dashboard-"))
    try:
        if not args.reuse:
            started = time.perf_counter()
            generate(data_dir, args.demo_duration, args.spans, args.payload_mb)
            log(f"generated in {time.perf_counter() - started:.0f} s")
        result = measure(data_dir, args.repeat)
        print(json.dumps(result, indent=2))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

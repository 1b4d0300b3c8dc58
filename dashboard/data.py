"""Every query the dashboard and `agentwatch replay` run, as plain functions of a client.

Results come back as polars DataFrames (through Arrow: no per-row Python).
Times are UTC. Nothing here imports Streamlit, so the bench and the terminal
replay use the very same SQL the pages do.

Speed rules:
- the overview, costs and trace finder read the rollups of migration 0004
  (`agent_minutes`, `agent_hours`, `trace_summaries`), never a scan of spans;
- opening a trace reads `agent_spans` (its `by_trace` projection) and
  `trace_span_index` (small attributes, payload names and sizes), never a
  payload; one payload is read from `otel_traces` when someone opens it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa

from agentwatch.schemas.vocabulary import (
    ANOMALY_KINDS,
    ANOMALY_STATUSES,
    CREDENTIAL_KINDS,
    CROSS_TENANT_SQL,
    CROSS_TENANT_USE_SQL,
    MODEL_OPERATIONS,
    UNRESOLVED_STATUSES,
    severity_rank_sql,
    sql_list,
)

GPU_METRICS = ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.power",
               "process.gpu.memory.usage")
# Rollup choice: minutes up to this range, hours beyond.
MINUTE_ROLLUP_MAX = timedelta(days=2)
INLINE_PAYLOAD_BYTES = 32 * 1024  # payloads up to this size load with their step; bigger ones when opened


# --- plumbing -------------------------------------------------------------------------

# ClickHouse DateTime / Date arrive through Arrow as integers (seconds / days): these names are times.
TIME_COLUMNS = ("Minute", "Hour", "Time", "First", "Last", "Start", "End")
DATE_COLUMNS = ("Day",)


def _plain(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    if isinstance(frame, pl.Series):
        frame = frame.to_frame()
    casts = []
    for name, dtype in frame.schema.items():
        if dtype in (pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
            casts.append(pl.col(name).cast(pl.Utf8))
        elif dtype.is_integer() and name in TIME_COLUMNS:
            casts.append(pl.from_epoch(pl.col(name).cast(pl.Int64), time_unit="s").dt.replace_time_zone("UTC")
                         .dt.cast_time_unit("ns").alias(name))
        elif dtype.is_integer() and name in DATE_COLUMNS:
            casts.append(pl.col(name).cast(pl.Int32).cast(pl.Date).alias(name))
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone not in (None, "UTC"):
            casts.append(pl.col(name).dt.convert_time_zone("UTC"))
    return frame.with_columns(casts) if casts else frame


def frame(client, sql: str, parameters: dict | None = None) -> pl.DataFrame:
    """Run a query, return a polars DataFrame (LowCardinality columns as plain strings)."""
    return _plain(client.query_arrow(sql, parameters=parameters or {}))


def ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def utc(value_ns: int) -> datetime:
    return datetime.fromtimestamp(value_ns / 1e9, tz=UTC)


def _range(start: datetime, end: datetime) -> dict:
    return {"start": ns(start), "end": ns(end)}


_T64 = "fromUnixTimestamp64Nano({%s:Int64})"
START, END = _T64 % "start", _T64 % "end"


def rollup(start: datetime, end: datetime) -> tuple[str, str]:
    """(table, bucket SQL) of the rollup to read for this range: minutes, or hours for long ranges."""
    if end - start <= MINUTE_ROLLUP_MAX:
        return "agent_minutes", "toStartOfMinute"
    return "agent_hours", "toStartOfHour"


def _in(column: str, values: Sequence[str] | None, name: str, params: dict) -> str:
    if not values:
        return ""
    params[name] = list(values)
    return f" AND {column} IN {{{name}:Array(String)}}"


def _rollup_where(start: datetime, end: datetime, params: dict) -> tuple[str, str]:
    table, bucket = rollup(start, end)
    params.update(_range(start, end))
    return table, f"Minute >= {bucket}(toDateTime({START})) AND Minute <= toDateTime({END})"


# --- overview -------------------------------------------------------------------------

@dataclass
class Overview:
    spans: int
    model_calls: int
    errors: int
    cost_usd: float
    tokens: int
    live_spans_per_s: float  # over the last minute of the range
    spans_per_minute: pl.DataFrame  # Minute, SpansPerSecond
    cost_per_minute: pl.DataFrame  # Minute, Tenant, CostUSD
    top_agents: pl.DataFrame  # Tenant, AgentId, AgentName, CostUSD, ModelCalls, Tokens
    open_anomalies: pl.DataFrame
    bucket_seconds: int


def overview(client, start: datetime, end: datetime, top: int = 10) -> Overview:
    params: dict = {}
    table, where = _rollup_where(start, end, params)
    bucket_seconds = 60 if table == "agent_minutes" else 3600
    per_tenant = frame(client, f"""
        SELECT Minute, Tenant, sum(Spans) AS Spans, sum(ModelCalls) AS ModelCalls, sum(Errors) AS Errors,
               sum(CostUSD) AS CostUSD, sum(InputTokens + OutputTokens) AS Tokens
        FROM {table} WHERE {where}
        GROUP BY Minute, Tenant ORDER BY Minute, Tenant""", params)
    top_agents = frame(client, f"""
        SELECT Tenant, AgentId, any(AgentName) AS AgentName, sum(CostUSD) AS CostUSD,
               sum(ModelCalls) AS ModelCalls, sum(InputTokens + OutputTokens) AS Tokens,
               sum(ReasoningTokens) AS ReasoningTokens
        FROM {table} WHERE {where} AND AgentId != ''
        GROUP BY Tenant, AgentId ORDER BY CostUSD DESC LIMIT {int(top)}""", params)
    live_end = min(end, datetime.now(UTC))
    live = frame(client, f"""
        SELECT count() AS n FROM agent_spans
        WHERE Timestamp > {START} AND Timestamp <= {END}""",
                 {"start": ns(live_end - timedelta(seconds=60)), "end": ns(live_end)})
    per_minute = (per_tenant.group_by("Minute").agg(pl.col("Spans").sum()).sort("Minute")
                  .with_columns((pl.col("Spans") / bucket_seconds).alias("SpansPerSecond")))
    totals = per_tenant.select(pl.col("Spans").sum(), pl.col("ModelCalls").sum(), pl.col("Errors").sum(),
                               pl.col("CostUSD").sum(), pl.col("Tokens").sum()).row(0)
    return Overview(
        spans=int(totals[0] or 0), model_calls=int(totals[1] or 0), errors=int(totals[2] or 0),
        cost_usd=float(totals[3] or 0.0), tokens=int(totals[4] or 0),
        live_spans_per_s=live["n"][0] / 60.0,
        spans_per_minute=per_minute.select("Minute", "SpansPerSecond"),
        cost_per_minute=per_tenant.select("Minute", "Tenant", "CostUSD"),
        top_agents=top_agents,
        open_anomalies=anomalies(client, statuses=UNRESOLVED_STATUSES, limit=50),
        bucket_seconds=bucket_seconds,
    )


# --- anomalies ------------------------------------------------------------------------

ANOMALY_COLUMNS = ("AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, "
                   "Status, FirstSeen, LastSeen, UpdatedAt")


def anomalies(client, start: datetime | None = None, end: datetime | None = None, *,
              kinds: Sequence[str] | None = None, severities: Sequence[str] | None = None,
              tenants: Sequence[str] | None = None, statuses: Sequence[str] | None = None,
              limit: int = 500) -> pl.DataFrame:
    """Current state of anomalies (FINAL), newest first; a range keeps those whose window overlaps it."""
    params: dict = {}
    where = "1"
    if start is not None and end is not None:
        params.update(_range(start, end))
        where += f" AND LastSeen >= {START} AND FirstSeen <= {END}"
    where += _in("Kind", kinds, "kinds", params) + _in("Severity", severities, "severities", params)
    where += _in("Tenant", tenants, "tenants", params) + _in("Status", statuses, "statuses", params)
    return frame(client, f"""
        SELECT {ANOMALY_COLUMNS} FROM anomalies FINAL WHERE {where}
        ORDER BY Status = 'resolved', {severity_rank_sql()} DESC, DetectedAt DESC
        LIMIT {int(limit)}""", params)


def anomaly(client, anomaly_id: str) -> dict | None:
    rows = frame(client, f"SELECT {ANOMALY_COLUMNS} FROM anomalies FINAL WHERE AnomalyId = {{id:String}}",
                 {"id": anomaly_id}).to_dicts()
    return rows[0] if rows else None


def anomaly_facets(client) -> dict[str, list[str]]:
    """Every kind of the vocabulary (in its order, then any other stored kind) and the tenants with anomalies."""
    row = frame(client, "SELECT groupUniqArray(Kind) AS kinds, groupUniqArray(Tenant) AS tenants "
                        "FROM anomalies").row(0, named=True)
    kinds = list(ANOMALY_KINDS) + sorted(set(row["kinds"]) - set(ANOMALY_KINDS))
    return {"kinds": kinds, "tenants": sorted(row["tenants"])}


def set_anomaly_status(client, anomaly_id: str, status: str) -> None:
    """Write a new version of the anomaly with this Status (UpdatedAt = now64(6)); every other column kept."""
    if status not in ANOMALY_STATUSES:
        raise ValueError(f"status must be one of {ANOMALY_STATUSES}")
    client.command(
        "INSERT INTO anomalies (AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, "
        "Evidence, Status, FirstSeen, LastSeen, UpdatedAt) "
        "SELECT AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, "
        "{status:String}, FirstSeen, LastSeen, greatest(now64(6), UpdatedAt + toIntervalMicrosecond(1)) "
        "FROM anomalies FINAL WHERE AnomalyId = {id:String}",
        parameters={"status": status, "id": anomaly_id})


def evidence_of(anomaly_row: dict) -> dict:
    try:
        value = json.loads(anomaly_row.get("Evidence") or "{}")
    except ValueError:
        return {"raw": anomaly_row.get("Evidence")}
    return value if isinstance(value, dict) else {"value": value}


def _credential_of(anomaly_row: dict) -> str:
    evidence = evidence_of(anomaly_row)
    for key in ("credential_id", "credential", "CredentialId"):
        if isinstance(evidence.get(key), str) and evidence[key]:
            return evidence[key]
    ids = evidence.get("credential_ids") or evidence.get("credentials")
    if isinstance(ids, list) and ids and isinstance(ids[0], str):
        return ids[0]
    return ""


@dataclass
class Baseline:
    series: pl.DataFrame  # Time, Series, Value
    metric: str
    normal: float | None  # the detector's learned mean where its evidence has one, else the median before
    window: tuple[datetime, datetime]  # FirstSeen, LastSeen
    normal_label: str = "normal before"
    threshold: float | None = None  # the detector's threshold, where its evidence has one


def anomaly_baseline(client, row: dict) -> Baseline:
    """The metric the anomaly is about, per minute, around its window, and its normal level before."""
    first, last = row["FirstSeen"], row["LastSeen"]
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    last = last if last.tzinfo else last.replace(tzinfo=UTC)
    span = max(last - first, timedelta(minutes=1))
    start = first - max(timedelta(minutes=60), 4 * span)
    end = last + max(timedelta(minutes=10), span)
    params = {**_range(start, end), "agent": row.get("AgentId") or "", "tenant": row.get("Tenant") or "",
              "trace": row.get("TraceId") or ""}
    window = f"Minute >= toStartOfMinute(toDateTime({START})) AND Minute <= toDateTime({END})"
    kind = row.get("Kind")
    if kind in CREDENTIAL_KINDS:
        credential = _credential_of(row)
        if not credential and params["trace"]:
            found = frame(client, "SELECT CredentialId FROM credential_events WHERE TraceId = {trace:String} "
                                  f"AND {CROSS_TENANT_USE_SQL} LIMIT 1", params)
            credential = found["CredentialId"][0] if len(found) else ""
        params["credential"] = credential
        series = frame(client, f"""
            SELECT toStartOfMinute(Timestamp) AS Time,
                   if({CROSS_TENANT_SQL}, 'cross-tenant uses', 'own-tenant uses') AS Series,
                   toFloat64(count()) AS Value
            FROM credential_events
            WHERE Timestamp BETWEEN {START} AND {END} AND Event = 'use' AND CredentialId = {{credential:String}}
            GROUP BY Time, Series ORDER BY Time""", params)
        metric, main = f"uses of {credential or 'the credential'} per minute", "own-tenant uses"
    elif kind == "cost_spike":
        # the detector judges the tenant's cost per minute (and each agent kind's): chart the tenant's,
        # with the agent that spent most beside it
        agent_part = "" if not params["agent"] else f"""
            UNION ALL SELECT Minute AS Time, {{agent:String}} AS Series, sum(CostUSD) AS Value FROM agent_minutes
            WHERE {window} AND Tenant = {{tenant:String}} AND AgentId = {{agent:String}} GROUP BY Time"""
        series = frame(client, f"""
            SELECT Minute AS Time, 'tenant total' AS Series, sum(CostUSD) AS Value FROM agent_minutes
            WHERE {window} AND Tenant = {{tenant:String}} GROUP BY Time{agent_part}
            ORDER BY Time""", params)
        metric, main = f"cost per minute of tenant {row.get('Tenant')} (USD)", "tenant total"
    elif kind == "loop":
        series = frame(client, f"""
            SELECT Minute AS Time, 'agent tool calls/min' AS Series, toFloat64(sum(ToolCalls)) AS Value
            FROM agent_minutes WHERE {window} AND AgentId = {{agent:String}} GROUP BY Time ORDER BY Time""",
                       params)
        metric, main = f"tool calls per minute of {row.get('AgentId') or 'the agent'}", "agent tool calls/min"
    else:  # fanout and anything a new detector adds: model calls per minute, tenant and this trace
        series = frame(client, f"""
            SELECT Minute AS Time, 'tenant model calls/min' AS Series, toFloat64(sum(ModelCalls)) AS Value
            FROM agent_minutes WHERE {window} AND Tenant = {{tenant:String}} GROUP BY Time ORDER BY Time""",
                       params)
        if params["trace"]:
            own = frame(client, f"""
                SELECT toStartOfMinute(Timestamp) AS Time, 'this trace' AS Series, toFloat64(count()) AS Value
                FROM agent_spans WHERE TraceId = {{trace:String}} AND Timestamp BETWEEN {START} AND {END}
                  AND Operation IN {sql_list(MODEL_OPERATIONS)} GROUP BY Time ORDER BY Time""", params)
            series = pl.concat([series, own], how="vertical_relaxed")
        metric, main = f"model calls per minute, tenant {row.get('Tenant')}", "tenant model calls/min"
    series = _fill_minutes(series, start, end)
    # the normal level: the median minute before the anomaly, from the first minute with any activity
    before = series.filter((pl.col("Series") == main)
                           & (pl.col("Time") < pl.lit(first).cast(pl.Datetime("ns", "UTC")))).sort("Time")
    active = before.filter(pl.col("Value").cum_max() > 0)
    normal = float(active["Value"].median()) if len(active) else None
    if kind == "cost_spike":
        evidence = evidence_of(row)
        learned = evidence.get("tenant_baseline") or {}
        if learned.get("warm") and learned.get("mean") is not None:
            return Baseline(series=series, metric=metric, normal=float(learned["mean"]), window=(first, last),
                            normal_label="learned normal", threshold=evidence.get("tenant_threshold"))
    return Baseline(series=series, metric=metric, normal=normal, window=(first, last))


def _fill_minutes(series: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Zero for the minutes a series has no row (a quiet minute is a zero, not a gap in the line)."""
    if series.is_empty():
        return series.with_columns(pl.col("Time").cast(pl.Datetime("ns", "UTC")))
    series = series.with_columns(pl.col("Time").cast(pl.Datetime("ns", "UTC")))
    minutes = pl.datetime_range(start.replace(second=0, microsecond=0), end, interval="1m", time_zone="UTC",
                                eager=True, time_unit="ns").alias("Time")
    grid = pl.DataFrame(minutes).join(series.select("Series").unique(), how="cross")
    return (grid.join(series, on=["Time", "Series"], how="left").with_columns(pl.col("Value").fill_null(0.0))
            .sort("Series", "Time"))


# --- traces -----------------------------------------------------------------------------

def find_traces(client, start: datetime, end: datetime, *, tenant: str = "", agent: str = "",
                limit: int = 200) -> pl.DataFrame:
    params = {**_range(start, end), "tenant": tenant, "agent": agent}
    where = f"Hour >= toStartOfHour(toDateTime({START})) AND Hour <= toDateTime({END})"
    if tenant:
        where += " AND Tenant = {tenant:String}"
    having = f"Start <= {END} AND End >= {START}"
    if agent:
        having += " AND (has(Agents, {agent:String}) OR RootAgentName = {agent:String})"
    return frame(client, f"""
        SELECT TraceId, min(Start) AS Start, max(End) AS End, any(Tenant) AS TraceTenant,
               max(RootAgentId) AS RootAgentId, max(RootAgentName) AS RootAgentName,
               groupUniqArrayArray(Agents) AS Agents, sum(Spans) AS Spans, sum(ModelCalls) AS ModelCalls,
               sum(Errors) AS Errors, sum(CostUSD) AS CostUSD, sum(PayloadBytes) AS PayloadBytes
        FROM trace_summaries WHERE {where}
        GROUP BY TraceId HAVING {having}
        ORDER BY Start DESC LIMIT {int(limit)}""", params).rename({"TraceTenant": "Tenant"})


def tenants(client, start: datetime, end: datetime) -> list[str]:
    params: dict = {}
    table, where = _rollup_where(start, end, params)
    return frame(client, f"SELECT DISTINCT Tenant FROM {table} WHERE {where} ORDER BY Tenant", params)[
        "Tenant"].to_list()


def agents(client, start: datetime, end: datetime, tenant: str = "") -> list[str]:
    params: dict = {"tenant": tenant}
    table, where = _rollup_where(start, end, params)
    if tenant:
        where += " AND Tenant = {tenant:String}"
    return frame(client, f"SELECT DISTINCT AgentId FROM {table} WHERE {where} AND AgentId != '' ORDER BY AgentId",
                 params)["AgentId"].to_list()


def trace_bounds(client, trace_id: str) -> tuple[int, int] | None:
    """(first span start, last span start) in ns, from the small per-trace index of 0001."""
    rows = frame(client, "SELECT toUnixTimestamp64Nano(min(toDateTime64(Start, 9))) AS s, "
                         "toUnixTimestamp64Nano(max(toDateTime64(End, 9))) AS e, count() AS n "
                         "FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}", {"t": trace_id}).row(0)
    if not rows[2]:
        return None
    return rows[0], rows[1] + 1_000_000_000


def trace_spans(client, trace_id: str) -> pl.DataFrame:
    """One row per span: typed columns, small attributes, payload names and sizes, events. No payload."""
    params = {"t": trace_id}
    bounds = trace_bounds(client, trace_id)
    window = ""
    if bounds:
        params.update(start=bounds[0], end=bounds[1])
        window = f" AND Timestamp >= {START} AND Timestamp <= {END}"
    typed = frame(client, f"""
        SELECT SpanId, ParentSpanId, Timestamp, toUnixTimestamp64Nano(Timestamp) AS StartNs, Duration,
               Tenant, ServiceName, AgentId, AgentName, Operation, SpanName, ToolName, Provider, Model,
               InputTokens, OutputTokens, CachedInputTokens, ReasoningTokens, CostUSD, StatusCode, PayloadBytes
        FROM agent_spans WHERE TraceId = {{t:String}}{window}""", params)
    index = frame(client, f"""
        SELECT SpanId, StatusMessage, Attributes, PayloadKeys, PayloadSizes,
               arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS EventNs, Events.Name AS EventNames,
               Events.Attributes AS EventAttributes
        FROM trace_span_index WHERE TraceId = {{t:String}}{window}""", params)
    if typed.is_empty():
        return typed
    joined = typed.join(index.unique("SpanId"), on="SpanId", how="left")
    return joined.unique("SpanId", keep="first").sort("StartNs", "SpanId")


def trace_credentials(client, trace_id: str) -> pl.DataFrame:
    return frame(client, f"""
        SELECT toUnixTimestamp64Nano(Timestamp) AS TimeNs, Timestamp, SpanId, Tenant, AgentId, Event, CredentialId,
               CredentialTenant, Scope, Resource, ResourceTenant, Action, {CROSS_TENANT_USE_SQL} AS CrossTenant
        FROM credential_events WHERE TraceId = {{t:String}} ORDER BY Timestamp""", {"t": trace_id}).with_columns(
        pl.col("CrossTenant").cast(pl.Boolean))


def trace_anomalies(client, trace_id: str, agent_ids: Sequence[str] = (), start_ns: int | None = None,
                    end_ns: int | None = None) -> pl.DataFrame:
    """Anomalies about this trace, and about its agents while it ran."""
    params = {"t": trace_id, "agents": list(agent_ids), "start": start_ns or 0, "end": end_ns or 0}
    related = ""
    if agent_ids and start_ns is not None and end_ns is not None:
        related = f" OR (TraceId = '' AND AgentId IN {{agents:Array(String)}} AND FirstSeen <= {END} " \
                  f"AND LastSeen >= {START})"
    return frame(client, f"""
        SELECT {ANOMALY_COLUMNS}, toUnixTimestamp64Nano(FirstSeen) AS FirstSeenNs
        FROM anomalies FINAL WHERE TraceId = {{t:String}}{related} ORDER BY FirstSeen""", params)


def _span_where(span: dict) -> tuple[str, dict]:
    params = {"t": span["TraceId"], "s": span["SpanId"]}
    where = "TraceId = {t:String} AND SpanId = {s:String}"
    if span.get("StartNs") is not None:
        params["at"] = int(span["StartNs"])
        where += " AND Timestamp = fromUnixTimestamp64Nano({at:Int64})"
        if span.get("ServiceName") is not None and span.get("SpanName") is not None:
            # the leading columns of otel_traces' sort key: the read lands on the span's own granule
            params.update(svc=span["ServiceName"], name=span["SpanName"])
            where += " AND ServiceName = {svc:String} AND SpanName = {name:String}"
    return where, params


def span_payload(client, span: dict, key: str) -> str | None:
    """One attribute of one span, whole. `span`: TraceId, SpanId (StartNs, ServiceName, SpanName speed it up)."""
    where, params = _span_where(span)
    params["k"] = key
    rows = client.query(f"SELECT SpanAttributes[{{k:String}}], mapContains(SpanAttributes, {{k:String}}) "
                        f"FROM otel_traces WHERE {where} LIMIT 1", parameters=params).result_rows
    if not rows or not rows[0][1]:
        return None
    value = rows[0][0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def span_attributes(client, span: dict, max_bytes: int = INLINE_PAYLOAD_BYTES) -> dict[str, str]:
    """The attributes of one span whose values are at most `max_bytes` (bigger ones: `span_payload`)."""
    where, params = _span_where(span)
    params["m"] = max_bytes
    rows = client.query(f"SELECT mapFilter((k, v) -> length(v) <= {{m:UInt64}}, SpanAttributes) "
                        f"FROM otel_traces WHERE {where} LIMIT 1", parameters=params).result_rows
    return dict(rows[0][0]) if rows else {}


def search_trace(client, trace_id: str, text: str, limit: int = 200) -> pl.DataFrame:
    """Where `text` occurs (case-insensitive) in the trace's attribute values, span names and event attributes.

    Position is in characters (1-based); Snippet is the text around the first occurrence."""
    params = {"t": trace_id, "q": text}
    bounds = trace_bounds(client, trace_id)
    window = ""
    if bounds:
        params.update(start=bounds[0], end=bounds[1])
        window = f" AND Timestamp >= {START} AND Timestamp <= {END}"
    return frame(client, f"""
        SELECT SpanId, toUnixTimestamp64Nano(Timestamp) AS StartNs, toString(SpanName) AS SpanName, Key,
               countSubstringsCaseInsensitiveUTF8(Value, {{q:String}}) AS Matches, length(Value) AS Bytes,
               positionCaseInsensitiveUTF8(Value, {{q:String}}) AS Position,
               substringUTF8(Value, greatest(1, toInt64(Position) - 80), 80 + lengthUTF8({{q:String}}) + 80)
                   AS Snippet
        FROM (
            SELECT Timestamp, SpanId, SpanName,
                   arrayConcat(arrayZip(mapKeys(SpanAttributes), mapValues(SpanAttributes)),
                               [('span name', toString(SpanName)), ('status message', StatusMessage)],
                               arrayFlatten(arrayMap((n, m) -> arrayMap((k, v) -> (concat(n, ' ', k), v),
                                                                        mapKeys(m), mapValues(m)),
                                                     Events.Name, Events.Attributes))) AS kv
            FROM otel_traces WHERE TraceId = {{t:String}}{window}
        )
        ARRAY JOIN kv.1 AS Key, kv.2 AS Value
        WHERE positionCaseInsensitiveUTF8(Value, {{q:String}}) > 0
        ORDER BY StartNs, SpanId, Key LIMIT {int(limit)}""", params)


def export_trace(client, trace_id: str, batch_spans: int = 500) -> Iterator[bytes]:
    """The whole trace as JSON Lines, one span per line, every attribute and event whole."""
    spans = frame(client, "SELECT SpanId, toUnixTimestamp64Nano(Timestamp) AS StartNs FROM trace_span_index "
                          "WHERE TraceId = {t:String} ORDER BY Timestamp", {"t": trace_id})
    bounds = trace_bounds(client, trace_id)
    ids = spans["SpanId"].to_list()
    for i in range(0, max(len(ids), 1), batch_spans):
        chunk = ids[i:i + batch_spans]
        if not chunk:
            break
        params = {"t": trace_id, "ids": chunk, "start": bounds[0] if bounds else 0,
                  "end": bounds[1] if bounds else 2**62}
        result = client.query(f"""
            SELECT Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, ResourceAttributes,
                   ScopeName, SpanAttributes, Duration, StatusCode, StatusMessage, Events.Timestamp, Events.Name,
                   Events.Attributes
            FROM otel_traces WHERE TraceId = {{t:String}} AND SpanId IN {{ids:Array(String)}}
              AND Timestamp >= {START} AND Timestamp <= {END}
            ORDER BY Timestamp""", parameters=params)
        for row in result.named_results():
            record = dict(row)
            record["Timestamp"] = record["Timestamp"].isoformat()
            record["Events"] = [{"Timestamp": t.isoformat(), "Name": n, "Attributes": dict(a)} for t, n, a in
                                zip(record.pop("Events.Timestamp"), record.pop("Events.Name"),
                                    record.pop("Events.Attributes"))]
            yield json.dumps(record, ensure_ascii=False).encode() + b"\n"


def alert_deliveries(client, anomaly_id: str) -> pl.DataFrame:
    """What the alert dispatcher sent about an anomaly (alert_deliveries), newest first."""
    return frame(client, "SELECT SentAt, Sink, Target, Event, Attempt, HttpStatus, Delivered, Error "
                         "FROM alert_deliveries WHERE AnomalyId = {a:String} ORDER BY SentAt DESC LIMIT 100",
                 {"a": anomaly_id})


# --- costs ----------------------------------------------------------------------------------

def costs(client, start: datetime, end: datetime, by: Sequence[str] = ("Tenant",),
          tenants_filter: Sequence[str] | None = None) -> pl.DataFrame:
    """Cost and tokens by kind, grouped by any of Tenant, AgentId, Model, Day."""
    params: dict = {}
    table, where = _rollup_where(start, end, params)
    where += _in("Tenant", tenants_filter, "tenants", params)
    columns = {"Tenant": "Tenant", "AgentId": "AgentId", "Model": "Model", "Day": "toDate(Minute) AS Day",
               "Hour": "toStartOfHour(Minute) AS Hour",
               "ServiceName": "ServiceName"}
    keys = [columns[k] for k in by]
    names = list(by)
    group = f"GROUP BY {', '.join(names)}" if names else ""
    select = (", ".join(keys) + ", ") if keys else ""
    return frame(client, f"""
        SELECT {select}sum(cost) AS CostUSD, sum(calls) AS ModelCalls, sum(unpriced) AS UnpricedCalls,
               toUInt64(sum(toUInt64(greatest(input, cached) - cached))) AS InputTokens, sum(cached) AS CachedInputTokens,
               toUInt64(sum(toUInt64(greatest(output, reasoning) - reasoning))) AS OutputTokens, sum(reasoning) AS ReasoningTokens
        FROM (SELECT *, CostUSD AS cost, ModelCalls AS calls, UnpricedCalls AS unpriced, InputTokens AS input,
                     CachedInputTokens AS cached, OutputTokens AS output, ReasoningTokens AS reasoning
              FROM {table} WHERE {where})
        {group}
        ORDER BY CostUSD DESC""", params)


TOKEN_KINDS = {"InputTokens": "input (uncached)", "CachedInputTokens": "cached input",
               "OutputTokens": "output (visible)", "ReasoningTokens": "reasoning"}


# --- credentials ----------------------------------------------------------------------------
# Cross-tenant uses are counted by the vocabulary's rule (CROSS_TENANT_USE_SQL), as the detector counts them.


def credentials(client, start: datetime, end: datetime, tenant: str = "") -> pl.DataFrame:
    params = {**_range(start, end), "tenant": tenant}
    where = f"Timestamp BETWEEN {START} AND {END}"
    if tenant:
        where += " AND (Tenant = {tenant:String} OR CredentialTenant = {tenant:String})"
    return frame(client, f"""
        SELECT CredentialId, anyIf(CredentialTenant, CredentialTenant != '') AS Owner,
               countIf(Event = 'grant') AS Grants, countIf(Event = 'use') AS Uses,
               countIf(Event = 'revoke') AS Revokes, countIf({CROSS_TENANT_USE_SQL}) AS CrossTenantUses,
               uniqExact(AgentId) AS Agents, groupUniqArray(toString(Tenant)) AS Tenants,
               min(Timestamp) AS First, max(Timestamp) AS Last
        FROM credential_events WHERE {where}
        GROUP BY CredentialId ORDER BY CrossTenantUses DESC, Uses DESC""", params)


def credential_trail(client, credential_id: str, start: datetime, end: datetime, limit: int = 5000) -> pl.DataFrame:
    params = {**_range(start, end), "c": credential_id}
    return frame(client, f"""
        SELECT Timestamp, Event, Tenant, AgentId, CredentialTenant, Scope, Resource, ResourceTenant, Action,
               TraceId, SpanId, {CROSS_TENANT_USE_SQL} AS CrossTenant
        FROM credential_events
        WHERE CredentialId = {{c:String}} AND Timestamp BETWEEN {START} AND {END}
        ORDER BY Timestamp LIMIT {int(limit)}""", params).with_columns(pl.col("CrossTenant").cast(pl.Boolean))


def credential_uses_per_minute(client, start: datetime, end: datetime, credential_ids: Sequence[str]) -> pl.DataFrame:
    params = {**_range(start, end), "ids": list(credential_ids)}
    return frame(client, f"""
        SELECT toStartOfMinute(Timestamp) AS Minute, CredentialId, {CROSS_TENANT_USE_SQL} AS CrossTenant,
               count() AS Uses
        FROM credential_events
        WHERE Timestamp BETWEEN {START} AND {END} AND Event = 'use' AND CredentialId IN {{ids:Array(String)}}
        GROUP BY Minute, CredentialId, CrossTenant ORDER BY Minute""", params).with_columns(
        pl.col("CrossTenant").cast(pl.Boolean))


def cross_tenant_uses(client, start: datetime, end: datetime, limit: int = 500) -> pl.DataFrame:
    params = _range(start, end)
    return frame(client, f"""
        SELECT Timestamp, CredentialId, CredentialTenant, Tenant, AgentId, Resource, ResourceTenant, Action,
               TraceId, SpanId
        FROM credential_events WHERE Timestamp BETWEEN {START} AND {END} AND {CROSS_TENANT_USE_SQL}
        ORDER BY Timestamp DESC LIMIT {int(limit)}""", params)


# --- GPUs -------------------------------------------------------------------------------

def gpu_metrics(client, start: datetime, end: datetime, buckets: int = 240) -> pl.DataFrame:
    """hw.gpu.* and process.gpu.memory.usage, averaged per time bucket, per device (and process)."""
    seconds = max(10, int((end - start).total_seconds() / buckets))
    params = {**_range(start, end), "names": list(GPU_METRICS), "step": seconds}
    parts = []
    for table in ("otel_metrics_gauge", "otel_metrics_sum"):
        parts.append(f"""
            SELECT toStartOfInterval(TimeUnix, toIntervalSecond({{step:UInt32}})) AS Time, MetricName,
                   toString(ServiceName) AS ServiceName,
                   Attributes['hw.id'] AS Device, Attributes['hw.name'] AS DeviceName,
                   coalesce(nullIf(Attributes['process.pid'], ''), nullIf(ResourceAttributes['process.pid'], ''),
                            '') AS Pid,
                   coalesce(nullIf(ResourceAttributes['host.name'], ''), '') AS Host,
                   avg(Value) AS Value
            FROM {table}
            WHERE MetricName IN {{names:Array(String)}} AND TimeUnix BETWEEN {START} AND {END}
            GROUP BY Time, MetricName, ServiceName, Device, DeviceName, Pid, Host""")
    return frame(client, " UNION ALL ".join(parts) + " ORDER BY Time", params)


def activity(client, start: datetime, end: datetime, services: Sequence[str] | None = None) -> pl.DataFrame:
    """Model calls and spans per minute (per service), to set beside GPU use."""
    params: dict = {}
    table, where = _rollup_where(start, end, params)
    where += _in("ServiceName", services, "services", params)
    return frame(client, f"""
        SELECT Minute, ServiceName, sum(Spans) AS Spans, sum(ModelCalls) AS ModelCalls,
               sum(InputTokens + OutputTokens) AS Tokens
        FROM {table} WHERE {where} GROUP BY Minute, ServiceName ORDER BY Minute""", params)

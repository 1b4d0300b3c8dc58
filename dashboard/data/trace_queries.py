"""One trace, as far as a viewer may see it: its spans, credential events, anomalies and payloads.

Opening a trace reads `agent_spans` (its `by_trace` projection) and
`trace_span_index` (small attributes, payload names and sizes), never a
payload; one payload is read from `otel_traces` when someone opens it. Spans of
tenants the viewer is not granted are left out of every read, so a trace of
another tenant is "not found" like one never stored.

A span is its tenant's by its own row, never by its ids: any tenant may send a
span with another's TraceId and SpanId (both travel in W3C traceparent), so
`otel_traces` is read by the row's tenant (`visible_spans`) and
`trace_span_index`, which has no tenant column, by the exact row of a visible
span (`_index_scope`), never by a SpanId alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.anomaly_queries import ANOMALY_COLUMNS
from agentwatch.dashboard.data.core import END, SPAN_TENANT_SQL, START, frame, granted, tenant_scope
from agentwatch.schemas.attributes import TENANT_ID
from agentwatch.schemas.vocabulary import CROSS_TENANT_USE_SQL

INLINE_PAYLOAD_BYTES = 32 * 1024  # payloads up to this size load with their step; bigger ones when opened


def _bounds(client, trace_id: str) -> tuple[int, int] | None:
    """(first span start, last span start) in ns, from the small per-trace index of 0001: times only."""
    rows = frame(client, "SELECT toUnixTimestamp64Nano(min(toDateTime64(Start, 9))) AS s, "
                         "toUnixTimestamp64Nano(max(toDateTime64(End, 9))) AS e, count() AS n "
                         "FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}", {"t": trace_id}).row(0)
    if not rows[2]:
        return None
    return rows[0], rows[1] + 1_000_000_000


def _window(client, trace_id: str, params: dict) -> str:
    bounds = _bounds(client, trace_id)
    if not bounds:
        return ""
    params.update(start=bounds[0], end=bounds[1])
    return f" AND Timestamp >= {START} AND Timestamp <= {END}"


# The key of a span's row in trace_span_index, as agent_spans has it too.
INDEX_KEY = ("SpanId", "StartNs", "ServiceName", "SpanName")
# The tenant a trace_span_index row's own span attributes name ('' where they name none, or it was too long
# to be copied there: then the tenant came from the resource, and the row's key alone decides).
INDEX_TENANT_SQL = f"Attributes['{TENANT_ID}']"


def visible_spans(viewer: Viewer, params: dict) -> str:
    """For a read of `otel_traces` (no Tenant column): only the rows of the viewer's tenants, by each row's
    own tenant (what agent_spans types it as), so a span another tenant sent with the same ids stays out."""
    return tenant_scope(viewer, params, column=SPAN_TENANT_SQL)


def _index_scope(viewer: Viewer, params: dict, window: str = "") -> str:
    """For a read of `trace_span_index` of trace `{t}`: only the rows of the viewer's spans, pinned by their
    whole key (SpanId, Timestamp, ServiceName, SpanName) taken from the viewer's agent_spans rows, and
    never a row whose span attributes name a tenant the viewer is not granted."""
    if granted(viewer) is None:
        return ""
    scope = tenant_scope(viewer, params)
    return (f" AND (SpanId, Timestamp, ServiceName, SpanName) IN (SELECT SpanId, Timestamp, ServiceName, SpanName "
            f"FROM agent_spans WHERE TraceId = {{t:String}}{window}{scope})"
            f" AND ({INDEX_TENANT_SQL} = '' OR has({{scope_tenants:Array(String)}}, {INDEX_TENANT_SQL}))")


def trace_spans(client, viewer: Viewer, trace_id: str) -> pl.DataFrame:
    """One row per span: typed columns, small attributes, payload names and sizes, events. No payload."""
    params = {"t": trace_id}
    window = _window(client, trace_id, params)
    scope = tenant_scope(viewer, params)
    typed = frame(client, f"""
        SELECT SpanId, ParentSpanId, Timestamp, toUnixTimestamp64Nano(Timestamp) AS StartNs, Duration,
               Tenant, ServiceName, AgentId, AgentName, Operation, SpanName, ToolName, Provider, Model,
               InputTokens, OutputTokens, CachedInputTokens, ReasoningTokens, CostUSD, StatusCode, PayloadBytes
        FROM agent_spans WHERE TraceId = {{t:String}}{window}{scope}""", params)
    if typed.is_empty():
        return typed
    index = frame(client, f"""
        SELECT SpanId, toUnixTimestamp64Nano(Timestamp) AS StartNs, ServiceName, SpanName,
               {INDEX_TENANT_SQL} AS IndexTenant, StatusMessage, Attributes, PayloadKeys, PayloadSizes,
               arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS EventNs, Events.Name AS EventNames,
               Events.Attributes AS EventAttributes
        FROM trace_span_index WHERE TraceId = {{t:String}}{window}{_index_scope(viewer, params, window)}""", params)
    # a typed row takes the index row of its own span: the same key, and no other tenant named in its
    # attributes (two tenants' spans may share every part of the key, and an admin sees both); an index row
    # of another tenant's span is never joined, and never hides the span it was joined to
    own = pl.col("IndexTenant").is_null() | (pl.col("IndexTenant") == "") | (pl.col("IndexTenant") == pl.col("Tenant"))
    joined = (typed.join(index, on=list(INDEX_KEY), how="left")
              .with_columns(*(pl.when(own).then(pl.col(c)).otherwise(pl.lit(None, dtype)).alias(c)
                              for c, dtype in index.schema.items() if c not in INDEX_KEY), own.alias("Own"))
              .sort("Own", descending=True, maintain_order=True)
              .drop("IndexTenant", "Own"))
    return joined.unique("SpanId", keep="first", maintain_order=True).sort("StartNs", "SpanId")


def trace_credentials(client, viewer: Viewer, trace_id: str) -> pl.DataFrame:
    params = {"t": trace_id}
    scope = tenant_scope(viewer, params)
    return frame(client, f"""
        SELECT toUnixTimestamp64Nano(Timestamp) AS TimeNs, Timestamp, SpanId, Tenant, AgentId, Event, CredentialId,
               CredentialTenant, Scope, Resource, ResourceTenant, Action, {CROSS_TENANT_USE_SQL} AS CrossTenant
        FROM credential_events WHERE TraceId = {{t:String}}{scope} ORDER BY Timestamp""", params).with_columns(
        pl.col("CrossTenant").cast(pl.Boolean))


def trace_anomalies(client, viewer: Viewer, trace_id: str, agent_ids: Sequence[str] = (),
                    start_ns: int | None = None, end_ns: int | None = None) -> pl.DataFrame:
    """Anomalies about this trace, and about its agents while it ran."""
    params = {"t": trace_id, "agents": list(agent_ids), "start": start_ns or 0, "end": end_ns or 0}
    scope = tenant_scope(viewer, params)
    related = ""
    if agent_ids and start_ns is not None and end_ns is not None:
        related = f" OR (TraceId = '' AND AgentId IN {{agents:Array(String)}} AND FirstSeen <= {END} " \
                  f"AND LastSeen >= {START})"
    return frame(client, f"""
        SELECT {ANOMALY_COLUMNS}, toUnixTimestamp64Nano(FirstSeen) AS FirstSeenNs
        FROM anomalies FINAL WHERE (TraceId = {{t:String}}{related}){scope} ORDER BY FirstSeen""", params)


def _span_where(viewer: Viewer, span: dict) -> tuple[str, dict]:
    params = {"t": span["TraceId"], "s": span["SpanId"]}
    where = "TraceId = {t:String} AND SpanId = {s:String}"
    if span.get("StartNs") is not None:
        params["at"] = int(span["StartNs"])
        where += " AND Timestamp = fromUnixTimestamp64Nano({at:Int64})"
        if span.get("ServiceName") is not None and span.get("SpanName") is not None:
            # the leading columns of otel_traces' sort key: the read lands on the span's own granule
            params.update(svc=span["ServiceName"], name=span["SpanName"])
            where += " AND ServiceName = {svc:String} AND SpanName = {name:String}"
    return where + visible_spans(viewer, params), params


def span_payload(client, viewer: Viewer, span: dict, key: str) -> str | None:
    """One attribute of one span, whole. `span`: TraceId, SpanId (StartNs, ServiceName, SpanName speed it up)."""
    where, params = _span_where(viewer, span)
    params["k"] = key
    rows = client.query(f"SELECT SpanAttributes[{{k:String}}], mapContains(SpanAttributes, {{k:String}}) "
                        f"FROM otel_traces WHERE {where} LIMIT 1", parameters=params).result_rows
    if not rows or not rows[0][1]:
        return None
    value = rows[0][0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def span_attributes(client, viewer: Viewer, span: dict, max_bytes: int = INLINE_PAYLOAD_BYTES) -> dict[str, str]:
    """The attributes of one span whose values are at most `max_bytes` (bigger ones: `span_payload`)."""
    where, params = _span_where(viewer, span)
    params["m"] = max_bytes
    rows = client.query(f"SELECT mapFilter((k, v) -> length(v) <= {{m:UInt64}}, SpanAttributes) "
                        f"FROM otel_traces WHERE {where} LIMIT 1", parameters=params).result_rows
    return dict(rows[0][0]) if rows else {}


def spans_attributes(client, viewer: Viewer, trace_id: str, span_ids: Sequence[str], start_ns: int,
                     end_ns: int) -> dict[str, dict[str, str]]:
    """Every attribute of these spans of one trace, whole (span id -> name -> value)."""
    params = {"t": trace_id, "ids": list(span_ids), "start": start_ns, "end": end_ns}
    rows = client.query(
        f"SELECT SpanId, SpanAttributes FROM otel_traces WHERE TraceId = {{t:String}} "
        f"AND SpanId IN {{ids:Array(String)}} AND Timestamp >= {START} AND Timestamp <= {END}"
        f"{visible_spans(viewer, params)}", parameters=params).result_rows
    return {span_id: dict(attributes) for span_id, attributes in rows}


def search_trace(client, viewer: Viewer, trace_id: str, text: str, limit: int = 200) -> pl.DataFrame:
    """Where `text` occurs (case-insensitive) in the trace's attribute values, span names and event attributes.

    Position is in characters (1-based); Snippet is the text around the first occurrence."""
    params = {"t": trace_id, "q": text}
    window = _window(client, trace_id, params) + visible_spans(viewer, params)
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


def export_trace(client, viewer: Viewer, trace_id: str, batch_spans: int = 500) -> Iterator[bytes]:
    """The whole trace as JSON Lines, one span per line, every attribute and event whole."""
    params = {"t": trace_id}
    spans = frame(client, "SELECT SpanId, toUnixTimestamp64Nano(Timestamp) AS StartNs FROM trace_span_index "
                          f"WHERE TraceId = {{t:String}}{_index_scope(viewer, params)} ORDER BY Timestamp", params)
    bounds = _bounds(client, trace_id)
    ids = list(dict.fromkeys(spans["SpanId"].to_list()))  # one span id twice (two tenants' spans): read once
    for i in range(0, len(ids), batch_spans):
        params = {"t": trace_id, "ids": ids[i:i + batch_spans], "start": bounds[0] if bounds else 0,
                  "end": bounds[1] if bounds else 2**62}
        result = client.query(f"""
            SELECT Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, ResourceAttributes,
                   ScopeName, SpanAttributes, Duration, StatusCode, StatusMessage, Events.Timestamp, Events.Name,
                   Events.Attributes
            FROM otel_traces WHERE TraceId = {{t:String}} AND SpanId IN {{ids:Array(String)}}
              AND Timestamp >= {START} AND Timestamp <= {END}{visible_spans(viewer, params)}
            ORDER BY Timestamp""", parameters=params)
        for row in result.named_results():
            record = dict(row)
            record["Timestamp"] = record["Timestamp"].isoformat()
            record["Events"] = [{"Timestamp": t.isoformat(), "Name": n, "Attributes": dict(a)} for t, n, a in
                                zip(record.pop("Events.Timestamp"), record.pop("Events.Name"),
                                    record.pop("Events.Attributes"))]
            yield json.dumps(record, ensure_ascii=False).encode() + b"\n"

"""The chart beside an anomaly: the metric it is about, per minute around its window, and its normal level."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.core import END, START, frame, tenant_scope, time_range
from agentwatch.schemas.vocabulary import (CREDENTIAL_KINDS, CROSS_TENANT_SQL, CROSS_TENANT_USE_SQL, MODEL_OPERATIONS,
                                           sql_list)


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


def anomaly_baseline(client, viewer: Viewer, row: dict) -> Baseline:
    """The metric the anomaly is about, per minute, around its window, and its normal level before."""
    first, last = row["FirstSeen"], row["LastSeen"]
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    last = last if last.tzinfo else last.replace(tzinfo=UTC)
    span = max(last - first, timedelta(minutes=1))
    start = first - max(timedelta(minutes=60), 4 * span)
    end = last + max(timedelta(minutes=10), span)
    params = {**time_range(start, end), "agent": row.get("AgentId") or "", "tenant": row.get("Tenant") or "",
              "trace": row.get("TraceId") or ""}
    scope = tenant_scope(viewer, params)
    window = f"Minute >= toStartOfMinute(toDateTime({START})) AND Minute <= toDateTime({END})"
    kind = row.get("Kind")
    if kind in CREDENTIAL_KINDS:
        credential = _credential_of(row)
        if not credential and params["trace"]:
            found = frame(client, "SELECT CredentialId FROM credential_events WHERE TraceId = {trace:String} "
                                  f"AND {CROSS_TENANT_USE_SQL}{scope} LIMIT 1", params)
            credential = found["CredentialId"][0] if len(found) else ""
        params["credential"] = credential
        series = frame(client, f"""
            SELECT toStartOfMinute(Timestamp) AS Time,
                   if({CROSS_TENANT_SQL}, 'cross-tenant uses', 'own-tenant uses') AS Series,
                   toFloat64(count()) AS Value
            FROM credential_events
            WHERE Timestamp BETWEEN {START} AND {END} AND Event = 'use' AND CredentialId = {{credential:String}}{scope}
            GROUP BY Time, Series ORDER BY Time""", params)
        metric, main = f"uses of {credential or 'the credential'} per minute", "own-tenant uses"
    elif kind == "cost_spike":
        # the detector judges the tenant's cost per minute (and each agent kind's): chart the tenant's,
        # with the agent that spent most beside it
        agent_part = "" if not params["agent"] else f"""
            UNION ALL SELECT Minute AS Time, {{agent:String}} AS Series, sum(CostUSD) AS Value FROM agent_minutes
            WHERE {window}{scope} AND Tenant = {{tenant:String}} AND AgentId = {{agent:String}} GROUP BY Time"""
        series = frame(client, f"""
            SELECT Minute AS Time, 'tenant total' AS Series, sum(CostUSD) AS Value FROM agent_minutes
            WHERE {window}{scope} AND Tenant = {{tenant:String}} GROUP BY Time{agent_part}
            ORDER BY Time""", params)
        metric, main = f"cost per minute of tenant {row.get('Tenant')} (USD)", "tenant total"
    elif kind == "loop":
        series = frame(client, f"""
            SELECT Minute AS Time, 'agent tool calls/min' AS Series, toFloat64(sum(ToolCalls)) AS Value
            FROM agent_minutes WHERE {window}{scope} AND Tenant = {{tenant:String}} AND AgentId = {{agent:String}}
            GROUP BY Time ORDER BY Time""",
                       params)
        metric, main = f"tool calls per minute of {row.get('AgentId') or 'the agent'}", "agent tool calls/min"
    else:  # fanout and anything a new detector adds: model calls per minute, tenant and this trace
        series = frame(client, f"""
            SELECT Minute AS Time, 'tenant model calls/min' AS Series, toFloat64(sum(ModelCalls)) AS Value
            FROM agent_minutes WHERE {window}{scope} AND Tenant = {{tenant:String}} GROUP BY Time ORDER BY Time""",
                       params)
        if params["trace"]:
            own = frame(client, f"""
                SELECT toStartOfMinute(Timestamp) AS Time, 'this trace' AS Series, toFloat64(count()) AS Value
                FROM agent_spans WHERE TraceId = {{trace:String}} AND Timestamp BETWEEN {START} AND {END}
                  AND Operation IN {sql_list(MODEL_OPERATIONS)}{scope} GROUP BY Time ORDER BY Time""", params)
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

"""The fleet over a time range, for one viewer: overview, costs, the trace finder, GPUs beside activity.

The overview, costs and trace finder read the rollups of migration 0004
(`agent_minutes`, `agent_hours`, `trace_summaries`), never a scan of spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.anomaly_queries import anomalies
from agentwatch.dashboard.data.core import (END, METRIC_TENANT_SQL, START, among, frame, ns, rollup_where,
                                            tenant_scope, time_range)
from agentwatch.schemas.vocabulary import UNRESOLVED_STATUSES

GPU_METRICS = ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.power",
               "process.gpu.memory.usage")
TOKEN_KINDS = {"InputTokens": "input (uncached)", "CachedInputTokens": "cached input",
               "OutputTokens": "output (visible)", "ReasoningTokens": "reasoning"}


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


def overview(client, viewer: Viewer, start: datetime, end: datetime, top: int = 10) -> Overview:
    params: dict = {}
    table, where = rollup_where(viewer, start, end, params)
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
    live_params = {"start": ns(live_end - timedelta(seconds=60)), "end": ns(live_end)}
    live = frame(client, f"""
        SELECT count() AS n FROM agent_spans
        WHERE Timestamp > {START} AND Timestamp <= {END}{tenant_scope(viewer, live_params)}""", live_params)
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
        open_anomalies=anomalies(client, viewer, statuses=UNRESOLVED_STATUSES, limit=50),
        bucket_seconds=bucket_seconds,
    )


def costs(client, viewer: Viewer, start: datetime, end: datetime, by: Sequence[str] = ("Tenant",),
          tenants_filter: Sequence[str] | None = None) -> pl.DataFrame:
    """Cost and tokens by kind, grouped by any of Tenant, AgentId, Model, Day."""
    params: dict = {}
    table, where = rollup_where(viewer, start, end, params)
    where += among("Tenant", tenants_filter, "tenants", params)
    columns = {"Tenant": "Tenant", "AgentId": "AgentId", "Model": "Model", "Day": "toDate(Minute) AS Day",
               "Hour": "toStartOfHour(Minute) AS Hour", "ServiceName": "ServiceName"}
    keys = [columns[k] for k in by]
    group = f"GROUP BY {', '.join(by)}" if by else ""
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


def tenants(client, viewer: Viewer, start: datetime, end: datetime) -> list[str]:
    params: dict = {}
    table, where = rollup_where(viewer, start, end, params)
    return frame(client, f"SELECT DISTINCT Tenant FROM {table} WHERE {where} ORDER BY Tenant", params)[
        "Tenant"].to_list()


def agents(client, viewer: Viewer, start: datetime, end: datetime, tenant: str = "") -> list[str]:
    params: dict = {"tenant": tenant}
    table, where = rollup_where(viewer, start, end, params)
    if tenant:
        where += " AND Tenant = {tenant:String}"
    return frame(client, f"SELECT DISTINCT AgentId FROM {table} WHERE {where} AND AgentId != '' ORDER BY AgentId",
                 params)["AgentId"].to_list()


def find_traces(client, viewer: Viewer, start: datetime, end: datetime, *, tenant: str = "", agent: str = "",
                services: Sequence[str] | None = None, limit: int = 200) -> pl.DataFrame:
    """Traces active in the range (newest first), of a tenant, an agent or these services if given."""
    params = {**time_range(start, end), "tenant": tenant, "agent": agent}
    where = f"Hour >= toStartOfHour(toDateTime({START})) AND Hour <= toDateTime({END})"
    where += tenant_scope(viewer, params)
    if tenant:
        where += " AND Tenant = {tenant:String}"
    having = f"Start <= {END} AND End >= {START}"
    if agent:
        having += " AND (has(Agents, {agent:String}) OR RootAgentName = {agent:String})"
    if services:
        params["services"] = list(services)
        having += " AND hasAny(groupUniqArray(ServiceName), {services:Array(String)})"
    return frame(client, f"""
        SELECT TraceId, min(Start) AS Start, max(End) AS End, any(Tenant) AS TraceTenant,
               max(RootAgentId) AS RootAgentId, max(RootAgentName) AS RootAgentName,
               groupUniqArrayArray(Agents) AS Agents, sum(Spans) AS Spans, sum(ModelCalls) AS ModelCalls,
               sum(Errors) AS Errors, sum(CostUSD) AS CostUSD, sum(PayloadBytes) AS PayloadBytes
        FROM trace_summaries WHERE {where}
        GROUP BY TraceId HAVING {having}
        ORDER BY Start DESC LIMIT {int(limit)}""", params).rename({"TraceTenant": "Tenant"})


def gpu_metrics(client, viewer: Viewer, start: datetime, end: datetime, buckets: int = 240) -> pl.DataFrame:
    """hw.gpu.* and process.gpu.memory.usage, averaged per time bucket, per device (and process).

    A data point belongs to the tenant in its resource; points without one (a shared host) are admins' only."""
    seconds = max(10, int((end - start).total_seconds() / buckets))
    params = {**time_range(start, end), "names": list(GPU_METRICS), "step": seconds}
    scope = tenant_scope(viewer, params, METRIC_TENANT_SQL)
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
            WHERE MetricName IN {{names:Array(String)}} AND TimeUnix BETWEEN {START} AND {END}{scope}
            GROUP BY Time, MetricName, ServiceName, Device, DeviceName, Pid, Host""")
    return frame(client, " UNION ALL ".join(parts) + " ORDER BY Time", params)


def activity(client, viewer: Viewer, start: datetime, end: datetime,
             services: Sequence[str] | None = None) -> pl.DataFrame:
    """Model calls and spans per minute (per service), to set beside GPU use."""
    params: dict = {}
    table, where = rollup_where(viewer, start, end, params)
    where += among("ServiceName", services, "services", params)
    return frame(client, f"""
        SELECT Minute, ServiceName, sum(Spans) AS Spans, sum(ModelCalls) AS ModelCalls,
               sum(InputTokens + OutputTokens) AS Tokens
        FROM {table} WHERE {where} GROUP BY Minute, ServiceName ORDER BY Minute""", params)

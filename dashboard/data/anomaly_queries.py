"""Anomalies a viewer may see: the inbox, one anomaly by id, the filters' choices, what was sent about one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.core import END, START, among, frame, tenant_scope, time_range
from agentwatch.schemas.vocabulary import ANOMALY_KINDS, severity_rank_sql

ANOMALY_COLUMNS = ("AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, "
                   "Status, FirstSeen, LastSeen, UpdatedAt")


def anomalies(client, viewer: Viewer, start: datetime | None = None, end: datetime | None = None, *,
              kinds: Sequence[str] | None = None, severities: Sequence[str] | None = None,
              tenants: Sequence[str] | None = None, statuses: Sequence[str] | None = None,
              limit: int = 500) -> pl.DataFrame:
    """Current state of anomalies (FINAL), newest first; a range keeps those whose window overlaps it."""
    params: dict = {}
    where = "1" + tenant_scope(viewer, params)
    if start is not None and end is not None:
        params.update(time_range(start, end))
        where += f" AND LastSeen >= {START} AND FirstSeen <= {END}"
    where += among("Kind", kinds, "kinds", params) + among("Severity", severities, "severities", params)
    where += among("Tenant", tenants, "tenants", params) + among("Status", statuses, "statuses", params)
    return frame(client, f"""
        SELECT {ANOMALY_COLUMNS} FROM anomalies FINAL WHERE {where}
        ORDER BY Status = 'resolved', {severity_rank_sql()} DESC, DetectedAt DESC
        LIMIT {int(limit)}""", params)


def anomaly(client, viewer: Viewer, anomaly_id: str) -> dict | None:
    """One anomaly; None when there is none of that id among the viewer's tenants."""
    params = {"id": anomaly_id}
    scope = tenant_scope(viewer, params)
    rows = frame(client, f"SELECT {ANOMALY_COLUMNS} FROM anomalies FINAL WHERE AnomalyId = {{id:String}}{scope}",
                 params).to_dicts()
    return rows[0] if rows else None


def anomaly_facets(client, viewer: Viewer) -> dict[str, list[str]]:
    """Every kind of the vocabulary (in its order, then any other stored kind) and the tenants with anomalies."""
    params: dict = {}
    scope = tenant_scope(viewer, params)
    row = frame(client, "SELECT groupUniqArray(Kind) AS kinds, groupUniqArray(Tenant) AS tenants "
                        f"FROM anomalies WHERE 1{scope}", params).row(0, named=True)
    kinds = list(ANOMALY_KINDS) + sorted(set(row["kinds"]) - set(ANOMALY_KINDS))
    return {"kinds": kinds, "tenants": sorted(row["tenants"])}


def alert_deliveries(client, viewer: Viewer, anomaly_id: str) -> pl.DataFrame:
    """What the alert dispatcher sent about an anomaly the viewer may see (alert_deliveries), newest first."""
    params = {"a": anomaly_id}
    scope = tenant_scope(viewer, params)
    return frame(client, "SELECT SentAt, Sink, Target, Event, Attempt, HttpStatus, Delivered, Error "
                         "FROM alert_deliveries WHERE AnomalyId = {a:String} AND AnomalyId IN "
                         f"(SELECT AnomalyId FROM anomalies WHERE AnomalyId = {{a:String}}{scope}) "
                         "ORDER BY SentAt DESC LIMIT 100", params)

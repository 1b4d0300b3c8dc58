"""Credential events a viewer may see: those of agents of the viewer's tenants (`Tenant`, the actor's).

Cross-tenant uses are counted by the vocabulary's rule (CROSS_TENANT_USE_SQL), as the detector counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.core import END, START, frame, tenant_scope, time_range
from agentwatch.schemas.vocabulary import CROSS_TENANT_USE_SQL


def credentials(client, viewer: Viewer, start: datetime, end: datetime, tenant: str = "") -> pl.DataFrame:
    params = {**time_range(start, end), "tenant": tenant}
    where = f"Timestamp BETWEEN {START} AND {END}" + tenant_scope(viewer, params)
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


def credential_trail(client, viewer: Viewer, credential_id: str, start: datetime, end: datetime,
                     limit: int = 5000) -> pl.DataFrame:
    params = {**time_range(start, end), "c": credential_id}
    scope = tenant_scope(viewer, params)
    return frame(client, f"""
        SELECT Timestamp, Event, Tenant, AgentId, CredentialTenant, Scope, Resource, ResourceTenant, Action,
               TraceId, SpanId, {CROSS_TENANT_USE_SQL} AS CrossTenant
        FROM credential_events
        WHERE CredentialId = {{c:String}} AND Timestamp BETWEEN {START} AND {END}{scope}
        ORDER BY Timestamp LIMIT {int(limit)}""", params).with_columns(pl.col("CrossTenant").cast(pl.Boolean))


def credential_uses_per_minute(client, viewer: Viewer, start: datetime, end: datetime,
                               credential_ids: Sequence[str]) -> pl.DataFrame:
    params = {**time_range(start, end), "ids": list(credential_ids)}
    scope = tenant_scope(viewer, params)
    return frame(client, f"""
        SELECT toStartOfMinute(Timestamp) AS Minute, CredentialId, {CROSS_TENANT_USE_SQL} AS CrossTenant,
               count() AS Uses
        FROM credential_events
        WHERE Timestamp BETWEEN {START} AND {END} AND Event = 'use' AND CredentialId IN {{ids:Array(String)}}{scope}
        GROUP BY Minute, CredentialId, CrossTenant ORDER BY Minute""", params).with_columns(
        pl.col("CrossTenant").cast(pl.Boolean))


def cross_tenant_uses(client, viewer: Viewer, start: datetime, end: datetime, limit: int = 500) -> pl.DataFrame:
    params = time_range(start, end)
    scope = tenant_scope(viewer, params)
    return frame(client, f"""
        SELECT Timestamp, CredentialId, CredentialTenant, Tenant, AgentId, Resource, ResourceTenant, Action,
               TraceId, SpanId
        FROM credential_events WHERE Timestamp BETWEEN {START} AND {END} AND {CROSS_TENANT_USE_SQL}{scope}
        ORDER BY Timestamp DESC LIMIT {int(limit)}""", params)

"""Credentials: every grant, use and revoke, who touched each credential, cross-tenant uses in red."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from agentwatch.dashboard import charts, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views.common import open_trace, table

TITLE = "Credentials"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    st.caption("The audit trail: every grant, use and revoke; who touched each credential; cross-tenant uses in red.")
    creds = data.credentials(db, viewer, start, end)
    if creds.is_empty():
        st.info("No credential events in this time range.")
        return
    cross = data.cross_tenant_uses(db, viewer, start, end)
    c = st.columns(4)
    c[0].metric("Credentials", f"{len(creds):,}")
    c[1].metric("Uses", f"{int(creds['Uses'].sum()):,}")
    c[2].metric("Cross-tenant uses", f"{len(cross):,}", delta="investigate" if len(cross) else None,
                delta_color="inverse")
    c[3].metric("Agents", f"{int(creds['Agents'].sum()):,}")
    if len(cross):
        st.error(f"{len(cross)} cross-tenant credential uses: an agent used another tenant's credential or "
                 f"touched another tenant's resource.", icon=":material/key:")
        table(cross, height=min(300, 40 + 35 * len(cross)))
    top = creds.head(15)["CredentialId"].to_list()
    per_minute = data.credential_uses_per_minute(db, viewer, start, end, top)
    if len(per_minute):
        st.altair_chart(charts.credential_uses(per_minute, (start, end)), width="stretch",
                        height=100 + 24 * per_minute["CredentialId"].n_unique())
    view = creds.with_columns(pl.col("Tenants").list.join(", "))
    st.dataframe(view.to_pandas().style.apply(
        lambda row: ["background-color: #fde0e0" if row["CrossTenantUses"] > 0 else "" for _ in row], axis=1),
        hide_index=True, width="stretch", height=min(420, 40 + 35 * len(view)))
    ids = creds["CredentialId"].to_list()
    labels = {r["CredentialId"]: f"{'[CROSS-TENANT] ' if r['CrossTenantUses'] else ''}{r['CredentialId']} (owner {r['Owner']}, "
                                 f"{r['Uses']} uses, {r['Agents']} agents)" for r in creds.iter_rows(named=True)}
    picked = st.selectbox("Audit trail of", ids, format_func=labels.get, key="credential")
    trail = data.credential_trail(db, viewer, picked, start, end)
    if trail.is_empty():
        return
    st.altair_chart(charts.credential_trail(trail, (start, end)), width="stretch",
                    height=110 + 32 * trail["Tenant"].n_unique())
    who = trail.group_by("Tenant", "AgentId").agg(pl.len().alias("Events"), pl.col("CrossTenant").sum().alias("CrossTenant"),
                                                  pl.col("Timestamp").min().alias("First"),
                                                  pl.col("Timestamp").max().alias("Last")).sort("First")
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Tenants and agents that touched it**")
        table(who)
    with right:
        st.markdown("**Events**")
        st.dataframe(trail.to_pandas().style.apply(
            lambda row: ["background-color: #fde0e0; color: #8b0000" if row["CrossTenant"] else "" for _ in row],
            axis=1), hide_index=True, width="stretch", height=min(420, 40 + 35 * len(trail)))
    traces = [t for t in trail["TraceId"].unique(maintain_order=True).to_list() if t]
    if traces:
        crossing = set(trail.filter(pl.col("CrossTenant"))["TraceId"].to_list())
        traces.sort(key=lambda t: t not in crossing)
        c = st.columns([3, 1])
        c[0].selectbox("Trace", traces, key="credential_trace",
                              format_func=lambda t: f"{'[cross-tenant] ' if t in crossing else ''}{t}")
        c[1].button("Open trace", key="credential_open_trace", width="stretch",
                    on_click=lambda: open_trace(st.session_state["credential_trace"]))

"""Overview: live spans per second, cost per tenant, the agents that cost most, open anomalies."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from agentwatch.dashboard import charts, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views.common import goto, money, table

TITLE = "Overview"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    live = st.toggle("Live (refresh every 10 s)", key="live", value=False)
    if live:
        st.fragment(run_every=10)(_body)(db, viewer, start, end, refreshing=True)
    else:
        _body(db, viewer, start, end)


def _body(db, viewer: Viewer, start: datetime, end: datetime, refreshing: bool = False) -> None:
    if refreshing:  # a fragment re-run: the range moves with the clock
        width = end - start
        end = datetime.now(UTC).replace(microsecond=0)
        start = end - width
    o = data.overview(db, viewer, start, end)
    per = "minute" if o.bucket_seconds == 60 else "hour"
    cols = st.columns(5)
    cols[0].metric("Spans/s (last minute)", f"{o.live_spans_per_s:,.1f}")
    cols[1].metric("Spans in range", f"{o.spans:,}")
    cols[2].metric("Model calls", f"{o.model_calls:,}")
    cols[3].metric("Cost in range", money(o.cost_usd))
    critical = int((o.open_anomalies["Severity"] == "critical").sum()) if len(o.open_anomalies) else 0
    cols[4].metric("Open anomalies", f"{len(o.open_anomalies):,}", delta=f"{critical} critical" if critical else None,
                   delta_color="inverse")
    domain = (start, end)
    if o.spans:
        left, right = st.columns(2)
        left.altair_chart(charts.spans_per_second(o.spans_per_minute, domain), width="stretch")
        right.altair_chart(charts.cost_by_tenant(o.cost_per_minute, per, domain), width="stretch")
    else:
        st.info("No spans in this time range. Pick a longer range in the sidebar, or send some: `agentwatch demo`.")
    left, right = st.columns(2)
    with left:
        st.subheader("Agents that cost most")
        if len(o.top_agents):
            st.altair_chart(charts.top_agents(o.top_agents), width="stretch", height=90 + 26 * len(o.top_agents))
            table(o.top_agents, column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")})
        else:
            st.caption("No agent activity in range.")
    with right:
        st.subheader("Open anomalies")
        if len(o.open_anomalies):
            table(o.open_anomalies.select("Severity", "Status", "Kind", "Tenant", "AgentId", "Summary", "DetectedAt"))
            ids = o.open_anomalies["AnomalyId"].to_list()
            labels = dict(zip(ids, (f"[{s}] {k} · {t} · {summ[:80]}" for s, k, t, summ in zip(
                o.open_anomalies["Severity"], o.open_anomalies["Kind"], o.open_anomalies["Tenant"],
                o.open_anomalies["Summary"]))))
            st.selectbox("Anomaly", ids, format_func=labels.get, key="overview_anomaly")
            st.button("Open in the inbox", key="overview_open",
                      on_click=lambda: goto("Anomalies", anomaly_id=st.session_state["overview_anomaly"]))
        else:
            st.success("No open anomalies.")

"""Costs: who pays for thinking, by tenant, agent, model and day; tokens by kind."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import streamlit as st

from agentwatch.dashboard import charts, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views.common import money, table

TITLE = "Costs"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    st.caption("Who pays for thinking: model cost by tenant, agent, model and day; tokens by kind. "
               "Calls of models without a known price count as unpriced, never as $0.")
    tenant_filter = st.multiselect("Tenants", data.tenants(db, viewer, start, end), key="cost_tenants")
    totals = data.costs(db, viewer, start, end, by=(), tenants_filter=tenant_filter)
    t = totals.row(0, named=True) if len(totals) else {}
    tokens = sum(t.get(k) or 0 for k in data.TOKEN_KINDS)
    c = st.columns(5)
    c[0].metric("Cost", money(t.get("CostUSD") or 0.0))
    c[1].metric("Model calls", f"{t.get('ModelCalls') or 0:,}")
    c[2].metric("Unpriced calls", f"{t.get('UnpricedCalls') or 0:,}")
    c[3].metric("Tokens", f"{tokens:,}")
    c[4].metric("Reasoning share", f"{(t.get('ReasoningTokens') or 0) / tokens:.1%}" if tokens else "—")
    if not tokens and not (t.get("CostUSD") or 0):
        st.info("No model calls in this time range.")
        return
    time_key = "Day" if end - start > timedelta(days=2) else "Hour"
    over_time = data.costs(db, viewer, start, end, by=(time_key, "Tenant"), tenants_filter=tenant_filter)
    left, right = st.columns(2)
    left.altair_chart(charts.cost_stacked(over_time, time_key, "Tenant", f"Cost per {time_key.lower()} by tenant",
                                          fmt="%b %d" if time_key == "Day" else "%H:%M"), width="stretch")
    by_model = data.costs(db, viewer, start, end, by=("Model",), tenants_filter=tenant_filter).filter(pl.col("Model") != "")
    right.altair_chart(charts.cost_stacked(by_model.with_columns(pl.lit("model").alias("All")), "Model", "Model",
                                           "Cost by model"), width="stretch")
    token_by = st.segmented_control("Tokens by kind, per", ["Tenant", "Model", "AgentId"], default="Tenant",
                                    key="cost_token_by", required=True)
    per = data.costs(db, viewer, start, end, by=(token_by,), tenants_filter=tenant_filter).filter(pl.col(token_by) != "")
    if token_by == "AgentId":
        per = per.head(25)
    long = per.unpivot(index=[token_by], on=list(data.TOKEN_KINDS), variable_name="Column", value_name="Tokens") \
        .with_columns(pl.col("Column").replace_strict(data.TOKEN_KINDS).alias("Kind"))
    st.altair_chart(charts.tokens_by_kind(long, token_by), width="stretch",
                    height=100 + 28 * long[token_by].n_unique())
    group = st.multiselect("Table grouped by", ["Tenant", "AgentId", "Model", "Day"], default=["Tenant", "Model"],
                           key="cost_group")
    grouped = data.costs(db, viewer, start, end, by=tuple(group), tenants_filter=tenant_filter)
    table(grouped, column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")})
    st.download_button("Download this table (CSV)", icon=":material/download:", data=grouped.write_csv(), file_name="agentwatch-costs.csv",
                       mime="text/csv", key="cost_csv", on_click="ignore")

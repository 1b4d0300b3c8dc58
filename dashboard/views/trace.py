"""Trace replay: find a trace (by id, from an anomaly, by tenant, agent and time), its header, its views.

Opening a trace is recorded in the audit log once per trace per browser session.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from agentwatch.dashboard import data, trace_model
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.trace_model import human_bytes
from agentwatch.dashboard.views import replay_steps, trace_views
from agentwatch.dashboard.text import code, literal
from agentwatch.dashboard.views.common import client, load_trace, money, open_trace, table
from agentwatch.schemas.vocabulary import AUDIT_TRACE_OPENED

TITLE = "Trace replay"
VIEWS = ("Replay", "Agent tree", "Timeline", "Spans", "Search")


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    trace_id = st.session_state.get("trace_id")
    if st.session_state.get("show_finder") is None:
        st.session_state["show_finder"] = not trace_id
    if st.toggle("Find a trace", key="show_finder"):
        with st.container(border=True):
            finder(db, viewer, start, end)
    if not trace_id:
        st.info("Find a trace above: by its id, from an anomaly, or by tenant, agent and time.")
        return
    with st.spinner("Loading the trace (its payloads stay in the store until you open one)…"):
        trace = load_trace(viewer, trace_id)
    if trace is None:
        st.error(f"No spans stored for trace {code(trace_id)}.")
        return
    if st.session_state.get("audited_trace") != trace_id:
        data.note(db, viewer, AUDIT_TRACE_OPENED, tenant=trace.summary()["tenant"], target=trace_id)
        st.session_state["audited_trace"] = trace_id
    if st.session_state.get("step_of") != trace_id:
        st.session_state["step"] = 1
        st.session_state["step_of"] = trace_id
    goto_anomaly = st.session_state.pop("goto_anomaly", None)
    if goto_anomaly:
        hit = trace.steps.filter((pl.col("Kind") == "anomaly") & (pl.col("Ref") == goto_anomaly))
        if len(hit):
            st.session_state["step"] = int(hit["Step"][0])
    header(viewer, trace)
    if st.session_state.get("trace_view") is None:
        st.session_state["trace_view"] = "Replay"
    view = st.segmented_control("View", list(VIEWS), key="trace_view", required=True)
    if view == "Replay":
        replay_steps.render(db, viewer, trace)
    elif view == "Agent tree":
        trace_views.agent_tree(viewer, trace)
    elif view == "Timeline":
        trace_views.timeline(trace)
    elif view == "Spans":
        trace_views.spans(viewer, trace)
    else:
        trace_views.search(db, viewer, trace)


def finder(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    c = st.columns([3, 1])
    typed = c[0].text_input("Trace id", key="find_trace_id", placeholder="32 hex digits")
    c[1].button("Open", key="find_open_id", on_click=lambda: open_trace(st.session_state.get("find_trace_id", "")),
                disabled=not typed.strip(), width="stretch")
    with_traces = data.anomalies(db, viewer, kinds=None, limit=200).filter(pl.col("TraceId") != "")
    if len(with_traces):
        c = st.columns([3, 1])
        ids = with_traces["AnomalyId"].to_list()
        labels = {r["AnomalyId"]: f"[{r['Severity']}] {r['Kind']} · {r['Tenant']} · "
                                  f"{r['Status']} · {r['Summary'][:80]}" for r in with_traces.iter_rows(named=True)}
        traces = dict(zip(with_traces["AnomalyId"], with_traces["TraceId"]))
        c[0].selectbox("From an anomaly", ids, format_func=labels.get, key="find_anomaly")
        c[1].button("Open", key="find_open_anomaly", width="stretch", on_click=lambda: open_trace(
            traces.get(st.session_state["find_anomaly"], ""), anomaly=st.session_state["find_anomaly"]))
    c = st.columns(2)
    tenant = c[0].selectbox("Tenant", ["(all)", *data.tenants(db, viewer, start, end)], key="find_tenant")
    tenant = "" if tenant == "(all)" else tenant
    agent = c[1].selectbox("Agent", ["(all)", *data.agents(db, viewer, start, end, tenant)], key="find_agent")
    agent = "" if agent == "(all)" else agent
    found = data.find_traces(db, viewer, start, end, tenant=tenant, agent=agent)
    st.caption(f"{len(found)} traces in the time range (newest first, at most 200)")
    if len(found):
        table(found.select("Start", "Tenant", "RootAgentId", "Spans", "ModelCalls", "Errors", "CostUSD",
                           "PayloadBytes", "TraceId"),
              column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")}, height=260)
        c = st.columns([3, 1])
        labels = {r["TraceId"]: f"{r['Start']:%H:%M:%S} · {r['Tenant']} · {r['RootAgentId'] or '?'} · "
                                f"{r['Spans']:,} spans · ${r['CostUSD']:.4f}" for r in found.iter_rows(named=True)}
        c[0].selectbox("Trace", list(labels), format_func=labels.get, key="find_listed")
        c[1].button("Open", key="find_open_listed", width="stretch",
                    on_click=lambda: open_trace(st.session_state["find_listed"]))


def _download_trace(viewer: Viewer, trace_id: str):
    def make() -> bytes:
        return b"".join(data.export_trace(client(), viewer, trace_id))
    return make


def header(viewer: Viewer, trace: trace_model.Trace) -> None:
    s = trace.summary()
    st.markdown(f"#### {code(s['trace_id'])} · {literal(s['tenant'])} · {literal(s['root'])}")
    cols = st.columns(7)
    cols[0].metric("Spans", f"{s['spans']:,}")
    cols[1].metric("Agents", f"{s['agents']:,}")
    cols[2].metric("Model calls", f"{s['model_calls']:,}")
    cols[3].metric("Cost", money(s["cost_usd"]))
    cols[4].metric("Reasoning tokens", f"{s['reasoning_tokens']:,}")
    cols[5].metric("Payloads", human_bytes(s["payload_bytes"]))
    cols[6].metric("Duration", f"{s['duration_s']:,.1f} s")
    st.caption(f"{s['start']:%Y-%m-%d %H:%M:%S.%f} → {s['end']:%H:%M:%S.%f} UTC · "
               f"tenant {literal(s['tenant'])} · root agent {literal(s['root_agent'] or '—')} · "
               f"{s['tool_calls']:,} tool calls · {s['errors']} errors · "
               f"{s['credential_uses']} credential uses")
    if s["cross_tenant_uses"]:
        st.error(f"{s['cross_tenant_uses']} cross-tenant credential uses in this trace "
                 f"(jump to them with *Jump to: cross-tenant use*).", icon=":material/key:")
    for a in trace.anomalies.iter_rows(named=True):
        st.error(f"**{literal(a['Kind'])}** ({literal(a['Severity'])}, {literal(a['Status'])}): "
                 f"{literal(a['Summary'])}", icon=":material/crisis_alert:")
    c = st.columns([3, 1])
    c[1].button("Reload the trace", key="reload_trace", icon=":material/refresh:", width="stretch",
                help="read the trace again (spans still arriving)",
                on_click=lambda: st.session_state.update(trace_version=st.session_state.get("trace_version", 0) + 1))
    c[0].download_button("Download the whole trace (JSON Lines, every payload whole)",
                         data=_download_trace(viewer, trace.trace_id), file_name=f"trace-{trace.trace_id}.jsonl",
                         mime="application/x-ndjson", key="download_trace", on_click="ignore",
                         icon=":material/download:")

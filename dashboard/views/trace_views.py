"""The other views of an open trace: its agent tree, a timeline, every span, and a search of every payload."""

from __future__ import annotations

import polars as pl
import streamlit as st

from agentwatch.dashboard import charts, data, trace_model
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.text import literal
from agentwatch.dashboard.views.common import load_trace, table


def agent_tree(viewer: Viewer, trace: trace_model.Trace) -> None:
    st.caption("Each agent invocation under the one that forked it, with what it did itself.")
    tree = trace.agents
    if tree.is_empty():
        st.info("No agent spans in this trace.")
        return
    table(tree.select("Agent", "AgentId", "DurationS", "Spans", "ModelCalls", "ToolCalls", "Tokens", "ReasoningTokens",
                       "CostUSD", "CredentialEvents", "CrossTenantUses", "Status"),
           column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f"),
                          "DurationS": st.column_config.NumberColumn("Seconds", format="%.2f")},
           height=min(600, 40 + 35 * len(tree)))
    ids = tree["SpanId"].to_list()
    labels = dict(zip(ids, (f"{a.strip()} ({i})" for a, i in zip(tree["Agent"], tree["AgentId"]))))
    c = st.columns([3, 1])
    c[0].selectbox("Replay from this agent's start", ids, format_func=labels.get, key="tree_agent")
    c[1].button("Go", key="tree_go", width="stretch",
                on_click=lambda: _go_span(viewer, trace.trace_id, st.session_state["tree_agent"]))


def _go_span(viewer: Viewer, trace_id: str, span_id: str, end: bool = False, open_payload: str | None = None) -> None:
    trace = load_trace(viewer, trace_id)
    if trace is None:
        return
    step = trace.step_of_span(span_id, end=end) or trace.step_of_span(span_id, end=not end)
    if step:
        st.session_state["step"] = step
    if open_payload:
        st.session_state[f"open|{span_id}|{open_payload}"] = True
    st.session_state["trace_view"] = "Replay"


def timeline(trace: trace_model.Trace) -> None:
    bars, binned = trace.timeline()
    step = trace.step(st.session_state.get("step", 1))
    marks = trace.anomalies["FirstSeenNs"].to_list() if len(trace.anomalies) else []
    st.altair_chart(charts.timeline(bars, binned, trace.start_ns, step["TimeNs"], marks), width="stretch",
                    height=min(1200, 110 + 26 * bars["Row"].n_unique()))
    st.caption("Dashed line: the replay's current step. Red lines: anomalies.")


def spans(viewer: Viewer, trace: trace_model.Trace) -> None:
    s = trace.spans.with_columns(((pl.col("StartNs") - trace.start_ns) / 1e9).alias("Offset"),
                                 (pl.col("Duration") / 1e9).alias("Seconds"))
    table(s.select("Offset", "Seconds", "AgentId", "Operation", "SpanName", "Model", "InputTokens", "OutputTokens",
                    "ReasoningTokens", "CostUSD", "PayloadBytes", "StatusCode", "SpanId", "ParentSpanId"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f"),
                          "Seconds": st.column_config.NumberColumn(format="%.3f"),
                          "CostUSD": st.column_config.NumberColumn("Cost", format="$%.5f")}, height=420)
    c = st.columns([3, 1])
    span_id = c[0].text_input("Span id", key="spans_pick", placeholder="16 hex digits")
    c[1].button("Replay from it", key="spans_go", disabled=not span_id.strip(), width="stretch",
                on_click=lambda: _go_span(viewer, trace.trace_id, st.session_state["spans_pick"].strip()))


def search(db, viewer: Viewer, trace: trace_model.Trace) -> None:
    c = st.columns([3, 1])
    text = c[0].text_input("Search this trace (every payload, case-insensitive)", key="trace_search")
    c[1].button("Search", key="trace_search_go", width="stretch")
    if not text.strip():
        return
    with st.spinner("Searching every payload of the trace…"):
        hits = data.search_trace(db, viewer, trace.trace_id, text.strip())
    if hits.is_empty():
        st.info(f"“{literal(text)}” does not occur in this trace.")
        return
    found = int(hits["Matches"].sum())
    shown = literal(text)
    st.caption(f"The first {len(hits)} payloads (in time order) that contain “{shown}”, {found:,} occurrences in them"
               if len(hits) >= 200 else f"{len(hits)} payloads contain “{shown}” ({found:,} occurrences)")
    table(hits.with_columns(((pl.col("StartNs") - trace.start_ns) / 1e9).alias("Offset"))
           .select("Offset", "SpanName", "Key", "Matches", "Bytes", "Position", "Snippet", "SpanId"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f")})
    options = list(range(len(hits)))
    labels = {i: f"{hits['SpanName'][i]} · {hits['Key'][i]} · {hits['Matches'][i]} matches" for i in options}
    c = st.columns([3, 1])
    c[0].selectbox("Open a hit in the replay", options, format_func=labels.get, key="search_pick")

    def go() -> None:
        i = st.session_state["search_pick"]
        key = hits["Key"][i]
        _go_span(viewer, trace.trace_id, hits["SpanId"][i], end=key in trace_model.END_KEYS, open_payload=key)

    c[1].button("Go", key="search_go", on_click=go, width="stretch")

"""The pages of the dashboard. `main()` is the whole app; dashboard/app.py only calls it.

Navigation is a sidebar radio (session key `page`), so a page and everything
on it can be driven from a URL (`?anomaly=ID&trace=TRACE_ID`, `?trace=...`,
`?page=costs`), from a button elsewhere in the app, and from tests.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import polars as pl
import streamlit as st

from agentwatch.dashboard import charts, data, trace_model
from agentwatch.dashboard.trace_model import STEP_KINDS, human_bytes
from agentwatch.schemas.vocabulary import ANOMALY_STATUSES, SEVERITIES, UNRESOLVED_STATUSES, describe_kind

log = logging.getLogger(__name__)

PAGES = ("Overview", "Anomalies", "Trace replay", "Costs", "Credentials", "GPUs")
SLUGS = {"Overview": "overview", "Anomalies": "anomalies", "Trace replay": "trace", "Costs": "costs",
         "Credentials": "credentials", "GPUs": "gpus"}
PRESETS = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "Custom": None,
}
SEVERITY_BADGE = {"critical": ":red-badge[critical]", "warning": ":orange-badge[warning]", "info": ":blue-badge[info]"}
STATUS_BADGE = {"open": ":red-badge[open]", "acknowledged": ":orange-badge[acknowledged]",
                "resolved": ":green-badge[resolved]"}
STEP_ICONS = {"agent_start": ":material/smart_toy:", "agent_end": ":material/flag:", "prompt": ":material/chat:",
              "answer": ":material/psychology:", "tool_call": ":material/build:", "tool_result": ":material/inventory_2:",
              "credential": ":material/key:", "anomaly": ":material/crisis_alert:", "span_start": ":material/play_arrow:",
              "span_end": ":material/stop:"}
TEXTAREA_OVER = 20_000  # longer texts go into a scrollable text area rather than a code block
JUMPS = {
    "anomaly": ("anomaly", False), "credential event": ("credential", False),
    "cross-tenant use": ("credential", True), "error": (None, True), "model answer": ("answer", False),
    "prompt": ("prompt", False), "tool call": ("tool_call", False), "agent start": ("agent_start", False),
}


# --- store --------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _client(dsn: str, database: str):
    from agentwatch.schemas import migrate, store

    client = store.connect(dsn, database)
    try:
        migrate.apply(client)  # the rollups of 0004 must exist; idempotent and quick when up to date
    except Exception as error:  # a read-only user on a served ClickHouse: run `agentwatch schema apply` there
        log.warning("could not apply migrations: %s", error)
    return client


def store_location() -> tuple[str, str]:
    from agentwatch.schemas import store

    dsn = store.default_dsn()
    return dsn, store.database_name(dsn)


def client():
    return _client(*store_location())


def _key() -> str:
    return "|".join(store_location())


@st.cache_resource(show_spinner=False, ttl=300, max_entries=6)
def _trace(store_key: str, trace_id: str, version: int):
    return trace_model.load(client(), trace_id)


@st.cache_data(show_spinner=False, ttl=600, max_entries=12)
def _payload(store_key: str, span: dict, name: str) -> str | None:
    return data.span_payload(client(), span, name)


@st.cache_data(show_spinner=False, ttl=600, max_entries=64)
def _small_attributes(store_key: str, span: dict) -> dict:
    return data.span_attributes(client(), span)


# --- app ----------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="agentwatch", page_icon=":material/radar:", layout="wide")
    _apply_query_params()
    with st.sidebar:
        st.title(":material/radar: agentwatch")
        page = st.radio("Page", PAGES, key="page")
        start, end = time_range()
        dsn, database = store_location()
        st.caption(f"store `{dsn}` · database `{database}`")
    db = client()
    {"Overview": page_overview, "Anomalies": page_anomalies, "Trace replay": page_trace, "Costs": page_costs,
     "Credentials": page_credentials, "GPUs": page_gpus}[page](db, start, end)
    _sync_query_params(page)


def _apply_query_params() -> None:
    """`?anomaly=ID&trace=TRACE_ID` (alert links), `?trace=`, `?page=`: applied once per browser session."""
    if st.session_state.get("_query_applied"):
        return
    st.session_state["_query_applied"] = True
    params = st.query_params
    anomaly_id, trace_id, page = params.get("anomaly"), params.get("trace"), params.get("page")
    if trace_id:
        open_trace(trace_id.strip().lower(), switch=False)
    if anomaly_id:
        st.session_state["anomaly_id"] = st.session_state["anomaly_pinned"] = anomaly_id.strip()
        st.session_state["page"] = "Anomalies"
        if trace_id:
            st.session_state["goto_anomaly"] = anomaly_id.strip()
    elif trace_id:
        st.session_state["page"] = "Trace replay"
    elif page:
        by_slug = {v: k for k, v in SLUGS.items()}
        if page in by_slug:
            st.session_state["page"] = by_slug[page]


def _sync_query_params(page: str) -> None:
    wanted = {"page": SLUGS[page]}
    if page == "Anomalies" and st.session_state.get("anomaly_id"):
        wanted["anomaly"] = st.session_state["anomaly_id"]
    if page in ("Anomalies", "Trace replay") and st.session_state.get("trace_id"):
        wanted["trace"] = st.session_state["trace_id"]
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def time_range() -> tuple[datetime, datetime]:
    preset = st.selectbox("Time range", list(PRESETS), index=1, key="range")
    now = datetime.now(UTC).replace(microsecond=0)
    if PRESETS[preset] is not None:
        start, end = now - PRESETS[preset], now
    else:
        default_from = (now - timedelta(hours=1)).replace(tzinfo=None)
        start = st.datetime_input("From (UTC)", value=default_from, key="range_from", step=60)
        end = st.datetime_input("To (UTC)", value=now.replace(tzinfo=None), key="range_to", step=60)
        start = (start or default_from).replace(tzinfo=UTC)
        end = (end or now).replace(tzinfo=UTC)
        if end <= start:
            st.warning("The range ends before it starts; showing the hour before its end.")
            start = end - timedelta(hours=1)
    st.caption(f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC")
    return start, end


def goto(page: str, **state) -> None:
    """Button callback: switch page (and set state) before the next run draws the widgets."""
    st.session_state.update(state)
    if "anomaly_id" in state:
        st.session_state["anomaly_pinned"] = state["anomaly_id"]
    st.session_state["page"] = page


def open_trace(trace_id: str, switch: bool = True, step: int = 1, anomaly: str | None = None) -> None:
    st.session_state["trace_id"] = trace_id.strip().lower()
    st.session_state["step"] = step
    st.session_state["step_of"] = trace_id.strip().lower()
    st.session_state["trace_view"] = "Replay"
    st.session_state["show_finder"] = False
    if anomaly:
        st.session_state["goto_anomaly"] = anomaly
    if switch:
        st.session_state["page"] = "Trace replay"


def _table(df: pl.DataFrame, **kwargs) -> None:
    st.dataframe(df, hide_index=True, width="stretch", **kwargs)


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}" if abs(value) >= 1 else f"${value:,.4f}"


# --- overview -------------------------------------------------------------------------------

def page_overview(db, start: datetime, end: datetime) -> None:
    st.header("Overview")
    live = st.toggle("Live (refresh every 10 s)", key="live", value=False)
    if live:
        st.fragment(run_every=10)(_overview_body)(db, start, end, refreshing=True)
    else:
        _overview_body(db, start, end)


def _overview_body(db, start: datetime, end: datetime, refreshing: bool = False) -> None:
    if refreshing:  # a fragment re-run: the range moves with the clock
        width = end - start
        end = datetime.now(UTC).replace(microsecond=0)
        start = end - width
    o = data.overview(db, start, end)
    per = "minute" if o.bucket_seconds == 60 else "hour"
    cols = st.columns(5)
    cols[0].metric("Spans/s (last minute)", f"{o.live_spans_per_s:,.1f}")
    cols[1].metric("Spans in range", f"{o.spans:,}")
    cols[2].metric("Model calls", f"{o.model_calls:,}")
    cols[3].metric("Cost in range", _money(o.cost_usd))
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
            _table(o.top_agents, column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")})
        else:
            st.caption("No agent activity in range.")
    with right:
        st.subheader("Open anomalies")
        if len(o.open_anomalies):
            _table(o.open_anomalies.select("Severity", "Status", "Kind", "Tenant", "AgentId", "Summary", "DetectedAt"))
            ids = o.open_anomalies["AnomalyId"].to_list()
            labels = dict(zip(ids, (f"[{s}] {k} · {t} · {summ[:80]}" for s, k, t, summ in zip(
                o.open_anomalies["Severity"], o.open_anomalies["Kind"], o.open_anomalies["Tenant"],
                o.open_anomalies["Summary"]))))
            st.selectbox("Anomaly", ids, format_func=labels.get, key="overview_anomaly")
            st.button("Open in the inbox", key="overview_open",
                      on_click=lambda: goto("Anomalies", anomaly_id=st.session_state["overview_anomaly"]))
        else:
            st.success("No open anomalies.")


# --- anomalies ------------------------------------------------------------------------------

def page_anomalies(db, start: datetime, end: datetime) -> None:
    st.header("Anomalies")
    note = st.session_state.pop("anomaly_note", None)
    if note:
        st.success(note)
    facets = data.anomaly_facets(db)
    c = st.columns(4)
    unpin = {"on_change": lambda: st.session_state.pop("anomaly_pinned", None)}
    kinds = c[0].multiselect("Kind", facets["kinds"], key="f_kind", **unpin,
                             help="\n".join(f"- `{k}`: {describe_kind(k) or 'not described'}" for k in facets["kinds"]))
    severities = c[1].multiselect("Severity", list(reversed(SEVERITIES)), key="f_severity", **unpin)
    tenants = c[2].multiselect("Tenant", facets["tenants"], key="f_tenant", **unpin)
    statuses = c[3].multiselect("Status", list(ANOMALY_STATUSES), default=list(UNRESOLVED_STATUSES), key="f_status",
                                **unpin)
    any_time = st.toggle("Any time (ignore the time range)", key="f_any_time", value=False, **unpin)
    inbox = data.anomalies(db, None if any_time else start, None if any_time else end, kinds=kinds,
                           severities=severities, tenants=tenants, statuses=statuses)
    st.caption(f"{len(inbox)} anomalies match" + ("" if any_time else " (window overlapping the time range)"))
    if len(inbox):
        _table(inbox.select("Severity", "Status", "Kind", "Tenant", "AgentId", "Summary", "Score", "FirstSeen",
                           "LastSeen", "DetectedAt", "TraceId", "AnomalyId"),
               column_config={"Score": st.column_config.NumberColumn(format="%.2f")})
    ids = inbox["AnomalyId"].to_list()
    labels = {r["AnomalyId"]: f"[{r['Severity']}] {r['Kind']} · {r['Tenant']} · "
                              f"{r['AgentId'] or r['TraceId']} · {r['Status']} · {r['Summary'][:90]}"
              for r in inbox.iter_rows(named=True)}
    chosen = st.session_state.get("anomaly_id")
    if chosen and chosen not in ids and chosen == st.session_state.get("anomaly_pinned"):
        # opened from a link or another page: shown even when the filters would hide it
        ids = [chosen, *ids]
        labels[chosen] = f"{chosen} (outside the filters)"
    if not ids:
        st.info("No anomalies match these filters.")
        return
    if st.session_state.get("anomaly_id") not in ids:
        st.session_state["anomaly_id"] = ids[0]
    selected = st.selectbox("Open anomaly", ids, format_func=lambda i: labels.get(i, i), key="anomaly_id")
    st.divider()
    anomaly_detail(db, selected)


def _set_status(anomaly_id: str, status: str) -> None:
    data.set_anomaly_status(client(), anomaly_id, status)
    st.session_state["anomaly_note"] = f"Anomaly {anomaly_id} marked {status}."


def anomaly_detail(db, anomaly_id: str) -> None:
    a = data.anomaly(db, anomaly_id)
    if a is None:
        st.error(f"No anomaly with id {anomaly_id!r}.")
        return
    st.subheader(f":material/crisis_alert: {a['Kind']} · {a['Tenant']} · {a['AgentId'] or a['TraceId']}")
    st.markdown(f"{SEVERITY_BADGE.get(a['Severity'], a['Severity'])} {STATUS_BADGE.get(a['Status'], a['Status'])}")
    if describe_kind(a["Kind"]):
        st.caption(f"{a['Kind']}: {describe_kind(a['Kind'])}")
    st.markdown(f"**{a['Summary']}**")
    cols = st.columns(5)
    cols[0].metric("Status", a["Status"])
    cols[1].metric("Severity", a["Severity"])
    cols[2].metric("Score", f"{a['Score']:,.2f}")
    duration = (a["LastSeen"] - a["FirstSeen"]).total_seconds()
    cols[3].metric("Lasted", f"{duration / 60:,.1f} min")
    cols[4].metric("Detected", f"{a['DetectedAt']:%H:%M:%S}")
    st.caption(f"id `{a['AnomalyId']}` · first seen {a['FirstSeen']} · last seen {a['LastSeen']} UTC · "
               f"detected {a['DetectedAt']} · trace `{a['TraceId'] or '—'}` · updated {a['UpdatedAt']}")
    b = st.columns(4)
    b[0].button("Acknowledge", icon=":material/visibility:", key="ack", disabled=a["Status"] != "open", on_click=_set_status,
                args=(a["AnomalyId"], "acknowledged"), width="stretch")
    b[1].button("Resolve", icon=":material/check_circle:", key="resolve", disabled=a["Status"] == "resolved", on_click=_set_status,
                args=(a["AnomalyId"], "resolved"), width="stretch")
    b[2].button("Open trace", icon=":material/manage_search:", key="open_anomaly_trace", disabled=not a["TraceId"], on_click=open_trace,
                args=(a["TraceId"],), kwargs={"anomaly": a["AnomalyId"]}, width="stretch")
    b[3].button("Reopen", icon=":material/undo:", key="reopen", disabled=a["Status"] == "open", on_click=_set_status,
                args=(a["AnomalyId"], "open"), width="stretch")
    left, right = st.columns([3, 2])
    with left:
        try:
            base = data.anomaly_baseline(db, a)
        except Exception as error:  # a chart must never hide the rest of the anomaly
            log.exception("baseline chart")
            st.warning(f"No baseline chart: {error}")
        else:
            if len(base.series):
                st.altair_chart(charts.baseline(base.series, base.metric, base.normal, base.window,
                                                base.normal_label, base.threshold), width="stretch")
            else:
                st.caption(f"No {base.metric} recorded around this anomaly.")
    with right:
        st.markdown("**Evidence**")
        st.json(data.evidence_of(a), expanded=2)
    sent = data.alert_deliveries(db, a["AnomalyId"])
    if len(sent):
        with st.expander(f"Alerts sent about it ({len(sent)})"):
            _table(sent)


# --- trace replay ----------------------------------------------------------------------------

def page_trace(db, start: datetime, end: datetime) -> None:
    st.header("Trace replay")
    trace_id = st.session_state.get("trace_id")
    if st.session_state.get("show_finder") is None:
        st.session_state["show_finder"] = not trace_id
    if st.toggle("Find a trace", key="show_finder"):
        with st.container(border=True):
            trace_finder(db, start, end)
    if not trace_id:
        st.info("Find a trace above: by its id, from an anomaly, or by tenant, agent and time.")
        return
    version = st.session_state.get("trace_version", 0)
    with st.spinner("Loading the trace (its payloads stay in the store until you open one)…"):
        trace = _trace(_key(), trace_id, version)
    if trace is None:
        st.error(f"No spans stored for trace `{trace_id}`.")
        return
    if st.session_state.get("step_of") != trace_id:
        st.session_state["step"] = 1
        st.session_state["step_of"] = trace_id
    goto_anomaly = st.session_state.pop("goto_anomaly", None)
    if goto_anomaly:
        hit = trace.steps.filter((pl.col("Kind") == "anomaly") & (pl.col("Ref") == goto_anomaly))
        if len(hit):
            st.session_state["step"] = int(hit["Step"][0])
    trace_header(db, trace)
    if st.session_state.get("trace_view") is None:
        st.session_state["trace_view"] = "Replay"
    view = st.segmented_control("View", ["Replay", "Agent tree", "Timeline", "Spans", "Search"], key="trace_view",
                                required=True)
    if view == "Replay":
        replay_view(db, trace)
    elif view == "Agent tree":
        agent_tree_view(trace)
    elif view == "Timeline":
        timeline_view(trace)
    elif view == "Spans":
        spans_view(db, trace)
    else:
        search_view(db, trace)


def trace_finder(db, start: datetime, end: datetime) -> None:
    c = st.columns([3, 1])
    typed = c[0].text_input("Trace id", key="find_trace_id", placeholder="32 hex digits")
    c[1].button("Open", key="find_open_id", on_click=lambda: open_trace(st.session_state.get("find_trace_id", "")),
                disabled=not typed.strip(), width="stretch")
    with_traces = data.anomalies(db, kinds=None, limit=200).filter(pl.col("TraceId") != "")
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
    tenant = c[0].selectbox("Tenant", ["(all)", *data.tenants(db, start, end)], key="find_tenant")
    tenant = "" if tenant == "(all)" else tenant
    agent = c[1].selectbox("Agent", ["(all)", *data.agents(db, start, end, tenant)], key="find_agent")
    agent = "" if agent == "(all)" else agent
    found = data.find_traces(db, start, end, tenant=tenant, agent=agent)
    st.caption(f"{len(found)} traces in the time range (newest first, at most 200)")
    if len(found):
        _table(found.select("Start", "Tenant", "RootAgentId", "Spans", "ModelCalls", "Errors", "CostUSD",
                            "PayloadBytes", "TraceId"),
               column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")}, height=260)
        c = st.columns([3, 1])
        labels = {r["TraceId"]: f"{r['Start']:%H:%M:%S} · {r['Tenant']} · {r['RootAgentId'] or '?'} · "
                                f"{r['Spans']:,} spans · ${r['CostUSD']:.4f}" for r in found.iter_rows(named=True)}
        c[0].selectbox("Trace", list(labels), format_func=labels.get, key="find_listed")
        c[1].button("Open", key="find_open_listed", width="stretch",
                    on_click=lambda: open_trace(st.session_state["find_listed"]))


def _download_trace(trace_id: str):
    def make() -> bytes:
        return b"".join(data.export_trace(client(), trace_id))
    return make


def trace_header(db, trace: trace_model.Trace) -> None:
    s = trace.summary()
    st.markdown(f"#### `{s['trace_id']}` · {s['tenant']} · {s['root']}")
    cols = st.columns(7)
    cols[0].metric("Spans", f"{s['spans']:,}")
    cols[1].metric("Agents", f"{s['agents']:,}")
    cols[2].metric("Model calls", f"{s['model_calls']:,}")
    cols[3].metric("Cost", _money(s["cost_usd"]))
    cols[4].metric("Reasoning tokens", f"{s['reasoning_tokens']:,}")
    cols[5].metric("Payloads", human_bytes(s["payload_bytes"]))
    cols[6].metric("Duration", f"{s['duration_s']:,.1f} s")
    st.caption(f"{s['start']:%Y-%m-%d %H:%M:%S.%f} → {s['end']:%H:%M:%S.%f} UTC · tenant {s['tenant']} · "
               f"root agent {s['root_agent'] or '—'} · {s['tool_calls']:,} tool calls · {s['errors']} errors · "
               f"{s['credential_uses']} credential uses")
    if s["cross_tenant_uses"]:
        st.error(f"{s['cross_tenant_uses']} cross-tenant credential uses in this trace "
                 f"(jump to them with *Jump to: cross-tenant use*).", icon=":material/key:")
    for a in trace.anomalies.iter_rows(named=True):
        st.error(f"**{a['Kind']}** ({a['Severity']}, {a['Status']}): {a['Summary']}", icon=":material/crisis_alert:")
    c = st.columns([3, 1])
    c[1].button("Reload the trace", key="reload_trace", icon=":material/refresh:", width="stretch",
                help="read the trace again (spans still arriving)",
                on_click=lambda: st.session_state.update(trace_version=st.session_state.get("trace_version", 0) + 1))
    c[0].download_button("Download the whole trace (JSON Lines, every payload whole)",
                       data=_download_trace(trace.trace_id), file_name=f"trace-{trace.trace_id}.jsonl",
                       mime="application/x-ndjson", key="download_trace", on_click="ignore",
                       icon=":material/download:")


def _set_step(value: int) -> None:
    st.session_state["step"] = int(value)


def _jump(trace_id: str, direction: int) -> None:
    trace = _trace(_key(), trace_id, st.session_state.get("trace_version", 0))
    kind, flagged = JUMPS[st.session_state.get("jump_kind", "anomaly")]
    target = trace.next_step(st.session_state.get("step", 1), kind=kind, flagged=flagged, direction=direction)
    if target is None:
        st.session_state["jump_note"] = f"No {'next' if direction > 0 else 'earlier'} " \
                                        f"{st.session_state.get('jump_kind')} in this trace."
    else:
        st.session_state["step"] = target


def replay_view(db, trace: trace_model.Trace) -> None:
    n = len(trace.steps)
    st.session_state["step"] = max(1, min(int(st.session_state.get("step", 1)), n))
    current = st.session_state["step"]
    c = st.columns([1, 1, 2, 1, 1, 2, 1, 1])
    c[0].button("", icon=":material/first_page:", key="step_first", on_click=_set_step, args=(1,), help="first step", width="stretch")
    c[1].button("Prev", icon=":material/chevron_left:", key="step_prev", on_click=_set_step, args=(max(1, current - 1),), width="stretch")
    c[2].number_input("Step", min_value=1, max_value=n, key="step", label_visibility="collapsed")
    c[3].button("Next", icon=":material/chevron_right:", key="step_next", on_click=_set_step, args=(min(n, current + 1),), width="stretch")
    c[4].button("", icon=":material/last_page:", key="step_last", on_click=_set_step, args=(n,), help="last step", width="stretch")
    c[5].selectbox("Jump to", list(JUMPS), key="jump_kind", label_visibility="collapsed",
                   format_func=lambda kind: f"jump to: {kind}")
    c[6].button("", icon=":material/fast_rewind:", key="jump_prev", on_click=_jump, args=(trace.trace_id, -1), help="previous of that kind",
                width="stretch")
    c[7].button("", icon=":material/fast_forward:", key="jump_next", on_click=_jump, args=(trace.trace_id, 1), help="next of that kind",
                width="stretch")
    note = st.session_state.pop("jump_note", None)
    if note:
        st.info(note)
    step = trace.step(st.session_state["step"])
    st.progress(step["Step"] / n, text=f"Step {step['Step']:,} of {n:,} · +{step['Offset']:,.3f} s · "
                                         f"{data.utc(step['TimeNs']):%H:%M:%S.%f} UTC")
    title = f"{STEP_ICONS.get(step['Kind'], '')} {STEP_KINDS.get(step['Kind'], step['Kind'])}: {step['Title']}"
    (st.error if step["Flag"] else st.markdown)(f"**{title}**")
    m = st.columns(6)
    m[0].metric("Cost so far", _money(step["CostSoFar"]))
    m[1].metric("Tokens so far", f"{step['TokensSoFar']:,}")
    m[2].metric("Reasoning so far", f"{step['ReasoningSoFar']:,}")
    m[3].metric("Model calls so far", f"{step['ModelCallsSoFar']:,}")
    m[4].metric("Credential uses so far", f"{step['CredentialUsesSoFar']:,}")
    m[5].metric("Anomalies so far", f"{step['AnomaliesSoFar']:,}")
    step_body(db, trace, step)
    st.markdown("**Around this step**")
    lo = max(1, step["Step"] - 3)
    around = trace.with_titles(trace.steps.slice(lo - 1, 12)).with_columns(
        pl.when(pl.col("Step") == step["Step"]).then(pl.lit("▶")).otherwise(pl.lit("")).alias(" "))
    _table(around.select(" ", "Step", "Offset", "Kind", "AgentId", "Title", "CostSoFar"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f"),
                          "CostSoFar": st.column_config.NumberColumn("Cost so far", format="$%.4f")})


def step_body(db, trace: trace_model.Trace, step: dict) -> None:
    if step["Kind"] == "credential":
        events = trace.credentials.filter((pl.col("SpanId") == step["SpanId"]) & (pl.col("TimeNs") == step["TimeNs"])
                                          & (pl.col("CredentialId") == step["Ref"]))
        if len(events):
            row = events.row(0, named=True)
            if row["CrossTenant"]:
                st.error(f"Cross-tenant: agent {row['AgentId']} of tenant **{row['Tenant']}** used credential "
                         f"**{row['CredentialId']}** of tenant **{row['CredentialTenant']}** on "
                         f"{row['Resource'] or '—'} (tenant {row['ResourceTenant'] or '—'}).")
            _table(events.drop("TimeNs"))
        return
    if step["Kind"] == "anomaly":
        a = trace.anomalies.filter(pl.col("AnomalyId") == step["Ref"])
        if len(a):
            row = a.row(0, named=True)
            st.markdown(row["Summary"])
            st.json(data.evidence_of(row), expanded=1)
            st.button("Open in the inbox", key="step_open_anomaly", on_click=goto, args=("Anomalies",),
                      kwargs={"anomaly_id": row["AnomalyId"]})
        return
    span = trace.span(step["SpanId"])
    if span is None:
        return
    payloads = trace.step_payloads(step)
    if not payloads:
        st.caption("Nothing was captured for this step.")
    for name, size in payloads:
        payload_block(trace, span, name, size)
    with st.expander(f"Span `{span['SpanId']}` · {span['SpanName']} · all attributes"):
        attrs = trace_model.attr_dict(span.get("Attributes"))
        st.json(attrs, expanded=True)
        others = {k: v for k, v in trace.payloads(span["SpanId"]).items() if k not in dict(payloads)}
        if others:
            st.caption("Other payloads of this span: " + ", ".join(f"{k} ({human_bytes(v)})" for k, v in others.items()))
            for name, size in others.items():
                payload_block(trace, span, name, size, force_toggle=True)
        if span.get("StatusMessage"):
            st.error(span["StatusMessage"])


def _span_ref(trace: trace_model.Trace, span: dict) -> dict:
    return {"TraceId": trace.trace_id, "SpanId": span["SpanId"], "StartNs": int(span["StartNs"]),
            "ServiceName": span["ServiceName"], "SpanName": span["SpanName"]}


def payload_block(trace: trace_model.Trace, span: dict, name: str, size: int, force_toggle: bool = False) -> None:
    """A payload: small ones shown with their step, big ones only when opened (read from the store then)."""
    ref = _span_ref(trace, span)
    key = f"open|{span['SpanId']}|{name}"
    label = f"{name} · {human_bytes(size)}"
    small = trace_model.attr_dict(span.get("Attributes"))
    if name in small:
        value = small[name]
    elif size <= data.INLINE_PAYLOAD_BYTES and not force_toggle:
        value = _small_attributes(_key(), ref).get(name)
    else:
        if not st.toggle(f"Open {label}", key=key):
            return
        with st.spinner(f"Reading {label} from the store…"):
            value = _payload(_key(), ref, name)
    if value is None:
        st.warning(f"{name}: not found in the store.")
        return
    st.markdown(f"**{name}** · {human_bytes(len(value.encode()))} · {len(value):,} characters")
    render_payload(value, f"{span['SpanId']}|{name}")
    st.download_button(f"Download {name}", icon=":material/download:", data=value, file_name=f"{trace.trace_id}-{span['SpanId']}-{name}.json",
                       mime="application/json", key=f"dl|{span['SpanId']}|{name}", on_click="ignore")


def render_payload(value: str, key: str) -> None:
    messages = trace_model.parse_messages(value)
    if messages is None:
        try:
            pretty = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
        except ValueError:
            pretty = value
        _text(pretty, key, "json" if pretty is not value else None)
        return
    for i, (role, kind, text) in enumerate(messages):
        st.caption(f"{role} · {kind} · {len(text):,} characters")
        _text(text, f"{key}|{i}", "json" if kind in ("tool_call", "tool_call_response") else None)


def _text(text: str, key: str, language: str | None = None) -> None:
    if len(text) > TEXTAREA_OVER:
        st.text_area("whole text", value=text, height=420, key=f"ta|{key}", label_visibility="collapsed")
    else:
        st.code(text, language=language, wrap_lines=True)


def agent_tree_view(trace: trace_model.Trace) -> None:
    st.caption("Each agent invocation under the one that forked it, with what it did itself.")
    tree = trace.agents
    if tree.is_empty():
        st.info("No agent spans in this trace.")
        return
    _table(tree.select("Agent", "AgentId", "DurationS", "Spans", "ModelCalls", "ToolCalls", "Tokens", "ReasoningTokens",
                       "CostUSD", "CredentialEvents", "CrossTenantUses", "Status"),
           column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f"),
                          "DurationS": st.column_config.NumberColumn("Seconds", format="%.2f")},
           height=min(600, 40 + 35 * len(tree)))
    ids = tree["SpanId"].to_list()
    labels = dict(zip(ids, (f"{a.strip()} ({i})" for a, i in zip(tree["Agent"], tree["AgentId"]))))
    c = st.columns([3, 1])
    c[0].selectbox("Replay from this agent's start", ids, format_func=labels.get, key="tree_agent")
    c[1].button("Go", key="tree_go", width="stretch",
                on_click=lambda: _go_span(trace.trace_id, st.session_state["tree_agent"]))


def _go_span(trace_id: str, span_id: str, end: bool = False, open_payload: str | None = None) -> None:
    trace = _trace(_key(), trace_id, st.session_state.get("trace_version", 0))
    step = trace.step_of_span(span_id, end=end) or trace.step_of_span(span_id, end=not end)
    if step:
        st.session_state["step"] = step
    if open_payload:
        st.session_state[f"open|{span_id}|{open_payload}"] = True
    st.session_state["trace_view"] = "Replay"


def timeline_view(trace: trace_model.Trace) -> None:
    bars, binned = trace.timeline()
    step = trace.step(st.session_state.get("step", 1))
    marks = trace.anomalies["FirstSeenNs"].to_list() if len(trace.anomalies) else []
    st.altair_chart(charts.timeline(bars, binned, trace.start_ns, step["TimeNs"], marks), width="stretch",
                    height=min(1200, 110 + 26 * bars["Row"].n_unique()))
    st.caption("Dashed line: the replay's current step. Red lines: anomalies.")


def spans_view(db, trace: trace_model.Trace) -> None:
    s = trace.spans.with_columns(((pl.col("StartNs") - trace.start_ns) / 1e9).alias("Offset"),
                                 (pl.col("Duration") / 1e9).alias("Seconds"))
    _table(s.select("Offset", "Seconds", "AgentId", "Operation", "SpanName", "Model", "InputTokens", "OutputTokens",
                    "ReasoningTokens", "CostUSD", "PayloadBytes", "StatusCode", "SpanId", "ParentSpanId"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f"),
                          "Seconds": st.column_config.NumberColumn(format="%.3f"),
                          "CostUSD": st.column_config.NumberColumn("Cost", format="$%.5f")}, height=420)
    c = st.columns([3, 1])
    span_id = c[0].text_input("Span id", key="spans_pick", placeholder="16 hex digits")
    c[1].button("Replay from it", key="spans_go", disabled=not span_id.strip(), width="stretch",
                on_click=lambda: _go_span(trace.trace_id, st.session_state["spans_pick"].strip()))


def search_view(db, trace: trace_model.Trace) -> None:
    c = st.columns([3, 1])
    text = c[0].text_input("Search this trace (every payload, case-insensitive)", key="trace_search")
    c[1].button("Search", key="trace_search_go", width="stretch")
    if not text.strip():
        return
    with st.spinner("Searching every payload of the trace…"):
        hits = data.search_trace(db, trace.trace_id, text.strip())
    if hits.is_empty():
        st.info(f"“{text}” does not occur in this trace.")
        return
    found = int(hits["Matches"].sum())
    st.caption(f"The first {len(hits)} payloads (in time order) that contain “{text}”, {found:,} occurrences in them"
               if len(hits) >= 200 else f"{len(hits)} payloads contain “{text}” ({found:,} occurrences)")
    _table(hits.with_columns(((pl.col("StartNs") - trace.start_ns) / 1e9).alias("Offset"))
           .select("Offset", "SpanName", "Key", "Matches", "Bytes", "Position", "Snippet", "SpanId"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f")})
    options = list(range(len(hits)))
    labels = {i: f"{hits['SpanName'][i]} · {hits['Key'][i]} · {hits['Matches'][i]} matches" for i in options}
    c = st.columns([3, 1])
    c[0].selectbox("Open a hit in the replay", options, format_func=labels.get, key="search_pick")

    def go() -> None:
        i = st.session_state["search_pick"]
        key = hits["Key"][i]
        _go_span(trace.trace_id, hits["SpanId"][i], end=key in trace_model.END_KEYS, open_payload=key)

    c[1].button("Go", key="search_go", on_click=go, width="stretch")


# --- costs -----------------------------------------------------------------------------------

def page_costs(db, start: datetime, end: datetime) -> None:
    st.header("Costs")
    st.caption("Who pays for thinking: model cost by tenant, agent, model and day; tokens by kind. "
               "Calls of models without a known price count as unpriced, never as $0.")
    tenant_filter = st.multiselect("Tenants", data.tenants(db, start, end), key="cost_tenants")
    totals = data.costs(db, start, end, by=(), tenants_filter=tenant_filter)
    t = totals.row(0, named=True) if len(totals) else {}
    tokens = sum(t.get(k) or 0 for k in data.TOKEN_KINDS)
    c = st.columns(5)
    c[0].metric("Cost", _money(t.get("CostUSD") or 0.0))
    c[1].metric("Model calls", f"{t.get('ModelCalls') or 0:,}")
    c[2].metric("Unpriced calls", f"{t.get('UnpricedCalls') or 0:,}")
    c[3].metric("Tokens", f"{tokens:,}")
    c[4].metric("Reasoning share", f"{(t.get('ReasoningTokens') or 0) / tokens:.1%}" if tokens else "—")
    if not tokens and not (t.get("CostUSD") or 0):
        st.info("No model calls in this time range.")
        return
    time_key = "Day" if end - start > timedelta(days=2) else "Hour"
    over_time = data.costs(db, start, end, by=(time_key, "Tenant"), tenants_filter=tenant_filter)
    left, right = st.columns(2)
    left.altair_chart(charts.cost_stacked(over_time, time_key, "Tenant", f"Cost per {time_key.lower()} by tenant",
                                          fmt="%b %d" if time_key == "Day" else "%H:%M"), width="stretch")
    by_model = data.costs(db, start, end, by=("Model",), tenants_filter=tenant_filter).filter(pl.col("Model") != "")
    right.altair_chart(charts.cost_stacked(by_model.with_columns(pl.lit("model").alias("All")), "Model", "Model",
                                           "Cost by model"), width="stretch")
    token_by = st.segmented_control("Tokens by kind, per", ["Tenant", "Model", "AgentId"], default="Tenant",
                                    key="cost_token_by", required=True)
    per = data.costs(db, start, end, by=(token_by,), tenants_filter=tenant_filter).filter(pl.col(token_by) != "")
    if token_by == "AgentId":
        per = per.head(25)
    long = per.unpivot(index=[token_by], on=list(data.TOKEN_KINDS), variable_name="Column", value_name="Tokens") \
        .with_columns(pl.col("Column").replace_strict(data.TOKEN_KINDS).alias("Kind"))
    st.altair_chart(charts.tokens_by_kind(long, token_by), width="stretch",
                    height=100 + 28 * long[token_by].n_unique())
    group = st.multiselect("Table grouped by", ["Tenant", "AgentId", "Model", "Day"], default=["Tenant", "Model"],
                           key="cost_group")
    table = data.costs(db, start, end, by=tuple(group), tenants_filter=tenant_filter)
    _table(table, column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")})
    st.download_button("Download this table (CSV)", icon=":material/download:", data=table.write_csv(), file_name="agentwatch-costs.csv",
                       mime="text/csv", key="cost_csv", on_click="ignore")


# --- credentials -----------------------------------------------------------------------------

def page_credentials(db, start: datetime, end: datetime) -> None:
    st.header("Credentials")
    st.caption("The audit trail: every grant, use and revoke; who touched each credential; cross-tenant uses in red.")
    creds = data.credentials(db, start, end)
    if creds.is_empty():
        st.info("No credential events in this time range.")
        return
    cross = data.cross_tenant_uses(db, start, end)
    c = st.columns(4)
    c[0].metric("Credentials", f"{len(creds):,}")
    c[1].metric("Uses", f"{int(creds['Uses'].sum()):,}")
    c[2].metric("Cross-tenant uses", f"{len(cross):,}", delta="investigate" if len(cross) else None,
                delta_color="inverse")
    c[3].metric("Agents", f"{int(creds['Agents'].sum()):,}")
    if len(cross):
        st.error(f"{len(cross)} cross-tenant credential uses: an agent used another tenant's credential or "
                 f"touched another tenant's resource.", icon=":material/key:")
        _table(cross, height=min(300, 40 + 35 * len(cross)))
    top = creds.head(15)["CredentialId"].to_list()
    per_minute = data.credential_uses_per_minute(db, start, end, top)
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
    trail = data.credential_trail(db, picked, start, end)
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
        _table(who)
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


# --- GPUs --------------------------------------------------------------------------------------

def page_gpus(db, start: datetime, end: datetime) -> None:
    st.header("GPUs")
    metrics = data.gpu_metrics(db, start, end)
    domain = (start, end)
    if metrics.is_empty():
        st.info("No GPU metrics in this time range. The SDK samples NVIDIA GPUs through NVML "
                "(`agentwatch.init(..., gpu_interval=10)`) on the hosts that have them.")
    else:
        devices = metrics.filter(pl.col("Device") != "").select("Device", "DeviceName", "ServiceName", "Host").unique()
        c = st.columns(4)
        c[0].metric("Devices", f"{devices['Device'].n_unique()}")
        util = metrics.filter(pl.col("MetricName") == "hw.gpu.utilization")
        c[1].metric("Mean utilization", f"{util['Value'].mean():.0%}" if len(util) else "—")
        mem = metrics.filter(pl.col("MetricName") == "hw.gpu.memory.usage")
        c[2].metric("Peak memory", human_bytes(mem["Value"].max()) if len(mem) else "—")
        power = metrics.filter(pl.col("MetricName") == "hw.power")
        c[3].metric("Mean power", f"{power['Value'].mean():,.0f} W" if len(power) else "—")
        labelled = metrics.with_columns(
            pl.when(pl.col("DeviceName") != "").then(pl.concat_str(
                pl.col("Device").str.slice(0, 12), pl.lit(" · "), pl.col("DeviceName").str.replace("NVIDIA ", "")))
            .otherwise(pl.col("Device")).alias("Device"),
            pl.concat_str(pl.lit("pid "), pl.col("Pid"), pl.lit(" · "), pl.col("ServiceName")).alias("Process"))
        left, right = st.columns(2)
        left.altair_chart(charts.gpu_lines(labelled, "hw.gpu.utilization", "Utilization per device", "%", domain,
                                           scale=100), width="stretch")
        mem_both = labelled.filter(pl.col("MetricName").is_in(["hw.gpu.memory.usage", "hw.gpu.memory.limit"])) \
            .with_columns(pl.concat_str(pl.col("Device"), pl.lit(" "),
                                        pl.col("MetricName").str.replace("hw.gpu.memory.", "")).alias("Series"),
                          pl.lit("mem").alias("MetricName"))
        right.altair_chart(charts.gpu_lines(mem_both, "mem", "Memory used and limit per device", "GiB", domain,
                                            scale=1 / 2**30, color="Series"), width="stretch")
        left, right = st.columns(2)
        left.altair_chart(charts.gpu_lines(labelled, "hw.power", "Power per device", "W", domain), width="stretch")
        right.altair_chart(charts.gpu_lines(labelled, "process.gpu.memory.usage", "GPU memory per process", "GiB",
                                            domain, scale=1 / 2**30, color="Process"), width="stretch")
    st.divider()
    st.markdown("**The traces running then**: model calls of the services that report these GPUs, and their traces")
    services = metrics["ServiceName"].unique().to_list() if len(metrics) else []
    act = data.activity(db, start, end, services or None)
    if act.is_empty() and services:
        st.caption("No spans from the services that report these GPUs; showing every service.")
        act = data.activity(db, start, end)
    if len(act):
        st.altair_chart(charts.activity(act, domain), width="stretch")
    traces = data.find_traces(db, start, end, limit=200)
    if services and len(traces):
        mine = set(data.frame(db, "SELECT DISTINCT TraceId FROM trace_summaries WHERE ServiceName IN "
                                  "{s:Array(String)} AND TraceId IN {t:Array(String)}",
                              {"s": services, "t": traces["TraceId"].to_list()})["TraceId"].to_list())
        if mine:
            traces = traces.filter(pl.col("TraceId").is_in(list(mine)))
    if len(traces):
        _table(traces.select("Start", "End", "Tenant", "RootAgentId", "Spans", "ModelCalls", "CostUSD", "TraceId"),
               column_config={"CostUSD": st.column_config.NumberColumn("Cost", format="$%.4f")}, height=300)
        c = st.columns([3, 1])
        c[0].selectbox("Trace", traces["TraceId"].to_list(), key="gpu_trace")
        c[1].button("Open trace", key="gpu_open_trace", width="stretch",
                    on_click=lambda: open_trace(st.session_state["gpu_trace"]))
    else:
        st.caption("No traces in this time range.")

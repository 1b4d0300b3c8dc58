"""Anomalies: the inbox with its filters, one anomaly with its evidence and chart, status changes, containment."""

from __future__ import annotations

import logging
from datetime import datetime

import streamlit as st

from agentwatch.dashboard import charts, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views import containment
from agentwatch.dashboard.text import code, literal
from agentwatch.dashboard.views.common import SEVERITY_BADGE, STATUS_BADGE, client, open_trace, table
from agentwatch.schemas.vocabulary import ANOMALY_STATUSES, SEVERITIES, UNRESOLVED_STATUSES, describe_kind

log = logging.getLogger(__name__)

TITLE = "Anomalies"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    note = st.session_state.pop("anomaly_note", None)
    if note:
        st.success(note)
    facets = data.anomaly_facets(db, viewer)
    c = st.columns(4)
    unpin = {"on_change": lambda: st.session_state.pop("anomaly_pinned", None)}
    kinds = c[0].multiselect("Kind", facets["kinds"], key="f_kind", **unpin,
                             help="\n".join(f"- {code(k)}: {describe_kind(k) or 'not described'}"
                                            for k in facets["kinds"]))
    severities = c[1].multiselect("Severity", list(reversed(SEVERITIES)), key="f_severity", **unpin)
    tenants = c[2].multiselect("Tenant", facets["tenants"], key="f_tenant", **unpin)
    statuses = c[3].multiselect("Status", list(ANOMALY_STATUSES), default=list(UNRESOLVED_STATUSES), key="f_status",
                                **unpin)
    any_time = st.toggle("Any time (ignore the time range)", key="f_any_time", value=False, **unpin)
    inbox = data.anomalies(db, viewer, None if any_time else start, None if any_time else end, kinds=kinds,
                           severities=severities, tenants=tenants, statuses=statuses)
    st.caption(f"{len(inbox)} anomalies match" + ("" if any_time else " (window overlapping the time range)"))
    if len(inbox):
        table(inbox.select("Severity", "Status", "Kind", "Tenant", "AgentId", "Summary", "Score", "FirstSeen",
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
    detail(db, viewer, selected)


def _set_status(viewer: Viewer, anomaly_id: str, status: str) -> None:
    try:
        data.set_anomaly_status(client(), viewer, anomaly_id, status)
    except (PermissionError, LookupError) as error:
        st.session_state["anomaly_note"] = f"Not changed: {literal(error)}"
        return
    st.session_state["anomaly_note"] = f"Anomaly {code(anomaly_id)} marked {status}."


def _status_buttons(viewer: Viewer, a: dict) -> None:
    b = st.columns(4)
    b[2].button("Open trace", icon=":material/manage_search:", key="open_anomaly_trace", disabled=not a["TraceId"],
                on_click=open_trace, args=(a["TraceId"],), kwargs={"anomaly": a["AnomalyId"]}, width="stretch")
    if not viewer.may("responder"):
        b[0].caption(f"Signed in as {viewer.role}: acknowledging and resolving take a responder.")
        return
    b[0].button("Acknowledge", icon=":material/visibility:", key="ack", disabled=a["Status"] != "open",
                on_click=_set_status, args=(viewer, a["AnomalyId"], "acknowledged"), width="stretch")
    b[1].button("Resolve", icon=":material/check_circle:", key="resolve", disabled=a["Status"] == "resolved",
                on_click=_set_status, args=(viewer, a["AnomalyId"], "resolved"), width="stretch")
    b[3].button("Reopen", icon=":material/undo:", key="reopen", disabled=a["Status"] == "open", on_click=_set_status,
                args=(viewer, a["AnomalyId"], "open"), width="stretch")


def detail(db, viewer: Viewer, anomaly_id: str) -> None:
    a = data.anomaly(db, viewer, anomaly_id)
    if a is None:
        st.error(f"No anomaly with id {literal(repr(anomaly_id))}.")
        return
    st.subheader(f":material/crisis_alert: {literal(a['Kind'])} · {literal(a['Tenant'])} · "
                 f"{literal(a['AgentId'] or a['TraceId'])}")
    st.markdown(f"{SEVERITY_BADGE.get(a['Severity'], literal(a['Severity']))} "
                f"{STATUS_BADGE.get(a['Status'], literal(a['Status']))}")
    if describe_kind(a["Kind"]):
        st.caption(f"{literal(a['Kind'])}: {describe_kind(a['Kind'])}")
    st.markdown(f"**{literal(a['Summary'])}**")
    cols = st.columns(5)
    cols[0].metric("Status", literal(a["Status"]))  # a metric's value is markdown too
    cols[1].metric("Severity", literal(a["Severity"]))
    cols[2].metric("Score", f"{a['Score']:,.2f}")
    duration = (a["LastSeen"] - a["FirstSeen"]).total_seconds()
    cols[3].metric("Lasted", f"{duration / 60:,.1f} min")
    cols[4].metric("Detected", f"{a['DetectedAt']:%H:%M:%S}")
    st.caption(f"id {code(a['AnomalyId'])} · first seen {a['FirstSeen']} · last seen {a['LastSeen']} UTC · "
               f"detected {a['DetectedAt']} · trace {code(a['TraceId'] or '—')} · updated {a['UpdatedAt']}")
    _status_buttons(viewer, a)
    left, right = st.columns([3, 2])
    with left:
        try:
            base = data.anomaly_baseline(db, viewer, a)
        except Exception as error:  # a chart must never hide the rest of the anomaly
            log.exception("baseline chart")
            st.warning(f"No baseline chart: {literal(error)}")
        else:
            if len(base.series):
                st.altair_chart(charts.baseline(base.series, base.metric, base.normal, base.window,
                                                base.normal_label, base.threshold), width="stretch")
            else:
                st.caption(f"No {literal(base.metric)} recorded around this anomaly.")
    with right:
        st.markdown("**Evidence**")
        st.json(data.evidence_of(a), expanded=2)
    containment.render(db, viewer, a)
    sent = data.alert_deliveries(db, viewer, a["AnomalyId"])
    if len(sent):
        with st.expander(f"Alerts sent about it ({len(sent)})"):
            table(sent)

"""The dashboard's frame: who is looking, which pages they get, the sidebar, the time range, the URL.

Navigation is a sidebar radio (session key `page`), so a page and everything
on it can be driven from a URL (`?anomaly=ID&trace=TRACE_ID`, `?trace=...`,
`?page=costs`), from a button elsewhere in the app, and from tests. Every page
gets the Viewer of this run and passes it to each query (dashboard/data).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from agentwatch.dashboard import auth, data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views import anomalies, audit, costs, credentials, gpus, overview, trace
from agentwatch.dashboard.views.common import client, open_trace, store_location
from agentwatch.schemas.vocabulary import AUDIT_SIGN_IN

MODULES = (overview, anomalies, trace, costs, credentials, gpus)
ADMIN_MODULES = (audit,)
SLUGS = {"Overview": "overview", "Anomalies": "anomalies", "Trace replay": "trace", "Costs": "costs",
         "Credentials": "credentials", "GPUs": "gpus", "Audit log": "audit"}
PRESETS = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "Custom": None,
}


def pages_for(viewer: Viewer) -> dict:
    """Page title -> module, in sidebar order: the audit log for admins only."""
    modules = MODULES + (ADMIN_MODULES if viewer.role == "admin" else ())
    return {m.TITLE: m for m in modules}


def main() -> None:
    st.set_page_config(page_title="agentwatch", page_icon=":material/radar:", layout="wide")
    viewer = auth.current_viewer()  # draws who is signed in, or the sign-in when nobody is
    if viewer is None:
        st.stop()
    db = client()
    _note_sign_in(db, viewer)
    pages = pages_for(viewer)
    _apply_query_params(pages)
    if st.session_state.get("page") not in pages:
        st.session_state["page"] = next(iter(pages))
    with st.sidebar:
        st.title(":material/radar: agentwatch")
        page = st.radio("Page", list(pages), key="page")
        start, end = time_range()
        dsn, database = store_location()
        st.caption(f"store `{dsn}` · database `{database}`")
    pages[page].render(db, viewer, start, end)
    _sync_query_params(page)


def _note_sign_in(db, viewer: Viewer) -> None:
    """The first run of a browser session with this viewer is its sign-in."""
    if st.session_state.get("signed_in_as") != (viewer.name, viewer.role):
        data.note(db, viewer, AUDIT_SIGN_IN, detail={"tenants": sorted(viewer.tenants or ())
                                                     if viewer.tenants is not None else "*"})
        st.session_state["signed_in_as"] = (viewer.name, viewer.role)


def _apply_query_params(pages: dict) -> None:
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
        st.session_state["page"] = anomalies.TITLE
        if trace_id:
            st.session_state["goto_anomaly"] = anomaly_id.strip()
    elif trace_id:
        st.session_state["page"] = trace.TITLE
    elif page:
        by_slug = {slug: title for title, slug in SLUGS.items() if title in pages}
        if page in by_slug:
            st.session_state["page"] = by_slug[page]


def _sync_query_params(page: str) -> None:
    wanted = {"page": SLUGS[page]}
    if page == anomalies.TITLE and st.session_state.get("anomaly_id"):
        wanted["anomaly"] = st.session_state["anomaly_id"]
    if page in (anomalies.TITLE, trace.TITLE) and st.session_state.get("trace_id"):
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
    st.caption(f"{start:%Y-%m-%d %H:%M} → {end:%H:%M} UTC" if start.date() == end.date()
               else f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC")
    return start, end

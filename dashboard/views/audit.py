"""Audit log (admins only): who signed in, opened which trace and payload, changed which anomaly, halted what."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from agentwatch.dashboard import data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.views.common import table
from agentwatch.schemas.vocabulary import AUDIT_ACTIONS

TITLE = "Audit log"


def render(db, viewer: Viewer, start: datetime, end: datetime) -> None:
    st.header(TITLE)
    if viewer.role != "admin":  # the page is not offered to others; a stale link lands here
        st.error("The audit log is shown to admins only.")
        return
    st.caption("Append-only: every sign-in, trace and payload opened, anomaly status change, halt and release, "
               "and API key created or revoked. Newest first; the time range does not apply.")
    c = st.columns(2)
    action = c[0].selectbox("Action", ["(all)", *AUDIT_ACTIONS], key="audit_action")
    actor = c[1].text_input("Actor", key="audit_actor", placeholder="dashboard:<name> or cli:<user>")
    entries = data.audit_log(db, viewer, action="" if action == "(all)" else action, actor_name=actor.strip())
    st.caption(f"{len(entries):,} entries (at most 1,000)")
    if entries.is_empty():
        st.info("Nothing recorded yet." if action == "(all)" and not actor.strip() else "No entry matches.")
        return
    table(entries.with_columns(pl.col("At").dt.strftime("%Y-%m-%d %H:%M:%S%.6f")), height=600)

"""What the pages share: the store, the caches (kept apart per viewer scope), moving between pages, formats."""

from __future__ import annotations

import json
import logging

import polars as pl
import streamlit as st

from agentwatch.dashboard import data, trace_model
from agentwatch.dashboard.auth import Viewer

log = logging.getLogger(__name__)

SEVERITY_BADGE = {"critical": ":red-badge[critical]", "warning": ":orange-badge[warning]", "info": ":blue-badge[info]"}
STATUS_BADGE = {"open": ":red-badge[open]", "acknowledged": ":orange-badge[acknowledged]",
                "resolved": ":green-badge[resolved]"}


# --- store ----------------------------------------------------------------------------------

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


def scope_key(viewer: Viewer) -> str:
    """What a cached read depends on of the viewer: its tenants, so one viewer's cache never serves another's."""
    tenants = data.granted(viewer)
    return "*" if tenants is None else json.dumps(sorted(tenants))


@st.cache_resource(show_spinner=False, ttl=300, max_entries=6)
def _trace(store_key: str, scope: str, trace_id: str, version: int, _viewer: Viewer):
    return trace_model.load(client(), _viewer, trace_id)


def load_trace(viewer: Viewer, trace_id: str) -> trace_model.Trace | None:
    return _trace(_key(), scope_key(viewer), trace_id, st.session_state.get("trace_version", 0), viewer)


@st.cache_data(show_spinner=False, ttl=600, max_entries=12)
def _payload(store_key: str, scope: str, span: dict, name: str, _viewer: Viewer) -> str | None:
    return data.span_payload(client(), _viewer, span, name)


def payload(viewer: Viewer, span: dict, name: str) -> str | None:
    return _payload(_key(), scope_key(viewer), span, name, viewer)


@st.cache_data(show_spinner=False, ttl=600, max_entries=64)
def _small_attributes(store_key: str, scope: str, span: dict, _viewer: Viewer) -> dict:
    return data.span_attributes(client(), _viewer, span)


def small_attributes(viewer: Viewer, span: dict) -> dict:
    return _small_attributes(_key(), scope_key(viewer), span, viewer)


# --- moving between pages -------------------------------------------------------------------

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


# --- formats --------------------------------------------------------------------------------

def table(df: pl.DataFrame, **kwargs) -> None:
    st.dataframe(df, hide_index=True, width="stretch", **kwargs)


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}" if abs(value) >= 1 else f"${value:,.4f}"

"""Halt or release, from an anomaly: its trace, its agent or its whole tenant (the `halts` table).

The agents' guards poll the decision in force: a halt stops them at their next
call, a release lets them carry on without a restart. Responders and admins
see the buttons; everyone who may see the anomaly sees what is halted.
"""

from __future__ import annotations

import streamlit as st

from agentwatch.dashboard import data
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.text import code, literal
from agentwatch.dashboard.views.common import client

LABELS = {"trace": "trace", "agent": "agent", "tenant": "whole tenant"}


def _decide(action: str, viewer: Viewer, anomaly_id: str, scope: str) -> None:
    reason = (st.session_state.get("halt_reason") or "").strip()
    try:
        if action == "halt":
            calls = "model" if st.session_state.get("halt_model_only") else "all"
            decision = data.halt(client(), viewer, anomaly_id, scope, calls=calls, reason=reason)
            st.session_state["halt_note"] = ("success", f"Halted the {LABELS[scope]} {literal(decision.target)}: "
                                                        "its agents stop at their next call.")
        else:
            decision = data.release(client(), viewer, anomaly_id, scope, reason=reason)
            st.session_state["halt_note"] = ("success", f"Released the {LABELS[scope]} {literal(decision.target)}: its "
                                                        "agents carry on.")
    except (PermissionError, LookupError, ValueError) as error:
        st.session_state["halt_note"] = ("error", literal(error))


def render(db, viewer: Viewer, anomaly_row: dict) -> None:
    in_force = data.containment(db, viewer, anomaly_row)
    if not in_force:
        return
    st.markdown("**Containment**")
    note = st.session_state.pop("halt_note", None)
    if note:
        (st.success if note[0] == "success" else st.error)(note[1])
    targets = data.targets_of(anomaly_row)
    for scope, halt in in_force.items():
        if halt is None:
            st.caption(f"{LABELS[scope]} {code(targets[scope])}: running")
        else:
            what = "model calls halted" if halt.calls == "model" else "halted"
            st.error(f"{LABELS[scope]} {code(targets[scope])}: {what} since {halt.decided_at} "
                     f"by {literal(halt.decided_by)}"
                     + (f" ({literal(halt.reason)})" if halt.reason else ""), icon=":material/block:")
    if not viewer.may("responder"):
        st.caption("Halting and releasing take a responder.")
        return
    c = st.columns([3, 1])
    c[0].text_input("Reason (kept with the decision)", key="halt_reason")
    c[1].toggle("Model calls only", key="halt_model_only", help="stop the spending; tools and agents may finish")
    buttons = st.columns(len(in_force))
    for column, (scope, halt) in zip(buttons, in_force.items()):
        if halt is None:
            column.button(f"Halt {LABELS[scope]}", key=f"halt_{scope}", icon=":material/block:", width="stretch",
                          on_click=_decide, args=("halt", viewer, anomaly_row["AnomalyId"], scope))
        else:
            column.button(f"Release {LABELS[scope]}", key=f"release_{scope}", icon=":material/play_circle:",
                          width="stretch", on_click=_decide, args=("release", viewer, anomaly_row["AnomalyId"], scope))

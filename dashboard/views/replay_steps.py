"""The Replay view of a trace: step by step, costs accumulating, each step's payloads (big ones when opened).

Opening a payload that is read only on request is recorded in the audit log,
once per payload per browser session.
"""

from __future__ import annotations

import json

import polars as pl
import streamlit as st

from agentwatch.dashboard import data, trace_model
from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.trace_model import STEP_KINDS, human_bytes
from agentwatch.dashboard.text import code, literal
from agentwatch.dashboard.views.common import goto, load_trace, money, payload, small_attributes, table
from agentwatch.schemas.vocabulary import AUDIT_PAYLOAD_OPENED

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


def _set_step(value: int) -> None:
    st.session_state["step"] = int(value)


def _jump(viewer: Viewer, trace_id: str, direction: int) -> None:
    trace = load_trace(viewer, trace_id)
    if trace is None:
        return
    kind, flagged = JUMPS[st.session_state.get("jump_kind", "anomaly")]
    target = trace.next_step(st.session_state.get("step", 1), kind=kind, flagged=flagged, direction=direction)
    if target is None:
        st.session_state["jump_note"] = f"No {'next' if direction > 0 else 'earlier'} " \
                                        f"{st.session_state.get('jump_kind')} in this trace."
    else:
        st.session_state["step"] = target


def render(db, viewer: Viewer, trace: trace_model.Trace) -> None:
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
    c[6].button("", icon=":material/fast_rewind:", key="jump_prev", on_click=_jump, args=(viewer, trace.trace_id, -1), help="previous of that kind",
                width="stretch")
    c[7].button("", icon=":material/fast_forward:", key="jump_next", on_click=_jump, args=(viewer, trace.trace_id, 1), help="next of that kind",
                width="stretch")
    note = st.session_state.pop("jump_note", None)
    if note:
        st.info(note)
    step = trace.step(st.session_state["step"])
    st.progress(step["Step"] / n, text=f"Step {step['Step']:,} of {n:,} · +{step['Offset']:,.3f} s · "
                                         f"{data.utc(step['TimeNs']):%H:%M:%S.%f} UTC")
    # the kind's icon is ours; its name and the title (span, agent, tool names, summaries) are the sender's
    title = f"{STEP_ICONS.get(step['Kind'], '')} {literal(STEP_KINDS.get(step['Kind'], step['Kind']))}: " \
            f"{literal(step['Title'])}"
    (st.error if step["Flag"] else st.markdown)(f"**{title}**")
    m = st.columns(6)
    m[0].metric("Cost so far", money(step["CostSoFar"]))
    m[1].metric("Tokens so far", f"{step['TokensSoFar']:,}")
    m[2].metric("Reasoning so far", f"{step['ReasoningSoFar']:,}")
    m[3].metric("Model calls so far", f"{step['ModelCallsSoFar']:,}")
    m[4].metric("Credential uses so far", f"{step['CredentialUsesSoFar']:,}")
    m[5].metric("Anomalies so far", f"{step['AnomaliesSoFar']:,}")
    step_body(db, viewer, trace, step)
    st.markdown("**Around this step**")
    lo = max(1, step["Step"] - 3)
    around = trace.with_titles(trace.steps.slice(lo - 1, 12)).with_columns(
        pl.when(pl.col("Step") == step["Step"]).then(pl.lit("▶")).otherwise(pl.lit("")).alias(" "))
    table(around.select(" ", "Step", "Offset", "Kind", "AgentId", "Title", "CostSoFar"),
           column_config={"Offset": st.column_config.NumberColumn("+s", format="%.3f"),
                          "CostSoFar": st.column_config.NumberColumn("Cost so far", format="$%.4f")})


def step_body(db, viewer: Viewer, trace: trace_model.Trace, step: dict) -> None:
    if step["Kind"] == "credential":
        events = trace.credentials.filter((pl.col("SpanId") == step["SpanId"]) & (pl.col("TimeNs") == step["TimeNs"])
                                          & (pl.col("CredentialId") == step["Ref"]))
        if len(events):
            row = events.row(0, named=True)
            if row["CrossTenant"]:
                st.error(f"Cross-tenant: agent {literal(row['AgentId'])} of tenant **{literal(row['Tenant'])}** used "
                         f"credential **{literal(row['CredentialId'])}** of tenant "
                         f"**{literal(row['CredentialTenant'])}** on {literal(row['Resource'] or '—')} "
                         f"(tenant {literal(row['ResourceTenant'] or '—')}).")
            table(events.drop("TimeNs"))
        return
    if step["Kind"] == "anomaly":
        a = trace.anomalies.filter(pl.col("AnomalyId") == step["Ref"])
        if len(a):
            row = a.row(0, named=True)
            st.markdown(literal(row["Summary"]))
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
        payload_block(db, viewer, trace, span, name, size)
    with st.expander(f"Span {code(span['SpanId'])} · {literal(span['SpanName'])} · all attributes"):
        attrs = trace_model.attr_dict(span.get("Attributes"))
        st.json(attrs, expanded=True)
        others = {k: v for k, v in trace.payloads(span["SpanId"]).items() if k not in dict(payloads)}
        if others:
            st.caption("Other payloads of this span: " + ", ".join(f"{literal(k)} ({human_bytes(v)})"
                                                                 for k, v in others.items()))
            for name, size in others.items():
                payload_block(db, viewer, trace, span, name, size, force_toggle=True)
        message = (span.get("StatusMessage") or "").strip()
        if message:
            lines = message.splitlines()
            st.error(literal(lines[0]))
            if len(lines) > 1:  # a stack trace: every line as sent
                st.code(message, language=None)


def _span_ref(trace: trace_model.Trace, span: dict) -> dict:
    return {"TraceId": trace.trace_id, "SpanId": span["SpanId"], "StartNs": int(span["StartNs"]),
            "ServiceName": span["ServiceName"], "SpanName": span["SpanName"]}


def payload_block(db, viewer: Viewer, trace: trace_model.Trace, span: dict, name: str, size: int,
                  force_toggle: bool = False) -> None:
    """A payload: small ones shown with their step, big ones only when opened (read from the store then)."""
    ref = _span_ref(trace, span)
    key = f"open|{span['SpanId']}|{name}"
    label = f"{literal(name)} · {human_bytes(size)}"  # markdown: the toggle's label, the spinner's text
    small = trace_model.attr_dict(span.get("Attributes"))
    asked = False  # read from the store only because the person opened it: that is what the audit log records
    if name in small:
        value = small[name]
    elif size <= data.INLINE_PAYLOAD_BYTES and not force_toggle:
        value = small_attributes(viewer, ref).get(name)
    else:
        if not st.toggle(f"Open {label}", key=key):
            return
        with st.spinner(f"Reading {label} from the store…"):
            value = payload(viewer, ref, name)
        asked = True
    if value is None:
        st.warning(f"{literal(name)}: not found in the store.")
        return
    if asked:
        _note_opened(db, viewer, trace, span, name, size)
    st.markdown(f"**{literal(name)}** · {human_bytes(len(value.encode()))} · {len(value):,} characters")
    render_payload(value, f"{span['SpanId']}|{name}")
    st.download_button(f"Download {literal(name)}", icon=":material/download:", data=value, file_name=f"{trace.trace_id}-{span['SpanId']}-{name}.json",
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
        st.caption(f"{literal(role)} · {literal(kind)} · {len(text):,} characters")
        _text(text, f"{key}|{i}", "json" if kind in ("tool_call", "tool_call_response") else None)


def _text(text: str, key: str, language: str | None = None) -> None:
    if len(text) > TEXTAREA_OVER:
        st.text_area("whole text", value=text, height=420, key=f"ta|{key}", label_visibility="collapsed")
    else:
        st.code(text, language=language, wrap_lines=True)


def _note_opened(db, viewer: Viewer, trace: trace_model.Trace, span: dict, name: str, size: int) -> None:
    target = f"{trace.trace_id}/{span['SpanId']}/{name}"
    opened = st.session_state.setdefault("audited_payloads", set())
    if target not in opened:
        data.note(db, viewer, AUDIT_PAYLOAD_OPENED, tenant=span.get("Tenant") or "", target=target,
                  detail={"bytes": int(size)})
        opened.add(target)

"""Tenant scope, roles and the audit log of the dashboard, page by page, on a store of two tenants.

acme and globex each have a trace (an agent, a model call whose answer is a
payload read only when opened, a tool call using the tenant's own credential),
an anomaly about it, cost rows (the rollups of those spans) and GPU metrics
from a host of their own. A viewer of acme must find nothing of globex on any
page nor through any URL parameter or lookup by id; an admin sees both. Only a
responder (or an admin) acknowledges, resolves, halts and releases; a halt from
the dashboard reaches the agents' guards through a real receiver, and its
release lets them carry on. Everything a person does is in the audit log,
which only admins see.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from agentwatch.collector.sdk.guard import Guard
from agentwatch.dashboard import auth, data, trace_model
from agentwatch.dashboard.auth import LOCAL_ADMIN, Viewer
from agentwatch.schemas import audit, halts
from agentwatch.schemas.vocabulary import AUDIT_ANOMALY_STATUS, AUDIT_HALT, AUDIT_RELEASE, AUDIT_SIGN_IN
from tests.test_dashboard import APP, ok, plain, shows
from tests.helpers import store_env, wait_for

NS = 1_000_000_000
TENANTS = ("acme", "globex")
TRACE = {"acme": "acacacacacacacacacacacacacac0001", "globex": "6b6b6b6b6b6b6b6b6b6b6b6b6b6b0002"}
AGENT = {t: f"{t}-planner-1" for t in TENANTS}
CREDENTIAL = {t: f"cred-{t}-db" for t in TENANTS}
ANOMALY = {"acme": "a" * 32, "globex": "b" * 32}
CHAT = {"acme": "acac0000000000c4", "globex": "6b6b0000000000c4"}
ANSWER = {t: f"{t} thinks: " + "weigh the ledger row by row, " * 2000 + f"the end of {t}'s thought." for t in TENANTS}
COST = {"acme": 1.25, "globex": 7.5}

VIEWER = Viewer("ana@acme", "viewer", frozenset({"acme"}), via="oidc")
RESPONDER = Viewer("bo@acme", "responder", frozenset({"acme"}), via="oidc")
PAGES = ("Overview", "Anomalies", "Trace replay", "Costs", "Credentials", "GPUs")


# --- the store -----------------------------------------------------------------------------------------

def _span(tenant: str, span_id: str, parent: str, name: str, start: int, duration: int, attributes: dict,
          events=()) -> dict:
    return {"Timestamp": start, "TraceId": TRACE[tenant], "SpanId": span_id, "ParentSpanId": parent, "TraceState": "",
            "SpanName": name, "SpanKind": "Internal", "ServiceName": f"{tenant}-agents",
            "ResourceAttributes": {"service.name": f"{tenant}-agents", "agentwatch.tenant.id": tenant},
            "ScopeName": "agentwatch", "ScopeVersion": "0.1.0",
            "SpanAttributes": {"agentwatch.tenant.id": tenant, "gen_ai.agent.id": AGENT[tenant],
                               "gen_ai.agent.name": "planner", **attributes},
            "Duration": duration, "StatusCode": "Unset", "StatusMessage": "",
            "Events.Timestamp": [e[0] for e in events], "Events.Name": [e[1] for e in events],
            "Events.Attributes": [e[2] for e in events], "Links.TraceId": [], "Links.SpanId": [],
            "Links.TraceState": [], "Links.Attributes": []}


def _trace_rows(tenant: str, at: int) -> list[dict]:
    root, tool = CHAT[tenant][:-2] + "01", CHAT[tenant][:-2] + "70"
    answer = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": ANSWER[tenant]}]}])
    use = {"agentwatch.credential.id": CREDENTIAL[tenant], "agentwatch.credential.tenant.id": tenant,
           "agentwatch.credential.scope": "db:read", "agentwatch.resource.name": f"{tenant}/db",
           "agentwatch.resource.tenant.id": tenant, "agentwatch.credential.action": "query"}
    return [
        _span(tenant, root, "", "invoke_agent planner", at, 30 * NS, {"gen_ai.operation.name": "invoke_agent"}),
        _span(tenant, CHAT[tenant], root, "chat gpt-4o", at + NS, 10 * NS,
              {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.provider.name": "openai",
               "gen_ai.usage.input_tokens": "1000", "gen_ai.usage.output_tokens": "500",
               "agentwatch.cost.usd": str(COST[tenant]), "gen_ai.output.messages": answer}),
        _span(tenant, tool, root, "execute_tool query_db", at + 12 * NS, NS,
              {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "query_db"},
              [(at + 12 * NS, "agentwatch.credential.use", use)]),
    ]


def _gpu_rows(tenant: str, now: int) -> list[list]:
    attrs = {"hw.id": f"GPU-{tenant}-0", "hw.name": "NVIDIA H100 80GB HBM3", "hw.type": "gpu"}
    resource = {"service.name": f"{tenant}-agents", "agentwatch.tenant.id": tenant, "host.name": f"{tenant}-gpu-host"}
    return [[f"{tenant}-agents", resource, "hw.gpu.utilization", "1", attrs, now - k * 30 * NS, 0.5]
            for k in range(1, 20)]


@pytest.fixture(scope="module")
def store(client, dsn, database):
    now = time.time_ns()
    for tenant in TENANTS:
        rows = _trace_rows(tenant, now - 600 * NS)
        client.insert("otel_traces", [list(r.values()) for r in rows], column_names=list(rows[0]))
        client.insert("otel_metrics_gauge", _gpu_rows(tenant, now),
                      column_names=["ServiceName", "ResourceAttributes", "MetricName", "MetricUnit", "Attributes",
                                    "TimeUnix", "Value"])
    detected = datetime.fromtimestamp(now / NS, UTC)
    client.insert("anomalies", [[ANOMALY[t], detected, "cost_spike", "critical", t, AGENT[t], TRACE[t], 9.0,
                                 f"{AGENT[t]} spent ${COST[t]} in one call", json.dumps({"trace_id": TRACE[t]}),
                                 "open", detected - timedelta(minutes=10), detected - timedelta(minutes=9)]
                                for t in TENANTS],
                  column_names=["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score",
                                "Summary", "Evidence", "Status", "FirstSeen", "LastSeen"])
    with store_env(dsn, database):
        yield client


def app(monkeypatch, viewer: Viewer | None, **query) -> AppTest:
    """The dashboard as this viewer sees it: the sign-in's answer stands in for a browser session."""
    monkeypatch.setattr(auth, "current_viewer", lambda: viewer)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return ok(at.run())


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.sidebar.radio(key="page").set_value(page).run())


def everything_shown(at: AppTest) -> str:
    """Every text, table cell, metric and choice on the page, as one string (markdown as the reader sees it)."""
    parts = [plain(str(e.value)) for kind in ("markdown", "caption", "error", "info", "success", "warning", "header",
                                       "subheader", "json", "code", "text_area") for e in at.get(kind)]
    parts += [plain(f"{m.label} {m.value}") for m in at.metric]
    parts += [d.value.to_csv() for d in at.dataframe]
    parts += [" ".join(map(str, box.options)) for box in (*at.selectbox, *at.multiselect)]
    parts += [node.proto.spec for node in at.get("vega_lite_chart")]
    parts += [json.dumps(list(getattr(node.proto, "datasets", [])), default=str) for node in at.get("vega_lite_chart")]
    return "\n".join(parts)


def number(text: str) -> float:
    return float(text.replace("$", "").replace(",", "").split()[0])


# --- what a viewer of acme sees --------------------------------------------------------------------------

def test_a_viewer_of_acme_finds_nothing_of_globex_on_any_page(store, monkeypatch):
    at = app(monkeypatch, VIEWER)
    assert at.sidebar.radio(key="page").options == list(PAGES)  # no audit log for a viewer
    seen = {}
    for page in PAGES:
        at = goto(at, page)
        seen[page] = everything_shown(at)
        assert "globex" not in seen[page].lower() and "6b6b6b" not in seen[page], page
    assert {m.label: m.value for m in at.metric}["Devices"] == "1" and "GPU-acme-0" in seen["GPUs"]
    assert ANOMALY["acme"] in seen["Anomalies"] and AGENT["acme"] in seen["Overview"]
    assert TRACE["acme"] in seen["Trace replay"] and CREDENTIAL["acme"] in seen["Credentials"]
    at = goto(at, "Costs")
    assert number({m.label: m.value for m in at.metric}["Cost"]) == pytest.approx(COST["acme"])


def test_every_url_parameter_of_a_globex_object_is_not_found_for_acme(store, monkeypatch):
    at = app(monkeypatch, VIEWER, trace=TRACE["globex"])
    assert shows(at, f"No spans stored for trace `{TRACE['globex']}`")
    assert "globex" not in everything_shown(at).lower().replace(TRACE["globex"], "")
    at = app(monkeypatch, VIEWER, anomaly=ANOMALY["globex"], trace=TRACE["globex"])
    assert at.sidebar.radio(key="page").value == "Anomalies"
    assert shows(at, f"No anomaly with id '{ANOMALY['globex']}'")
    assert "globex" not in everything_shown(at).lower()
    # the same ids of acme open
    at = app(monkeypatch, VIEWER, anomaly=ANOMALY["acme"], trace=TRACE["acme"])
    assert at.selectbox(key="anomaly_id").value == ANOMALY["acme"] and shows(at, AGENT["acme"])
    at = app(monkeypatch, VIEWER, page="audit")
    assert at.sidebar.radio(key="page").value == "Overview"
    # typed into the page: a globex trace id in the finder, a globex span id in the spans view
    at = goto(app(monkeypatch, VIEWER), "Trace replay")
    ok(at.text_input(key="find_trace_id").set_value(TRACE["globex"]).run())
    at = ok(at.button(key="find_open_id").click().run())
    assert shows(at, f"No spans stored for trace `{TRACE['globex']}`")
    at = app(monkeypatch, VIEWER, trace=TRACE["acme"])
    ok(at.segmented_control(key="trace_view").set_value("Spans").run())
    ok(at.text_input(key="spans_pick").set_value(CHAT["globex"]).run())
    at = ok(at.button(key="spans_go").click().run())
    assert at.session_state["step"] == 1 and at.session_state["trace_view"] == "Replay"
    ok(at.segmented_control(key="trace_view").set_value("Search").run())
    at = ok(at.text_input(key="trace_search").set_value("the end of").run())
    assert set(at.dataframe[0].value["SpanId"]) == {CHAT["acme"]}


def test_every_lookup_by_id_of_another_tenant_returns_what_a_missing_id_returns(store):
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
    chat = trace_model.load(store, LOCAL_ADMIN, TRACE["globex"]).span(CHAT["globex"])
    ref = {"TraceId": TRACE["globex"], "SpanId": CHAT["globex"], "StartNs": int(chat["StartNs"]),
           "ServiceName": chat["ServiceName"], "SpanName": chat["SpanName"]}
    missing = {**ref, "SpanId": "0" * 16}
    for viewer, sees in ((VIEWER, False), (RESPONDER, False), (LOCAL_ADMIN, True)):
        assert (trace_model.load(store, viewer, TRACE["globex"]) is not None) is sees
        assert (data.anomaly(store, viewer, ANOMALY["globex"]) is not None) is sees
        payload = data.span_payload(store, viewer, ref, "gen_ai.output.messages")
        assert (payload is not None and ANSWER["globex"] in payload) is sees
        assert bool(data.span_attributes(store, viewer, ref)) is sees
        assert (not data.search_trace(store, viewer, TRACE["globex"], "the end of").is_empty()) is sees
        assert bool(b"".join(data.export_trace(store, viewer, TRACE["globex"]))) is sees
        assert (not data.credential_trail(store, viewer, CREDENTIAL["globex"], start, end).is_empty()) is sees
        assert (not data.trace_credentials(store, viewer, TRACE["globex"]).is_empty()) is sees
        assert (set(data.tenants(store, viewer, start, end)) == set(TENANTS)) is sees
    # not found is not found, whoever asks
    assert data.span_payload(store, LOCAL_ADMIN, missing, "gen_ai.output.messages") is None
    assert data.anomaly(store, LOCAL_ADMIN, "f" * 32) is None


def test_gpu_rows_and_costs_belong_to_their_tenant(store):
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
    devices = lambda viewer: set(data.gpu_metrics(store, viewer, start, end)["Device"])  # noqa: E731
    assert devices(VIEWER) == {"GPU-acme-0"} and devices(LOCAL_ADMIN) == {"GPU-acme-0", "GPU-globex-0"}
    by_tenant = lambda viewer: dict(data.costs(store, viewer, start, end).select("Tenant", "CostUSD").iter_rows())  # noqa: E731
    assert by_tenant(VIEWER) == pytest.approx({"acme": COST["acme"]})
    assert by_tenant(LOCAL_ADMIN) == pytest.approx(COST)
    nobody = Viewer("cy", "viewer", None)  # no grant: a non-admin without tenants sees none, not all
    assert data.tenants(store, nobody, start, end) == [] and devices(nobody) == set()


def test_an_admin_sees_both_tenants_and_the_audit_log(store, monkeypatch):
    at = app(monkeypatch, LOCAL_ADMIN)
    assert at.sidebar.radio(key="page").options == [*PAGES, "Audit log"]
    at = goto(at, "Anomalies")
    assert set(at.dataframe[0].value["Tenant"]) == set(TENANTS)
    at = app(monkeypatch, LOCAL_ADMIN, trace=TRACE["globex"])
    assert number({m.label: m.value for m in at.metric}["Spans"]) == 3


# --- roles: who may act ----------------------------------------------------------------------------------

ACTION_BUTTONS = ("ack", "resolve", "reopen", "halt_trace", "halt_agent", "halt_tenant")


def test_a_viewer_has_no_action_buttons_and_the_data_layer_refuses_its_actions(store, monkeypatch):
    at = app(monkeypatch, VIEWER, anomaly=ANOMALY["acme"])
    assert at.selectbox(key="anomaly_id").value == ANOMALY["acme"]
    assert not [b.key for b in at.button if b.key in ACTION_BUTTONS]
    assert shows(at, "take a responder")
    for act in (lambda: data.set_anomaly_status(store, VIEWER, ANOMALY["acme"], "resolved"),
                lambda: data.halt(store, VIEWER, ANOMALY["acme"], "agent"),
                lambda: data.release(store, VIEWER, ANOMALY["acme"], "agent"),
                lambda: data.audit_log(store, RESPONDER)):
        with pytest.raises(data.NotAllowed):
            act()
    # a responder of acme cannot act on globex's anomaly: it is not found
    for act in (lambda: data.set_anomaly_status(store, RESPONDER, ANOMALY["globex"], "resolved"),
                lambda: data.halt(store, RESPONDER, ANOMALY["globex"], "tenant")):
        with pytest.raises(LookupError):
            act()
    assert data.anomaly(store, LOCAL_ADMIN, ANOMALY["acme"])["Status"] == "open"
    assert data.anomaly(store, LOCAL_ADMIN, ANOMALY["globex"])["Status"] == "open"
    assert halts.open_halts(store) == []


def test_a_responder_acknowledges_resolves_halts_and_releases_from_the_anomaly(store, receiver, monkeypatch):
    guard = Guard(f"http://127.0.0.1:{receiver.http_port}", tenant="acme")
    at = app(monkeypatch, RESPONDER, anomaly=ANOMALY["acme"])
    at = ok(at.button(key="ack").click().run())
    assert data.anomaly(store, LOCAL_ADMIN, ANOMALY["acme"])["Status"] == "acknowledged"
    at = ok(at.button(key="resolve").click().run())
    assert data.anomaly(store, LOCAL_ADMIN, ANOMALY["acme"])["Status"] == "resolved"
    assert {b.key for b in at.button} >= {"halt_trace", "halt_agent", "halt_tenant"}
    at.text_input(key="halt_reason").set_value("runaway spend")
    at = ok(at.button(key="halt_agent").click().run())
    (halt,) = halts.open_halts(store)
    assert (halt.tenant, halt.scope, halt.target, halt.anomaly_id) == ("acme", "agent", AGENT["acme"], ANOMALY["acme"])
    assert halt.decided_by == "dashboard:bo@acme" and halt.reason == "runaway spend"
    assert shows(at, "stop at their next call") and shows(at, "halted since")

    def halted_agents() -> set[str]:
        guard.refresh()
        return {v.target for v in guard.verdicts if v.scope == "agent"}

    assert wait_for(lambda: halted_agents() == {AGENT["acme"]})  # what the agents' guards now enforce
    at = ok(at.button(key="release_agent").click().run())
    assert halts.open_halts(store) == [] and shows(at, "carry on")
    wait_for(lambda: halted_agents() == set())  # the same agents go on, nothing restarted
    assert "halt_agent" in {b.key for b in at.button}


def test_the_audit_log_records_who_did_what_and_only_admins_see_it(store, monkeypatch):
    since = datetime.now(UTC)
    at = app(monkeypatch, VIEWER, trace=TRACE["acme"])
    answer = trace_model.load(store, VIEWER, TRACE["acme"]).step_of_span(CHAT["acme"], end=True)
    at = ok(at.number_input(key="step").set_value(answer).run())
    toggle = at.toggle(key=f"open|{CHAT['acme']}|gen_ai.output.messages")
    at = ok(toggle.set_value(True).run())
    assert [t for t in at.text_area if ANSWER["acme"] in t.value]
    ok(at.number_input(key="step").set_value(1).run())  # moving on does not record the trace again
    data.set_anomaly_status(store, RESPONDER, ANOMALY["acme"], "open")
    entries = [e for e in audit.entries(store, since=since) if e.actor in ("dashboard:ana@acme", "dashboard:bo@acme")]
    done = [(e.actor, e.action, e.tenant, e.target) for e in reversed(entries)]
    assert done == [
        ("dashboard:ana@acme", AUDIT_SIGN_IN, "", ""),
        ("dashboard:ana@acme", "trace_opened", "acme", TRACE["acme"]),
        ("dashboard:ana@acme", "payload_opened", "acme", f"{TRACE['acme']}/{CHAT['acme']}/gen_ai.output.messages"),
        ("dashboard:bo@acme", AUDIT_ANOMALY_STATUS["open"], "acme", ANOMALY["acme"]),
    ]
    assert entries[-1].role == "viewer" and entries[0].detail["to"] == "open"
    # the earlier tests' actions are there too: status changes, the halt and its release
    actions = {(e.actor, e.action) for e in audit.entries(store)}
    assert {("dashboard:bo@acme", AUDIT_ANOMALY_STATUS["acknowledged"]), ("dashboard:bo@acme", AUDIT_HALT),
            ("dashboard:bo@acme", AUDIT_RELEASE)} <= actions
    at = goto(app(monkeypatch, LOCAL_ADMIN), "Audit log")
    shown = at.dataframe[0].value
    assert {"dashboard:ana@acme", "dashboard:bo@acme", "dashboard:local"} <= set(shown["Actor"])
    ok(at.selectbox(key="audit_action").set_value(AUDIT_HALT).run())
    assert set(at.dataframe[0].value["Action"]) == {AUDIT_HALT}
    for viewer in (VIEWER, RESPONDER):
        at = app(monkeypatch, viewer, page="audit")
        assert "Audit log" not in at.sidebar.radio(key="page").options


def test_nobody_signed_in_sees_no_page_and_no_data(store, monkeypatch):
    at = app(monkeypatch, None, trace=TRACE["acme"], anomaly=ANOMALY["acme"])
    assert not [w for w in at.sidebar.radio if w.key == "page"]
    shown = everything_shown(at)
    assert "acme" not in shown and TRACE["acme"] not in shown and not at.dataframe


# --- a span id another tenant sends again ------------------------------------------------------------------

CLASH_TRACE = "c1a5c1a5c1a5c1a5c1a5c1a5c1a50003"
CLASH_ROOT, CLASH_SPAN = "c1a50000000000a1", "c1a50000000000c4"
SECRET = {t: f"{t} secret: " + "keep the ledger closed, " * 40 + f"the end of {t}'s secret." for t in TENANTS}
NOTE = {t: f"{t}-note" for t in TENANTS}
GLOBEX_VIEWER = Viewer("gil@globex", "viewer", frozenset({"globex"}), via="oidc")


def _clash_rows(tenant: str, span_id: str, parent: str, at: int, service: str = "acme-agents") -> dict:
    row = _span(tenant, span_id, parent, "chat gpt-4o", at, 10 * NS,
                {"gen_ai.operation.name": "chat", "gen_ai.output.messages": SECRET[tenant], "clash.note": NOTE[tenant]})
    row.update(TraceId=CLASH_TRACE, ServiceName=service)
    row["ResourceAttributes"] = {**row["ResourceAttributes"], "service.name": service}
    return row


@pytest.fixture(scope="module")
def clash(store):
    """acme's trace, and globex's spans sent with acme's TraceId and the SpanId of acme's model call: one with
    every part of its key (start, service, name) the same, one a second later. Each carries its tenant's secret."""
    at = time.time_ns() - 300 * NS
    root = {**_span("acme", CLASH_ROOT, "", "invoke_agent planner", at, 30 * NS,
                    {"gen_ai.operation.name": "invoke_agent"}), "TraceId": CLASH_TRACE}
    rows = [_clash_rows("globex", CLASH_SPAN, CLASH_ROOT, at + NS), _clash_rows("globex", CLASH_SPAN, "", at + 2 * NS)]
    store.insert("otel_traces", [list(r.values()) for r in rows], column_names=list(rows[0]))
    rows = [root, _clash_rows("acme", CLASH_SPAN, CLASH_ROOT, at + NS)]
    store.insert("otel_traces", [list(r.values()) for r in rows], column_names=list(rows[0]))
    return at


def _marks(tenant: str) -> tuple[str, ...]:
    return f"the end of {tenant}'s secret", NOTE[tenant], AGENT[tenant]


def test_a_span_sent_again_with_another_tenants_ids_shows_nobody_the_other_tenants_span(clash, store, monkeypatch):
    payload_key = "gen_ai.output.messages"
    shared = {"TraceId": CLASH_TRACE, "SpanId": CLASH_SPAN}
    same_key = {**shared, "StartNs": clash + NS, "ServiceName": "acme-agents", "SpanName": "chat gpt-4o"}
    later = {**same_key, "StartNs": clash + 2 * NS}
    for viewer, own, other in ((VIEWER, "acme", "globex"), (GLOBEX_VIEWER, "globex", "acme")):
        leaked = lambda text: [m for m in _marks(other) if m in text]  # noqa: E731
        # the spans (the replay's and the Spans view's): the viewer's own row, with its own attributes
        trace = trace_model.load(store, viewer, CLASH_TRACE)
        assert set(trace.spans["Tenant"]) == {own} and not leaked(str(trace.spans.to_dicts())), own
        span = trace.span(CLASH_SPAN)
        assert span["Attributes"]["clash.note"] == NOTE[own]
        assert trace.payloads(CLASH_SPAN) == {payload_key: len(SECRET[own])}
        # payload reads, whichever key they are given
        for ref in (shared, same_key, later):
            payload = data.span_payload(store, viewer, ref, payload_key)
            small = data.span_attributes(store, viewer, ref)
            assert payload in (None, SECRET[own]) and small.get("clash.note") in (None, NOTE[own]), (own, ref)
        assert data.span_payload(store, viewer, same_key, payload_key) == SECRET[own]
        assert (data.span_payload(store, viewer, later, payload_key) is None) is (own == "acme")
        whole = data.spans_attributes(store, viewer, CLASH_TRACE, [CLASH_SPAN], clash - NS, clash + 60 * NS)
        assert whole[CLASH_SPAN]["clash.note"] == NOTE[own] and not leaked(str(whole))
        # search and the download of the whole trace
        hits = data.search_trace(store, viewer, CLASH_TRACE, "secret")
        assert not hits.is_empty() and not leaked(hits.write_csv())
        assert data.search_trace(store, viewer, CLASH_TRACE, f"the end of {other}").is_empty()
        assert data.search_trace(store, viewer, CLASH_TRACE, NOTE[other]).is_empty()
        lines = [json.loads(line) for line in b"".join(data.export_trace(store, viewer, CLASH_TRACE)).splitlines()]
        assert {line["SpanAttributes"]["agentwatch.tenant.id"] for line in lines} == {own}
        assert any(SECRET[own] in json.dumps(line) for line in lines) and not leaked(json.dumps(lines))
        # the pages: the replay on the model call's answer, the Spans view, the Search view
        at = app(monkeypatch, viewer, trace=CLASH_TRACE)
        at = ok(at.number_input(key="step").set_value(trace.step_of_span(CLASH_SPAN, end=True)).run())
        toggle = [t for t in at.toggle if t.key == f"open|{CLASH_SPAN}|{payload_key}"]
        if toggle:
            at = ok(toggle[0].set_value(True).run())
        shown = everything_shown(at)
        assert f"the end of {own}'s secret" in shown and not leaked(shown), own
        ok(at.segmented_control(key="trace_view").set_value("Spans").run())
        assert not leaked(everything_shown(at))
        ok(at.segmented_control(key="trace_view").set_value("Search").run())
        at = ok(at.text_input(key="trace_search").set_value("secret").run())
        assert set(at.dataframe[0].value["SpanId"]) == {CLASH_SPAN} and not leaked(everything_shown(at))
    # an admin sees both tenants' spans, each with its own attributes and payload
    lines = [json.loads(line) for line in b"".join(data.export_trace(store, LOCAL_ADMIN, CLASH_TRACE)).splitlines()]
    by_tenant = {}
    for line in lines:
        by_tenant.setdefault(line["SpanAttributes"]["agentwatch.tenant.id"], []).append(line)
    assert sorted(by_tenant) == sorted(TENANTS) and len(by_tenant["globex"]) == 2
    for row in data.trace_spans(store, LOCAL_ADMIN, CLASH_TRACE).iter_rows(named=True):
        assert row["Attributes"]["agentwatch.tenant.id"] == row["Tenant"]
        if row["SpanId"] == CLASH_SPAN:
            assert row["Attributes"]["clash.note"] == NOTE[row["Tenant"]]


def test_cache_keys_tell_grants_apart_and_telemetry_text_is_drawn_as_typed():
    from agentwatch.dashboard.text import code, literal
    from agentwatch.dashboard.views.common import scope_key

    one, two = Viewer("x", "viewer", frozenset({"a,b"})), Viewer("y", "viewer", frozenset({"a", "b"}))
    assert scope_key(one) != scope_key(two) and scope_key(LOCAL_ADMIN) not in (scope_key(one), scope_key(two))
    injected = "![pixel](https://evil.example/p.png) [click](https://evil.example) <https://evil.example> :red[x]"
    shown = literal(injected + "\n# heading")
    assert "\n" not in shown and "](" not in shown and "\\<https\\:" in shown and "\\# heading" in shown
    assert plain(literal("acme-planner-1 (test anomaly)")) == "acme-planner-1 (test anomaly)"
    assert code("agent-1") == "`agent-1`" and "`" not in code("a`](x)").replace("\\`", "")

"""The dashboard, driven page by page with Streamlit's AppTest on a store filled by the demo fleet.

The fleet runs in fast-forward through the real SDK and the real receiver into
an embedded store (the last 20 minutes of a 6-tenant fleet, its five labelled
incidents included). On top of it `seed` writes what the detectors would (an
anomaly per incident), one trace whose model call thought for 8 MB, and GPU
metrics, the way the receiver stores them. The browser test reuses `seed` in
a subprocess, against a store of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import agentwatch
from agentwatch import demo
from agentwatch.dashboard import auth, data, replay, trace_model
from agentwatch.dashboard.auth import LOCAL_ADMIN
from agentwatch.schemas import store
from agentwatch.schemas.vocabulary import CROSS_TENANT_USE_SQL
from tests.helpers import store_env

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
NS = 1_000_000_000
FLEET_S = 1200

BIG_TRACE = "b16b16b16b16b16b16b16b16b16b1600"
BIG_AGENT = "acme-deep-thinker-1"
BIG_END = "…and that is the whole chain of thought, end marker 7f3a."
BIG_REASONING = "".join(f"thought {i}: compare ledger row {i % 977} with invoice {i % 613}, then " for i in range(140_000)) \
    + BIG_END
assert len(BIG_REASONING) > 8 * 1024 * 1024


# --- seeding (also run by tests/test_dashboard_browser.py in a subprocess) ------------------------------

def anomaly_id(kind: str, tenant: str, subject: str, start_ns: int) -> str:
    """The detectors' deterministic id: sha1 of kind|tenant|subject|episode start minute, 32 hex digits."""
    return hashlib.sha1(f"{kind}|{tenant}|{subject}|{start_ns // (60 * NS)}".encode()).hexdigest()[:32]


ANOMALY_COLUMNS = ["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score", "Summary",
                   "Evidence", "Status", "FirstSeen", "LastSeen"]


def _big_trace_rows(at_ns: int) -> list[dict]:
    """A deep-thinker agent: one model call with an 8 MB chain of thought, one tool call with a lifted credential."""
    root, chat, tool = "d1d1d1d1d1d1d1d1", "c4c4c4c4c4c4c4c4", "7007700770077007"
    common = {"agentwatch.tenant.id": "acme", "gen_ai.agent.id": BIG_AGENT, "gen_ai.agent.name": "deep-thinker"}
    resource = {"service.name": "demo-fleet"}
    output = json.dumps([{"role": "assistant", "finish_reason": "stop", "parts": [
        {"type": "reasoning", "content": BIG_REASONING},
        {"type": "text", "content": "The ledger and the invoices disagree on 3 rows."}]}])
    prompt = json.dumps([{"role": "user", "parts": [{"type": "text", "content":
                                                     "Reconcile every ledger row with its invoice. " * 20}]}])

    def span(span_id, parent, name, kind, start, duration, attributes, events=()):
        return {"Timestamp": start, "TraceId": BIG_TRACE, "SpanId": span_id, "ParentSpanId": parent,
                "TraceState": "", "SpanName": name, "SpanKind": kind, "ServiceName": "demo-fleet",
                "ResourceAttributes": resource, "ScopeName": "agentwatch", "ScopeVersion": "0.1.0",
                "SpanAttributes": {**common, **attributes}, "Duration": duration, "StatusCode": "Unset",
                "StatusMessage": "", "Events.Timestamp": [e[0] for e in events], "Events.Name": [e[1] for e in events],
                "Events.Attributes": [e[2] for e in events], "Links.TraceId": [], "Links.SpanId": [],
                "Links.TraceState": [], "Links.Attributes": []}

    use = {"agentwatch.credential.id": "cred-globex-warehouse", "agentwatch.credential.tenant.id": "globex",
           "agentwatch.credential.scope": "warehouse:read", "agentwatch.resource.name": "globex/warehouse/finance",
           "agentwatch.resource.tenant.id": "globex", "agentwatch.credential.action": "query"}
    return [
        span(root, "", "invoke_agent deep-thinker", "Internal", at_ns, 200 * NS,
             {"gen_ai.operation.name": "invoke_agent", "gen_ai.input.messages": prompt}),
        span(chat, root, "chat o1", "Client", at_ns + NS, 150 * NS,
             {"gen_ai.operation.name": "chat", "gen_ai.request.model": "o1", "gen_ai.provider.name": "openai",
              "gen_ai.usage.input_tokens": "12000", "gen_ai.usage.output_tokens": "2100000",
              "gen_ai.usage.reasoning.output_tokens": "2090000", "agentwatch.cost.usd": "126.18",
              "gen_ai.input.messages": prompt, "gen_ai.output.messages": output}),
        span(tool, root, "execute_tool run_sql", "Internal", at_ns + 160 * NS, 2 * NS,
             {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "run_sql",
              "gen_ai.tool.call.arguments": json.dumps({"query": "SELECT * FROM invoices",
                                                        "database": "globex/warehouse/finance"}),
              "gen_ai.tool.call.result": json.dumps({"rows": 1000})},
             [(at_ns + 160 * NS, "agentwatch.credential.use", use)]),
    ]


def seed(client, now_ns: int | None = None) -> dict:
    """Anomalies for the demo's incidents, the 8 MB-thought trace and its anomaly, GPU metrics. Returns ids."""
    now_ns = now_ns or time.time_ns()
    incidents = client.query("SELECT Kind, Tenant, AgentId, TraceId, CredentialId, toUnixTimestamp64Nano(StartedAt), "
                             "toUnixTimestamp64Nano(EndedAt), Description FROM demo_incidents").result_rows
    rows, ids = [], {}
    for kind, tenant, agent, trace, credential, start, end, description in incidents:
        subject = credential or agent or trace
        aid = anomaly_id(kind, tenant, subject, start)
        ids[kind] = {"id": aid, "trace": trace, "tenant": tenant, "agent": agent, "credential": credential}
        evidence = {"trace_id": trace, "agent_id": agent, "credential_id": credential, "observed": 42.0,
                    "baseline": {"mean": 1.5, "std": 0.5}, "threshold": 6.0, "window_s": 60}
        # a loop is caught some repeats into it: its anomaly fires a quarter into the trace
        first = start + (end - start) // 4 if kind == "loop" else start
        rows.append([aid, datetime.fromtimestamp(end / NS, UTC), kind, "critical" if kind == "cross_tenant" else "warning",
                     tenant, agent, trace, 12.5, f"{description} (test anomaly)", json.dumps(evidence), "open",
                     first, end])
    big_at = now_ns - 300 * NS
    client.insert("otel_traces", [list(r.values()) for r in _big_trace_rows(big_at)],
                  column_names=list(_big_trace_rows(big_at)[0].keys()))
    aid = anomaly_id("cost_spike", "acme", BIG_AGENT, big_at)
    ids["big"] = {"id": aid, "trace": BIG_TRACE, "tenant": "acme", "agent": BIG_AGENT}
    rows.append([aid, datetime.fromtimestamp(now_ns / NS, UTC), "cost_spike", "critical", "acme", BIG_AGENT, BIG_TRACE,
                 30.0, f"{BIG_AGENT} spent $126.18 on one o1 call that reasoned for 2,090,000 tokens",
                 json.dumps({"cost_usd": 126.18, "baseline": {"cost_per_min": 0.02}, "trace_id": BIG_TRACE}),
                 "open", big_at, big_at + 200 * NS])
    client.insert("anomalies", rows, column_names=ANOMALY_COLUMNS)
    _seed_gpus(client, now_ns)
    return ids


def _seed_gpus(client, now_ns: int) -> None:
    gauge, sums = [], []
    devices = [("GPU-1111aaaa-0000", "NVIDIA H100 80GB HBM3"), ("GPU-2222bbbb-0000", "NVIDIA H100 80GB HBM3")]
    for k in range(60):
        t = now_ns - (60 - k) * 30 * NS
        for d, (uuid, name) in enumerate(devices):
            attrs = {"hw.id": uuid, "hw.name": name, "hw.vendor": "NVIDIA", "hw.type": "gpu"}
            util = 0.35 + 0.5 * ((k + 20 * d) % 30) / 30
            gauge.append(["demo-fleet", "hw.gpu.utilization", "1", attrs, t, util])
            gauge.append(["demo-fleet", "hw.power", "W", attrs, t, 180.0 + 400 * util])
            sums.append(["demo-fleet", "hw.gpu.memory.usage", "By", attrs, t, (30 + 40 * util) * 2**30])
            sums.append(["demo-fleet", "hw.gpu.memory.limit", "By", attrs, t, 80 * 2**30])
            sums.append(["demo-fleet", "process.gpu.memory.usage", "By", {**attrs, "process.pid": str(4100 + d)}, t,
                         (28 + 40 * util) * 2**30])
    columns = ["ServiceName", "MetricName", "MetricUnit", "Attributes", "TimeUnix", "Value"]
    client.insert("otel_metrics_gauge", gauge, column_names=columns)
    client.insert("otel_metrics_sum", sums, column_names=columns)


def seed_main(dsn: str, database: str) -> None:
    """Entry point for a subprocess: seed a store this process alone opens; print the ids as JSON."""
    client = store.connect(dsn, database)
    print(json.dumps(seed(client)))
    client.close()


# --- the store, filled by the demo fleet -------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(receiver, client, dsn, database):
    # ten minutes of slack: the last sub-agents of the run end a little after it, and must not be in the future
    start_ns = time.time_ns() - (FLEET_S + 600) * NS
    clock = demo.make_clock(start_ns)
    telemetry = agentwatch.init("demo-fleet", endpoint=f"http://127.0.0.1:{receiver.http_port}", clock=clock,
                                gpu_interval=None, max_queue_size=65_536)
    try:
        result = demo.run_fleet(duration_s=FLEET_S, start_ns=clock(), seed=7)
        assert telemetry.flush(timeout_s=300)
    finally:
        agentwatch.shutdown()
    assert receiver.flush(timeout_s=300)
    demo.record_incidents(client, result.run_id, result.incidents)
    ids = seed(client)
    with store_env(dsn, database):
        yield {"result": result, "ids": ids}


@pytest.fixture(autouse=True)
def local_user(monkeypatch):
    """AppTest has no connection of its own to tell loopback by: the sign-in answers as for the user on loopback
    (the local admin; roles and tenants are tried in tests/test_dashboard_scope.py)."""
    monkeypatch.setattr(auth, "current_viewer", lambda: LOCAL_ADMIN)


def app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def number(text: str) -> float:
    return float(text.replace("$", "").replace(",", "").split()[0])


def plain(markdown: str) -> str:
    """What a reader sees of markdown that telemetry text was escaped into (dashboard/text.py): no backslash
    escapes, no word joiners."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def shows(at: AppTest, text: str) -> bool:
    """Whether some markdown, alert or caption on the page contains text (as the reader sees it)."""
    return any(text in plain(e.value) for kind in ("markdown", "error", "info", "caption", "success", "warning")
               for e in at.get(kind))


def chart_titles(at: AppTest) -> list[str]:
    """Titles of the Vega-Lite (Altair) charts on the page; layered charts carry theirs at the top."""
    titles = []
    for node in at.get("vega_lite_chart"):
        spec = json.loads(node.proto.spec)
        title = spec.get("title") or next((layer.get("title") for layer in spec.get("layer", []) if layer.get("title")), "")
        titles.append(title if isinstance(title, str) else title.get("text", "") if title else "")
    return titles


def goto(at: AppTest, page: str) -> AppTest:
    return ok(at.sidebar.radio(key="page").set_value(page).run())


# --- pages ---------------------------------------------------------------------------------------------

def test_overview_shows_the_fleet_in_the_time_range(fleet, client):
    at = ok(app())
    assert at.sidebar.radio(key="page").value == "Overview"
    assert at.sidebar.selectbox(key="range").value == "Last hour"
    shown = metrics(at)
    stored_spans, stored_cost = client.query("SELECT count(), sum(CostUSD) FROM agent_spans").result_rows[0]
    assert number(shown["Spans in range"]) == stored_spans
    assert number(shown["Cost in range"]) == pytest.approx(stored_cost, abs=0.01)
    assert number(shown["Open anomalies"]) == len(fleet["ids"])
    assert number(shown["Spans/s (last minute)"]) >= 0
    assert chart_titles(at) == ["Spans per second", "Cost per minute by tenant", "Cost by agent (USD)"]
    top = at.dataframe[0].value
    assert list(top["CostUSD"]) == sorted(top["CostUSD"], reverse=True)
    assert top["AgentId"][0] == client.query("SELECT AgentId FROM agent_spans WHERE AgentId != '' GROUP BY AgentId "
                                             "ORDER BY sum(CostUSD) DESC LIMIT 1").result_rows[0][0]
    # a shorter range shows less
    ok(at.sidebar.selectbox(key="range").set_value("Last 15 minutes").run())
    assert number(metrics(at)["Spans in range"]) < stored_spans
    # the open-anomaly picker leads to the inbox
    at.selectbox(key="overview_anomaly").set_value(fleet["ids"]["loop"]["id"])
    ok(at.button(key="overview_open").click().run())
    assert at.sidebar.radio(key="page").value == "Anomalies"
    assert at.selectbox(key="anomaly_id").value == fleet["ids"]["loop"]["id"]


def test_anomalies_inbox_filters_and_writes_acknowledge_and_resolve_back(fleet, client):
    at = goto(ok(app()), "Anomalies")
    inbox = at.dataframe[0].value
    assert len(inbox) == len(fleet["ids"])
    ok(at.multiselect(key="f_kind").set_value(["cross_tenant"]).run())
    inbox = at.dataframe[0].value
    assert list(inbox["Kind"]) == ["cross_tenant"] and list(inbox["Severity"]) == ["critical"]
    target = fleet["ids"]["cross_tenant"]
    assert at.selectbox(key="anomaly_id").value == target["id"]
    assert shows(at, "lifted") and shows(at, "(test anomaly)")
    assert metrics(at)["Status"] == "open"
    evidence = at.json[0].value
    assert json.loads(evidence)["trace_id"] == target["trace"]
    (title,) = chart_titles(at)  # the baseline chart
    assert title.startswith(f"uses of {target['credential']} per minute")

    ok(at.button(key="ack").click().run())
    status = client.query("SELECT Status FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                          parameters={"a": target["id"]}).result_rows
    assert status == [("acknowledged",)]
    assert metrics(at)["Status"] == "acknowledged"
    assert at.button(key="ack").disabled
    versions = client.query("SELECT Status, Kind, Summary, TraceId FROM anomalies WHERE AnomalyId = {a:String} "
                            "ORDER BY UpdatedAt", parameters={"a": target["id"]}).result_rows
    assert [v[0] for v in versions] == ["open", "acknowledged"]  # a new row version, the rest kept
    assert versions[0][1:] == versions[1][1:]

    ok(at.button(key="resolve").click().run())
    assert client.query("SELECT Status FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                        parameters={"a": target["id"]}).result_rows == [("resolved",)]
    # resolved ones leave the default inbox (open + acknowledged) but the selection stays readable
    ok(at.multiselect(key="f_status").set_value(["open", "acknowledged"]).run())
    assert at.dataframe == [] or target["id"] not in list(at.dataframe[0].value["AnomalyId"])
    ok(at.multiselect(key="f_status").set_value(["resolved"]).run())
    assert list(at.dataframe[0].value["AnomalyId"]) == [target["id"]]
    ok(at.button(key="reopen").click().run())
    assert client.query("SELECT Status FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                        parameters={"a": target["id"]}).result_rows == [("open",)]

    # severity and tenant filters
    ok(at.multiselect(key="f_kind").set_value([]).run())
    ok(at.multiselect(key="f_status").set_value([]).run())
    ok(at.multiselect(key="f_severity").set_value(["warning"]).run())
    assert set(at.dataframe[0].value["Severity"]) == {"warning"}
    ok(at.multiselect(key="f_tenant").set_value([fleet["ids"]["loop"]["tenant"]]).run())
    assert set(at.dataframe[0].value["Tenant"]) == {fleet["ids"]["loop"]["tenant"]}


def test_an_anomaly_opens_its_trace_at_the_step_it_fired(fleet, client):
    at = goto(ok(app()), "Anomalies")
    target = fleet["ids"]["loop"]
    ok(at.selectbox(key="anomaly_id").set_value(target["id"]).run())
    ok(at.button(key="open_anomaly_trace").click().run())
    assert at.sidebar.radio(key="page").value == "Trace replay"
    assert at.session_state["trace_id"] == target["trace"]
    shown = metrics(at)
    assert number(shown["Spans"]) >= 80  # 40 tool calls and 40 model calls, and the agent
    # the replay starts on the step where the anomaly fired, marked in the trace
    assert any("loop" in e.value for e in at.error)
    step = trace_model.load(client, LOCAL_ADMIN, target["trace"]).step(at.session_state["step"])
    assert step["Kind"] == "anomaly" and step["Ref"] == target["id"] and step["Step"] > 10
    assert shows(at, step["Title"])


def test_alert_link_query_parameters_open_the_anomaly_and_its_trace(fleet):
    target = fleet["ids"]["cost_spike"]
    at = ok(app(anomaly=target["id"], trace=target["trace"]))
    assert at.sidebar.radio(key="page").value == "Anomalies"
    assert at.selectbox(key="anomaly_id").value == target["id"]
    assert at.session_state["trace_id"] == target["trace"]
    goto(at, "Trace replay")
    assert number(metrics(at)["Spans"]) > 16
    at = ok(app(trace=fleet["ids"]["fanout"]["trace"]))
    assert at.sidebar.radio(key="page").value == "Trace replay"
    assert number(metrics(at)["Spans"]) >= 12_000


def test_trace_replay_steps_event_by_event_with_costs_accumulating(fleet, client):
    target = fleet["ids"]["cross_tenant"]
    at = ok(app(trace=target["trace"]))
    trace = trace_model.load(client, LOCAL_ADMIN, target["trace"])
    n = len(trace.steps)
    assert at.number_input(key="step").value == 1 and at.number_input(key="step").max == n
    assert shows(at, trace.step(1)["Title"])
    assert trace.step(1)["Kind"] == "anomaly"  # the anomaly is marked where it fired: the trace's first moment
    costs = []
    for _ in range(min(n - 1, 25)):
        ok(at.button(key="step_next").click().run())
        costs.append(number(metrics(at)["Cost so far"]))
    assert at.session_state["step"] == min(n, 26)
    assert costs == sorted(costs) and costs[-1] > 0  # cost only accumulates
    # jump to the cross-tenant credential uses
    ok(at.button(key="step_first").click().run())
    at.selectbox(key="jump_kind").set_value("cross-tenant use")
    ok(at.button(key="jump_next").click().run())
    step = trace.step(at.session_state["step"])
    assert step["Kind"] == "credential" and step["Flag"]
    assert any("Cross-tenant" in e.value for e in at.error)
    ok(at.button(key="step_last").click().run())
    assert at.session_state["step"] == n
    assert number(metrics(at)["Cost so far"]) == pytest.approx(trace.summary()["cost_usd"], abs=1e-4)
    # every view of the trace renders
    for view in ("Agent tree", "Timeline", "Spans", "Search"):
        ok(at.segmented_control(key="trace_view").set_value(view).run())
    ok(at.segmented_control(key="trace_view").set_value("Agent tree").run())
    assert at.dataframe[0].value["AgentId"][0] == target["agent"]


def test_a_whole_8mb_chain_of_thought_opens_only_when_asked_and_downloads(fleet, client):
    at = ok(app(trace=BIG_TRACE))
    trace = trace_model.load(client, LOCAL_ADMIN, BIG_TRACE)
    answer = trace.step_of_span("c4c4c4c4c4c4c4c4", end=True)
    ok(at.number_input(key="step").set_value(answer).run())
    toggle = at.toggle(key="open|c4c4c4c4c4c4c4c4|gen_ai.output.messages")
    assert toggle.value is False and "8." in toggle.label and "MB" in toggle.label
    assert "gen_ai.output.messages" in plain(toggle.label)
    assert not [t for t in at.text_area if len(t.value) > 1_000_000]  # not loaded until opened
    ok(toggle.set_value(True).run())
    (whole,) = [t for t in at.text_area if len(t.value) > 1_000_000]
    assert whole.value == BIG_REASONING
    downloads = [d for d in at.get("download_button") if "gen_ai.output.messages" in plain(d.proto.label)]
    assert downloads
    # searching the trace finds text deep inside the 8 MB payload
    ok(at.segmented_control(key="trace_view").set_value("Search").run())
    ok(at.text_input(key="trace_search").set_value("end marker 7f3a").run())
    hits = at.dataframe[0].value
    assert list(hits["Key"]) == ["gen_ai.output.messages"] and hits["Matches"][0] == 1
    assert "end marker 7f3a" in hits["Snippet"][0]
    ok(at.button(key="search_go").click().run())
    assert at.session_state["trace_view"] == "Replay" and at.session_state["step"] == answer
    assert [t for t in at.text_area if t.value == BIG_REASONING]


def test_trace_finder_by_id_tenant_agent_and_anomaly(fleet):
    at = goto(ok(app()), "Trace replay")
    assert at.session_state.get("trace_id") is None and at.toggle(key="show_finder").value is True
    found = at.dataframe[0].value
    assert len(found) > 50 and {"TraceId", "Tenant", "RootAgentId"} <= set(found.columns)
    tenant = fleet["ids"]["fanout"]["tenant"]
    ok(at.selectbox(key="find_tenant").set_value(tenant).run())
    assert set(at.dataframe[0].value["Tenant"]) == {tenant}
    ok(at.selectbox(key="find_agent").set_value(fleet["ids"]["fanout"]["agent"]).run())
    listed = at.dataframe[0].value
    assert fleet["ids"]["fanout"]["trace"] in list(listed["TraceId"])
    ok(at.selectbox(key="find_listed").set_value(fleet["ids"]["fanout"]["trace"]).run())
    ok(at.button(key="find_open_listed").click().run())
    assert at.session_state["trace_id"] == fleet["ids"]["fanout"]["trace"]
    assert at.toggle(key="show_finder").value is False  # the finder folds away once a trace is open
    ok(at.toggle(key="show_finder").set_value(True).run())
    ok(at.text_input(key="find_trace_id").set_value(fleet["ids"]["loop"]["trace"].upper()).run())
    ok(at.button(key="find_open_id").click().run())
    assert at.session_state["trace_id"] == fleet["ids"]["loop"]["trace"]
    ok(at.toggle(key="show_finder").set_value(True).run())
    ok(at.selectbox(key="find_anomaly").set_value(fleet["ids"]["big"]["id"]).run())
    ok(at.button(key="find_open_anomaly").click().run())
    assert at.session_state["trace_id"] == BIG_TRACE
    at = ok(app(trace="0" * 32))
    assert any("No spans stored" in e.value for e in at.error)


def test_costs_by_tenant_agent_model_and_day_with_tokens_by_kind(fleet, client):
    at = goto(ok(app()), "Costs")
    shown = metrics(at)
    cost, calls, cached, reasoning = client.query(
        "SELECT sum(CostUSD), countIf(Operation = 'chat'), sum(CachedInputTokens), sum(ReasoningTokens) "
        "FROM agent_spans").result_rows[0]
    assert number(shown["Cost"]) == pytest.approx(cost, abs=0.01)
    assert number(shown["Model calls"]) == calls
    assert chart_titles(at) == ["Cost per hour by tenant", "Cost by model", "Tokens by kind, per tenant"]
    table = at.dataframe[0].value
    assert {"Tenant", "Model", "CostUSD", "InputTokens", "CachedInputTokens", "OutputTokens",
            "ReasoningTokens"} <= set(table.columns)
    assert table["CachedInputTokens"].sum() == cached and table["ReasoningTokens"].sum() == reasoning
    ok(at.multiselect(key="cost_group").set_value(["AgentId", "Day"]).run())
    table = at.dataframe[0].value
    assert {"AgentId", "Day"} <= set(table.columns) and table["CostUSD"].sum() == pytest.approx(cost, abs=0.01)
    ok(at.segmented_control(key="cost_token_by").set_value("Model").run())
    tenant = fleet["ids"]["fanout"]["tenant"]
    ok(at.multiselect(key="cost_tenants").set_value([tenant]).run())
    tenant_cost = client.query("SELECT sum(CostUSD) FROM agent_spans WHERE Tenant = {t:String}",
                               parameters={"t": tenant}).result_rows[0][0]
    assert number(metrics(at)["Cost"]) == pytest.approx(tenant_cost, abs=0.01)


def test_credentials_audit_trail_highlights_cross_tenant_uses(fleet, client):
    at = goto(ok(app()), "Credentials")
    shown = metrics(at)
    cross = client.query(f"SELECT count() FROM credential_events WHERE {CROSS_TENANT_USE_SQL}").result_rows[0][0]
    assert cross > 0 and number(shown["Cross-tenant uses"]) == cross
    assert any("cross-tenant credential uses" in e.value for e in at.error)
    lifted = fleet["ids"]["cross_tenant"]["credential"]
    credentials = at.dataframe[1].value
    assert lifted in list(credentials["CredentialId"])
    assert credentials.loc[credentials["CredentialId"] == lifted, "CrossTenantUses"].iloc[0] > 0
    ok(at.selectbox(key="credential").set_value(lifted).run())
    trail = at.dataframe[-1].value
    assert set(trail["Event"]) >= {"use"} and trail["CrossTenant"].any()
    assert fleet["ids"]["cross_tenant"]["tenant"] in set(trail["Tenant"])
    assert at.selectbox(key="credential_trace").value == fleet["ids"]["cross_tenant"]["trace"]
    ok(at.button(key="credential_open_trace").click().run())
    assert at.session_state["trace_id"] == fleet["ids"]["cross_tenant"]["trace"]
    assert at.sidebar.radio(key="page").value == "Trace replay"


def test_gpus_beside_the_traces_running_then(fleet):
    at = goto(ok(app()), "GPUs")
    shown = metrics(at)
    assert shown["Devices"] == "2" and shown["Peak memory"].endswith("GB")
    assert 35 <= number(shown["Mean utilization"].rstrip("%")) <= 85
    assert chart_titles(at) == ["Utilization per device", "Memory used and limit per device", "Power per device",
                                "GPU memory per process", "Model calls per minute (the traces running then)"]
    assert len(at.dataframe[0].value) > 10  # traces running in the range
    ok(at.selectbox(key="gpu_trace").set_value(at.dataframe[0].value["TraceId"][0]).run())
    ok(at.button(key="gpu_open_trace").click().run())
    assert at.sidebar.radio(key="page").value == "Trace replay"


def test_custom_time_range_follows_everywhere(fleet, client):
    at = ok(app())
    ok(at.sidebar.selectbox(key="range").set_value("Custom").run())
    start = (fleet["result"].started_at_ns // NS) + 60
    begin = datetime.fromtimestamp(start, UTC).replace(tzinfo=None, second=0)
    ok(at.sidebar.datetime_input(key="range_from").set_value(begin).run())
    ok(at.sidebar.datetime_input(key="range_to").set_value(begin + timedelta(minutes=5)).run())
    expected = client.query("SELECT sum(Spans) FROM agent_minutes WHERE Minute >= {a:DateTime} AND Minute <= {b:DateTime}",
                            parameters={"a": begin, "b": begin + timedelta(minutes=5)}).result_rows[0][0]
    assert number(metrics(at)["Spans in range"]) == expected > 0


# --- queries behind the pages ----------------------------------------------------------------------------

def test_rollups_match_the_spans_they_summarise(fleet, client):
    spans = client.query("SELECT count(), sum(CostUSD), sum(ReasoningTokens), uniqExact(TraceId) FROM agent_spans"
                         ).result_rows[0]
    for table in ("agent_minutes", "agent_hours"):
        rolled = client.query(f"SELECT sum(Spans), sum(CostUSD), sum(ReasoningTokens) FROM {table}").result_rows[0]
        assert rolled[0] == spans[0] and rolled[1] == pytest.approx(spans[1]) and rolled[2] == spans[2]
    traces = client.query("SELECT uniqExact(TraceId), sum(Spans) FROM trace_summaries").result_rows[0]
    assert traces == (spans[3], spans[0])
    index = client.query("SELECT count(), max(arrayMax(arrayConcat(PayloadSizes, [0]))) FROM trace_span_index"
                         ).result_rows[0]
    assert index[0] == spans[0] and index[1] > 8 * 1024 * 1024


def test_opening_a_trace_reads_no_payload(fleet, client):
    """The fanout trace (12,000+ spans) opens from the index; the 8 MB payload is read only when asked."""
    started = time.perf_counter()
    trace = trace_model.load(client, LOCAL_ADMIN, fleet["ids"]["fanout"]["trace"])
    assert time.perf_counter() - started < 10  # generous: measured figures are in bench/dashboard_speed.py
    assert len(trace.spans) >= 12_000 and len(trace.agents) == 16
    big = trace_model.load(client, LOCAL_ADMIN, BIG_TRACE)
    assert "gen_ai.output.messages" not in trace_model.attr_dict(big.span("c4c4c4c4c4c4c4c4")["Attributes"])
    assert big.payloads("c4c4c4c4c4c4c4c4")["gen_ai.output.messages"] > 8 * 1024 * 1024
    value = data.span_payload(client, LOCAL_ADMIN, big.span("c4c4c4c4c4c4c4c4"), "gen_ai.output.messages")
    assert json.loads(value)[0]["parts"][0]["content"] == BIG_REASONING
    assert data.span_payload(client, LOCAL_ADMIN, big.span("c4c4c4c4c4c4c4c4"), "no.such.key") is None


def test_export_is_the_whole_trace_as_json_lines(fleet, client):
    lines = b"".join(data.export_trace(client, LOCAL_ADMIN, BIG_TRACE)).splitlines()
    spans = [json.loads(line) for line in lines]
    assert len(spans) == 3
    (chat,) = [s for s in spans if s["SpanName"] == "chat o1"]
    assert json.loads(chat["SpanAttributes"]["gen_ai.output.messages"])[0]["parts"][0]["content"] == BIG_REASONING
    (tool,) = [s for s in spans if s["SpanName"] == "execute_tool run_sql"]
    assert tool["Events"][0]["Name"] == "agentwatch.credential.use"


def test_terminal_replay_prints_every_step(fleet, client):
    out = io.StringIO()
    assert replay.replay(client, fleet["ids"]["cross_tenant"]["trace"], out=out) == 0
    text = out.getvalue()
    trace = trace_model.load(client, LOCAL_ADMIN, fleet["ids"]["cross_tenant"]["trace"])
    assert f"[{len(trace.steps)}/{len(trace.steps)}]" in text
    assert "CROSS-TENANT" in text and "cross_tenant" in text  # the use, and the anomaly marked where it fired
    assert "reasoning" in text and "cost so far" in text
    out = io.StringIO()
    assert replay.replay(client, BIG_TRACE, out=out) == 0
    assert BIG_REASONING in out.getvalue()
    out = io.StringIO()
    assert replay.replay(client, BIG_TRACE, out=out, show_payloads=False) == 0
    assert BIG_END not in out.getvalue() and "gen_ai.output.messages" in out.getvalue()
    out = io.StringIO()
    assert replay.replay(client, "f" * 32, out=out) == 1
    assert "no spans" in out.getvalue().lower()


def test_cost_spike_chart_draws_the_detectors_learned_normal_and_threshold(fleet, client):
    spike = fleet["ids"]["cost_spike"]
    row = data.frame(client, "SELECT * FROM anomalies FINAL WHERE AnomalyId = {a:String}",
                     {"a": spike["id"]}).to_dicts()[0]
    # the seeded evidence has no detector baseline: the median minute before the anomaly stands in
    fallback = data.anomaly_baseline(client, LOCAL_ADMIN, row)
    assert fallback.normal_label == "normal before" and fallback.threshold is None
    assert set(fallback.series["Series"]) == {"tenant total", spike["agent"]}
    per_minute = fallback.series.pivot(on="Series", index="Time", values="Value").fill_null(0)
    assert (per_minute["tenant total"] >= per_minute[spike["agent"]] - 1e-9).all()
    assert per_minute[spike["agent"]].sum() > 0
    # the worker's evidence: the tenant's learned mean and the threshold it crossed
    row["Evidence"] = json.dumps({"tenant_usd": 41.2, "tenant_threshold": 9.75,
                                  "tenant_baseline": {"mean": 1.37, "std": 0.4, "warm": True, "threshold": 8.2}})
    learned = data.anomaly_baseline(client, LOCAL_ADMIN, row)
    assert (learned.normal, learned.normal_label, learned.threshold) == (1.37, "learned normal", 9.75)

"""The shared vocabulary (schemas/vocabulary.py): one definition, and every component uses it.

The cross-tenant rule exists twice by necessity, as a Python predicate (the
detector) and as ClickHouse SQL (the dashboard): here both are evaluated on
every combination of stated, own, foreign and empty tenants, the SQL on the
embedded engine over the real `credential_events` table, and must agree.
"""

from __future__ import annotations

import ast
import doctest
import itertools
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentwatch.dashboard import charts, data, views
from agentwatch.dashboard.auth import LOCAL_ADMIN
from agentwatch.detectors import evaluation, sinks
from agentwatch.detectors.alerting import slack
from agentwatch.schemas import vocabulary as v

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
TENANTS = ("", "acme", "globex", "initech")
# every (actor, credential tenant, resource tenant); the actor is always stated (the store defaults it)
CASES = [c for c in itertools.product(TENANTS, repeat=3) if c[0]]
DESIGN_KINDS = ("fanout", "cost_spike", "cross_tenant", "credential_fanout", "loop", "novel_trace",
                "secret_exposure", "budget_forecast")


def test_doctests():
    result = doctest.testmod(v)
    assert result.attempted >= 8 and result.failed == 0


# --- the definitions -----------------------------------------------------------------------------------

def test_kinds_are_designs_each_described_and_groupings_are_kinds():
    assert tuple(v.ANOMALY_KINDS) == DESIGN_KINDS
    assert all(isinstance(text, str) and text and "\n" not in text for text in v.ANOMALY_KINDS.values())
    assert set(v.SPAN_KINDS) <= set(v.ANOMALY_KINDS) and set(v.CREDENTIAL_KINDS) <= set(v.ANOMALY_KINDS)
    assert not set(v.SPAN_KINDS) & set(v.CREDENTIAL_KINDS)
    with pytest.raises(TypeError):
        v.ANOMALY_KINDS["new"] = "read-only"  # type: ignore[index]


def test_operations_and_statuses():
    assert {"chat", "text_completion", "generate_content", "embeddings"} <= set(v.MODEL_OPERATIONS)
    assert v.AGENT_OPERATIONS == ("invoke_agent", "create_agent") and v.TOOL_OPERATION == "execute_tool"
    assert not set(v.MODEL_OPERATIONS) & {*v.AGENT_OPERATIONS, v.TOOL_OPERATION}
    assert v.ANOMALY_STATUSES == ("open", "acknowledged", "resolved")
    assert set(v.UNRESOLVED_STATUSES) == set(v.ANOMALY_STATUSES) - {"resolved"}


def test_severity_order():
    assert v.SEVERITIES == ("info", "warning", "critical")
    assert sorted(["critical", "info", "", "warning"], key=v.severity_rank) == ["", "info", "warning", "critical"]
    assert v.max_severity("critical", "warning") == "critical" and v.max_severity("info", "warning") == "warning"


def test_the_migration_rollups_count_the_same_model_operations():
    """schemas/sql/0004 cannot import the vocabulary; its ModelCalls must still count exactly these."""
    sql = (ROOT / "schemas" / "sql" / "0004_dashboard_aggregates.sql").read_text()
    lists = re.findall(r"Operation IN (\([^)]*\))", sql)
    assert lists and all(found == v.sql_list(v.MODEL_OPERATIONS) for found in lists), lists


# --- cross-tenant: Python and SQL agree, on the embedded ClickHouse ---------------------------------------

@pytest.fixture(scope="module")
def credential_cases(client):
    """One `use` per case (SpanId = its index), and one `grant` of another tenant's credential."""
    columns = ["Timestamp", "TraceId", "SpanId", "Tenant", "AgentId", "Event", "CredentialId", "CredentialTenant",
               "Scope", "Resource", "ResourceTenant", "Action", "IngestedAt"]
    rows = [[T0 + timedelta(seconds=i), "a" * 32, f"{i:016x}", actor, f"agent-{i}", "use", f"cred-{i}", owner,
             "read", f"res-{i}", resource, "read", T0] for i, (actor, owner, resource) in enumerate(CASES)]
    rows.append([T0, "b" * 32, "grant", "acme", "agent-g", "grant", "cred-g", "globex", "read", "", "", "grant", T0])
    client.insert("credential_events", rows, column_names=columns)
    return client


def test_cross_tenant_sql_agrees_with_the_predicate_on_every_case(credential_cases):
    got = credential_cases.query(
        f"SELECT SpanId, Tenant, CredentialTenant, ResourceTenant, {v.CROSS_TENANT_SQL}, {v.CROSS_TENANT_USE_SQL} "
        "FROM credential_events WHERE Event = 'use'").result_rows
    assert len(got) == len(CASES)
    for span, actor, owner, resource, sql, sql_use in got:
        case = CASES[int(span, 16)]
        assert (actor, owner, resource) == case
        expected = v.is_cross_tenant(*case)
        assert bool(sql) is expected and bool(sql_use) is expected, (case, sql, expected)
    # the rule chosen: a tenant left empty is "not stated", never a crossing by itself
    assert not v.is_cross_tenant("acme", "", "") and not v.is_cross_tenant("acme", "", "acme")
    assert v.is_cross_tenant("acme", "globex", "") and v.is_cross_tenant("acme", "", "globex")
    # only uses count
    [(grant,)] = credential_cases.query(f"SELECT {v.CROSS_TENANT_USE_SQL} FROM credential_events "
                                        "WHERE Event = 'grant'").result_rows
    assert not grant


def test_cross_tenant_sql_takes_other_columns(client):
    sql = v.cross_tenant_sql("a", "c", "r")
    rows = client.query(f"SELECT a, c, r, {sql} FROM values('a String, c String, r String', "
                        + ", ".join(f"('{a}', '{c}', '{r}')" for a, c, r in CASES) + ")").result_rows
    assert [bool(r[3]) for r in rows] == [v.is_cross_tenant(*r[:3]) for r in rows]


def test_the_dashboard_counts_cross_tenant_uses_by_the_rule(credential_cases):
    expected = {f"cred-{i}" for i, case in enumerate(CASES) if v.is_cross_tenant(*case)}
    start, end = T0 - timedelta(minutes=1), T0 + timedelta(hours=1)
    assert set(data.cross_tenant_uses(credential_cases, LOCAL_ADMIN, start, end)["CredentialId"]) == expected
    per_credential = data.credentials(credential_cases, LOCAL_ADMIN, start, end)
    assert {r["CredentialId"] for r in per_credential.iter_rows(named=True) if r["CrossTenantUses"]} == expected
    trail = data.trace_credentials(credential_cases, LOCAL_ADMIN, "a" * 32)
    assert {r["CredentialId"] for r in trail.iter_rows(named=True) if r["CrossTenant"]} == expected


def test_severity_rank_sql_agrees_with_severity_rank(client):
    words = ["", "info", "warning", "critical", "fatal"]
    rows = client.query(f"SELECT s, {v.severity_rank_sql('s')} FROM (SELECT arrayJoin({words!r}) AS s)").result_rows
    assert {s: int(rank) for s, rank in rows} == {s: v.severity_rank(s) for s in words}


# --- the dashboard offers exactly the vocabulary ---------------------------------------------------------

def test_every_kind_the_dashboard_offers_comes_from_the_vocabulary(client):
    assert data.anomaly_facets(client, LOCAL_ADMIN)["kinds"] == list(v.ANOMALY_KINDS)  # even before any was raised
    client.insert("anomalies", [["f" * 32, T0, "from_a_newer_detector", "warning", "acme", "", "", 1.0, "", "{}",
                                 "open", T0, T0]],
                  column_names=["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId",
                                "Score", "Summary", "Evidence", "Status", "FirstSeen", "LastSeen"])
    assert data.anomaly_facets(client, LOCAL_ADMIN)["kinds"] == [*v.ANOMALY_KINDS, "from_a_newer_detector"]


def test_the_dashboard_shows_every_severity_status_and_model_operation():
    assert set(views.SEVERITY_BADGE) == set(v.SEVERITIES)
    assert set(views.STATUS_BADGE) == set(v.ANOMALY_STATUSES)
    assert charts.SEVERITY_COLORS.to_dict()["domain"] == list(reversed(v.SEVERITIES))
    domain = charts.OPERATION_COLORS.to_dict()["domain"]
    assert {*v.MODEL_OPERATIONS, v.INVOKE_AGENT_OPERATION, v.TOOL_OPERATION} <= set(domain)


# --- alerts render every kind and severity ---------------------------------------------------------------

def _anomaly(kind: str, severity: str = "critical") -> sinks.Anomaly:
    return sinks.Anomaly(anomaly_id=f"{kind:0<32}"[:32], kind=kind, severity=severity, tenant="acme",
                         agent="agent-1", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", score=4.0,
                         summary=f"a {kind} anomaly", evidence={}, status="open", detected_at=T0, first_seen=T0,
                         last_seen=T0)


@pytest.mark.parametrize("kind", list(v.ANOMALY_KINDS))
def test_alerts_render_every_kind(kind):
    a = _anomaly(kind)
    note = sinks.Notification("new", [a], incidents={a.anomaly_id: [a]})
    url = "http://dashboard.test"
    [hook] = sinks.WebhookSink("http://hook.test/x").requests(note, url)
    assert hook.body["kind"] == kind and hook.body["severity"] == "critical"
    [slack] = sinks.SlackSink("http://slack.test/services/T/B/S").requests(note, url)
    fields = [f["text"] for b in slack.body["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert any(f.startswith("*Kind*") and kind in f and v.ANOMALY_KINDS[kind] in f for f in fields)
    [page] = sinks.PagerDutySink("routing-key", "http://pd.test/v2/enqueue").requests(note, url)
    assert page.body["payload"]["class"] == kind and page.body["payload"]["severity"] == "critical"


def test_alerts_know_every_severity():
    assert set(sinks.PAGERDUTY_SEVERITY) == set(v.SEVERITIES)
    assert set(slack.SEVERITY_ICON) == set(v.SEVERITIES)


def test_evaluation_scores_kinds_in_the_vocabulary_order():
    rows = [evaluation.Row(str(i), kind, "warning", "acme", "", "", 1.0, "", {}, "open", 0, 0)
            for i, kind in enumerate(["loop", "something_new", "fanout"])]
    assert evaluation.scored_kinds(rows, []) == ["fanout", "loop", "something_new"]


# --- and nobody keeps a copy -----------------------------------------------------------------------------

USERS = [*sorted((ROOT / "dashboard").rglob("*.py")),
         *(ROOT / "detectors" / f"{name}.py" for name in ("anomalies", "evaluation", "alerts", "sinks")),
         *sorted((ROOT / "detectors" / "alerting").glob("*.py"))]
LISTS = {"anomaly kinds": set(v.ANOMALY_KINDS), "severities": set(v.SEVERITIES),
         "statuses": set(v.ANOMALY_STATUSES), "model operations": set(v.MODEL_OPERATIONS)}


@pytest.mark.parametrize("path", USERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_component_keeps_its_own_copy(path):
    source = path.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            words = {e.value for e in node.elts}
            for name, known in LISTS.items():
                assert not words <= known, f"{path.name}:{node.lineno} lists {name} itself: {sorted(words)}"
    # the cross-tenant rule is spelled only in the vocabulary
    assert not re.search(r"(!=|<>)\s*CredentialTenant|CredentialTenant\s*(!=|<>)\s*Tenant", source), path.name

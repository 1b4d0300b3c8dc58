"""Signed halt/release links: from the alert, over real HTTP, to the real receiver, to the verdicts the guards poll.

An anomaly is raised and halted by the detectors' default policy; the dispatcher
sends its alert to a loopback webhook with signed links; a responder opens a link
(GET shows a confirm page and never acts), confirms it (POST), and the receiver's
GET /v1/verdicts serves the decision. Tokens that were used, altered, cut short,
signed with another key or expired are refused with a 4xx, and counted.
"""

from __future__ import annotations

import base64
import json
import re
import string
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from agentwatch.detectors.alerting.links import Action, ActionSigner, sign, token_id
from agentwatch.detectors.alerts import AlertConfig, AlertDispatcher
from agentwatch.detectors.anomalies import Anomaly
from agentwatch.detectors.containment import Containment, Policy
from agentwatch.schemas import audit, halts, store
from tests.helpers import JsonWebhook, prometheus_value, start_receiver, wait_for
from tests.test_alerts import write

KEY = "a-long-random-signing-key-for-links"
TRACE = "5c" * 16
ANOMALY = "ac" * 16


def fetch(url: str, form: dict | None = None) -> tuple[int, str, dict]:
    """(status, body, headers) of a GET, or of a POST of `form` (what the confirm button sends)."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if form is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.fixture(scope="module")
def keyed(dsn, database, client):
    for table in ("anomalies", "detector_state", "alert_deliveries", "leases", "halts"):
        client.command(f"TRUNCATE TABLE {table}")
    running = start_receiver(dsn, database, actions_key=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def alert(dsn, database, client, keyed):
    """The webhook alert of a fanout anomaly whose trace the default policy halted, with signed links."""
    raised = Anomaly(anomaly_id=ANOMALY, kind="fanout", tenant="acme", subject=TRACE, agent_id="planner-9",
                     trace_id=TRACE, severity="critical", score=50.0, first_seen_ns=0, last_seen_ns=0,
                     detected_at_ms=0, summary="planner-9 spawned 500 sub-agents in 20 s.", evidence={})
    Containment(Policy()).apply(client, [raised])
    write((database, client), ANOMALY, kind="fanout", severity="critical", agent="planner-9", trace_id=TRACE,
          summary=raised.summary)
    webhook = JsonWebhook()
    base = f"http://127.0.0.1:{keyed.http_port}"
    dispatcher = AlertDispatcher(lambda: store.connect(dsn, database), AlertConfig(
        webhook_urls=[webhook.url], slack_webhook_urls=[webhook.url.replace("/alerts", "/services/T1/B1/x")],
        actions_url=base + "/", actions_key=KEY, actions_ttl_s=3600))
    try:
        assert dispatcher.run_once() == 2
    finally:
        dispatcher.close()
        webhook.stop()
    [body] = [b for b in webhook.received if "anomaly_id" in b]
    [body["slack"]] = [b for b in webhook.received if "blocks" in b]
    return body


def link(alert: dict, action: str, scope: str) -> str:
    [url] = [a["url"] for a in alert["actions"] if (a["action"], a["scope"]) == (action, scope)]
    return url


def verdicts(receiver) -> list[dict]:
    status, body, _ = fetch(f"http://127.0.0.1:{receiver.http_port}/v1/verdicts?tenant=acme")
    assert status == 200
    return json.loads(body)["verdicts"]


def in_force(receiver, scope: str, target: str) -> list[dict]:
    return [v for v in verdicts(receiver) if (v["scope"], v["target"]) == (scope, target)]


def metric(receiver, method: str, outcome: str) -> float:
    _, text, _ = fetch(f"http://127.0.0.1:{receiver.http_port}/metrics")
    return prometheus_value(text, "agentwatch_action_link_requests_total", method=method, outcome=outcome)


def test_the_alert_carries_signed_links_for_the_trace_agent_and_tenant_next_to_the_halt(alert, keyed):
    assert [(h["scope"], h["target"], h["decided_by"]) for h in alert["halts"]] == [("trace", TRACE, "policy")]
    assert sorted((a["action"], a["scope"], a["target"]) for a in alert["actions"]) == [
        ("halt", "agent", "planner-9"), ("halt", "tenant", "acme"), ("halt", "trace", TRACE),
        ("release", "agent", "planner-9"), ("release", "tenant", "acme"), ("release", "trace", TRACE)]
    for action in alert["actions"]:
        assert action["url"].startswith(f"http://127.0.0.1:{keyed.http_port}/v1/actions/")
        assert action["expires_at"].endswith("Z")
    # Slack: per target the button that changes it: the halted trace can be released, the rest halted.
    [buttons] = [b["elements"] for b in alert["slack"]["blocks"] if b["type"] == "actions"]
    assert [(b["text"]["text"], b["url"]) for b in buttons[1:]] == [
        ("Release trace", link(alert, "release", "trace")), ("Halt agent", link(alert, "halt", "agent")),
        ("Halt tenant", link(alert, "halt", "tenant"))]


def test_opening_a_link_shows_a_confirm_page_and_never_acts(alert, keyed, client):
    url = link(alert, "halt", "tenant")  # no test confirms this one
    for _ in range(2):  # a chat app's preview, then the person
        status, page, headers = fetch(url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "Halt tenant acme" in page and '<form method="post">' in page
        assert headers["Referrer-Policy"] == "no-referrer" and "frame-ancestors 'none'" in \
            headers["Content-Security-Policy"]
    # Nothing was written under this link's id (whatever other tests confirmed meanwhile).
    written = client.query("SELECT count() FROM halts WHERE HaltId = {h:String}",
                           parameters={"h": token_id(url.rsplit("/", 1)[1])}).result_rows[0][0]
    assert written == 0
    # The page says what is in force now: the policy's halt of the trace.
    status, page, _ = fetch(link(alert, "release", "trace"))
    assert status == 200 and f"trace {TRACE} halted by policy" in page


def test_confirming_halts_and_the_verdicts_serve_it_and_the_link_works_once(alert, keyed, client):
    url = link(alert, "halt", "agent")
    status, page, _ = fetch(url, {"reason": "stop it before it spends more"})
    assert status == 200 and "Halted agent planner-9 of tenant acme" in page
    [verdict] = wait_for(lambda: in_force(keyed, "agent", "planner-9"))
    assert (verdict["action"], verdict["calls"], verdict["decided_by"], verdict["anomaly_id"]) == (
        "halt", "all", f"link:{ANOMALY}", ANOMALY)
    assert verdict["reason"] == "stop it before it spends more" and verdict["trace_id"] == TRACE
    assert verdict["halt_id"] == token_id(url.rsplit("/", 1)[1])
    [entry] = audit.entries(client, actor=f"link:{ANOMALY}", action="halt")
    assert (entry.tenant, entry.target, entry.detail["halt_id"]) == ("acme", "planner-9", verdict["halt_id"])

    used_before = metric(keyed, "POST", "used")
    status, page, _ = fetch(url, {})
    assert status == 409 and "already used" in page
    status, _, _ = fetch(url)
    assert status == 409
    assert metric(keyed, "POST", "used") == used_before + 1
    # Other spellings of the same signature (padding, the spare bits of its last character) are not new links.
    signature = url.rsplit(".", 1)[1]
    same_bytes = [signature[:-1] + c for c in string.ascii_letters + string.digits + "-_" if c != signature[-1]
                  and base64.urlsafe_b64decode(signature[:-1] + c + "=") == base64.urlsafe_b64decode(signature + "=")]
    assert same_bytes  # a 32-byte MAC's last character carries spare bits
    for respelled in (url + "=", url + "==", url.rsplit(".", 1)[0] + "." + same_bytes[0]):
        status, page, _ = fetch(respelled, {})
        assert status in (400, 409), (respelled, status)
    assert [v["halt_id"] for v in in_force(keyed, "agent", "planner-9")] == [verdict["halt_id"]]


def test_confirming_a_release_lifts_the_halt_without_touching_the_others(alert, keyed, client):
    halts.record(client, [halts.decision("acme", "agent", "helper-2", "halt", reason="a person's own halt",
                                         decided_by="cli:oncall")])
    wait_for(lambda: in_force(keyed, "agent", "helper-2") and in_force(keyed, "trace", TRACE))
    status, page, _ = fetch(link(alert, "release", "trace"), {})
    assert status == 200 and "Released trace" in page and "without a restart" in page
    wait_for(lambda: not in_force(keyed, "trace", TRACE))
    assert in_force(keyed, "agent", "helper-2")  # other halts stand
    # Releasing what is not halted says so and writes nothing.
    status, page, _ = fetch(link(alert, "release", "tenant"), {})
    assert status == 409 and "not halted" in page


def test_altered_cut_foreign_and_expired_tokens_are_refused_and_counted(alert, keyed):
    base = f"http://127.0.0.1:{keyed.http_port}/v1/actions/"
    good = link(alert, "halt", "tenant").rsplit("/", 1)[1]
    payload, signature = good.split(".")
    # Another target under the same signature: the payload is what is signed.
    other = Action("halt", "tenant", "globex", "globex", ANOMALY, int(time.time()) + 3600)
    forged_payload = sign("not-the-key", other).split(".")[0]
    before = {outcome: metric(keyed, "POST", outcome) for outcome in ("forged", "malformed", "expired")}
    cases = [
        (f"{forged_payload}.{signature}", 403, "does not match"),
        (sign("not-the-key", other), 403, "does not match"),
        (payload, 400, "incomplete"),
        (sign(KEY, Action("halt", "trace", TRACE, "acme", ANOMALY, int(time.time()) - 1)), 410, "expired"),
        (sign(KEY, Action("explode", "trace", TRACE, "acme", ANOMALY, int(time.time()) + 60)), 400, "no action"),
    ]
    for token, expected, words in cases:
        status, page, _ = fetch(base + token, {})
        assert status == expected and words in page, (token, status, page)
    assert metric(keyed, "POST", "forged") == before["forged"] + 2
    assert metric(keyed, "POST", "malformed") == before["malformed"] + 2
    assert metric(keyed, "POST", "expired") == before["expired"] + 1
    assert not in_force(keyed, "tenant", "globex") and not in_force(keyed, "tenant", "acme")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", good)  # safe in a URL path as is


def test_a_short_signing_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 characters"):
        ActionSigner("short-key", "http://127.0.0.1:4318", 3600)


def test_a_receiver_without_a_key_refuses_links(receiver, alert):
    token = link(alert, "halt", "tenant").rsplit("/", 1)[1]
    status, page, _ = fetch(f"http://127.0.0.1:{receiver.http_port}/v1/actions/{token}")
    assert status == 404 and "not enabled" in page

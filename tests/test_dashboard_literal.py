"""Text that agents send is shown as typed: never as a link, an image, a heading, a color, an icon or a formula.

A trace whose tenant, agent, span, tool, model, credential, resource, attribute key,
status message and anomaly summary carry markdown (an image that would fetch a
tracking pixel, a link, `:red[...]`, `$...$`, an icon, a bare URL, HTML) is
opened in the replay step by step, and on the anomaly and credential pages, with
Streamlit's AppTest: no element whose text Streamlit reads as markdown (bodies,
labels, metric values, progress texts, help) carries the syntax unescaped, and the
text itself is still there. Then Streamlit's own frontend, in Debian's chromium,
shows `literal` of each hostile string as exactly that text, with no element of
its own.
"""

from __future__ import annotations

import doctest
import importlib
import json
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from agentwatch.dashboard import auth, trace_model
from agentwatch.dashboard.auth import LOCAL_ADMIN
from agentwatch.dashboard.text import JOINER, literal
from tests.helpers import store_env
from tests.test_dashboard import APP, ok, plain

NS = 1_000_000_000
PIXEL = "![x](https://attacker.example/pixel?t=1)"
LINK = "[click](https://phish.example)"
TENANT = f"acme {LINK}"
AGENT = f"agent {PIXEL}"
CREDENTIAL = f"cred :red[x] {PIXEL}"
RESOURCE = "db https://attacker.example/r <b>x</b>"
TOOL = "run $x$ :material/home: # h"
MODEL = f"gpt {LINK}"
KEY = "x![k](https://attacker.example/key)"  # an attribute key, its value a payload (over 256 bytes)
STATUS = f"failed: {PIXEL} `code` **bold**"
TRACEBACK = 'Traceback (most recent call last):\n  File "agent.py", line 7, in run\nTimeoutError: 30 s'

TRACE = "1717171717171717171717171717a001"
ANOMALY = "c" * 32
SUMMARY = f"{AGENT} spent $5 on {MODEL} :material_home: www.attacker.example"
HOSTILE = [":red[x]", ":material/home:", ":material_home:", "$x^2$", "![a](http://h/p)", "[a](http://h)",
           "https://h/p", "HTTP://h", "www.h.io", "<b>x</b>", ":smile:", ":streamlit:", "# head", "1. one",
           "> quote", "**bold**", "`code`", "a -> b -- c", "- item", "~~s~~", "| a | b |", "&lt;", "x\\y"]


def _span(span_id: str, parent: str, name: str, start: int, attributes: dict, events=(), status=("Unset", "")):
    return {"Timestamp": start, "TraceId": TRACE, "SpanId": span_id, "ParentSpanId": parent, "TraceState": "",
            "SpanName": name, "SpanKind": "Internal", "ServiceName": "svc",
            "ResourceAttributes": {"service.name": "svc", "agentwatch.tenant.id": TENANT},
            "ScopeName": "agentwatch", "ScopeVersion": "0.1.0",
            "SpanAttributes": {"agentwatch.tenant.id": TENANT, "gen_ai.agent.id": AGENT, "gen_ai.agent.name": AGENT,
                               **attributes},
            "Duration": NS, "StatusCode": status[0], "StatusMessage": status[1],
            "Events.Timestamp": [e[0] for e in events], "Events.Name": [e[1] for e in events],
            "Events.Attributes": [e[2] for e in events], "Links.TraceId": [], "Links.SpanId": [],
            "Links.TraceState": [], "Links.Attributes": []}


@pytest.fixture(scope="module")
def store(client, dsn, database):
    at = time.time_ns() - 300 * NS
    use = {"agentwatch.credential.id": CREDENTIAL, "agentwatch.credential.tenant.id": "globex",
           "agentwatch.credential.scope": "db:read", "agentwatch.resource.name": RESOURCE,
           "agentwatch.resource.tenant.id": "globex", "agentwatch.credential.action": "query"}
    rows = [
        _span("a100000000000001", "", f"invoke_agent {PIXEL}", at, {"gen_ai.operation.name": "invoke_agent"}),
        _span("a100000000000002", "a100000000000001", f"chat {MODEL}", at + NS,
              {"gen_ai.operation.name": "chat", "gen_ai.request.model": MODEL, "gen_ai.usage.input_tokens": "10",
               "gen_ai.output.messages": json.dumps([{"role": f"assistant {LINK}", "parts": [
                   {"type": "text", "content": f"answer {PIXEL}"}]}])}),
        _span("a100000000000003", "a100000000000001", f"execute_tool {TOOL}", at + 2 * NS,
              {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": TOOL, KEY: "k" * 400},
              [(at + 2 * NS, "agentwatch.credential.use", use)], status=("Error", f"{STATUS}\n{TRACEBACK}")),
    ]
    client.insert("otel_traces", [list(r.values()) for r in rows], column_names=list(rows[0]))
    detected = datetime.now(UTC)
    client.insert("anomalies", [[ANOMALY, detected, "cost_spike", "critical", TENANT, AGENT, TRACE, 9.0, SUMMARY,
                                 json.dumps({"trace_id": TRACE}), "open", detected - timedelta(minutes=5),
                                 detected - timedelta(minutes=4)]],
                  column_names=["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score",
                                "Summary", "Evidence", "Status", "FirstSeen", "LastSeen"])
    with store_env(dsn, database):
        yield client


@pytest.fixture(autouse=True)
def local_user(monkeypatch):
    monkeypatch.setattr(auth, "current_viewer", lambda: LOCAL_ADMIN)


# What Streamlit reads as markdown: element bodies, and these fields of widgets, metrics and containers.
LITERAL_TYPES = {"code", "json", "text", "text_area", "text_input", "dataframe", "arrow_data_frame", "exception"}
MARKDOWN_FIELDS = ("body", "label", "help", "text", "delta", "caption")


def markdown_texts(at: AppTest) -> list[str]:
    """Every string on the page that Streamlit renders as markdown (walks the whole element tree)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and getattr(node, "type", None) not in LITERAL_TYPES:
            for field, value in proto.ListFields():
                if field.name in MARKDOWN_FIELDS and isinstance(value, str) and value:
                    out.append(value)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def assert_inert(texts: list[str]) -> None:
    for text in texts:
        text = re.sub(r"(?<!\\)`[^`]+(?<!\\)`", "", text)  # code spans (ids, the store's DSN) are literal
        for syntax in ("](", "![", "<b>", ":red[", "$x$", "://", "**bold**", "`code`", ":material_home:"):
            assert syntax not in text, (syntax, text)


def test_the_replay_of_a_hostile_trace_shows_its_text_literally(store):
    trace = trace_model.load(store, LOCAL_ADMIN, TRACE)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"trace": TRACE})
    at = ok(at.run())
    seen = []
    for number in range(1, len(trace.steps) + 1):
        at = ok(at.number_input(key="step").set_value(number).run())
        for toggle in at.toggle:
            if toggle.key and toggle.key.startswith("open|") and not toggle.value:
                at = ok(toggle.set_value(True).run())
        texts = markdown_texts(at)
        assert_inert(texts)
        seen += texts
    shown = "\n".join(plain(t) for t in seen)
    for text in (TENANT, AGENT, PIXEL, CREDENTIAL, RESOURCE, TOOL, MODEL, KEY, STATUS, f"assistant {LINK}"):
        assert text in shown, text
    assert f"invoke_agent {PIXEL}" in shown and SUMMARY[:60] in shown
    assert f"{STATUS}\n{TRACEBACK}" in [c.value for c in at.code]  # a multi-line status kept as sent, below
    assert any(t.startswith("\\") or "\\[" in t for t in seen)  # escaped, not dropped


def test_the_anomaly_and_credential_pages_show_hostile_text_literally(store):
    at = ok(AppTest.from_file(APP, default_timeout=60))
    at.query_params.update({"anomaly": ANOMALY})
    at = ok(at.run())
    assert at.selectbox(key="anomaly_id").value == ANOMALY
    texts = markdown_texts(at)
    assert_inert(texts)
    shown = "\n".join(plain(t) for t in texts)
    assert SUMMARY in shown and TENANT in shown and AGENT in shown
    at = ok(at.sidebar.radio(key="page").set_value("Credentials").run())
    assert CREDENTIAL in at.dataframe[1].value["CredentialId"].to_list()  # tables are literal already
    at = ok(at.selectbox(key="credential").set_value(CREDENTIAL).run())
    assert_inert(markdown_texts(at))
    # an id from a link is shown as typed too
    at = ok(AppTest.from_file(APP, default_timeout=60))
    at.query_params.update({"trace": "0" * 31 + "](x)"})
    assert_inert(markdown_texts(ok(at.run())))


def test_literal_examples_run_as_written():
    result = doctest.testmod(importlib.import_module("agentwatch.dashboard.text"))
    assert result.failed == 0 and result.attempted > 0
    for text in HOSTILE + [PIXEL, LINK, SUMMARY, STATUS]:
        assert plain(literal(text)) == " ".join(text.split()), text


FRONTEND_APP = """
import json
import streamlit as st
from agentwatch.dashboard.text import literal
for i, text in enumerate(json.loads({hostile!r})):
    with st.container(key=f"c{{i}}"):
        st.markdown(literal(text))
with st.container(key="labels"):
    st.error(literal({pixel!r}))
    with st.expander(literal({link!r})):
        st.write("in")
    st.button(literal({link!r}), key="b")
    st.metric(literal({pixel!r}), literal({link!r}))
    st.progress(0.5, text=literal({pixel!r}))
st.write("done")
"""


def test_the_frontend_renders_literal_text_as_that_text(tmp_path):
    """Streamlit's own markdown (GFM, directives, icons, emoji, math) in a real browser."""
    from playwright.sync_api import sync_playwright

    script = tmp_path / "app.py"
    script.write_text(FRONTEND_APP.format(hostile=json.dumps(HOSTILE), pixel=PIXEL, link=LINK))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                               "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            for _ in range(60):
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    time.sleep(0.5)
            page.get_by_text("done").wait_for(timeout=60_000)
            for i, text in enumerate(HOSTILE):
                box = page.locator(f".st-key-c{i} [data-testid=stMarkdownContainer]").first
                html = box.inner_html()
                assert box.inner_text().replace(JOINER, "") == " ".join(text.split()), (text, html)
                assert re.fullmatch(r"<p>[^<]*</p>", html), (text, html)  # a paragraph of text, nothing else
            labels = page.locator(".st-key-labels")
            assert labels.locator("img").count() == 0
            assert [a.get_attribute("href") for a in labels.locator("a").all()] == []
            shown = labels.inner_text().replace(JOINER, "")
            assert PIXEL in shown and LINK in shown
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

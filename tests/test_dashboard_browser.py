"""The dashboard in a real headless Chromium, served the way users run it.

A store of its own (a temp data dir) is filled by `agentwatch demo --duration 900`
in a subprocess, then seeded in another (anomalies for the demo's incidents, a
trace whose model call thought for 8 MB, GPU metrics), since an embedded store
belongs to one process at a time; then the dashboard serves it from a third
process, and Playwright drives Debian's chromium: an anomaly is opened from the
inbox, its trace replayed step by step, the whole 8 MB chain of thought read
from the page; the alert link (`?anomaly=&trace=`) is followed; every page is
screenshotted (PNG files under the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.test_dashboard import BIG_END, BIG_REASONING, BIG_TRACE

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}
    env.update(AGENTWATCH_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard_browser")
    env = _env(base / "data")
    demo = subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", "900", "--no-detect"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    dsn = f"chdb://{base / 'data' / 'clickhouse'}"
    seeded = subprocess.run([sys.executable, "-c", "import sys; from tests.test_dashboard import seed_main; "
                             "seed_main(sys.argv[1], 'agentwatch')", dsn], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    ids = json.loads(seeded.stdout.strip().splitlines()[-1])
    port = _free_port()
    log = open(base / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "agentwatch.dashboard.server", str(port)], env=env, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, (base / "server.log").read_text()
        assert time.monotonic() < deadline, "dashboard did not come up"
        time.sleep(0.3)
    shots = base / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield {"url": url, "ids": ids, "browser": browser, "shots": shots, "log": base / "server.log"}
        finally:
            browser.close()
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


@pytest.fixture
def page(served):
    context = served["browser"].new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def settle(page: Page) -> None:
    """Wait until the app's script has run to the end and the page shows no error."""
    page.wait_for_timeout(250)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    page.wait_for_timeout(250)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def shoot(page: Page, served, name: str) -> Path:
    page.wait_for_timeout(600)  # charts and grids draw after the script ends
    path = served["shots"] / f"{name}.png"
    # the app scrolls inside its main block: grow the window to the content for a whole-page picture
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 8000)})
    page.wait_for_timeout(400)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    assert path.stat().st_size > 20_000
    return path


def open_page(page: Page, name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click()
    settle(page)
    expect(page.get_by_role("heading", name=name).first).to_be_visible()


def choose(page: Page, label: str, option_text: str) -> None:
    """Pick the option containing option_text in the selectbox labelled label."""
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    box.locator("input").first.click()
    page.get_by_role("option").filter(has_text=option_text).first.click()
    settle(page)


def charts(page: Page, n: int) -> None:
    """Exactly n Vega-Lite charts end up drawn (they draw a little after the script ends)."""
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(n)
    for i in range(n):
        expect(page.get_by_test_id("stVegaLiteChart").nth(i).locator("canvas, svg").first).to_be_visible()



def step_text(page: Page) -> str:
    return page.get_by_test_id("stProgress").inner_text()


def test_open_an_anomaly_jump_to_its_trace_step_the_replay_and_read_the_whole_thought(page, served):
    page.goto(served["url"])
    settle(page)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Spans in range")).to_be_visible()
    charts(page, 3)
    shoot(page, served, "1-overview")

    open_page(page, "Anomalies")
    big = served["ids"]["big"]
    choose(page, "Open anomaly", "reasoned for 2,090,000 tokens")
    expect(page.get_by_test_id("stMarkdown").filter(has_text="spent $126.18 on one o1 call").first).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Status")).to_contain_text("open")
    shoot(page, served, "2-anomalies")
    page.get_by_role("button", name="Acknowledge", exact=True).click()
    settle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Status")).to_contain_text("acknowledged")

    page.get_by_role("button", name="Open trace", exact=True).click()
    settle(page)
    expect(page.get_by_role("heading", name="Trace replay")).to_be_visible()
    expect(page.get_by_test_id("stMarkdown").filter(has_text=BIG_TRACE).first).to_be_visible()
    assert "Step 1 of 8" in step_text(page)  # the anomaly, marked where it fired
    expect(page.get_by_test_id("stAlert").filter(has_text="cost_spike").first).to_be_visible()
    # step through the replay, event by event, until the model answers
    seen = []
    for expected in range(2, 5):
        page.get_by_role("button", name="Next", exact=True).click()
        settle(page)
        assert f"Step {expected} of 8" in step_text(page)
        seen.append(page.get_by_test_id("stMain").inner_text())
    assert "agent starts" in seen[0] and "prompt to model" in seen[1] and "model answer" in seen[2]
    expect(page.get_by_test_id("stMetric").filter(has_text="Cost so far")).to_contain_text("$126.18")
    # the 8 MB chain of thought is not on the page until opened
    assert all(len(t) < 1_000_000 for t in page.locator("textarea").evaluate_all("els => els.map(e => e.value)"))
    toggle = page.get_by_test_id("stCheckbox").filter(has_text="Open gen_ai.output.messages")
    expect(toggle).to_contain_text("MB")
    toggle.locator("label").first.click()
    settle(page)
    area = page.locator("textarea").filter(has_text="thought 0:")
    expect(area).to_have_count(1)
    value = area.input_value()
    assert value == BIG_REASONING and value.endswith(BIG_END)
    expect(page.get_by_test_id("stDownloadButton").filter(has_text="Download gen_ai.output.messages")).to_be_visible()
    shoot(page, served, "3-trace-replay-8mb-thought")
    # and on: the tool call, the cross-tenant credential use
    page.get_by_role("button", name="Next", exact=True).click()
    settle(page)
    page.get_by_role("button", name="Next", exact=True).click()
    settle(page)
    assert "Step 6 of 8" in step_text(page)
    expect(page.get_by_test_id("stAlert").filter(has_text="Cross-tenant").first).to_be_visible()
    shoot(page, served, "4-trace-replay-cross-tenant-step")
    # the timeline of the trace
    page.get_by_test_id("stButtonGroup").get_by_text("Timeline", exact=True).click()
    settle(page)
    charts(page, 1)
    shoot(page, served, "5-trace-timeline")
    assert big["trace"] == BIG_TRACE


def test_alert_link_opens_the_anomaly_and_its_trace(page, served):
    target = served["ids"]["fanout"]
    page.goto(f"{served['url']}/?anomaly={target['id']}&trace={target['trace']}")
    settle(page)
    expect(page.get_by_role("heading", name="Anomalies")).to_be_visible()
    expect(page.get_by_test_id("stMarkdown").filter(has_text="forked 15 enrich-worker sub-agents").first
           ).to_be_visible()
    charts(page, 1)  # the baseline chart
    shoot(page, served, "6-alert-link-anomaly")
    page.get_by_role("button", name="Open trace", exact=True).click()
    settle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Spans").first).to_contain_text("12,0")
    page.get_by_test_id("stButtonGroup").get_by_text("Agent tree", exact=True).click()
    settle(page)
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    shoot(page, served, "7-fanout-agent-tree")
    page.get_by_test_id("stButtonGroup").get_by_text("Timeline", exact=True).click()
    settle(page)
    shoot(page, served, "8-fanout-timeline")


@pytest.mark.parametrize("name, n", [("Costs", 3), ("Credentials", 2), ("GPUs", 5)])
def test_every_other_page_renders_with_its_charts(page, served, name, n):
    page.goto(served["url"])
    settle(page)
    open_page(page, name)
    charts(page, n)
    if name == "Credentials":
        expect(page.get_by_test_id("stAlert").filter(has_text="cross-tenant credential uses").first).to_be_visible()
    if name == "GPUs":
        expect(page.get_by_test_id("stMetric").filter(has_text="Devices")).to_contain_text("2")
    shoot(page, served, f"9-{name.lower()}")

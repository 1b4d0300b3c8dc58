"""Signing in to the dashboard, in headless Chromium against real servers on loopback.

OpenID Connect: an identity provider (tests/oidc_provider.py) and the dashboard's
Streamlit server run for real; Chromium clicks "Sign in", fills the provider's
login form, comes back signed in with the role and tenants of its id_token claims
(or of the local mapping file, which wins), and signs out. Most checks serve a
one-line page (PROBE) that shows the Viewer dashboard/auth.py gives; the last
ones serve `agentwatch dashboard` itself on a demo store of two tenants, where a
viewer of one tenant finds that tenant's traces only. Trusted proxy: the user
header counts from an allowed peer and not from any other. Beyond loopback with
no sign-in configured, `agentwatch dashboard` and `agentwatch up` refuse to start.
"""

from __future__ import annotations

import doctest
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from agentwatch import config
from agentwatch.dashboard import auth, server
from tests.oidc_provider import OIDCProvider, User

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CLIENT_ID, CLIENT_SECRET = "agentwatch-dashboard", "s3cret-for-tests-only"
ROLES_CLAIM, TENANTS_CLAIM = "agentwatch_role", "agentwatch_tenants"
# The page the sign-in is checked on: what dashboard/auth.py draws for every page of the app, and the Viewer it gives.
PROBE = '''
import streamlit as st
from agentwatch.dashboard import auth

viewer = auth.current_viewer()
if viewer is None:
    st.caption("viewer: none")
    st.stop()
scope = "*" if viewer.tenants is None else ",".join(sorted(viewer.tenants))
st.caption(f"viewer: {viewer.name} | {viewer.role} | {scope}")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWATCH_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.update({f"AGENTWATCH_{name.upper()}": value for name, value in settings.items()})
    return env


def wait_healthy(url: str, process: subprocess.Popen, log: Path, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "dashboard did not come up:\n" + log.read_text()
        time.sleep(0.3)


class Dashboard:
    """The dashboard's server (dashboard.server.serve) in a subprocess, serving PROBE, until stopped."""

    def __init__(self, base: Path, name: str, port: int | None = None, context: ssl.SSLContext | None = None,
                 **settings: str):
        self.port = port or free_port()
        probe = base / f"{name}_probe.py"
        probe.write_text(PROBE)
        self.log = base / f"{name}.log"
        scheme = "https" if settings.get("tls_cert") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        env = clean_env(data_dir=str(base / name), **settings)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from pathlib import Path; from agentwatch.dashboard import "
                 "server; server.serve(int(sys.argv[1]), '127.0.0.1', app=Path(sys.argv[2]))",
                 str(self.port), str(probe)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.process, self.log, context)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def oidc(tmp_path_factory):
    base = tmp_path_factory.mktemp("signin_oidc")
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth2callback"
    provider = OIDCProvider(CLIENT_ID, CLIENT_SECRET, [redirect], {
        "vera": User("vera-pw", {"email": "vera@acme.test", "email_verified": True, "name": "Vera",
                                 ROLES_CLAIM: "viewer", TENANTS_CLAIM: ["acme"]}),
        "ada": User("ada-pw", {"email": "ada@ops.test", "email_verified": True, "name": "Ada",
                               ROLES_CLAIM: ["viewer", "admin"]}),
        "ned": User("ned-pw", {"email": "ned@acme.test", "email_verified": True, "name": "Ned"}),  # granted nothing
        # The provider says admin; the operator's mapping file says responder of globex, and wins.
        "mo": User("mo-pw", {"email": "mo@globex.test", "email_verified": True, ROLES_CLAIM: "admin"}),
        # An address the provider has not verified, or does not say it verified (providers that let a user
        # type any address), borrows nobody's grant: eve and zed are known by their subjects only.
        "eve": User("eve-pw", {"email": "mo@globex.test", "email_verified": False}),
        "zed": User("zed-pw", {"email": "mo@globex.test"}),
    }).start()
    users = base / "users.toml"
    users.write_text('["mo@globex.test"]\nrole = "responder"\ntenants = ["globex"]\n')
    try:
        dashboard = Dashboard(base, "oidc", port, oidc_issuer=provider.issuer, oidc_client_id=CLIENT_ID,
                              oidc_client_secret=CLIENT_SECRET, oidc_redirect_uri=redirect,
                              oidc_roles_claim=ROLES_CLAIM, oidc_tenants_claim=TENANTS_CLAIM,
                              dashboard_users=str(users))
    except BaseException:
        provider.stop()
        raise
    yield provider, dashboard
    dashboard.stop()
    provider.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def sign_in(page: Page, url: str, username: str, password: str) -> None:
    """Through the dashboard's "Sign in" and the identity provider's own form, back to the dashboard."""
    page.goto(url)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Username").fill(username)  # the identity provider's own form
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{url}/")


@pytest.mark.parametrize("username, shown, sidebar", [
    ("vera", "viewer: vera@acme.test | viewer | acme", "Signed in as vera@acme.test · viewer · acme"),
    ("ada", "viewer: ada@ops.test | admin | *", "Signed in as ada@ops.test · admin · every tenant"),
    ("ned", "viewer: ned@acme.test | viewer | ", "Signed in as ned@acme.test · viewer · no tenant"),
    ("mo", "viewer: mo@globex.test | responder | globex", "Signed in as mo@globex.test · responder · globex"),
    ("eve", "viewer: eve | viewer | ", "Signed in as eve · viewer · no tenant"),
    ("zed", "viewer: zed | viewer | ", "Signed in as zed · viewer · no tenant"),
])
def test_oidc_sign_in_grants_the_claimed_role_and_tenants(oidc, page, username, shown, sidebar):
    provider, dashboard = oidc
    page.goto(dashboard.url)
    expect(page.get_by_text("viewer: none")).to_be_visible()
    sign_in(page, dashboard.url, username, f"{username}-pw")
    expect(page.get_by_text(shown, exact=True)).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text(sidebar)
    assert provider.signed_in[-1] == username
    # Signed in for the browser, not for the page: a reload keeps the sign-in (Streamlit's signed cookie).
    page.reload()
    expect(page.get_by_text(shown, exact=True)).to_be_visible()


def test_oidc_wrong_password_stays_signed_out_and_sign_out_ends_the_sign_in(oidc, page):
    provider, dashboard = oidc
    page.goto(dashboard.url)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Username").fill("vera")
    page.get_by_label("Password").fill("guess")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
    page.goto(dashboard.url)
    expect(page.get_by_text("viewer: none")).to_be_visible()

    sign_in(page, dashboard.url, "vera", "vera-pw")
    expect(page.get_by_text("viewer: vera@acme.test | viewer | acme", exact=True)).to_be_visible()
    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("viewer: none")).to_be_visible()
    page.goto(dashboard.url)
    expect(page.get_by_text("viewer: none")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """Two dashboards behind the same kind of proxy: one trusts this machine's loopback, one a network we are not on."""
    base = tmp_path_factory.mktemp("signin_proxy")
    users = base / "users.json"
    users.write_text('{"rita@acme.test": {"role": "responder", "tenants": ["acme"]}}')
    common = {"trusted_proxy_header": "X-Forwarded-Email", "dashboard_users": str(users)}
    trusting = Dashboard(base, "trusting", trusted_proxies="127.0.0.1, ::1", **common)
    try:
        elsewhere = Dashboard(base, "elsewhere", trusted_proxies="203.0.113.0/24", **common)
    except BaseException:
        trusting.stop()
        raise
    yield trusting, elsewhere
    trusting.stop()
    elsewhere.stop()


def proxied_page(browser, url: str, headers: dict) -> Page:
    # Chromium sends these on every request, the WebSocket's upgrade included: as a proxy in front would.
    context = browser.new_context(extra_http_headers=headers)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def test_proxy_header_from_an_allowed_peer_signs_in(proxied, browser):
    trusting, _ = proxied
    page = proxied_page(browser, trusting.url, {"X-Forwarded-Email": "rita@acme.test"})
    try:
        expect(page.get_by_text("viewer: rita@acme.test | responder | acme", exact=True)).to_be_visible()
        expect(page.get_by_test_id("stSidebar")).to_contain_text("Signed in as rita@acme.test · responder · acme")
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)  # the proxy owns the sign-in
    finally:
        page.context.close()
    page = proxied_page(browser, trusting.url, {"X-Forwarded-Email": "sam@acme.test"})  # not in the mapping
    try:
        expect(page.get_by_text("viewer: sam@acme.test | viewer | ", exact=True)).to_be_visible()
    finally:
        page.context.close()


def test_proxy_header_is_ignored_from_other_peers_and_absent_header_is_nobody(proxied, browser):
    trusting, elsewhere = proxied
    page = proxied_page(browser, elsewhere.url, {"X-Forwarded-Email": "rita@acme.test"})
    try:
        expect(page.get_by_text("viewer: none")).to_be_visible()
        expect(page.get_by_text("Not signed in: this dashboard is reached through its sign-in proxy.")).to_be_visible()
    finally:
        page.context.close()
    page = proxied_page(browser, trusting.url, {})
    try:
        expect(page.get_by_text("viewer: none")).to_be_visible()
    finally:
        page.context.close()


def run_command(tmp_path: Path, command: str, **settings: str) -> subprocess.CompletedProcess:
    env = clean_env(data_dir=str(tmp_path / "data"), otlp_http_port=str(free_port()),
                    otlp_grpc_port=str(free_port()), **settings)
    return subprocess.run([sys.executable, "-m", "agentwatch.cli", command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["dashboard", "up"])
def test_beyond_loopback_without_sign_in_the_command_refuses_and_says_why(tmp_path, command):
    port = free_port()
    done = run_command(tmp_path, command, listen_host="0.0.0.0", dashboard_port=str(port))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"agentwatch {command}: refusing to serve the dashboard on 0.0.0.0 without sign-in" in done.stderr
    for setting in ("AGENTWATCH_OIDC_ISSUER", "AGENTWATCH_TRUSTED_PROXY_HEADER", "AGENTWATCH_LISTEN_HOST"):
        assert setting in done.stderr
    assert not (tmp_path / "data").exists()  # refused before touching the store or opening a port


def test_half_configured_sign_in_refuses_even_on_loopback(tmp_path):
    done = run_command(tmp_path, "dashboard", dashboard_port=str(free_port()), oidc_issuer="http://127.0.0.1:9/",
                       trusted_proxy_header="X-Forwarded-User")
    assert done.returncode == 2
    assert "AGENTWATCH_OIDC_CLIENT_ID is not set" in done.stderr
    assert "AGENTWATCH_TRUSTED_PROXY_HEADER without AGENTWATCH_TRUSTED_PROXIES" in done.stderr


def test_a_mapping_file_granting_an_unknown_role_refuses_the_start(tmp_path):
    users = tmp_path / "users.toml"
    users.write_text('["ana@acme.test"]\nrole = "admn"\ntenants = ["acme"]\n')
    done = run_command(tmp_path, "dashboard", dashboard_port=str(free_port()), dashboard_users=str(users))
    assert done.returncode == 2
    assert "ana@acme.test: role 'admn' is none of viewer, responder, admin" in done.stderr


def test_either_sign_in_lets_it_listen_beyond_loopback():
    oidc = config.Settings(oidc_issuer="https://id.example", oidc_client_id="c", oidc_client_secret="s")
    proxy = config.Settings(trusted_proxy_header="X-Forwarded-Email", trusted_proxies="10.0.0.0/8")
    assert server.refusal("0.0.0.0", oidc) is None and server.refusal("::", proxy) is None
    assert server.refusal("127.0.0.1", config.Settings()) is None
    assert "without sign-in" in server.refusal("192.0.2.2", config.Settings())


@pytest.fixture(scope="module")
def fleet_dashboard(tmp_path_factory):
    """`agentwatch dashboard` itself, on a store the demo filled with two tenants (acme, globex), with OIDC sign-in."""
    base = tmp_path_factory.mktemp("signin_app")
    demo = subprocess.run([sys.executable, "-m", "agentwatch.cli", "demo", "--duration", "300", "--tenants", "2",
                           "--no-detect", "--no-incidents"], env=clean_env(data_dir=str(base / "data")), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth2callback"
    provider = OIDCProvider(CLIENT_ID, CLIENT_SECRET, [redirect], {
        "vera": User("vera-pw", {"email": "vera@acme.test", "email_verified": True, ROLES_CLAIM: "viewer",
                                 TENANTS_CLAIM: ["acme"]}),
        "ada": User("ada-pw", {"email": "ada@ops.test", "email_verified": True, ROLES_CLAIM: "admin"}),
    }).start()
    env = clean_env(data_dir=str(base / "data"), dashboard_port=str(port), oidc_issuer=provider.issuer,
                    oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET, oidc_redirect_uri=redirect,
                    oidc_roles_claim=ROLES_CLAIM, oidc_tenants_claim=TENANTS_CLAIM)
    log = base / "dashboard.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "dashboard"], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
    except BaseException:
        process.kill()
        provider.stop()
        raise
    yield url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    provider.stop()


def tenant_choices(page: Page) -> list[str]:
    """The options of the trace finder's Tenant box: the tenants with traces that this viewer may see."""
    expect(page.get_by_role("heading", name="Trace replay").first).to_be_visible()
    box = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Tenant", exact=True))
    box.locator("input").first.click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    return options.all_inner_texts()


@pytest.mark.parametrize("username, tenants", [("vera", ["(all)", "acme"]), ("ada", ["(all)", "acme", "globex"])])
def test_the_dashboard_shows_a_viewer_only_the_tenants_granted(fleet_dashboard, page, username, tenants):
    sign_in(page, fleet_dashboard, username, f"{username}-pw")
    expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {username}@")
    page.goto(f"{fleet_dashboard}/?page=trace")
    assert sorted(tenant_choices(page)) == tenants



@pytest.mark.parametrize("module", [auth, server])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0

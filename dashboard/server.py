"""Run the dashboard's Streamlit server in this process.

`agentwatch up` calls `serve()` from its main thread, in the process that owns
the embedded store, so the dashboard reads the same chDB data path as the
receiver and the detectors (one process per store). `agentwatch dashboard`
does the same on its own.

Beyond loopback the dashboard needs sign-in (dashboard/auth.py): `serve()`
refuses to start without it, since everyone reaching the port would otherwise
be admin of every tenant. With AGENTWATCH_TLS_CERT and _KEY it serves HTTPS.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from agentwatch import config
from agentwatch.dashboard import auth

APP = Path(__file__).with_name("app.py")


class Refused(RuntimeError):
    """The dashboard will not start as configured; the message says why and what to set."""


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the dashboard to this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def refusal(host: str, settings: config.Settings) -> str | None:
    """Why the dashboard must not start listening on `host` with these settings; None when it may."""
    problems = auth.configuration_problems(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        problems.append("AGENTWATCH_TLS_CERT and AGENTWATCH_TLS_KEY go together (a PEM certificate and its key)")
    problems += [f"{name}: no file {path}" for name, path in (("AGENTWATCH_TLS_CERT", settings.tls_cert),
                                                              ("AGENTWATCH_TLS_KEY", settings.tls_key))
                 if path and not Path(path).is_file()]
    if problems:
        return "dashboard sign-in or TLS is misconfigured: " + "; ".join(problems)
    if is_loopback(host) or auth.oidc_enabled(settings) or auth.proxy_enabled(settings):
        return None
    return (f"refusing to serve the dashboard on {host} without sign-in: anyone reaching it would be admin of "
            "every tenant. Set AGENTWATCH_OIDC_ISSUER, AGENTWATCH_OIDC_CLIENT_ID and AGENTWATCH_OIDC_CLIENT_SECRET "
            "(OpenID Connect), or AGENTWATCH_TRUSTED_PROXY_HEADER and AGENTWATCH_TRUSTED_PROXIES (an auth proxy "
            "in front), or listen on 127.0.0.1 (AGENTWATCH_LISTEN_HOST).")


def streamlit_options(port: int = 8501, host: str = "127.0.0.1") -> dict:
    """Streamlit config: headless, no usage statistics, no browser, no file watching."""
    return {
        "server.port": int(port),
        "server.address": host,
        "server.headless": True,
        "server.fileWatcherType": "none",
        "server.runOnSave": False,
        "server.enableCORS": True,
        "server.enableXsrfProtection": True,
        "server.maxMessageSize": 1024,  # MB: a whole 8 MB chain of thought (and far more) fits one message
        # Identity is dashboard/auth.py's alone: no header copied into st.user unchecked, no
        # second (agent) entrance, whatever a config.toml says.
        "server.trustedUserHeaders": "{}",
        "server.enableAgentApi": False,
        "browser.gatherUsageStats": False,
        "browser.serverAddress": host,
        "browser.serverPort": int(port),
        "global.developmentMode": False,
        "client.toolbarMode": "minimal",
        "client.showErrorDetails": "full",
        "theme.base": "light",
        "logger.level": "warning",
    }


def oidc_secrets(settings: config.Settings) -> str:
    """Streamlit's [auth] section (st.login reads it from a secrets file) for the configured provider."""
    auth_section = {
        "redirect_uri": settings.oidc_redirect_uri or settings.dashboard_url.rstrip("/") + "/oauth2callback",
        # Without a configured secret the sign-in cookies outlive nothing but this process.
        "cookie_secret": settings.oidc_cookie_secret or secrets.token_urlsafe(32),
        "client_id": settings.oidc_client_id,
        "client_secret": settings.oidc_client_secret,
        "server_metadata_url": settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
    }
    # JSON string literals are valid TOML basic strings.
    return "[auth]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in auth_section.items())


def serve(port: int = 8501, host: str = "127.0.0.1", dsn: str | None = None, database: str | None = None,
          settings: config.Settings | None = None, app: Path = APP) -> None:
    """Serve the dashboard on host:port until SIGINT/SIGTERM; blocks the calling (main) thread.

    The app reads its store from AGENTWATCH_CLICKHOUSE_DSN / AGENTWATCH_DATABASE; `dsn` and
    `database`, when given, are set there first (what `agentwatch up` resolved from its settings).
    Raises Refused, before listening, when the sign-in or TLS settings do not allow serving `host`.
    `app` is the Streamlit script to serve (the dashboard unless told otherwise).
    """
    settings = settings or config.load()
    why = refusal(host, settings)
    if why:
        raise Refused(why)
    auth.configure(settings)
    if dsn:
        os.environ["AGENTWATCH_CLICKHOUSE_DSN"] = dsn
    if database:
        os.environ["AGENTWATCH_DATABASE"] = database
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    # The server under Streamlit takes a loopback peer's X-Forwarded-For as the client's address by default;
    # sign-in decides on the address that really connected (the trusted proxy's, or loopback's), so none.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    from streamlit.web import bootstrap

    options = streamlit_options(port, host)
    if settings.tls_cert:
        options.update({"server.sslCertFile": settings.tls_cert, "server.sslKeyFile": settings.tls_key})
    private = tempfile.mkdtemp(prefix="agentwatch-dashboard-")  # 0700: the client secret is in there
    try:
        # Only this file: a stray ~/.streamlit/secrets.toml must not bring another [auth] provider.
        secrets_file = Path(private) / "secrets.toml"
        if auth.oidc_enabled(settings):
            descriptor = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(oidc_secrets(settings))
        options["secrets.files"] = [str(secrets_file)]
        flags = {name.replace(".", "_"): value for name, value in options.items()}
        bootstrap.load_config_options(flag_options=flags)
        bootstrap.run(str(app), False, [], flags)
    finally:
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":  # python -m agentwatch.dashboard.server [port] [host]
    import sys

    try:
        serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8501, sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")
    except Refused as refused:
        sys.exit(f"agentwatch dashboard: {refused}")

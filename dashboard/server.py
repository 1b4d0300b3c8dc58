"""Run the dashboard's Streamlit server in this process.

`agentwatch up` calls `serve()` from its main thread, in the process that owns
the embedded store, so the dashboard reads the same chDB data path as the
receiver and the detectors (one process per store). `agentwatch dashboard`
does the same on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = Path(__file__).with_name("app.py")


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
        "browser.gatherUsageStats": False,
        "browser.serverAddress": host,
        "browser.serverPort": int(port),
        "global.developmentMode": False,
        "client.toolbarMode": "minimal",
        "client.showErrorDetails": "full",
        "theme.base": "light",
        "logger.level": "warning",
    }


def serve(port: int = 8501, host: str = "127.0.0.1", dsn: str | None = None, database: str | None = None) -> None:
    """Serve the dashboard on host:port until SIGINT/SIGTERM; blocks the calling (main) thread.

    The app reads its store from AGENTWATCH_CLICKHOUSE_DSN / AGENTWATCH_DATABASE; `dsn` and
    `database`, when given, are set there first (what `agentwatch up` resolved from its settings).
    """
    if dsn:
        os.environ["AGENTWATCH_CLICKHOUSE_DSN"] = dsn
    if database:
        os.environ["AGENTWATCH_DATABASE"] = database
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    from streamlit.web import bootstrap

    options = streamlit_options(port, host)
    flags = {name.replace(".", "_"): value for name, value in options.items()}
    bootstrap.load_config_options(flag_options=flags)
    bootstrap.run(str(APP), False, [], flags)


if __name__ == "__main__":  # python -m agentwatch.dashboard.server [port] [host]
    import sys

    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8501, sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1")

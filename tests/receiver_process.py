"""`agentwatch collector` in its own process on an embedded store, to be killed and restarted,
and the store read back afterwards (in another process: one process per embedded store)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ReceiverProcess:
    def __init__(self, data_dir: str, http_port: int, **settings: str) -> None:
        self.env = {**os.environ, "AGENTWATCH_DATA_DIR": data_dir, "AGENTWATCH_OTLP_HTTP_PORT": str(http_port),
                    "AGENTWATCH_OTLP_GRPC_PORT": "0", "AGENTWATCH_CONFIG": os.devnull,
                    **{f"AGENTWATCH_{name.upper()}": value for name, value in settings.items()}}
        self.url = f"http://127.0.0.1:{http_port}"
        self.process: subprocess.Popen | None = None
        self.log = os.path.join(data_dir, "receiver.log")

    def start(self, timeout_s: float = 120) -> ReceiverProcess:
        with open(self.log, "ab") as log:
            # A session of its own: a kill takes the conversion workers with it, as a container's would.
            self.process = subprocess.Popen([sys.executable, "-m", "agentwatch.cli", "collector"], env=self.env,
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"receiver not ready within {timeout_s}s; see {self.log}")

    def kill(self) -> None:
        """kill -9, the receiver and its workers."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 300) -> int:
        """SIGTERM: the receiver writes what it accepted, then exits."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


COUNT_SCRIPT = """
import json, sys
from agentwatch.schemas import store
client = store.connect(sys.argv[1], "agentwatch", create=False)
def per_trace(table):
    return {row[0]: [row[1], row[2]] for row in client.query(
        f"SELECT TraceId, count(), uniqExact(SpanId) FROM {table} GROUP BY TraceId").result_rows}
print(json.dumps({
    "otel_traces": per_trace("otel_traces"),
    "agent_spans": per_trace("agent_spans"),
    "minute_model_calls": client.query("SELECT sum(ModelCalls) FROM agent_minutes").result_rows[0][0],
}))
"""


def stored_spans(data_dir: str) -> dict:
    """Per trace id: [rows, distinct span ids] in otel_traces and agent_spans; model calls in agent_minutes."""
    dsn = f"chdb://{os.path.join(data_dir, 'clickhouse')}"
    output = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, dsn], check=True, capture_output=True, text=True)
    return json.loads(output.stdout)

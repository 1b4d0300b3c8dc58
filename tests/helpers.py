"""Helpers shared by the tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentwatch.collector.receiver import Receiver, ReceiverConfig
from agentwatch.schemas import migrate, store


def fresh_database(dsn: str, name: str) -> str:
    client = store.connect(dsn, name)
    client.command(f"DROP DATABASE IF EXISTS `{name}`")
    migrate.apply(client, name)
    client.close()
    return name


def start_receiver(dsn: str, database: str, **config) -> Receiver:
    settings = {"http_port": 0, "grpc_port": 0, "decode_processes": 1, **config}
    return Receiver(lambda: store.connect(dsn, database), ReceiverConfig(**settings)).start()


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


class JsonWebhook:
    """A webhook on loopback that answers 200 and keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        """Every alert received, grouped notifications unfolded."""
        return [alert for body in self.received for alert in (body.get("anomalies") or [body])]

    def stop(self) -> None:
        self.server.shutdown()


def prometheus_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total

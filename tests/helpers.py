"""Helpers shared by the tests."""

from __future__ import annotations

import time

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

"""Shared fixtures: one embedded ClickHouse per test process (the engine allows one
data path per process), a database per test module, receivers on free ports."""

from __future__ import annotations

import re

import pytest

from agentwatch.schemas import store
from tests.helpers import fresh_database, start_receiver


@pytest.fixture(scope="session")
def dsn(tmp_path_factory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture(scope="module")
def database(dsn, request) -> str:
    return fresh_database(dsn, "t_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1]))


@pytest.fixture(scope="module")
def client(dsn, database):
    connection = store.connect(dsn, database)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def receiver(dsn, database):
    running = start_receiver(dsn, database)
    yield running
    running.stop()

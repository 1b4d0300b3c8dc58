"""The audit log: appended by `record`, read back newest first, and written by `agentwatch keys`."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta

import pytest

from agentwatch import cli
from agentwatch.collector.receiver import api_keys
from agentwatch.schemas import audit
from agentwatch.schemas.vocabulary import AUDIT_ACTIONS, AUDIT_KEY_CREATED, AUDIT_KEY_REVOKED, AUDIT_TRACE_OPENED


def test_entries_come_back_newest_first_and_filtered(client):
    t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for i, actor in enumerate(("dashboard:ana", "dashboard:bo", "dashboard:ana")):
        audit.record(client, actor, AUDIT_TRACE_OPENED, role="viewer", tenant="acme", target=f"trace-{i}",
                     detail={"n": i}, at=t0 + timedelta(seconds=i))
    mine = audit.entries(client, actor="dashboard:ana", since=t0)
    assert [(e.target, e.detail) for e in mine] == [("trace-2", {"n": 2}), ("trace-0", {"n": 0})]
    assert mine[0].at == t0 + timedelta(seconds=2) and mine[0].role == "viewer"
    assert [e.target for e in audit.entries(client, since=t0 + timedelta(seconds=1))] == ["trace-2", "trace-1"]
    with pytest.raises(ValueError):
        audit.record(client, "dashboard:ana", "deleted_everything")
    with pytest.raises(ValueError):
        audit.record(client, "", AUDIT_TRACE_OPENED)
    assert len(set(AUDIT_ACTIONS)) == len(AUDIT_ACTIONS)


def test_keys_created_and_revoked_from_the_command_line_are_audited(client, dsn, database, monkeypatch, capsys):
    monkeypatch.setenv("AGENTWATCH_CLICKHOUSE_DSN", dsn)
    monkeypatch.setenv("AGENTWATCH_DATABASE", database)
    since = datetime.now(UTC)
    assert cli.main(["keys", "create", "--tenant", "acme", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["keys", "revoke", key]) == 0
    actor = f"cli:{getpass.getuser()}"
    done = [(e.actor, e.action, e.tenant, e.target, e.detail) for e in reversed(audit.entries(client, since=since))]
    assert done == [(actor, AUDIT_KEY_CREATED, "acme", api_keys.digest(key), {"name": "ci"}),
                    (actor, AUDIT_KEY_REVOKED, "acme", api_keys.digest(key), {"name": "ci"})]
    assert key not in repr(done)  # the key itself is never kept, only its digest

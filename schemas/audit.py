"""The `audit_log` table: who did what with the fleet's data, appended and never changed.

The dashboard records sign-ins, traces and payloads opened, anomaly status
changes and halts; the command line records API keys created and revoked.
Every writer goes through `record`, every reader through `entries`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from agentwatch.schemas.vocabulary import AUDIT_ACTIONS

COLUMNS = ["At", "Actor", "Role", "Action", "Tenant", "Target", "Detail"]


@dataclass(frozen=True)
class Entry:
    """One row of `audit_log`."""

    at: datetime
    actor: str
    role: str
    action: str
    tenant: str
    target: str
    detail: dict


def record(client: Client, actor: str, action: str, *, role: str = "", tenant: str = "", target: str = "",
           detail: dict | None = None, at: datetime | None = None) -> Entry:
    """Append one entry (now, unless `at` is given); `action` must be one of the vocabulary's AUDIT_ACTIONS."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"action must be one of {AUDIT_ACTIONS}, not {action!r}")
    if not actor:
        raise ValueError("an audit entry needs the actor who acted")
    entry = Entry(at or datetime.now(UTC), actor, role, action, tenant, target, detail or {})
    client.insert("audit_log", [[entry.at, actor, role, action, tenant, target,
                                 json.dumps(entry.detail, ensure_ascii=False, sort_keys=True)]],
                  column_names=COLUMNS)
    return entry


def entries(client: Client, *, actor: str = "", action: str = "", tenant: str = "", since: datetime | None = None,
            limit: int = 1000) -> list[Entry]:
    """The latest entries, newest first, of one actor, action or tenant when given."""
    where, parameters = ["1"], {"limit": int(limit)}
    for column, value in (("Actor", actor), ("Action", action), ("Tenant", tenant)):
        if value:
            where.append(f"{column} = {{{column.lower()}:String}}")
            parameters[column.lower()] = value
    if since is not None:
        where.append("At >= {since:DateTime64(6)}")
        parameters["since"] = since
    rows = client.query(f"SELECT At, Actor, Role, Action, Tenant, Target, Detail FROM audit_log "
                        f"WHERE {' AND '.join(where)} ORDER BY At DESC LIMIT {{limit:UInt32}}",
                        parameters=parameters).result_rows
    return [Entry(at if at.tzinfo else at.replace(tzinfo=UTC), actor_, role, action_, tenant_, target,
                  json.loads(detail or "{}")) for at, actor_, role, action_, tenant_, target, detail in rows]

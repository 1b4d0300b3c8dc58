"""The `halts` table: containment decisions, one row each, the latest per target in force.

Written by the detectors' containment policy (`agentwatch.detectors.containment`)
and by people (`agentwatch halt|release`); read by the receiver's verdicts
endpoint (what the SDKs' guards enforce) and by the command line. All of them go
through this module, so they agree on what "in force" means:

- a decision is a row (`Decision`): halt or release one target of a scope, a
  trace id, an agent id or a tenant, within a tenant;
- rows are only ever appended (MergeTree): the table is also the record of who
  stopped what, when and why;
- the decision in force for a (Tenant, Scope, Target) is its latest row, by
  DecidedAt then HaltId (`LIMIT 1 BY`); a target is halted while that row's
  Action is 'halt'.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from agentwatch.schemas.vocabulary import HALT_ACTIONS, HALT_CALLS, HALT_SCOPES

COLUMNS = ["HaltId", "DecidedAt", "Tenant", "Scope", "Target", "Action", "Calls", "AnomalyId", "Kind", "Severity",
           "AgentId", "TraceId", "Summary", "Reason", "DecidedBy"]
_SELECT = ("SELECT HaltId, toUnixTimestamp64Micro(DecidedAt), Tenant, Scope, Target, Action, Calls, AnomalyId, "
           "Kind, Severity, AgentId, TraceId, Summary, Reason, DecidedBy FROM halts")
# The decision in force per target: the latest row of each (Tenant, Scope, Target).
_LATEST = " ORDER BY DecidedAt DESC, HaltId DESC LIMIT 1 BY Tenant, Scope, Target"


@dataclass(frozen=True)
class Decision:
    """One row of `halts`."""

    tenant: str
    scope: str  # trace | agent | tenant
    target: str  # the trace id, the agent id or the tenant
    action: str  # halt | release
    calls: str = "all"  # all | model: the calls a halt stops
    anomaly_id: str = ""  # the anomaly it answers ('' for a person's own decision)
    kind: str = ""
    severity: str = ""
    agent_id: str = ""
    trace_id: str = ""
    summary: str = ""
    reason: str = ""
    decided_by: str = ""  # 'policy', 'cli:<user>'
    halt_id: str = ""
    decided_at_us: int = 0

    def row(self) -> list:
        return [self.halt_id, datetime.fromtimestamp(self.decided_at_us / 1e6, tz=UTC), self.tenant, self.scope,
                self.target, self.action, self.calls, self.anomaly_id, self.kind, self.severity, self.agent_id,
                self.trace_id, self.summary, self.reason, self.decided_by]

    @property
    def decided_at(self) -> str:
        return datetime.fromtimestamp(self.decided_at_us / 1e6, tz=UTC).isoformat(timespec="microseconds") \
            .replace("+00:00", "Z")

    def verdict(self) -> dict:
        """The JSON the receiver serves an SDK for a halt in force (snake_case, like the alert payloads)."""
        return {"halt_id": self.halt_id, "tenant": self.tenant, "scope": self.scope, "target": self.target,
                "action": self.action, "calls": self.calls, "anomaly_id": self.anomaly_id, "kind": self.kind,
                "severity": self.severity, "agent": self.agent_id, "trace_id": self.trace_id,
                "summary": self.summary, "reason": self.reason, "decided_by": self.decided_by,
                "decided_at": self.decided_at}


def decision(tenant: str, scope: str, target: str, action: str, *, halt_id: str = "",
             decided_at_us: int | None = None, **fields) -> Decision:
    """A checked Decision, with a new id and the current time unless given."""
    if scope not in HALT_SCOPES:
        raise ValueError(f"scope must be one of {HALT_SCOPES}, not {scope!r}")
    if action not in HALT_ACTIONS:
        raise ValueError(f"action must be one of {HALT_ACTIONS}, not {action!r}")
    calls = fields.get("calls", "all")
    if calls not in HALT_CALLS:
        raise ValueError(f"calls must be one of {HALT_CALLS}, not {calls!r}")
    if not tenant or not target:
        raise ValueError("a halt needs a tenant and a target")
    return Decision(tenant, scope, target, action, halt_id=halt_id or uuid.uuid4().hex,
                    decided_at_us=decided_at_us if decided_at_us is not None else time.time_ns() // 1000, **fields)


def record(client: Client, decisions: Iterable[Decision]) -> list[Decision]:
    """Append decisions (in one insert); returns them."""
    decisions = list(decisions)
    if decisions:
        client.insert("halts", [d.row() for d in decisions], column_names=COLUMNS)
    return decisions


def _decisions(rows) -> list[Decision]:
    return [Decision(halt_id=r[0], decided_at_us=int(r[1]), tenant=r[2], scope=r[3], target=r[4], action=r[5],
                     calls=r[6], anomaly_id=r[7], kind=r[8], severity=r[9], agent_id=r[10], trace_id=r[11],
                     summary=r[12], reason=r[13], decided_by=r[14]) for r in rows]


def current(client: Client, tenant: str | None = None,
            targets: Iterable[tuple[str, str, str]] | None = None) -> list[Decision]:
    """The decision in force for every target (of one tenant, or of these (tenant, scope, target) keys)."""
    where, parameters = [], {}
    if tenant is not None:
        where.append("Tenant = {tenant:String}")
        parameters["tenant"] = tenant
    if targets is not None:
        keys = sorted(set(targets))
        if not keys:
            return []
        where.append("(Tenant, Scope, Target) IN (SELECT arrayJoin({keys:Array(Tuple(String, String, String))}))")
        parameters["keys"] = keys
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + _LATEST
    return _decisions(client.query(sql, parameters=parameters).result_rows)


def open_halts(client: Client, tenant: str | None = None) -> list[Decision]:
    """The halts in force (of one tenant, or of all), ordered by tenant, scope and target."""
    halts = [d for d in current(client, tenant) if d.action == "halt"]
    return sorted(halts, key=lambda d: (d.tenant, d.scope, d.target))


def for_anomalies(client: Client, anomaly_ids: Iterable[str]) -> list[Decision]:
    """Every decision that names one of these anomalies, oldest first."""
    ids = sorted(set(anomaly_ids))
    if not ids:
        return []
    rows = client.query(_SELECT + " WHERE AnomalyId IN {ids:Array(String)} ORDER BY DecidedAt, HaltId",
                        parameters={"ids": ids}).result_rows
    return _decisions(rows)


def history(client: Client, tenant: str | None = None, limit: int = 100) -> list[Decision]:
    """The latest decisions, newest first."""
    where = " WHERE Tenant = {tenant:String}" if tenant is not None else ""
    rows = client.query(_SELECT + where + " ORDER BY DecidedAt DESC, HaltId DESC LIMIT {limit:UInt32}",
                        parameters={"tenant": tenant or "", "limit": limit}).result_rows
    return _decisions(rows)


def released(halt: Decision, *, reason: str, decided_by: str, anomaly_id: str | None = None) -> Decision:
    """The release of a halt in force: same target, the halt's anomaly (unless told), a new id and time."""
    return replace(halt, action="release", reason=reason, decided_by=decided_by,
                   anomaly_id=halt.anomaly_id if anomaly_id is None else anomaly_id,
                   halt_id=uuid.uuid4().hex, decided_at_us=max(time.time_ns() // 1000, halt.decided_at_us + 1))

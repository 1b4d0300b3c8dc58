"""What a viewer does, not only reads: anomaly status changes, halts and releases, and the audit log.

Each action checks the viewer's role and that the object is among the
viewer's tenants before it writes, whatever the page showed, and is
recorded in `audit_log` under 'dashboard:<viewer name>'.
"""

from __future__ import annotations

import json

import polars as pl

from agentwatch.dashboard.auth import Viewer
from agentwatch.dashboard.data.anomaly_queries import anomaly
from agentwatch.dashboard.data.core import NotAllowed
from agentwatch.schemas import audit, halts
from agentwatch.schemas.vocabulary import (ANOMALY_STATUSES, AUDIT_ANOMALY_STATUS, AUDIT_HALT, AUDIT_RELEASE,
                                           DASHBOARD_DECIDER, HALT_SCOPES)

AUDIT_SCHEMA = {"At": pl.Datetime("us", "UTC"), "Actor": pl.Utf8, "Role": pl.Utf8, "Action": pl.Utf8, "Tenant": pl.Utf8,
                "Target": pl.Utf8, "Detail": pl.Utf8}


def actor(viewer: Viewer) -> str:
    return f"{DASHBOARD_DECIDER}{viewer.name}"


def note(client, viewer: Viewer, action: str, *, tenant: str = "", target: str = "", detail: dict | None = None):
    """Record something the viewer did in the audit log (a sign-in, a trace or payload opened)."""
    return audit.record(client, actor(viewer), action, role=viewer.role, tenant=tenant, target=target, detail=detail)


def _responder(viewer: Viewer, what: str) -> None:
    if not viewer.may("responder"):
        raise NotAllowed(f"{viewer.name} ({viewer.role}) may not {what}: that takes a responder or an admin")


def _visible_anomaly(client, viewer: Viewer, anomaly_id: str) -> dict:
    row = anomaly(client, viewer, anomaly_id)
    if row is None:
        raise LookupError(f"no anomaly with id {anomaly_id!r}")
    return row


def set_anomaly_status(client, viewer: Viewer, anomaly_id: str, status: str) -> None:
    """Write a new version of the anomaly with this Status (UpdatedAt = now64(6)); every other column kept."""
    if status not in ANOMALY_STATUSES:
        raise ValueError(f"status must be one of {ANOMALY_STATUSES}")
    _responder(viewer, f"mark anomalies {status}")
    row = _visible_anomaly(client, viewer, anomaly_id)
    client.command(
        "INSERT INTO anomalies (AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, "
        "Evidence, Status, FirstSeen, LastSeen, UpdatedAt) "
        "SELECT AnomalyId, DetectedAt, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, "
        "{status:String}, FirstSeen, LastSeen, greatest(now64(6), UpdatedAt + toIntervalMicrosecond(1)) "
        "FROM anomalies FINAL WHERE AnomalyId = {id:String} AND Tenant = {tenant:String}",
        parameters={"status": status, "id": anomaly_id, "tenant": row["Tenant"]})
    note(client, viewer, AUDIT_ANOMALY_STATUS[status], tenant=row["Tenant"], target=anomaly_id,
         detail={"from": row["Status"], "to": status, "kind": row["Kind"]})


def targets_of(row: dict) -> dict[str, str]:
    """What a halt answering this anomaly can stop: its trace, its agent, its tenant (those it names)."""
    found = {"trace": row.get("TraceId") or "", "agent": row.get("AgentId") or "", "tenant": row.get("Tenant") or ""}
    return {scope: found[scope] for scope in HALT_SCOPES if found[scope]}


def containment(client, viewer: Viewer, row: dict) -> dict[str, halts.Decision | None]:
    """The halt in force (or None) for each target of an anomaly the viewer may see, by scope."""
    targets = targets_of(_visible_anomaly(client, viewer, row["AnomalyId"]))
    in_force = {(d.scope, d.target): d for d in halts.current(
        client, targets=[(row["Tenant"], scope, target) for scope, target in targets.items()]) if d.action == "halt"}
    return {scope: in_force.get((scope, target)) for scope, target in targets.items()}


def halt(client, viewer: Viewer, anomaly_id: str, scope: str, *, calls: str = "all",
         reason: str = "") -> halts.Decision:
    """Halt the anomaly's trace, agent or tenant: the guards of its agents stop them at their next call."""
    _responder(viewer, "halt agents")
    row = _visible_anomaly(client, viewer, anomaly_id)
    targets = targets_of(row)
    if scope not in targets:
        raise ValueError(f"anomaly {anomaly_id} names no {scope} to halt")
    (decision,) = halts.record(client, [halts.decision(
        row["Tenant"], scope, targets[scope], "halt", calls=calls, anomaly_id=anomaly_id, kind=row["Kind"],
        severity=row["Severity"], agent_id=row["AgentId"], trace_id=row["TraceId"], summary=row["Summary"],
        reason=reason or f"halted from the dashboard over {row['Kind']} {anomaly_id}", decided_by=actor(viewer))])
    note(client, viewer, AUDIT_HALT, tenant=row["Tenant"], target=targets[scope],
         detail={"scope": scope, "calls": calls, "anomaly_id": anomaly_id, "halt_id": decision.halt_id,
                 "reason": decision.reason})
    return decision


def release(client, viewer: Viewer, anomaly_id: str, scope: str, *, reason: str = "") -> halts.Decision:
    """Lift the halt in force on the anomaly's trace, agent or tenant: its agents carry on, no restart."""
    _responder(viewer, "release agents")
    row = _visible_anomaly(client, viewer, anomaly_id)
    in_force = containment(client, viewer, row).get(scope)
    if in_force is None:
        raise LookupError(f"the {scope} of anomaly {anomaly_id} is not halted")
    (decision,) = halts.record(client, [halts.released(
        in_force, reason=reason or "released from the dashboard", decided_by=actor(viewer), anomaly_id=anomaly_id)])
    note(client, viewer, AUDIT_RELEASE, tenant=row["Tenant"], target=in_force.target,
         detail={"scope": scope, "anomaly_id": anomaly_id, "halt_id": decision.halt_id,
                 "released": in_force.halt_id, "reason": decision.reason})
    return decision


def audit_log(client, viewer: Viewer, *, action: str = "", actor_name: str = "", limit: int = 1000) -> pl.DataFrame:
    """The latest audit entries, newest first: for admins only."""
    if viewer.role != "admin":
        raise NotAllowed(f"{viewer.name} ({viewer.role}) may not read the audit log: that takes an admin")
    rows = [{"At": e.at, "Actor": e.actor, "Role": e.role, "Action": e.action, "Tenant": e.tenant, "Target": e.target,
             "Detail": json.dumps(e.detail, ensure_ascii=False, sort_keys=True)}
            for e in audit.entries(client, actor=actor_name, action=action, limit=limit)]
    return pl.DataFrame(rows, schema=AUDIT_SCHEMA)

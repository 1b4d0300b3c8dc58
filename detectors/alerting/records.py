"""The anomalies an alert is about, as the sinks render them: the current record of each, what was
halted for it (the `halts` table, through schemas/halts.py), and its signed halt/release links."""

from __future__ import annotations

from dataclasses import replace

import orjson
from clickhouse_connect.driver.client import Client

from agentwatch.detectors.alerting.links import ActionSigner
from agentwatch.detectors.alerting.state import utc
from agentwatch.detectors.containment import PLACEHOLDER_AGENT
from agentwatch.detectors.sinks import Anomaly
from agentwatch.schemas import halts


def _evidence(text: str):
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text


def read(client: Client, ids: set[str], signer: ActionSigner | None = None) -> dict[str, Anomaly]:
    """anomaly id -> its record with `halts` and (with a signer) `actions`; ids gone from the table are absent."""
    if not ids:
        return {}
    rows = client.query(
        "SELECT AnomalyId, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, Status, "
        "toUnixTimestamp64Micro(DetectedAt), toUnixTimestamp64Micro(FirstSeen), toUnixTimestamp64Micro(LastSeen) "
        "FROM anomalies FINAL WHERE AnomalyId IN {ids:Array(String)}",
        parameters={"ids": sorted(ids)}).result_rows
    records = {row[0]: Anomaly(anomaly_id=row[0], kind=row[1], severity=row[2], tenant=row[3], agent=row[4],
                               trace_id=row[5], score=float(row[6]), summary=row[7], evidence=_evidence(row[8]),
                               status=row[9], detected_at=utc(row[10]), first_seen=utc(row[11]),
                               last_seen=utc(row[12]))
               for row in rows}
    decided = decisions_by_anomaly(client, records)
    for aid, record in records.items():
        made = decided.get(aid, ())
        records[aid] = replace(record, halts=made,
                               actions=tuple(action_links(signer, record, made)) if signer else ())
    return records


def decisions_by_anomaly(client: Client, ids) -> dict[str, tuple[halts.Decision, ...]]:
    """Per anomaly, the latest decision on each target that names it (a halt, or the release of one)."""
    latest: dict[str, dict[tuple[str, str], halts.Decision]] = {}
    for d in halts.for_anomalies(client, ids):  # oldest first: later ones replace earlier
        latest.setdefault(d.anomaly_id, {})[(d.scope, d.target)] = d
    order = {scope: i for i, scope in enumerate(("trace", "agent", "tenant"))}
    return {aid: tuple(sorted(by_target.values(), key=lambda d: (order.get(d.scope, 9), d.target)))
            for aid, by_target in latest.items()}


def targets(anomaly: Anomaly) -> list[tuple[str, str]]:
    """What a responder may halt for this anomaly, most specific first: its trace, its agent, its tenant."""
    out = []
    if anomaly.trace_id:
        out.append(("trace", anomaly.trace_id))
    if anomaly.agent and not anomaly.agent.startswith(PLACEHOLDER_AGENT):
        out.append(("agent", anomaly.agent))
    if anomaly.tenant:
        out.append(("tenant", anomaly.tenant))
    return out


def action_links(signer: ActionSigner, anomaly: Anomaly, made: tuple[halts.Decision, ...]):
    # A halt made for the anomaly sets the calls its links stop (a tenant over budget: model calls only).
    calls = {d.scope: d.calls for d in made if d.action == "halt"}
    return signer.links(anomaly.tenant, anomaly.anomaly_id, targets(anomaly), calls)

"""Scoring detectors against labelled incidents (the demo's `demo_incidents`).

An anomaly *matches* an incident when kind and tenant agree and, where the label
names one, the credential (for credential kinds) or else the trace agrees. An
anomaly that matches no incident of its kind but points at a labelled
incident's trace or credential is *explained*: e.g. the demo's
credential_fanout leak is also genuinely cross-tenant (other tenants' agents use
the owner's credential), so cross_tenant anomalies about that credential are
correct, not false positives. Everything else is a false positive.

    recall    = incidents of the kind matched by at least one anomaly / incidents of the kind
    precision = (matching + explained anomalies of the kind) / anomalies of the kind
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agentwatch.schemas.vocabulary import ANOMALY_KINDS, CREDENTIAL_KINDS


@dataclass
class Row:
    anomaly_id: str
    kind: str
    severity: str
    tenant: str
    agent_id: str
    trace_id: str
    score: float
    summary: str
    evidence: dict
    status: str
    first_seen_ns: int
    last_seen_ns: int

    @property
    def credential_id(self) -> str:
        return self.evidence.get("credential_id", "") if isinstance(self.evidence, dict) else ""

    def traces(self) -> set[str]:
        out = {self.trace_id} if self.trace_id else set()
        e = self.evidence if isinstance(self.evidence, dict) else {}
        out.update(t["trace_id"] for t in e.get("top_traces", []) if isinstance(t, dict))
        out.update(e.get("trace_ids", []))
        return out


@dataclass
class Label:
    kind: str
    tenant: str
    agent_id: str
    trace_id: str
    credential_id: str
    started_at_ns: int = 0
    ended_at_ns: int = 0
    incident_id: str = ""

    @classmethod
    def of(cls, incident) -> Label:
        """From a demo.Incident (or anything with the same attributes)."""
        return cls(incident.kind, incident.tenant, incident.agent_id, incident.trace_id, incident.credential_id,
                   incident.started_at_ns, incident.ended_at_ns, incident.incident_id)


@dataclass
class Report:
    per_kind: dict[str, dict] = field(default_factory=dict)
    matches: dict[str, list[str]] = field(default_factory=dict)  # incident id -> anomaly ids matching it
    explained: list[str] = field(default_factory=list)
    false_positives: list[Row] = field(default_factory=list)
    missed: list[Label] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"per_kind": self.per_kind, "missed": [m.__dict__ for m in self.missed],
                "false_positives": [{"kind": r.kind, "tenant": r.tenant, "trace_id": r.trace_id,
                                     "summary": r.summary} for r in self.false_positives],
                "explained": self.explained}


def load_anomalies(client) -> list[Row]:
    """Current state (FINAL) of every anomaly in the client's database."""
    rows = client.query(
        "SELECT AnomalyId, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, Status, "
        "toUnixTimestamp64Nano(FirstSeen), toUnixTimestamp64Nano(LastSeen) FROM anomalies FINAL "
        "ORDER BY FirstSeen, AnomalyId").result_rows
    return [Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8] or "{}"), r[9], r[10], r[11])
            for r in rows]


def load_labels(client, run_id: str | None = None) -> list[Label]:
    where = "WHERE RunId = {r:String}" if run_id else ""
    rows = client.query(f"SELECT Kind, Tenant, AgentId, TraceId, CredentialId, toUnixTimestamp64Nano(StartedAt), "
                        f"toUnixTimestamp64Nano(EndedAt), IncidentId FROM demo_incidents {where} ORDER BY StartedAt",
                        parameters={"r": run_id} if run_id else None).result_rows
    return [Label(*r) for r in rows]


def matches(a: Row, label: Label) -> bool:
    if a.kind != label.kind or a.tenant != label.tenant:
        return False
    if label.credential_id and a.kind in CREDENTIAL_KINDS:
        return a.credential_id == label.credential_id
    if label.trace_id:
        return label.trace_id in a.traces()
    return True


def explained_by(a: Row, labels: list[Label]) -> Label | None:
    for label in labels:
        if label.credential_id and a.credential_id == label.credential_id:
            return label
        if label.trace_id and label.trace_id in a.traces():
            return label
    return None


def scored_kinds(anomalies: list[Row], labels: list[Label]) -> list[str]:
    """The kinds with an incident or an anomaly, in the vocabulary's order (a kind it lacks goes last)."""
    present = {x.kind for x in labels} | {a.kind for a in anomalies}
    return [k for k in ANOMALY_KINDS if k in present] + sorted(present - set(ANOMALY_KINDS))


def score(anomalies: list[Row], labels: list[Label]) -> Report:
    report = Report()
    for label in labels:
        report.matches[label.incident_id or f"{label.kind}:{label.tenant}"] = [
            a.anomaly_id for a in anomalies if matches(a, label)]
    for kind in scored_kinds(anomalies, labels):
        kind_labels = [x for x in labels if x.kind == kind]
        kind_anomalies = [a for a in anomalies if a.kind == kind]
        detected = [x for x in kind_labels if any(matches(a, x) for a in kind_anomalies)]
        true, explained = 0, 0
        for a in kind_anomalies:
            if any(matches(a, x) for x in kind_labels):
                true += 1
            elif explained_by(a, labels) is not None:
                explained += 1
                report.explained.append(f"{a.kind} {a.tenant} {a.credential_id or a.trace_id}: "
                                        f"explained by {explained_by(a, labels).kind}")
            else:
                report.false_positives.append(a)
        report.missed += [x for x in kind_labels if x not in detected]
        report.per_kind[kind] = {
            "incidents": len(kind_labels), "detected": len(detected),
            "recall": round(len(detected) / len(kind_labels), 3) if kind_labels else None,
            "anomalies": len(kind_anomalies), "matching": true, "explained": explained,
            "false_positives": len(kind_anomalies) - true - explained,
            "precision": round((true + explained) / len(kind_anomalies), 3) if kind_anomalies else None,
            "strict_precision": round(true / len(kind_anomalies), 3) if kind_anomalies else None,
        }
    return report

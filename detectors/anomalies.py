"""Anomalies: deterministic ids, one open episode per (kind, tenant, subject), and their rows.

The `anomalies` table is the contract with the alert dispatcher and the
dashboard (DESIGN.md): one row version per change,
ReplacingMergeTree(UpdatedAt), read with FINAL.

- `anomaly_id` is sha1(f"{kind}|{tenant}|{subject}|{episode start minute}")[:32]:
  a worker that replays the same input after a crash derives the same id and
  writes a new version of the same anomaly instead of a duplicate.
- `AnomalyBook` keeps the open episodes. While a condition lasts the same
  anomaly is updated (LastSeen, Score and Severity may rise); when no
  anomalous evidence was seen for `quiet` of event time it is resolved.
- `write` turns the changed anomalies into row versions: it keeps the
  DetectedAt of a version already stored (a replay after a crash), never
  reopens what a person acknowledged, and steps back when a person resolved
  an episode the detector still thinks open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agentwatch.schemas.vocabulary import UNRESOLVED_STATUSES, max_severity

log = logging.getLogger(__name__)

NS = 1_000_000_000
MINUTE_NS = 60 * NS

COLUMNS = ["AnomalyId", "DetectedAt", "Kind", "Severity", "Tenant", "AgentId", "TraceId", "Score", "Summary",
           "Evidence", "Status", "FirstSeen", "LastSeen"]


def anomaly_id(kind: str, tenant: str, subject: str, episode_start_ns: int) -> str:
    """The contract's deterministic id: sha1 of kind|tenant|subject|episode start minute, 32 hex chars."""
    minute = episode_start_ns // MINUTE_NS
    return hashlib.sha1(f"{kind}|{tenant}|{subject}|{minute}".encode()).hexdigest()[:32]


@dataclass
class Anomaly:
    anomaly_id: str
    kind: str
    tenant: str
    subject: str
    agent_id: str
    trace_id: str
    severity: str
    score: float
    first_seen_ns: int
    last_seen_ns: int
    detected_at_ms: int
    status: str = "open"
    ctx: Any = None  # detector-owned, picklable: what the summary and evidence are rendered from
    # the row whose arrival raised it: (trace id, span id, event time ns, IngestedAt µs)
    raised_by: tuple[str, str, int, int] | None = None
    # what this worker last wrote (None: never), to write only material changes
    written: tuple | None = None
    summary: str = ""
    evidence: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.tenant, self.subject

    def row(self) -> list:
        return [self.anomaly_id, self.detected_at_ms, self.kind, self.severity, self.tenant, self.agent_id,
                self.trace_id, float(self.score), self.summary,
                json.dumps(self.evidence, separators=(",", ":"), default=str, allow_nan=False),
                self.status, int(self.first_seen_ns), int(self.last_seen_ns)]


class AnomalyBook:
    """Open episodes by (kind, tenant, subject) and the anomalies changed since the last write."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, str], Anomaly] = {}
        self.dirty: dict[str, Anomaly] = {}
        # the row being processed (set by the detectors' stream loops): a new anomaly records it as raised_by
        self.current_row: tuple[str, str, int, int] | None = None

    def observe(self, kind: str, tenant: str, subject: str, *, first_ns: int, last_ns: int, score: float,
                severity: str, agent_id: str = "", trace_id: str = "", ctx: Any = None) -> tuple[Anomaly, bool]:
        """Raise a new anomaly or update the open one for this key; returns (anomaly, raised now?)."""
        key = (kind, tenant, subject)
        a = self.open.get(key)
        created = a is None
        if created:
            a = Anomaly(anomaly_id(kind, tenant, subject, first_ns), kind, tenant, subject, agent_id, trace_id,
                        severity, float(score), first_ns, last_ns, time.time_ns() // 1_000_000, ctx=ctx,
                        raised_by=self.current_row)
            self.open[key] = a
        else:
            if score > a.score:
                a.score = float(score)
                if agent_id:
                    a.agent_id = agent_id
                if trace_id:
                    a.trace_id = trace_id
                if ctx is not None:
                    a.ctx = ctx
            a.severity = max_severity(a.severity, severity)
            a.first_seen_ns = min(a.first_seen_ns, first_ns)
            a.last_seen_ns = max(a.last_seen_ns, last_ns)
        self.dirty[a.anomaly_id] = a
        return a, created

    def touch(self, a: Anomaly, last_ns: int) -> bool:
        """More of the same evidence for an open anomaly: only LastSeen moves. False if it is no longer open."""
        if self.open.get(a.key) is not a:
            return False
        if last_ns > a.last_seen_ns:
            a.last_seen_ns = last_ns
            self.dirty[a.anomaly_id] = a
        return True

    def get(self, kind: str, tenant: str, subject: str) -> Anomaly | None:
        return self.open.get((kind, tenant, subject))

    def resolve_quiet(self, kinds: tuple[str, ...] | set[str], watermark_ns: int, quiet_ns: int) -> int:
        """Resolve open anomalies of these kinds with no anomalous evidence for `quiet_ns` of event time."""
        done = [a for a in self.open.values() if a.kind in kinds and watermark_ns >= a.last_seen_ns + quiet_ns]
        for a in done:
            self.close(a)
            a.status = "resolved"
            self.dirty[a.anomaly_id] = a
        return len(done)

    def close(self, a: Anomaly) -> None:
        if self.open.get(a.key) is a:
            del self.open[a.key]

    def take_dirty(self) -> list[Anomaly]:
        out = list(self.dirty.values())
        self.dirty.clear()
        return out


def _material(a: Anomaly, min_score_step: float, min_last_seen_step_ns: int) -> bool:
    """Worth a new row version? New, status or severity changed, score rose enough, or time moved on."""
    if a.written is None:
        return True
    status, severity, score, last_seen = a.written
    return (a.status != status or a.severity != severity or a.score >= score * min_score_step
            or a.last_seen_ns - last_seen >= min_last_seen_step_ns)


def stored_versions(client, ids: list[str]) -> dict[str, tuple[str, int]]:
    """Current (Status, DetectedAt ms) of these anomalies in the store."""
    if not ids:
        return {}
    rows = client.query("SELECT AnomalyId, Status, toUnixTimestamp64Milli(DetectedAt) FROM anomalies FINAL "
                        "WHERE AnomalyId IN {ids:Array(String)}", parameters={"ids": ids}).result_rows
    return {r[0]: (r[1], int(r[2])) for r in rows}


def write(client, book: AnomalyBook, changed: list[Anomaly], *, min_score_step: float = 1.25,
          min_last_seen_step_ns: int = 60 * NS) -> list[Anomaly]:
    """Write a row version for each materially changed anomaly; returns those written.

    Reads the stored versions first: a stored DetectedAt is kept (the same anomaly
    replayed after a crash); an acknowledged anomaly stays acknowledged while the
    condition lasts; one a person resolved while the detector still saw it is
    closed in the book and not written over.
    """
    if not changed:
        return []
    stored = stored_versions(client, [a.anomaly_id for a in changed])
    rows, written = [], []
    for a in changed:
        previous = stored.get(a.anomaly_id)
        if previous is not None:
            status, detected_at = previous
            a.detected_at_ms = min(a.detected_at_ms, detected_at)
            ours = a.written[0] if a.written is not None else None
            if status != ours and status != a.status:
                if status == "acknowledged" and a.status == "open":
                    a.status = "acknowledged"
                elif status == "resolved" and a.status in UNRESOLVED_STATUSES:
                    book.close(a)  # a person (or an earlier run) closed it: leave it closed
                    a.status = "resolved"
                    a.written = (a.status, a.severity, a.score, a.last_seen_ns)
                    continue
        if not _material(a, min_score_step, min_last_seen_step_ns):
            continue
        rows.append(a.row())
        written.append(a)
    if rows:
        client.insert("anomalies", rows, column_names=COLUMNS)
    for a in written:
        a.written = (a.status, a.severity, a.score, a.last_seen_ns)
    return written

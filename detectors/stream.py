"""What the detectors read: the typed rows of the two streams, and event time.

Rows come in commit order (the worker reads them by block number, ties broken by
Timestamp, TraceId, SpanId) and are processed one at a time, so every decision
is a function of the row sequence alone: where a batch happens to end never
changes a verdict or an anomaly id, and a worker that replays rows after a crash
from its checkpoint reaches the same decisions.

Each stream keeps a watermark: the largest event time (span Timestamp) seen
minus the allowed lateness. A window (a minute of a tenant's cost, a
credential's 5 minutes) or a trace is final once the watermark has passed it:
only then does it teach its baseline (and only if it was not anomalous), and
anomalies with no new evidence for the quiet period are resolved. Detectors do
not wait for that to raise: each row updates the current, possibly partial,
window or trace and an anomaly is raised as soon as the evidence crosses its
threshold.
"""

from __future__ import annotations

import datetime as _dt
from typing import NamedTuple

from agentwatch.detectors.anomalies import AnomalyBook
from agentwatch.detectors.config import DetectorConfig

NS = 1_000_000_000
MINUTE_NS = 60 * NS
MAX_LISTED = 50  # ids listed in evidence (counts are always complete)
MAX_IDLE_WINDOWS = 180  # an idle gap longer than this teaches the baselines no more zero windows


class SpanRow(NamedTuple):
    ingested_us: int
    ts: int  # span Timestamp, ns
    trace: str
    span: str
    parent: str
    tenant: str
    agent_id: str
    agent_name: str
    op: str
    tool: str
    model: str
    cost: float
    args_hash: int = 0  # cityHash64 of gen_ai.tool.call.arguments; 0: not a tool call or no arguments recorded
    args_bytes: int = 0
    args_sample: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    duration: int = 0  # ns
    error: bool = False


class CredentialRow(NamedTuple):
    ingested_us: int
    ts: int
    trace: str
    span: str
    tenant: str  # the actor's
    agent_id: str
    event: str
    credential: str
    credential_tenant: str
    resource: str
    resource_tenant: str
    action: str
    mine_actor: bool = True  # this shard owns the actor's tenant (cross_tenant)
    mine_owner: bool = True  # this shard owns the credential's tenant (credential_fanout)
    parent: str = ""  # the parent of the span the use happened on (read when the use names no agent)


def severity(config: DetectorConfig, score: float, hard: bool) -> str:
    return "critical" if hard or score >= config.critical_score else "warning"


def utc(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / NS, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def hm(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / NS, tz=_dt.UTC).strftime("%H:%M UTC")


def ago(ns: int) -> str:
    s = ns / NS
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class EventTimeStream:
    """One stream's event-time clock: the watermark, and `tick` each time it passes a boundary."""

    def __init__(self) -> None:
        self.max_ts = 0
        self.watermark = -(1 << 62)
        self.next_tick = -(1 << 62)
        self.rows = 0

    def advance(self, row: SpanRow | CredentialRow, book: AnomalyBook, lateness_ns: int) -> None:
        """Take the next row's event time (and make it the row a new anomaly is raised by)."""
        self.rows += 1
        book.current_row = (row.trace, row.span, row.ts, row.ingested_us)
        if row.ts > self.max_ts:
            self.max_ts = row.ts
            wm = row.ts - lateness_ns
            if wm > self.watermark:
                self.watermark = wm
                if wm >= self.next_tick:
                    self.tick(book)

    def tick(self, book: AnomalyBook) -> None:
        raise NotImplementedError

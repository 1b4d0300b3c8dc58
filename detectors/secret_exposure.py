"""secret_exposure: credential material in a captured payload, from the receiver's `secret_findings`.

The receiver finds the secrets as it stores the payloads (collector/receiver/secrets.py)
and writes one finding per occurrence; this stream tails that table in commit order
like the others, gives each finding its agent (its own, else its span's nearest agent
from the span stream) and raises one anomaly per secret per trace: the same
fingerprint in fifty spans of a trace is one anomaly that counts fifty occurrences
and lists where they are. No learning: every exposure is an incident. It is
critical when the value is stored as sent (AGENTWATCH_SECRETS=keep), a warning when
the store holds only the marker (the agent and its model provider still saw it).

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> book, rule = AnomalyBook(), SecretExposure(None)
    >>> for span in ("s1", "s2"):
    ...     rule.observe(SecretRow(0, 10**18, "t1", span, "", "acme", "bot-1", "svc", "traces", "attributes", "",
    ...                            "gen_ai.input.messages", 12, 20, "aws_access_key", "4bf1b0c1e0a1fa33", True),
    ...                  None, book)
    >>> [(a.kind, a.tenant, a.trace_id, a.score, a.severity) for a in book.open.values()]
    [('secret_exposure', 'acme', 't1', 2.0, 'warning')]
"""

from __future__ import annotations

from typing import NamedTuple

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_LISTED, utc
from agentwatch.detectors.streams import DetectorStream, SpanStream
from agentwatch.detectors.part_tail import PartTail
from agentwatch.detectors.tailing import Tail
from agentwatch.detectors.traces import OPEN, describe_agent

TABLE = "secret_findings"
COLUMNS = ("toUnixTimestamp64Micro(IngestedAt), toUnixTimestamp64Nano(Timestamp), TraceId, SpanId, ParentSpanId, "
           "Tenant, AgentId, ServiceName, Signal, Location, EventName, Attribute, CharOffset, CharLength, "
           "SecretType, Fingerprint, Redacted")
ORDER = "Timestamp, TraceId, SpanId, Location, Attribute, CharOffset"


class SecretRow(NamedTuple):
    ingested_us: int
    ts: int
    trace: str
    span: str
    parent: str
    tenant: str
    agent_id: str
    service: str
    signal: str  # traces | logs
    location: str  # attributes | events[i] | links[i] | status | name | body | resource | scope
    event_name: str
    attribute: str
    offset: int  # characters into the value as sent
    length: int
    secret_type: str
    fingerprint: str
    redacted: bool


class ExposureCase:
    def __init__(self, row: SecretRow) -> None:
        self.trace = row.trace
        self.fingerprint = row.fingerprint
        self.secret_type = row.secret_type
        self.occurrences = 0
        self.kept = 0  # occurrences stored as sent
        self.agents: dict[str, int] = {}
        self.services: set[str] = set()
        self.spans: set[str] = set()
        self.locations: list[dict] = []


class SecretExposure(Detector):
    kind = "secret_exposure"
    stream = "secrets"

    def __init__(self, config) -> None:
        self.cases: dict[tuple[str, str], ExposureCase] = {}
        super().__init__(config)

    def observe(self, row: SecretRow, trace, book: AnomalyBook) -> None:
        subject = f"{row.trace or 'no-trace'}/{row.fingerprint}"
        case = self.cases.get((row.tenant, subject))
        if case is None:
            case = self.cases[(row.tenant, subject)] = ExposureCase(row)
        case.occurrences += 1
        case.kept += not row.redacted
        if row.agent_id:
            case.agents[row.agent_id] = case.agents.get(row.agent_id, 0) + 1
        case.services.add(row.service)
        case.spans.add(row.span)
        if len(case.locations) < MAX_LISTED:
            case.locations.append({"at": utc(row.ts), "span_id": row.span, "signal": row.signal,
                                   "location": row.location, "event": row.event_name, "attribute": row.attribute,
                                   "offset": row.offset, "length": row.length, "redacted": row.redacted})
        book.observe(self.kind, row.tenant, subject, first_ns=row.ts, last_ns=row.ts, score=float(case.occurrences),
                     severity="critical" if case.kept else "warning", agent_id=next(iter(case.agents), ""),
                     trace_id=row.trace, ctx=case)

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        for key in [k for k in self.cases if book.get(self.kind, *k) is None]:
            del self.cases[key]  # cases of resolved anomalies start afresh

    def render(self, a: Anomaly) -> tuple[str, dict]:
        case: ExposureCase = a.ctx
        agents = sorted(case.agents.items(), key=lambda kv: -kv[1])
        who = describe_agent(agents[0][0]) if agents else "an unnamed agent"
        if len(agents) > 1:
            who = f"{len(agents)} agents (first {who})"
        where = f"trace {case.trace}" if case.trace else "log records outside any trace"
        stored = ("stored as sent (AGENTWATCH_SECRETS=keep)" if case.kept == case.occurrences
                  else "stored redacted" if not case.kept else f"stored as sent {case.kept} times")
        times = f"{case.occurrences} time{'s' if case.occurrences != 1 else ''}"
        summary = (f"Secret exposed: a {case.secret_type.replace('_', ' ')} (fingerprint {case.fingerprint}) in the "
                   f"payloads of {where}, {times} in {len(case.spans)} span{'s' if len(case.spans) != 1 else ''}, "
                   f"by {who} of tenant {a.tenant}; {stored}.")
        evidence = {
            "secret_type": case.secret_type, "fingerprint": case.fingerprint, "occurrences": case.occurrences,
            "stored_as_sent": case.kept, "redacted": case.kept == 0, "trace_id": case.trace,
            "spans": len(case.spans), "agents": [{"agent_id": k, "occurrences": v} for k, v in agents[:MAX_LISTED]],
            "services": sorted(case.services), "locations": case.locations,
        }
        return summary, evidence


class SecretStream(DetectorStream):
    """secret_exposure over the secret_findings of one shard."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__(config, [SecretExposure(config)])

    def process(self, rows: list[SecretRow], book: AnomalyBook, spans: SpanStream | None = None) -> None:
        lateness = int(self.config.allowed_lateness_s * 1e9)
        for row in rows:
            self.advance(row, book, lateness)
            if not row.agent_id and row.trace and spans is not None:
                row = row._replace(agent_id=_agent_of(spans, row))
            for d in self.detectors:
                d.observe(row, None, book)


def _agent_of(spans: SpanStream, row: SecretRow) -> str:
    """The nearest agent of the span the secret was found on, '' where none is known yet."""
    t = spans.traces.get(row.trace)
    if t is None:
        return ""
    agent = t.agent_of(row.span, row.parent)[0]
    return "" if agent.startswith(OPEN) or agent == "root" else agent


def read(tail: Tail | PartTail, client, position, max_rows: int, shard: str) -> tuple[list[SecretRow], int | dict]:
    """The next findings after `position` (of this shard), and where to resume."""
    batch = tail.read(client, position, COLUMNS, ORDER, max_rows, shard)
    return [SecretRow(*r[1:-1], bool(r[-1])) for r in batch.rows], batch.position

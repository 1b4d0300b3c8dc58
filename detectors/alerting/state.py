"""The dispatcher's checkpoint: per anomaly, what its versions say and what was notified.

Saved as one JSON document in `detector_state` (Detector='alerts', Shard='all'),
beside the position (max UpdatedAt read) in `anomalies`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import orjson
from clickhouse_connect.driver.client import Client

from agentwatch.schemas.vocabulary import severity_rank

DETECTOR = "alerts"
SHARD = "all"
STATE_VERSION = 1


def utc(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc)


def now_us() -> int:
    return int(time.time() * 1e6)


@dataclass
class Tracked:
    """One anomaly: what its versions say and what was notified (sent_*)."""

    tenant: str
    kind: str
    severity: str = ""  # highest severity of an open version
    resolved: bool = False  # a resolved version was seen
    suppressed: bool = False  # acknowledged by a person before anything was sent
    sent_new: bool = False
    sent_severity: str = ""
    sent_resolved: bool = False
    incident: str = ""  # PagerDuty dedup key: its own id, or its storm group's key
    touched: float = 0.0

    def need(self) -> str | None:
        """The event to send next, if any."""
        if not self.sent_new:
            if self.suppressed or not (self.severity or self.resolved):
                return None
            return "new"
        if self.resolved:
            return None if self.sent_resolved else "resolved"
        if severity_rank(self.severity) > severity_rank(self.sent_severity):
            return "escalated"
        return None

    @property
    def finished(self) -> bool:
        return (self.sent_new and self.sent_resolved) or (self.suppressed and not self.sent_new and self.resolved)


@dataclass
class Window:
    """Grouping window of one (tenant, kind, event)."""

    start: float
    sent: int = 0  # events sent one by one in this window
    group: str = ""  # set once the window overflowed: the storm's key
    flushed: float = 0.0  # when the group was last sent


@dataclass
class State:
    position: int = 0  # max UpdatedAt (µs since epoch) processed
    saved_at: int = 0  # wall clock (µs) of the last save
    anomalies: dict[str, Tracked] = field(default_factory=dict)
    incidents: dict[str, list[str]] = field(default_factory=dict)  # storm key -> its anomalies still open
    windows: dict[tuple[str, str, str], Window] = field(default_factory=dict)
    inflight: dict[str, list] = field(default_factory=dict)  # anomaly -> [event, planned at µs], being sent

    def dumps(self) -> str:
        return orjson.dumps({
            "version": STATE_VERSION,
            "saved_at": self.saved_at,
            "anomalies": {k: asdict(v) for k, v in self.anomalies.items()},
            "incidents": self.incidents,
            "windows": [{"tenant": t, "kind": k, "event": e, **asdict(w)} for (t, k, e), w in self.windows.items()],
            "inflight": self.inflight,
        }).decode()

    @classmethod
    def loads(cls, position: str, text: str) -> "State":
        state = cls(position=int(position or 0))
        if not text:
            return state
        data = orjson.loads(text)
        state.saved_at = int(data.get("saved_at", 0))
        state.anomalies = {k: Tracked(**v) for k, v in data.get("anomalies", {}).items()}
        state.incidents = {k: list(v) for k, v in data.get("incidents", {}).items()}
        for w in data.get("windows", []):
            key = (w.pop("tenant"), w.pop("kind"), w.pop("event"))
            state.windows[key] = Window(**w)
        state.inflight = {k: list(v) for k, v in data.get("inflight", {}).items()}
        return state


def load(client: Client) -> State:
    rows = client.query(
        "SELECT Position, State FROM detector_state FINAL WHERE Detector = {d:String} AND Shard = {s:String}",
        parameters={"d": DETECTOR, "s": SHARD}).result_rows
    return State.loads(*rows[0]) if rows else State()


def save(client: Client, state: State, inflight: dict[str, list]) -> None:
    """Checkpoint `state`, with the events being sent now (`inflight`: anomaly -> [event, planned at µs])."""
    state.saved_at = max(now_us(), state.saved_at + 1)
    state.inflight = {aid: list(value) for aid, value in inflight.items()}
    client.insert("detector_state", [[DETECTOR, SHARD, str(state.position), state.dumps(), utc(state.saved_at)]],
                  column_names=["Detector", "Shard", "Position", "State", "UpdatedAt"])

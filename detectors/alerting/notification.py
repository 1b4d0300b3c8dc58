"""What an alert says, before any sink renders it: the anomalies (`Anomaly`, with what was halted for
them and their signed links), a `Notification` about one or a storm of them, the generic JSON of an
anomaly (the webhook contract, also PagerDuty's details), and the `Sink` base a sink module subclasses.

A sink turns one `Notification` into zero or more `Request`s (PagerDuty needs one
request per incident key; the others send one) and says what may be stored about
its target without leaking its secret; the dispatcher does the HTTP.

What containment did is part of every alert: an anomaly's `halts` (the latest
decision on each target that names it, from the `halts` table) are listed in the
JSON (`halts`) and in the sinks' text; its signed `actions` (halt/release links,
when configured) appear as `actions` in the JSON, Slack buttons and PagerDuty links.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from agentwatch.detectors.alerting.links import ActionLink
from agentwatch.schemas.halts import Decision

EVENTS = ("new", "escalated", "resolved")
REDACTED = "***"


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z: milliseconds, or microseconds where they carry information."""
    moment = moment.astimezone(timezone.utc)
    spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True)
class Anomaly:
    """The current record of one anomaly (the latest version in `anomalies`)."""

    anomaly_id: str
    kind: str
    severity: str
    tenant: str
    agent: str
    trace_id: str
    score: float
    summary: str
    evidence: Any  # the Evidence JSON, parsed (kept as a string if it is not JSON)
    status: str
    detected_at: datetime
    first_seen: datetime
    last_seen: datetime
    halts: tuple[Decision, ...] = ()  # what was halted (or released) for it: the latest decision per target
    actions: tuple[ActionLink, ...] = ()  # signed halt/release links, when configured

    def url(self, dashboard_url: str) -> str:
        """Dashboard link that opens this anomaly and its trace."""
        return f"{dashboard_url.rstrip('/')}/?{urlencode({'anomaly': self.anomaly_id, 'trace': self.trace_id})}"


@dataclass
class Notification:
    """One message to every sink: an event about one anomaly, or a group of them (a storm).

    `anomalies` is ordered most severe first; the first is the lead. `incidents` maps
    each PagerDuty dedup key to the anomalies it covers (an anomaly's own id, or the
    storm group's key); for `resolved`, `close` holds the keys whose incidents are
    now over (a storm's key only once all its anomalies are resolved).
    """

    event: str
    anomalies: list[Anomaly]
    grouped: bool = False
    incidents: dict[str, list[Anomaly]] = field(default_factory=dict)
    close: dict[str, list[Anomaly]] = field(default_factory=dict)
    skip: dict[str, set[str]] = field(default_factory=dict)  # sink key -> anomaly ids it already has

    def members_for(self, sink_key: str) -> list[Anomaly]:
        skipped = self.skip.get(sink_key, ())
        return [a for a in self.anomalies if a.anomaly_id not in skipped]


@dataclass
class Request:
    """One HTTP POST: its JSON body, what may be stored of it, and the anomalies it covers."""

    body: dict
    anomaly_ids: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    stored: dict | None = None  # the body with secrets redacted; None: the body itself

    def encoded(self) -> bytes:
        return orjson.dumps(self.body, option=orjson.OPT_NON_STR_KEYS)

    def stored_text(self) -> str:
        return orjson.dumps(self.body if self.stored is None else self.stored,
                            option=orjson.OPT_NON_STR_KEYS).decode()


def anomaly_json(anomaly: Anomaly, event: str, dashboard_url: str) -> dict:
    """The generic webhook's JSON for one anomaly (snake_case keys, the public contract)."""
    body = {
        "event": event,
        "anomaly_id": anomaly.anomaly_id,
        "kind": anomaly.kind,
        "severity": anomaly.severity,
        "tenant": anomaly.tenant,
        "agent": anomaly.agent,
        "trace_id": anomaly.trace_id,
        "summary": anomaly.summary,
        "detected_at": iso(anomaly.detected_at),
        "status": anomaly.status,
        "url": anomaly.url(dashboard_url),
        "score": anomaly.score,
        "first_seen": iso(anomaly.first_seen),
        "last_seen": iso(anomaly.last_seen),
        "evidence": anomaly.evidence,
    }
    # Only present when there is something to say: receivers of the base contract see the same keys.
    if anomaly.halts:
        body["halts"] = [halt_json(d) for d in anomaly.halts]
    if anomaly.actions:
        body["actions"] = [link.json() for link in anomaly.actions]
    return body


def halt_json(d: Decision) -> dict:
    return {"action": d.action, "scope": d.scope, "target": d.target, "calls": d.calls,
            "decided_by": d.decided_by, "decided_at": d.decided_at, "reason": d.reason, "halt_id": d.halt_id}


def halt_text(d: Decision) -> str:
    """One decision in words, e.g. `halted trace 4bf9… (all calls) by policy`."""
    verb = "halted" if d.action == "halt" else "released"
    what = f"tenant {d.target}" if d.scope == "tenant" else f"{d.scope} {d.target}"
    calls = f" ({'model calls only' if d.calls == 'model' else 'all calls'})" if d.action == "halt" else ""
    return f"{verb} {what}{calls} by {d.decided_by or 'unknown'}"


def halts_text(anomaly: Anomaly) -> str:
    """What containment did for it, in words; '' when nothing."""
    return "; ".join(halt_text(d) for d in anomaly.halts)


def notification_json(event: str, members: list[Anomaly], grouped: bool, dashboard_url: str) -> dict:
    """Single: the anomaly's JSON. Grouped: the lead's keys plus `count` and `anomalies`."""
    body = anomaly_json(members[0], event, dashboard_url)
    if grouped:
        body["count"] = len(members)
        body["anomalies"] = [anomaly_json(a, event, dashboard_url) for a in members]
    return body


def strip_secrets(url: str, secret_path: bool = False) -> str:
    """The URL as it may be stored: no user:password, no query values, and (for URLs
    whose path is the secret, like Slack's) no last path segment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    path = parts.path
    if secret_path and path.strip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0] + "/" + REDACTED
    query = "&".join(f"{pair.split('=', 1)[0]}={REDACTED}" for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, path, query, ""))


class Sink:
    name = "sink"
    secret_path = False

    def __init__(self, url: str):
        self.url = url
        self.target = strip_secrets(url, self.secret_path)

    @property
    def key(self) -> str:
        """Identifies this sink in alert_deliveries: its name and its secret-free target."""
        return f"{self.name} {self.target}"

    def requests(self, note: Notification, dashboard_url: str) -> list[Request]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"

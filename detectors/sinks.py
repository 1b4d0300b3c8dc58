"""Alert sinks: what each receiver is sent for a notification.

Three kinds, any number at once:
- `webhook`: a generic JSON webhook (snake_case keys, see `anomaly_json`);
- `slack`: a Slack incoming webhook (`text` + Block Kit `blocks`);
- `pagerduty`: the PagerDuty Events API v2 (trigger / resolve, dedup key per incident).

A sink turns one `Notification` into zero or more `Request`s (PagerDuty needs one
request per incident key; the others send one). The dispatcher (alerts.py) does
the HTTP, the retries and the logging; this module only renders bodies and says
what may be stored about a target without leaking its secret.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from agentwatch.schemas.vocabulary import describe_kind, severity_rank

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
EVENTS = ("new", "escalated", "resolved")
# PagerDuty's severities are critical / error / warning / info; one for each of ours (an unknown one: error).
PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
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
    return {
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


class WebhookSink(Sink):
    """Generic JSON webhook. With a secret, the body is signed:
    `X-Agentwatch-Signature: sha256=<hex HMAC-SHA256 of the body>`."""

    name = "webhook"

    def __init__(self, url: str, secret: str = ""):
        super().__init__(url)
        self.secret = secret

    def requests(self, note: Notification, dashboard_url: str) -> list[Request]:
        members = note.members_for(self.key)
        if not members:
            return []
        request = Request(notification_json(note.event, members, note.grouped, dashboard_url),
                          [a.anomaly_id for a in members])
        if self.secret:
            digest = hmac.new(self.secret.encode(), request.encoded(), hashlib.sha256).hexdigest()
            request.headers["X-Agentwatch-Signature"] = f"sha256={digest}"
        return [request]


# --- Slack -----------------------------------------------------------------------------------------

SEVERITY_ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
EVENT_TITLE = {"new": "", "escalated": "ESCALATED to ", "resolved": "RESOLVED "}
SLACK_LIST_ITEMS = 10
SLACK_TEXT_LIMIT = 2900  # Slack caps a section's text at 3000 characters


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(text: str, limit: int = 150) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _icon(event: str, severity: str) -> str:
    return ":white_check_mark:" if event == "resolved" else SEVERITY_ICON.get(severity, ":warning:")


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class SlackSink(Sink):
    """Slack incoming webhook: a fallback `text` (what phone notifications show) and
    Block Kit blocks: what happened, where, how bad, and a button to the trace."""

    name = "slack"
    secret_path = True  # hooks.slack.com/services/T…/B…/<secret>

    def requests(self, note: Notification, dashboard_url: str) -> list[Request]:
        members = note.members_for(self.key)
        if not members:
            return []
        if note.grouped:
            body = self._storm(note.event, members, dashboard_url)
        else:
            body = self._single(note.event, members[0], dashboard_url)
        return [Request(body, [a.anomaly_id for a in members])]

    def _single(self, event: str, a: Anomaly, dashboard_url: str) -> dict:
        icon = _icon(event, a.severity)
        label = f"{EVENT_TITLE[event]}{a.severity.upper()}" if event != "resolved" else "RESOLVED"
        title = f"{label} {a.kind} · tenant {a.tenant}"
        url = a.url(dashboard_url)
        text = f"{icon} {title}: {a.summary}"
        about = describe_kind(a.kind)
        fields = [
            ("Severity", a.severity.upper()), ("Kind", f"`{a.kind}`" + (f": {about}" if about else "")),
            ("Tenant", _slack_escape(a.tenant)), ("Agent", f"`{_slack_escape(a.agent)}`" if a.agent else "—"),
            ("Score", f"{a.score:.3g}"),
            ("Trace", f"<{url}|{a.trace_id}>" if a.trace_id else "—"),
            ("First seen", _when(a.first_seen)), ("Last seen", _when(a.last_seen)),
        ]
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": _plain(f"{title}"), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": _plain(f"{icon} *{_slack_escape(a.summary)}*", SLACK_TEXT_LIMIT)}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
            {"type": "actions", "elements": [self._button("Open trace in dashboard", url, a.severity, event)]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"status *{a.status}* · anomaly `{a.anomaly_id}` · detected {_when(a.detected_at)}")}]},
        ]
        return {"text": _slack_escape(text), "blocks": blocks}

    def _storm(self, event: str, members: list[Anomaly], dashboard_url: str) -> dict:
        lead = members[0]
        icon = _icon(event, lead.severity)
        verb = {"new": "Alert storm", "escalated": "Escalation storm", "resolved": "Resolved"}[event]
        title = f"{verb}: {len(members)} {lead.kind} anomalies · tenant {lead.tenant}"
        by_severity = {}
        for a in members:
            by_severity[a.severity] = by_severity.get(a.severity, 0) + 1
        ranked = sorted(by_severity.items(), key=lambda kv: -severity_rank(kv[0]))
        counts = ", ".join(f"{n} {sev}" for sev, n in ranked)
        agents = len({a.agent for a in members})
        lines, used = [], 0
        for a in members[:SLACK_LIST_ITEMS]:
            line = (f"• {SEVERITY_ICON.get(a.severity, ':warning:')} <{a.url(dashboard_url)}|"
                    f"{_slack_escape(a.agent or a.trace_id or a.anomaly_id)}> {_slack_escape(a.summary)}")
            if used + len(line) + 1 > SLACK_TEXT_LIMIT:
                break
            lines.append(line)
            used += len(line) + 1
        more = len(members) - len(lines)
        text = f"{icon} {title} ({counts}). Most severe: {lead.summary}"
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": _plain(title), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": (
                f"{icon} *{len(members)}* `{lead.kind}` anomalies for tenant *{_slack_escape(lead.tenant)}* "
                f"across {agents} agent{'s' if agents != 1 else ''} ({counts}), grouped into this one message. "
                "Most severe first:")}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
        ]
        if more:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"…and {more} more; every one is in the dashboard and in the webhook/PagerDuty details.")}]})
        blocks.append({"type": "actions", "elements": [
            self._button("Open the most severe", lead.url(dashboard_url), lead.severity, event),
            {"type": "button", "text": {"type": "plain_text", "text": "Dashboard"}, "url": dashboard_url},
        ]})
        return {"text": _slack_escape(text), "blocks": blocks}

    @staticmethod
    def _button(label: str, url: str, severity: str, event: str) -> dict:
        button = {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
        if event != "resolved":
            button["style"] = "danger" if severity == "critical" else "primary"
        return button


# --- PagerDuty -------------------------------------------------------------------------------------

PAGERDUTY_SUMMARY_LIMIT = 1024


class PagerDutySink(Sink):
    """PagerDuty Events API v2. One incident per dedup key: an anomaly's own id, or a
    storm group's key; `resolved` sends `resolve` for the keys in `note.close`."""

    name = "pagerduty"

    def __init__(self, routing_key: str, url: str = PAGERDUTY_EVENTS_URL):
        super().__init__(url)
        self.routing_key = routing_key

    def requests(self, note: Notification, dashboard_url: str) -> list[Request]:
        skipped = note.skip.get(self.key, set())
        out = []
        if note.event == "resolved":
            for key, covered in note.close.items():
                ids = [a.anomaly_id for a in covered if a.anomaly_id not in skipped]
                if ids:
                    out.append(self._request({"event_action": "resolve", "dedup_key": key}, ids))
            return out
        for key, covered in note.incidents.items():
            members = [a for a in covered if a.anomaly_id not in skipped]
            if members:
                out.append(self._trigger(note.event, key, members, len(members) > 1 or key != members[0].anomaly_id,
                                         dashboard_url))
        return out

    def _trigger(self, event: str, key: str, members: list[Anomaly], grouped: bool, dashboard_url: str) -> Request:
        lead = members[0]
        if grouped:
            summary = f"[{lead.severity}] {len(members)} {lead.kind} anomalies, tenant {lead.tenant}: {lead.summary}"
        else:
            summary = f"[{lead.severity}] {lead.kind}, tenant {lead.tenant}: {lead.summary}"
        if event == "escalated":
            summary = "Escalated " + summary
        if len(summary) > PAGERDUTY_SUMMARY_LIMIT:  # PagerDuty's limit; the whole text is in custom_details
            summary = summary[: PAGERDUTY_SUMMARY_LIMIT - 1] + "…"
        links = [{"href": lead.url(dashboard_url), "text": "Open trace in agentwatch"}]
        links += [{"href": a.url(dashboard_url), "text": f"{a.kind} · {a.agent or a.trace_id}"} for a in members[1:10]]
        body = {
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": summary,
                "severity": PAGERDUTY_SEVERITY.get(lead.severity, "error"),
                "source": f"agentwatch/{lead.tenant}" + (f"/{lead.agent}" if lead.agent and not grouped else ""),
                "component": lead.kind if grouped else (lead.agent or lead.kind),
                "group": lead.tenant,
                "class": lead.kind,
                "timestamp": iso(lead.detected_at),
                "custom_details": notification_json(event, members, grouped, dashboard_url),
            },
            "client": "agentwatch",
            "client_url": dashboard_url,
            "links": links,
        }
        return self._request(body, [a.anomaly_id for a in members])

    def _request(self, body: dict, ids: list[str]) -> Request:
        full = {"routing_key": self.routing_key, **body}
        return Request(full, ids, stored={"routing_key": REDACTED, **body})

"""The PagerDuty sink: Events API v2, trigger / resolve, one dedup key per incident."""

from __future__ import annotations

from agentwatch.detectors.alerting.notification import (
    REDACTED,
    Anomaly,
    Notification,
    Request,
    Sink,
    halts_text,
    iso,
    notification_json,
)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# PagerDuty's severities are critical / error / warning / info; one for each of ours (an unknown one: error).
PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
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
        contained = "; ".join(f"{a.agent or a.trace_id}: {halts_text(a)}" if grouped else halts_text(a)
                              for a in members if a.halts)
        if contained:
            summary += f" Contained: {contained}."
        if event == "escalated":
            summary = "Escalated " + summary
        if len(summary) > PAGERDUTY_SUMMARY_LIMIT:  # PagerDuty's limit; the whole text is in custom_details
            summary = summary[: PAGERDUTY_SUMMARY_LIMIT - 1] + "…"
        links = [{"href": lead.url(dashboard_url), "text": "Open trace in agentwatch"}]
        links += [{"href": a.url(dashboard_url), "text": f"{a.kind} · {a.agent or a.trace_id}"} for a in members[1:10]]
        links += [{"href": link.url, "text": f"{link.action.capitalize()} {link.scope} {link.target} (signed link)"}
                  for link in lead.actions]
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

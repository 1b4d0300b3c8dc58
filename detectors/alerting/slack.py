"""The Slack sink: an incoming webhook message (`text` + Block Kit `blocks`)."""

from __future__ import annotations

from datetime import datetime, timezone

from agentwatch.detectors.alerting.notification import Anomaly, Notification, Request, Sink, halts_text
from agentwatch.schemas.vocabulary import describe_kind, severity_rank

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
        contained = halts_text(a)
        text = f"{icon} {title}: {a.summary}" + (f" Contained: {contained}." if contained else "")
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
        ]
        if contained:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _plain(
                f":octagonal_sign: *Contained:* {_slack_escape(contained)}", SLACK_TEXT_LIMIT)}})
        blocks += [
            {"type": "actions", "elements": [self._button("Open trace in dashboard", url, a.severity, event)]
             + self._action_buttons(a)},
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
            contained = halts_text(a)
            line = (f"• {SEVERITY_ICON.get(a.severity, ':warning:')} <{a.url(dashboard_url)}|"
                    f"{_slack_escape(a.agent or a.trace_id or a.anomaly_id)}> {_slack_escape(a.summary)}"
                    + (f" :octagonal_sign: {_slack_escape(contained)}" if contained else ""))
            if used + len(line) + 1 > SLACK_TEXT_LIMIT:
                break
            lines.append(line)
            used += len(line) + 1
        more = len(members) - len(lines)
        halted = sum(1 for a in members if any(d.action == "halt" for d in a.halts))
        text = f"{icon} {title} ({counts}). Most severe: {lead.summary}"
        if halted:
            text += f" Contained: {halted} of {len(members)} halted."
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": _plain(title), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": (
                f"{icon} *{len(members)}* `{lead.kind}` anomalies for tenant *{_slack_escape(lead.tenant)}* "
                f"across {agents} agent{'s' if agents != 1 else ''} ({counts}), grouped into this one message. "
                + (f":octagonal_sign: {halted} of them halted. " if halted else "") + "Most severe first:")}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
        ]
        if more:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"…and {more} more; every one is in the dashboard and in the webhook/PagerDuty details.")}]})
        blocks.append({"type": "actions", "elements": [
            self._button("Open the most severe", lead.url(dashboard_url), lead.severity, event),
            {"type": "button", "text": {"type": "plain_text", "text": "Dashboard"}, "url": dashboard_url},
        ] + self._action_buttons(lead, scopes=("tenant",))})
        return {"text": _slack_escape(text), "blocks": blocks}

    @staticmethod
    def _action_buttons(a: Anomaly, scopes: tuple[str, ...] = ("trace", "agent", "tenant")) -> list[dict]:
        """Per target, the signed link that changes it: release what is halted for it, else halt."""
        halted = {(d.scope, d.target) for d in a.halts if d.action == "halt"}
        buttons = []
        for link in a.actions:
            if link.scope in scopes and (link.action == "release") == ((link.scope, link.target) in halted):
                label = f"{link.action.capitalize()} {link.scope}"
                buttons.append({"type": "button", "text": {"type": "plain_text", "text": label}, "url": link.url})
        return buttons

    @staticmethod
    def _button(label: str, url: str, severity: str, event: str) -> dict:
        button = {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
        if event != "resolved":
            button["style"] = "danger" if severity == "critical" else "primary"
        return button

"""The generic JSON webhook sink: the anomaly's JSON (snake_case keys, see `anomaly_json`), signed when
a secret is set."""

from __future__ import annotations

import hashlib
import hmac

from agentwatch.detectors.alerting.notification import Notification, Request, Sink, notification_json


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

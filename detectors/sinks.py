"""Alert sinks: what each receiver is sent for a notification.

Three kinds, any number at once, each one module of `agentwatch.detectors.alerting`:
- `webhook`: a generic JSON webhook (snake_case keys, see `anomaly_json`);
- `slack`: a Slack incoming webhook (`text` + Block Kit `blocks`);
- `pagerduty`: the PagerDuty Events API v2 (trigger / resolve, dedup key per incident).

A new sink is a module there with a `Sink` subclass (`name`, `requests(note,
dashboard_url)`), named in `AlertConfig.sinks()`. This module gathers them.
"""

from agentwatch.detectors.alerting.notification import (
    EVENTS,
    REDACTED,
    Anomaly,
    Notification,
    Request,
    Sink,
    anomaly_json,
    halt_json,
    halt_text,
    halts_text,
    iso,
    notification_json,
    strip_secrets,
)
from agentwatch.detectors.alerting.pagerduty import PAGERDUTY_EVENTS_URL, PAGERDUTY_SEVERITY, PagerDutySink
from agentwatch.detectors.alerting.slack import SlackSink
from agentwatch.detectors.alerting.webhook import WebhookSink

__all__ = ["EVENTS", "PAGERDUTY_EVENTS_URL", "PAGERDUTY_SEVERITY", "REDACTED", "Anomaly", "Notification",
           "PagerDutySink", "Request", "Sink", "SlackSink", "WebhookSink", "anomaly_json", "halt_json", "halt_text",
           "halts_text", "iso", "notification_json", "strip_secrets"]

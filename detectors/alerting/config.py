"""Where alerts go and how: `AlertConfig`, read from AGENTWATCH_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from agentwatch.detectors.alerting.links import ActionSigner
from agentwatch.detectors.sinks import PAGERDUTY_EVENTS_URL, PagerDutySink, Sink, SlackSink, WebhookSink


def _split(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return [item.strip() for item in value if item and item.strip()]


@dataclass
class AlertConfig:
    """Where alerts go and how. `from_env()` reads the AGENTWATCH_* variables named beside each field."""

    webhook_urls: list[str] = field(default_factory=list)  # AGENTWATCH_ALERT_WEBHOOK_URL (comma-separated)
    webhook_secret: str = ""  # AGENTWATCH_ALERT_WEBHOOK_SECRET: HMAC-SHA256 signature header
    slack_webhook_urls: list[str] = field(default_factory=list)  # AGENTWATCH_SLACK_WEBHOOK_URL (comma-separated)
    pagerduty_routing_key: str = ""  # AGENTWATCH_PAGERDUTY_ROUTING_KEY
    pagerduty_url: str = PAGERDUTY_EVENTS_URL  # AGENTWATCH_PAGERDUTY_URL
    dashboard_url: str = "http://localhost:8501"  # AGENTWATCH_DASHBOARD_URL
    group_window_s: float = 60.0  # AGENTWATCH_ALERT_GROUP_WINDOW_S
    group_threshold: int = 3  # AGENTWATCH_ALERT_GROUP_THRESHOLD: events per window sent one by one
    group_wait_s: float = 0.0  # AGENTWATCH_ALERT_GROUP_WAIT_S: hold new events this long to gather a burst
    max_attempts: int = 5  # AGENTWATCH_ALERT_MAX_ATTEMPTS
    backoff_s: float = 0.5  # AGENTWATCH_ALERT_BACKOFF_S: first retry delay, doubled each time
    backoff_max_s: float = 30.0  # AGENTWATCH_ALERT_BACKOFF_MAX_S
    retry_after_max_s: float = 120.0  # AGENTWATCH_ALERT_RETRY_AFTER_MAX_S: cap on a receiver's Retry-After
    timeout_s: float = 10.0  # AGENTWATCH_ALERT_TIMEOUT_S: per HTTP attempt
    sink_concurrency: int = 4  # AGENTWATCH_ALERT_SINK_CONCURRENCY: requests in flight per sink
    overlap_s: float = 5.0  # AGENTWATCH_ALERT_OVERLAP_S: re-read this much before the checkpoint (late commits)
    batch_rows: int = 10_000  # AGENTWATCH_ALERT_BATCH_ROWS: anomaly versions read per query
    state_retention_s: float = 86400.0  # AGENTWATCH_ALERT_STATE_RETENTION_S: keep finished anomalies this long
    # AGENTWATCH_ALERT_LEASE_TTL_S: one dispatcher sends, however many run; a dead one is replaced this fast
    lease_ttl_s: float = 10.0
    # Signed halt/release links in alerts, served by the receiver (collector/receiver/actions.py); both
    # must be set for alerts to carry them, and the receiver needs the same key to accept them.
    actions_url: str = ""  # AGENTWATCH_ACTIONS_URL: the receiver's public base URL, e.g. https://watch.example
    actions_key: str = ""  # AGENTWATCH_ACTIONS_KEY: the signing secret
    actions_ttl_s: float = 86400.0  # AGENTWATCH_ACTIONS_TTL_S: how long a link stays valid

    def __post_init__(self):
        self.webhook_urls = _split(self.webhook_urls)
        self.slack_webhook_urls = _split(self.slack_webhook_urls)
        if self.group_threshold < 0 or self.max_attempts < 1 or self.sink_concurrency < 1:
            raise ValueError("group_threshold must be >= 0, max_attempts and sink_concurrency >= 1")

    ENV = {
        "webhook_urls": "AGENTWATCH_ALERT_WEBHOOK_URL",
        "webhook_secret": "AGENTWATCH_ALERT_WEBHOOK_SECRET",
        "slack_webhook_urls": "AGENTWATCH_SLACK_WEBHOOK_URL",
        "pagerduty_routing_key": "AGENTWATCH_PAGERDUTY_ROUTING_KEY",
        "pagerduty_url": "AGENTWATCH_PAGERDUTY_URL",
        "dashboard_url": "AGENTWATCH_DASHBOARD_URL",
        "actions_url": "AGENTWATCH_ACTIONS_URL",
        "actions_key": "AGENTWATCH_ACTIONS_KEY",
        "actions_ttl_s": "AGENTWATCH_ACTIONS_TTL_S",
    }

    @classmethod
    def env_name(cls, name: str) -> str:
        return cls.ENV.get(name) or f"AGENTWATCH_ALERT_{name.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AlertConfig":
        values = {}
        if environ is None:
            # The links' URL and key are the receiver's settings too: an agentwatch.toml may hold them.
            from agentwatch import config

            settings = config.load()
            values.update({name: getattr(settings, name) for name in ("actions_url", "actions_key")
                           if getattr(settings, name)})
            environ = os.environ
        for spec in fields(cls):
            raw = environ.get(cls.env_name(spec.name))
            if raw is None or raw.strip() == "":
                continue
            default = getattr(cls(), spec.name)
            try:
                if isinstance(default, bool):
                    values[spec.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[spec.name] = int(raw)
                elif isinstance(default, float):
                    values[spec.name] = float(raw)
                else:
                    values[spec.name] = raw.strip()
            except ValueError:
                raise ValueError(f"{cls.env_name(spec.name)}={raw!r} is not a valid {type(default).__name__}")
        return cls(**values)

    def sinks(self) -> list[Sink]:
        sinks: list[Sink] = [WebhookSink(url, self.webhook_secret) for url in self.webhook_urls]
        sinks += [SlackSink(url) for url in self.slack_webhook_urls]
        if self.pagerduty_routing_key:
            sinks.append(PagerDutySink(self.pagerduty_routing_key, self.pagerduty_url or PAGERDUTY_EVENTS_URL))
        return sinks

    def signer(self) -> ActionSigner | None:
        """What signs the halt/release links of alerts; None when links are not configured."""
        if not (self.actions_url and self.actions_key):
            return None
        return ActionSigner(self.actions_key, self.actions_url, self.actions_ttl_s)

"""HTTP delivery of rendered requests: retries with backoff, every attempt logged in `alert_deliveries`.

aiohttp's client; retries back off exponentially on network errors, 408/425/429
and 5xx (Retry-After honoured, capped), and give up after `max_attempts`, logging
the failure. A delivery is at least once: a crash between a 2xx and its log line
sends it again; receivers can de-duplicate on the `X-Agentwatch-Delivery` header
(PagerDuty on the dedup key). At most `sink_concurrency` requests are in flight
per sink, so a slow sink delays no other.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import aiohttp
from clickhouse_connect.driver.client import Client

from agentwatch.detectors.alerting.config import AlertConfig
from agentwatch.detectors.sinks import Request, Sink

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429}
USER_AGENT = "agentwatch-alerts/0.1"
LOG_COLUMNS = ["DeliveryId", "AnomalyId", "Sink", "Target", "Event", "Attempt", "HttpStatus", "Delivered", "Error",
               "Payload", "SentAt"]


@dataclass
class Delivery:
    sink: Sink
    request: Request
    event: str
    delivery_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


class Deliverer:
    """Sends deliveries (on the running asyncio loop) and counts them for the metrics."""

    def __init__(self, config: AlertConfig, store: Callable[[], Client]):
        self.config = config
        self._store = store
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}
        self.attempts: dict[tuple[str, str, str], int] = {}  # (sink, event, delivered|failed) -> HTTP attempts

    async def send(self, delivery: Delivery) -> bool:
        """POST with retries, waiting for the sink's turn; True once a 2xx came back."""
        if self._session is None:
            # trust_env: HTTP(S)_PROXY / NO_PROXY apply, as a pager path behind a proxy needs.
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=True)
        limit = self._limits.setdefault(delivery.sink.key, asyncio.Semaphore(self.config.sink_concurrency))
        async with limit:
            return await self._post(delivery)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._limits = {}

    async def _post(self, delivery: Delivery) -> bool:
        cfg = self.config
        sink, request = delivery.sink, delivery.request
        body = request.encoded()
        headers = {"Content-Type": "application/json", "X-Agentwatch-Delivery": delivery.delivery_id,
                   **request.headers}
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        delay = cfg.backoff_s
        for attempt in range(1, cfg.max_attempts + 1):
            status, error, wait_asked = 0, "", None
            try:
                async with self._session.post(sink.url, data=body, headers=headers, timeout=timeout,
                                              allow_redirects=False) as response:
                    status = response.status
                    text = (await response.read())[:500].decode("utf-8", "replace")
                    if 200 <= status < 300:
                        self._log_attempt(delivery, attempt, status, True, "")
                        return True
                    error = f"HTTP {status}: {text}".strip()
                    wait_asked = retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            retryable = status == 0 or status in RETRYABLE_STATUS or status >= 500
            if not retryable:
                error = f"gave up: not retryable: {error}"
            elif attempt == cfg.max_attempts:
                error = f"gave up after {attempt} attempts: {error}"
            if not retryable or attempt == cfg.max_attempts:
                self._log_attempt(delivery, attempt, status, False, error)
                log.error("alerts: %s for %s to %s failed: %s", delivery.event, ",".join(request.anomaly_ids[:3]),
                          sink.target, error)
                return False
            wait = min(delay, cfg.backoff_max_s)
            if wait_asked is not None:
                wait = max(wait, min(wait_asked, cfg.retry_after_max_s))
            self._log_attempt(delivery, attempt, status, False, f"{error}; retrying in {wait:.3g}s")
            log.warning("alerts: %s to %s, attempt %d failed (%s); retrying in %.3gs", delivery.event,
                        sink.target, attempt, error, wait)
            await asyncio.sleep(wait)
            delay *= 2
        return False

    def _log_attempt(self, delivery: Delivery, attempt: int, status: int, delivered: bool, error: str) -> None:
        """One row per anomaly the request covers; the payload (secrets redacted) on the first one's row."""
        request = delivery.request
        key = (delivery.sink.name, delivery.event, "delivered" if delivered else "failed")
        self.attempts[key] = self.attempts.get(key, 0) + 1
        payload = request.stored_text()
        sent_at = datetime.now(timezone.utc)
        rows = [[delivery.delivery_id, aid, delivery.sink.name, delivery.sink.target, delivery.event, attempt,
                 status, delivered, error, payload if i == 0 else "", sent_at]
                for i, aid in enumerate(request.anomaly_ids)]
        self._store().insert("alert_deliveries", rows, column_names=LOG_COLUMNS)

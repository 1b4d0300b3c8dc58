"""The alert dispatcher: anomalies -> new / escalated / resolved notifications to the sinks.

It tails `anomalies` (every row version, not only the current one) from its
checkpoint in `detector_state` (Detector='alerts', Shard='all') and keeps, per
anomaly, what the versions say (highest open severity, resolved, acknowledged
before anyone was told) beside what was notified. The difference is the event to
send:

- `new`       — first notification of an anomaly (one seen already resolved gets
                `new` then `resolved`; one a person acknowledged before it was ever
                sent gets nothing at all);
- `escalated` — an open version's severity rose above the one last notified
                (acknowledged versions send nothing);
- `resolved`  — a version with Status='resolved' after `new` was sent.

Each event goes out once per anomaly: the notified state is checkpointed after
every cycle (an event counts as sent once all its deliveries are done; events
still being sent are recorded as such) and every HTTP attempt is logged in
`alert_deliveries`. After a restart, what is logged there after the checkpoint
(after the event was started, for one that was being sent; at any time, for an
anomaly the checkpoint does not hold) counts as sent for that sink, and only the
sinks that lack it are sent it.

Bursts are grouped per (tenant, kind, event): within `group_window_s`, up to
`group_threshold` events go out one by one at once; when a cycle would pass that
count, all its events for the key go out as ONE grouped notification (a storm
becomes one page), and later events for the key are held and sent as one grouped
update per window. PagerDuty gets one incident per lone anomaly (dedup key = the
anomaly id) or per storm (one dedup key for the group, resolved once all its
anomalies are resolved).

HTTP is aiohttp's client; retries back off exponentially on network errors,
408/425/429 and 5xx (Retry-After honoured, capped), and give up after
`max_attempts`, logging the failure. A delivery is at least once: a crash between
a 2xx and its log line sends it again; receivers can de-duplicate on the
`X-Agentwatch-Delivery` header (PagerDuty on the dedup key).

Run one dispatcher per store (the checkpoint is Shard='all').
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
from clickhouse_connect.driver.client import Client

from agentwatch.detectors.lease import Lease
from agentwatch.detectors.sinks import (
    PAGERDUTY_EVENTS_URL,
    Anomaly,
    Notification,
    PagerDutySink,
    Request,
    Sink,
    SlackSink,
    WebhookSink,
)
from agentwatch.schemas.vocabulary import severity_rank

log = logging.getLogger(__name__)

DETECTOR = "alerts"
SHARD = "all"
STATE_VERSION = 1
RETRYABLE_STATUS = {408, 425, 429}
USER_AGENT = "agentwatch-alerts/0.1"


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
    }

    @classmethod
    def env_name(cls, name: str) -> str:
        return cls.ENV.get(name) or f"AGENTWATCH_ALERT_{name.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AlertConfig":
        environ = os.environ if environ is None else environ
        values = {}
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


# --- checkpointed state ----------------------------------------------------------------------------

@dataclass
class Tracked:
    """One anomaly: what its versions say (d*) and what was notified (n*)."""

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


@dataclass
class _Planned:
    event: str
    ids: list[str]
    grouped: bool
    group: str = ""


@dataclass
class _NoteRun:
    """A notification being delivered: marked sent once all its deliveries are done."""

    planned: _Planned
    note: Notification
    remaining: int = 0


@dataclass
class _Delivery:
    sink: Sink
    request: Request
    event: str
    delivery_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _utc(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc)


def _now_us() -> int:
    return int(time.time() * 1e6)


def _evidence(text: str):
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text


def _retry_after(value: str | None) -> float | None:
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


# --- the dispatcher --------------------------------------------------------------------------------

class AlertDispatcher:
    """Tails `anomalies`, sends events to the configured sinks, logs every attempt.

    `run_once()` does one cycle, waits for its deliveries (retries included) and
    returns how many were made (HTTP requests answered 2xx). `run_forever(stop)`
    cycles every `poll_s` until `stop` is set; there deliveries run in the
    background (at most `sink_concurrency` at a time per sink), so a slow or dead
    sink delays neither the other sinks nor the next anomalies. Events of one
    anomaly go out in order: its next event waits until the previous one is done.
    Call from one thread, outside any running asyncio loop.
    """

    def __init__(self, connect: Callable[[], Client], config: AlertConfig | None = None, *,
                 clock: Callable[[], float] = time.time, holder: str | None = None):
        self._connect = connect
        self._lease = Lease(None, DETECTOR, holder, (config or AlertConfig()).lease_ttl_s)
        self.config = config or AlertConfig.from_env()
        self.sinks = self.config.sinks()
        self._clock = clock  # grouping windows and retention (tests move it); the log uses the wall clock
        self._client: Client | None = None
        self._state: State | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task] = set()
        self._inflight: dict[str, list] = {}  # anomaly -> [event, planned at µs]
        self._resolving: set[str] = set()  # anomalies whose `resolved` is being sent
        self._said_no_sinks = False
        # Anomalies to check against alert_deliveries before sending, with the time from which a
        # logged delivery counts (0 for anomalies new to the checkpoint).
        self._verify: dict[str, int] = {}
        self._skip: dict[tuple[str, str], set[str]] = {}  # (anomaly, event) -> sinks that already have it
        self._verify_all = True  # first cycle after loading the checkpoint: check every needed event
        self._pending_since: dict[str, float] = {}
        self._dirty = False
        self.attempts: dict[tuple[str, str, str], int] = {}  # (sink, event, delivered|failed) -> HTTP attempts
        self.delivered = 0  # deliveries made (2xx) since start
        self.failed = 0  # deliveries given up on since start

    # public ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        if not self._have_sinks():
            return 0
        return self._event_loop().run_until_complete(self._cycle(wait=True))

    def run_forever(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        if not self._have_sinks():
            stop.wait()
            return
        try:
            self._event_loop().run_until_complete(self._forever(stop, poll_s))
        finally:
            self.close()

    def close(self) -> None:
        if self._loop is not None:
            if self._tasks:
                self._loop.run_until_complete(self._drain(0))
            if self._session is not None:
                self._loop.run_until_complete(self._session.close())
                self._session = None
            self._loop.close()
            self._loop = None
            self._limits = {}
        if self._lease.epoch and self._client is not None:
            try:
                self._lease.release()
            except Exception:
                log.exception("alerts: could not release the lease; a standby takes over when it expires")
        self._reset_store()

    # loop ------------------------------------------------------------------------------------

    def _have_sinks(self) -> bool:
        if not self.sinks and not self._said_no_sinks:
            log.warning("alerts: no sink configured (set AGENTWATCH_ALERT_WEBHOOK_URL, AGENTWATCH_SLACK_WEBHOOK_URL "
                        "or AGENTWATCH_PAGERDUTY_ROUTING_KEY); anomalies are not sent anywhere")
            self._said_no_sinks = True
        return bool(self.sinks)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    async def _forever(self, stop: threading.Event, poll_s: float) -> None:
        delay = poll_s
        while not stop.is_set():
            try:
                await self._cycle(wait=False)
                delay = poll_s
            except Exception:
                log.exception("alerts: cycle failed; retrying in %.1fs", delay)
                self._reset_store()
                delay = min(max(delay * 2, poll_s), 30.0)
            deadline = time.monotonic() + delay
            while not stop.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        # Stopping: give deliveries under way a moment; what is cut off is sent again after a restart.
        await self._drain(self.config.timeout_s)
        try:
            if self._state is not None and self._dirty:
                self._save_state(self._state)
        except Exception:
            log.exception("alerts: could not save the checkpoint while stopping")

    async def _drain(self, grace_s: float) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(grace_s, 0.001))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _reset_store(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None
        self._state = None  # reloaded from the store: what was saved is the truth

    # one cycle -------------------------------------------------------------------------------

    def _store(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    @property
    def active(self) -> bool:
        """Whether this dispatcher held the lease at its last cycle (it is the one sending)."""
        return bool(self._lease.epoch)

    async def _cycle(self, wait: bool) -> int:
        self._lease.client = self._store()
        taken_over = self._lease.acquired
        if not self._lease.hold():
            if self._state is not None:
                log.info("alerts: another dispatcher holds the lease; standing by")
                self._state = None  # reloaded from the store if this one takes over
            return 0
        if self._lease.acquired != taken_over:
            self._state = None  # start from the checkpoint the previous holder saved
        if self._state is None:
            self._state = self._load_state()
        state = self._state
        now = self._clock()
        self._read_versions(state, now)
        made = 0
        for _ in range(3 if wait else 1):  # waiting, a next pass sends e.g. `resolved` right after its `new`
            needs = {aid: event for aid, tracked in state.anomalies.items()
                     if (event := tracked.need()) and aid not in self._inflight}
            for aid in [aid for aid in self._pending_since if aid not in needs]:
                del self._pending_since[aid]
            if not needs:
                break
            self._already_sent(state, needs)
            needs = {aid: event for aid, event in needs.items() if event}
            plan = self._plan(state, needs, now)
            if not plan:
                break
            tasks = self._start(state, plan)
            if not wait:
                break
            made += sum(await asyncio.gather(*tasks))
        self._expire(state, now)
        if self._dirty:
            self._save_state(state)
        return made

    def _read_versions(self, state: State, now: float) -> None:
        overlap = int(self.config.overlap_s * 1e6)
        rows = self._query_versions(max(0, state.position - overlap))
        if len(rows) >= self.config.batch_rows and rows[-1][1] <= state.position:
            rows = self._query_versions(state.position)  # the overlap alone filled the batch
        for aid, updated, kind, severity, tenant, status in rows:
            tracked = state.anomalies.get(aid)
            if tracked is None:
                tracked = state.anomalies[aid] = Tracked(tenant=tenant, kind=kind)
                self._verify[aid] = 0
            before = (tracked.severity, tracked.resolved, tracked.suppressed)
            if status == "acknowledged":
                if not tracked.sent_new:
                    tracked.suppressed = True
            elif status == "resolved":
                tracked.resolved = True
            elif severity_rank(severity) > severity_rank(tracked.severity):
                tracked.severity = severity
            if (tracked.severity, tracked.resolved, tracked.suppressed) != before or not tracked.touched:
                tracked.touched = now
                self._dirty = True
            if updated > state.position:
                state.position = updated
                self._dirty = True

    def _query_versions(self, low: int) -> list[tuple]:
        return self._client.query(
            "SELECT AnomalyId, toUnixTimestamp64Micro(UpdatedAt) AS u, Kind, Severity, Tenant, Status "
            "FROM anomalies WHERE UpdatedAt > fromUnixTimestamp64Micro({low:Int64}) "
            "ORDER BY UpdatedAt LIMIT {n:UInt64} WITH TIES",
            parameters={"low": low, "n": self.config.batch_rows}).result_rows

    def _already_sent(self, state: State, needs: dict[str, str]) -> None:
        """Checks alert_deliveries for events the checkpoint does not know were handled
        (delivered, or given up on): logged after it was saved (a crash), while they
        were being sent, or at any time for an anomaly new to the checkpoint. An event
        every sink handled is marked sent (and `needs` moves on to the next); one only
        some sinks handled is remembered in `_skip`, for the others to be sent alone."""
        if self._verify_all:
            for aid in needs:
                self._verify.setdefault(aid, -1)
            self._verify_all = False
        check = [aid for aid in needs if aid in self._verify]
        if not check:
            return
        rows = self._client.query(
            "SELECT AnomalyId, Sink, Target, Event, max(toUnixTimestamp64Micro(SentAt)) FROM alert_deliveries "
            "WHERE AnomalyId IN {ids:Array(String)} AND (Delivered OR startsWith(Error, 'gave up')) "
            "GROUP BY AnomalyId, Sink, Target, Event",
            parameters={"ids": check}).result_rows
        handled: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for aid, sink, target, event, sent_at in rows:
            handled.setdefault(aid, {}).setdefault(event, []).append((f"{sink} {target}", sent_at))
        all_sinks = {sink.key for sink in self.sinks}
        for aid in check:
            since_given = self._verify.pop(aid)
            if aid not in handled:
                continue
            tracked = state.anomalies[aid]
            while True:  # an event every sink handled is done: look at the next one it needs
                event = tracked.need()
                if not event:
                    break
                if since_given >= 0:
                    since = since_given
                elif state.inflight.get(aid, [None])[0] == event:
                    since = state.inflight[aid][1]
                else:
                    since = state.saved_at
                done = {key for key, sent_at in handled[aid].get(event, []) if sent_at >= since}
                if not done:
                    break
                if done >= all_sinks:
                    self._mark_sent(state, tracked, aid, event, None, "")
                    needs[aid] = tracked.need() or ""
                    continue
                self._skip[(aid, event)] = done
                break

    def _plan(self, state: State, needs: dict[str, str], now: float) -> list[_Planned]:
        cfg = self.config
        by_key: dict[tuple[str, str, str], list[str]] = {}
        for aid, event in sorted(needs.items()):
            tracked = state.anomalies[aid]
            by_key.setdefault((tracked.tenant, tracked.kind, event), []).append(aid)
            self._pending_since.setdefault(aid, now)
        plan: list[_Planned] = []
        for key, ids in by_key.items():
            if cfg.group_wait_s and now - min(self._pending_since[aid] for aid in ids) < cfg.group_wait_s:
                continue  # gathering a burst
            window = state.windows.get(key)
            if window is not None and not window.group and now >= window.start + cfg.group_window_s:
                window = None
            if window is None:
                window = state.windows[key] = Window(start=now)
                self._dirty = True
            if not window.group:
                if window.sent + len(ids) <= cfg.group_threshold:
                    plan += [_Planned(key[2], [aid], False) for aid in ids]
                    window.sent += len(ids)
                else:
                    window.group = "storm-" + hashlib.sha1(
                        f"{key[0]}|{key[1]}|{key[2]}|{now}|{min(ids)}".encode()).hexdigest()[:24]
                    window.flushed = now
                    plan.append(_Planned(key[2], ids, True, window.group))
                self._dirty = True
            elif now >= window.flushed + cfg.group_window_s:
                window.flushed = now
                plan.append(_Planned(key[2], ids, True, window.group))
                self._dirty = True
            # else: held, and sent with the storm's next update
        return plan

    def _expire(self, state: State, now: float) -> None:
        window_s = self.config.group_window_s
        held = {(t.tenant, t.kind, t.need()) for t in state.anomalies.values() if t.need()}
        for key, window in list(state.windows.items()):
            last = window.flushed if window.group else window.start
            if now >= last + window_s and key not in held:
                del state.windows[key]
                self._dirty = True
        for aid in [aid for aid in self._verify if aid not in self._inflight and (
                aid not in state.anomalies or not state.anomalies[aid].need())]:
            del self._verify[aid]
        for key in [key for key in self._skip if state.anomalies.get(key[0]) is None
                    or state.anomalies[key[0]].need() != key[1]]:
            del self._skip[key]
        horizon = now - self.config.state_retention_s
        for aid, tracked in list(state.anomalies.items()):
            if tracked.finished and tracked.touched < horizon and aid not in self._inflight:
                del state.anomalies[aid]
                self._dirty = True

    # sending ---------------------------------------------------------------------------------

    def _start(self, state: State, plan: list[_Planned]) -> list[asyncio.Task]:
        """Renders each planned notification for every sink and starts its deliveries."""
        records = self._records({aid for planned in plan for aid in planned.ids})
        if self._session is None:
            # trust_env: HTTP(S)_PROXY / NO_PROXY apply, as a pager path behind a proxy needs.
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=True)
        tasks = []
        planned_at = _now_us()
        for planned in plan:
            for aid in planned.ids:
                if aid not in records:  # gone from the table: nothing left to say about it
                    self._mark_sent(state, state.anomalies[aid], aid, planned.event, None, "")
            members = [records[aid] for aid in planned.ids if aid in records]
            if not members:
                continue
            members.sort(key=lambda a: (-severity_rank(a.severity), a.detected_at, a.anomaly_id))
            note = Notification(planned.event, members, grouped=planned.grouped)
            for a in members:
                for sink_key in self._skip.pop((a.anomaly_id, planned.event), ()):
                    note.skip.setdefault(sink_key, set()).add(a.anomaly_id)
            self._incidents(state, note, planned)
            deliveries = []
            for sink in self.sinks:
                for request in sink.requests(note, self.config.dashboard_url):
                    request.headers.setdefault("X-Agentwatch-Event", planned.event)
                    deliveries.append(_Delivery(sink, request, planned.event))
            run = _NoteRun(planned, note, remaining=len(deliveries))
            for a in members:
                self._inflight[a.anomaly_id] = [planned.event, planned_at]
                if planned.event == "resolved":
                    self._resolving.add(a.anomaly_id)
            if not deliveries:
                self._complete(run)
            for delivery in deliveries:
                task = asyncio.get_running_loop().create_task(self._run_delivery(delivery, run))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                tasks.append(task)
        return tasks

    def _incidents(self, state: State, note: Notification, planned: _Planned) -> None:
        """PagerDuty keys: for triggers, the members by incident; for resolves, the
        incidents now over (a storm's only once all its anomalies are resolved)."""
        by_key: dict[str, list[Anomaly]] = {}
        for a in note.anomalies:
            if planned.event == "new":
                key = planned.group if planned.grouped else a.anomaly_id
            else:
                key = state.anomalies[a.anomaly_id].incident or a.anomaly_id
            by_key.setdefault(key, []).append(a)
        if planned.event != "resolved":
            note.incidents = by_key
            return
        for key, members in by_key.items():
            still_open = state.incidents.get(key)
            if still_open is not None:
                done = {a.anomaly_id for a in members} | self._resolving
                if any(aid not in done for aid in still_open):
                    continue  # the storm is not over yet
            note.close[key] = members

    async def _run_delivery(self, delivery: _Delivery, run: _NoteRun) -> bool:
        limit = self._limits.setdefault(delivery.sink.key, asyncio.Semaphore(self.config.sink_concurrency))
        ok, finished = False, False
        try:
            async with limit:
                ok = await self._deliver(delivery)
            finished = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alerts: delivery %s to %s failed", delivery.delivery_id, delivery.sink.target)
        finally:
            if ok:
                self.delivered += 1
            elif finished:
                self.failed += 1
            run.remaining -= 1
            if not finished:
                run.planned.ids = []  # not done: sent again by a later cycle (or after a restart)
            if run.remaining == 0:
                self._complete(run)
        return ok

    def _complete(self, run: _NoteRun) -> None:
        """All deliveries of a notification are done (delivered or given up): mark it sent."""
        state = self._state
        done_ids = set(run.planned.ids)
        for a in run.note.anomalies:
            aid = a.anomaly_id
            planned_at = (self._inflight.pop(aid, None) or [None, 0])[1]
            self._resolving.discard(aid)
            if aid not in done_ids or state is None or aid not in state.anomalies:
                # Cut off, or the checkpoint was reloaded meanwhile: before this event goes out
                # again, alert_deliveries tells which sinks already have it.
                self._verify[aid] = planned_at
                continue
            self._mark_sent(state, state.anomalies[aid], aid, run.planned.event, a,
                            run.planned.group if run.planned.event == "new" and run.planned.grouped else "")
            if run.planned.event == "resolved":
                key = state.anomalies[aid].incident
                if key in state.incidents:
                    state.incidents[key] = [m for m in state.incidents[key] if m != aid]
                    if not state.incidents[key]:
                        del state.incidents[key]

    def _mark_sent(self, state: State, tracked: Tracked, aid: str, event: str, record: Anomaly | None,
                   group: str) -> None:
        seen = tracked.severity
        if record is not None and record.status == "open" and severity_rank(record.severity) > severity_rank(seen):
            seen = record.severity
        if event == "new":
            tracked.sent_new = True
            tracked.sent_severity = seen
            tracked.incident = tracked.incident or group or aid
            if group:
                state.incidents.setdefault(group, []).append(aid)
        elif event == "escalated":
            tracked.sent_severity = seen
        elif event == "resolved":
            tracked.sent_resolved = True
        tracked.touched = self._clock()
        self._pending_since.pop(aid, None)
        self._dirty = True

    def _records(self, ids: set[str]) -> dict[str, Anomaly]:
        if not ids:
            return {}
        rows = self._client.query(
            "SELECT AnomalyId, Kind, Severity, Tenant, AgentId, TraceId, Score, Summary, Evidence, Status, "
            "toUnixTimestamp64Micro(DetectedAt), toUnixTimestamp64Micro(FirstSeen), toUnixTimestamp64Micro(LastSeen) "
            "FROM anomalies FINAL WHERE AnomalyId IN {ids:Array(String)}",
            parameters={"ids": sorted(ids)}).result_rows
        return {row[0]: Anomaly(anomaly_id=row[0], kind=row[1], severity=row[2], tenant=row[3], agent=row[4],
                                trace_id=row[5], score=float(row[6]), summary=row[7], evidence=_evidence(row[8]),
                                status=row[9], detected_at=_utc(row[10]), first_seen=_utc(row[11]),
                                last_seen=_utc(row[12]))
                for row in rows}

    async def _deliver(self, delivery: _Delivery) -> bool:
        """POST with retries; every attempt logged. True once a 2xx came back."""
        cfg = self.config
        sink, request = delivery.sink, delivery.request
        body = request.encoded()
        headers = {"Content-Type": "application/json", "X-Agentwatch-Delivery": delivery.delivery_id,
                   **request.headers}
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        delay = cfg.backoff_s
        for attempt in range(1, cfg.max_attempts + 1):
            status, error, retry_after = 0, "", None
            try:
                async with self._session.post(sink.url, data=body, headers=headers, timeout=timeout,
                                              allow_redirects=False) as response:
                    status = response.status
                    text = (await response.read())[:500].decode("utf-8", "replace")
                    if 200 <= status < 300:
                        self._log_attempt(delivery, attempt, status, True, "")
                        return True
                    error = f"HTTP {status}: {text}".strip()
                    retry_after = _retry_after(response.headers.get("Retry-After"))
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
            if retry_after is not None:
                wait = max(wait, min(retry_after, cfg.retry_after_max_s))
            self._log_attempt(delivery, attempt, status, False, f"{error}; retrying in {wait:.3g}s")
            log.warning("alerts: %s to %s, attempt %d failed (%s); retrying in %.3gs", delivery.event,
                        sink.target, attempt, error, wait)
            await asyncio.sleep(wait)
            delay *= 2
        return False

    def _log_attempt(self, delivery: _Delivery, attempt: int, status: int, delivered: bool, error: str) -> None:
        """One row per anomaly the request covers; the payload (secrets redacted) on the first one's row."""
        request = delivery.request
        key = (delivery.sink.name, delivery.event, "delivered" if delivered else "failed")
        self.attempts[key] = self.attempts.get(key, 0) + 1
        payload = request.stored_text()
        sent_at = datetime.now(timezone.utc)
        rows = [[delivery.delivery_id, aid, delivery.sink.name, delivery.sink.target, delivery.event, attempt,
                 status, delivered, error, payload if i == 0 else "", sent_at]
                for i, aid in enumerate(request.anomaly_ids)]
        self._store().insert("alert_deliveries", rows, column_names=[
            "DeliveryId", "AnomalyId", "Sink", "Target", "Event", "Attempt", "HttpStatus", "Delivered", "Error",
            "Payload", "SentAt"])

    # checkpoint ------------------------------------------------------------------------------

    def _load_state(self) -> State:
        rows = self._client.query(
            "SELECT Position, State FROM detector_state FINAL WHERE Detector = {d:String} AND Shard = {s:String}",
            parameters={"d": DETECTOR, "s": SHARD}).result_rows
        state = State.loads(*rows[0]) if rows else State()
        self._verify_all = True
        self._verify = {}
        self._skip = {}
        self._pending_since = {}
        return state

    def _save_state(self, state: State) -> None:
        state.saved_at = max(_now_us(), state.saved_at + 1)
        state.inflight = {aid: list(value) for aid, value in self._inflight.items()}
        self._client.insert("detector_state", [[DETECTOR, SHARD, str(state.position), state.dumps(),
                                                _utc(state.saved_at)]],
                            column_names=["Detector", "Shard", "Position", "State", "UpdatedAt"])
        self._dirty = False

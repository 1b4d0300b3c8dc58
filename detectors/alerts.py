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
`alert_deliveries`; after a crash, that log says what went out (alerting/recovery.py).
Bursts are grouped into storms (alerting/grouping.py), PagerDuty gets one incident
per lone anomaly or per storm (alerting/incidents.py). Every alert names what was
halted for its anomalies and, when configured, carries signed halt/release links
(alerting/records.py, alerting/links.py). The parts live in `agentwatch.detectors.alerting`;
this module runs them.

Run one dispatcher per store (the checkpoint is Shard='all'); more stand by (a lease).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from agentwatch.detectors.alerting import incidents, records, state as checkpoint
from agentwatch.detectors.alerting.config import AlertConfig
from agentwatch.detectors.alerting.delivery import Deliverer, Delivery
from agentwatch.detectors.alerting.grouping import Grouping, Planned
from agentwatch.detectors.alerting.recovery import Recovery
from agentwatch.detectors.alerting.state import DETECTOR, State, Tracked, now_us
from agentwatch.detectors.lease import Lease
from agentwatch.detectors.sinks import Anomaly, Notification
from agentwatch.schemas.vocabulary import severity_rank

__all__ = ["AlertConfig", "AlertDispatcher"]

log = logging.getLogger(__name__)


@dataclass
class _NoteRun:
    """A notification being delivered: marked sent once all its deliveries are done."""

    planned: Planned
    note: Notification
    remaining: int = 0


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
        self._signer = self.config.signer()
        self._clock = clock  # grouping windows and retention (tests move it); the log uses the wall clock
        self._client: Client | None = None
        self._state: State | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliverer = Deliverer(self.config, self._store)
        self._grouping = Grouping(self.config.group_window_s, self.config.group_threshold, self.config.group_wait_s)
        self._recovery = Recovery()
        self._tasks: set[asyncio.Task] = set()
        self._inflight: dict[str, list] = {}  # anomaly -> [event, planned at µs]
        self._resolving: set[str] = set()  # anomalies whose `resolved` is being sent
        self._said_no_sinks = False
        self._dirty = False
        self.delivered = 0  # deliveries made (2xx) since start
        self.failed = 0  # deliveries given up on since start

    @property
    def attempts(self) -> dict[tuple[str, str, str], int]:
        """(sink, event, delivered|failed) -> HTTP attempts since start."""
        return self._deliverer.attempts

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
            self._loop.run_until_complete(self._deliverer.close())
            self._loop.close()
            self._loop = None
        if self._lease.epoch and self._client is not None:
            try:
                self._lease.release()
            except Exception:
                log.exception("alerts: could not release the lease; a standby takes over when it expires")
        self._reset_store()

    @property
    def active(self) -> bool:
        """Whether this dispatcher held the lease at its last cycle (it is the one sending)."""
        return bool(self._lease.epoch)

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
            if self._state is not None and self._is_dirty():
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

    def _store(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _is_dirty(self) -> bool:
        return self._dirty or self._grouping.changed

    # one cycle -------------------------------------------------------------------------------

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
            self._grouping.settle(needs)
            if not needs:
                break
            self._recovery.check(self._client, state, needs, [sink.key for sink in self.sinks],
                                 lambda tracked, aid, event: self._mark_sent(state, tracked, aid, event, None, ""))
            needs = {aid: event for aid, event in needs.items() if event}
            plan = self._grouping.plan(state, needs, now)
            if not plan:
                break
            tasks = self._start(state, plan)
            if not wait:
                break
            made += sum(await asyncio.gather(*tasks))
        self._expire(state, now)
        if self._is_dirty():
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
                self._recovery.watch(aid, 0)
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

    def _expire(self, state: State, now: float) -> None:
        self._grouping.expire(state, now)
        self._recovery.prune(state, self._inflight)
        horizon = now - self.config.state_retention_s
        for aid, tracked in list(state.anomalies.items()):
            if tracked.finished and tracked.touched < horizon and aid not in self._inflight:
                del state.anomalies[aid]
                self._dirty = True

    # sending ---------------------------------------------------------------------------------

    def _start(self, state: State, plan: list[Planned]) -> list[asyncio.Task]:
        """Renders each planned notification for every sink and starts its deliveries."""
        found = records.read(self._client, {aid for planned in plan for aid in planned.ids}, self._signer)
        tasks = []
        planned_at = now_us()
        for planned in plan:
            for aid in planned.ids:
                if aid not in found:  # gone from the table: nothing left to say about it
                    self._mark_sent(state, state.anomalies[aid], aid, planned.event, None, "")
            members = [found[aid] for aid in planned.ids if aid in found]
            if not members:
                continue
            members.sort(key=lambda a: (-severity_rank(a.severity), a.detected_at, a.anomaly_id))
            note = Notification(planned.event, members, grouped=planned.grouped)
            for a in members:
                for sink_key in self._recovery.skipped(a.anomaly_id, planned.event):
                    note.skip.setdefault(sink_key, set()).add(a.anomaly_id)
            incidents.assign(state, note, planned, self._resolving)
            deliveries = []
            for sink in self.sinks:
                for request in sink.requests(note, self.config.dashboard_url):
                    request.headers.setdefault("X-Agentwatch-Event", planned.event)
                    deliveries.append(Delivery(sink, request, planned.event))
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

    async def _run_delivery(self, delivery: Delivery, run: _NoteRun) -> bool:
        ok, finished = False, False
        try:
            ok = await self._deliverer.send(delivery)
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
                self._recovery.watch(aid, planned_at)
                continue
            self._mark_sent(state, state.anomalies[aid], aid, run.planned.event, a,
                            run.planned.group if run.planned.event == "new" and run.planned.grouped else "")
            if run.planned.event == "resolved":
                incidents.closed(state, aid)

    def _mark_sent(self, state: State, tracked: Tracked, aid: str, event: str, record: Anomaly | None,
                   group: str) -> None:
        seen = tracked.severity
        if record is not None and record.status == "open" and severity_rank(record.severity) > severity_rank(seen):
            seen = record.severity
        if event == "new":
            tracked.sent_new = True
            tracked.sent_severity = seen
            incidents.opened(state, tracked, aid, group)
        elif event == "escalated":
            tracked.sent_severity = seen
        elif event == "resolved":
            tracked.sent_resolved = True
        tracked.touched = self._clock()
        self._grouping.sent(aid)
        self._dirty = True

    # checkpoint ------------------------------------------------------------------------------

    def _load_state(self) -> State:
        state = checkpoint.load(self._client)
        self._recovery.reset()
        self._grouping.reset()
        return state

    def _save_state(self, state: State) -> None:
        checkpoint.save(self._client, state, self._inflight)
        self._dirty = False
        self._grouping.changed = False

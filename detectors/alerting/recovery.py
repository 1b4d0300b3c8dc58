"""Crash recovery: what `alert_deliveries` says went out that the checkpoint does not know of.

An event counts as sent once all its deliveries are done; the checkpoint is saved
after every cycle. A crash in between leaves events sent (or given up on) that the
checkpoint still needs. Before such an event goes out, the log is asked which sinks
already handled it:

- after a restart, every needed event is checked against what was logged after the
  checkpoint was saved (after the event was started, for one recorded as being sent);
- an anomaly new to the checkpoint is checked against the log at any time;
- a delivery cut off (stopping, a reload of the checkpoint) is checked from when it
  was started.

An event every sink handled is marked sent; one only some sinks handled is sent
to the others alone (`skipped`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from clickhouse_connect.driver.client import Client

from agentwatch.detectors.alerting.state import State, Tracked


class Recovery:
    def __init__(self) -> None:
        # Anomalies to check before sending, with the time (µs) from which a logged delivery counts:
        # 0 for anomalies new to the checkpoint, -1 for "since the checkpoint (or the event's start)".
        self._verify: dict[str, int] = {}
        self._skip: dict[tuple[str, str], set[str]] = {}  # (anomaly, event) -> sinks that already have it
        self._verify_all = True  # first cycle after loading the checkpoint: check every needed event

    def reset(self) -> None:
        """The checkpoint was (re)loaded: check every needed event once more."""
        self._verify_all = True
        self._verify = {}
        self._skip = {}

    def watch(self, aid: str, since_us: int) -> None:
        """Check `aid`'s next event against deliveries logged from `since_us` on."""
        self._verify[aid] = since_us

    def skipped(self, aid: str, event: str) -> set[str]:
        """The sinks (keys) that already have this event: sent to the others only. Asked once."""
        return self._skip.pop((aid, event), set())

    def check(self, client: Client, state: State, needs: dict[str, str], sink_keys: Iterable[str],
              mark_sent: Callable[[Tracked, str, str], None]) -> None:
        """Marks sent (`mark_sent(tracked, aid, event)`) what every sink handled; `needs` moves on to the
        next event (or '' for none) of each anomaly so marked."""
        if self._verify_all:
            for aid in needs:
                self._verify.setdefault(aid, -1)
            self._verify_all = False
        check = [aid for aid in needs if aid in self._verify]
        if not check:
            return
        rows = client.query(
            "SELECT AnomalyId, Sink, Target, Event, max(toUnixTimestamp64Micro(SentAt)) FROM alert_deliveries "
            "WHERE AnomalyId IN {ids:Array(String)} AND (Delivered OR startsWith(Error, 'gave up')) "
            "GROUP BY AnomalyId, Sink, Target, Event",
            parameters={"ids": check}).result_rows
        handled: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for aid, sink, target, event, sent_at in rows:
            handled.setdefault(aid, {}).setdefault(event, []).append((f"{sink} {target}", sent_at))
        all_sinks = set(sink_keys)
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
                    mark_sent(tracked, aid, event)
                    needs[aid] = tracked.need() or ""
                    continue
                self._skip[(aid, event)] = done
                break

    def prune(self, state: State, inflight: dict[str, list]) -> None:
        """Forget checks of anomalies that need nothing any more."""
        for aid in [aid for aid in self._verify if aid not in inflight and (
                aid not in state.anomalies or not state.anomalies[aid].need())]:
            del self._verify[aid]
        for key in [key for key in self._skip if state.anomalies.get(key[0]) is None
                    or state.anomalies[key[0]].need() != key[1]]:
            del self._skip[key]

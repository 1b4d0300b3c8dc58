"""Storm grouping: which needed events go out one by one, which as one grouped notification, which wait.

Per (tenant, kind, event), within `window_s`: up to `threshold` events go out one
by one at once; when a cycle would pass that count, all its events for the key go
out as ONE grouped notification (the window becomes a storm with its own key), and
later events for the key are held and sent as one grouped update per window. With
`wait_s`, new events are first held that long to gather a burst that spans polls.

Pure bookkeeping over the checkpointed windows (`State.windows`): no store, no
HTTP, the clock passed in, so it can be exercised on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agentwatch.detectors.alerting.state import State, Window


@dataclass
class Planned:
    """A notification to send: one event about one anomaly, or a group of them (`grouped`, storm `group`)."""

    event: str
    ids: list[str]
    grouped: bool
    group: str = ""


class Grouping:
    def __init__(self, window_s: float, threshold: int, wait_s: float = 0.0):
        self.window_s = window_s
        self.threshold = threshold
        self.wait_s = wait_s
        self.pending_since: dict[str, float] = {}  # anomaly -> when its needed event was first seen
        self.changed = False  # windows changed since the caller last cleared it (the checkpoint is stale)

    def reset(self) -> None:
        self.pending_since = {}

    def settle(self, needs: dict[str, str]) -> None:
        """Forget the waits of anomalies that need nothing any more."""
        for aid in [aid for aid in self.pending_since if aid not in needs]:
            del self.pending_since[aid]

    def sent(self, aid: str) -> None:
        self.pending_since.pop(aid, None)

    def plan(self, state: State, needs: dict[str, str], now: float) -> list[Planned]:
        """The notifications to send now for `needs` (anomaly -> event); the rest are held."""
        by_key: dict[tuple[str, str, str], list[str]] = {}
        for aid, event in sorted(needs.items()):
            tracked = state.anomalies[aid]
            by_key.setdefault((tracked.tenant, tracked.kind, event), []).append(aid)
            self.pending_since.setdefault(aid, now)
        plan: list[Planned] = []
        for key, ids in by_key.items():
            if self.wait_s and now - min(self.pending_since[aid] for aid in ids) < self.wait_s:
                continue  # gathering a burst
            window = state.windows.get(key)
            if window is not None and not window.group and now >= window.start + self.window_s:
                window = None
            if window is None:
                window = state.windows[key] = Window(start=now)
                self.changed = True
            if not window.group:
                if window.sent + len(ids) <= self.threshold:
                    plan += [Planned(key[2], [aid], False) for aid in ids]
                    window.sent += len(ids)
                else:
                    window.group = "storm-" + hashlib.sha1(
                        f"{key[0]}|{key[1]}|{key[2]}|{now}|{min(ids)}".encode()).hexdigest()[:24]
                    window.flushed = now
                    plan.append(Planned(key[2], ids, True, window.group))
                self.changed = True
            elif now >= window.flushed + self.window_s:
                window.flushed = now
                plan.append(Planned(key[2], ids, True, window.group))
                self.changed = True
            # else: held, and sent with the storm's next update
        return plan

    def expire(self, state: State, now: float) -> None:
        """Drop windows past their time that hold no event."""
        held = {(t.tenant, t.kind, t.need()) for t in state.anomalies.values() if t.need()}
        for key, window in list(state.windows.items()):
            last = window.flushed if window.group else window.start
            if now >= last + self.window_s and key not in held:
                del state.windows[key]
                self.changed = True

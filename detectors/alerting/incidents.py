"""PagerDuty bookkeeping: one incident (dedup key) per lone anomaly, one per storm.

A lone anomaly's key is its own id; a storm's `new` opens one incident under the
storm's key (`State.incidents[key]` lists its anomalies still open), and that
incident is resolved only once all of them are.
"""

from __future__ import annotations

from agentwatch.detectors.alerting.grouping import Planned
from agentwatch.detectors.alerting.state import State, Tracked
from agentwatch.detectors.sinks import Anomaly, Notification


def assign(state: State, note: Notification, planned: Planned, resolving: set[str]) -> None:
    """Fills `note.incidents` (triggers: the members by key) or, for `resolved`, `note.close`: the keys
    now over. `resolving`: anomalies whose `resolved` is being sent already."""
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
            done = {a.anomaly_id for a in members} | resolving
            if any(aid not in done for aid in still_open):
                continue  # the storm is not over yet
        note.close[key] = members


def opened(state: State, tracked: Tracked, aid: str, group: str) -> None:
    """Its `new` went out (as part of storm `group`, or alone)."""
    tracked.incident = tracked.incident or group or aid
    if group:
        state.incidents.setdefault(group, []).append(aid)


def closed(state: State, aid: str) -> None:
    """Its `resolved` went out: it no longer holds its storm's incident open."""
    key = state.anomalies[aid].incident
    if key in state.incidents:
        state.incidents[key] = [m for m in state.incidents[key] if m != aid]
        if not state.incidents[key]:
            del state.incidents[key]

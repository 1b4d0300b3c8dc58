"""Storm grouping and PagerDuty incident bookkeeping on their own: no store, no HTTP, the clock passed in.

What a responder relies on: a handful of anomalies of one kind arrive one message
each; a burst becomes one message; a storm that goes on sends one update per
window, not one per anomaly; other tenants and kinds are never swallowed into it;
and a storm's PagerDuty incident closes only when every anomaly of it is resolved,
also after a restart (the windows and incidents are in the checkpoint).
"""

from __future__ import annotations

from datetime import datetime, timezone

from agentwatch.detectors.alerting import incidents
from agentwatch.detectors.alerting.grouping import Grouping, Planned
from agentwatch.detectors.alerting.state import State, Tracked
from agentwatch.detectors.sinks import Anomaly, Notification

T = 1_000_000.0


def tracked(state: State, *ids: str, tenant: str = "acme", kind: str = "fanout", severity: str = "warning"):
    for aid in ids:
        state.anomalies[aid] = Tracked(tenant=tenant, kind=kind, severity=severity)
    return {aid: "new" for aid in ids}


def shape(plan: list[Planned]) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(p.event, tuple(p.ids), p.grouped) for p in plan]


def test_up_to_the_threshold_each_event_goes_out_alone():
    state, grouping = State(), Grouping(window_s=60, threshold=3)
    plan = grouping.plan(state, tracked(state, "a1", "a2", "a3"), T)
    assert shape(plan) == [("new", ("a1",), False), ("new", ("a2",), False), ("new", ("a3",), False)]
    assert grouping.changed


def test_a_burst_past_the_threshold_is_one_grouped_notification_and_later_ones_wait_for_the_window():
    state, grouping = State(), Grouping(window_s=60, threshold=3)
    burst = [f"s{i:02d}" for i in range(30)]
    [storm] = grouping.plan(state, tracked(state, *burst), T)
    assert storm.grouped and storm.event == "new" and sorted(storm.ids) == burst
    assert storm.group.startswith("storm-")

    # More of the storm inside the window: held, nothing goes out.
    late = tracked(state, "s30", "s31")
    assert grouping.plan(state, late, T + 10) == []
    assert grouping.plan(state, late, T + 59) == []
    # Once the window has passed: one grouped update carrying the storm's key, for all that waited.
    [update] = grouping.plan(state, late, T + 60)
    assert update.grouped and update.ids == ["s30", "s31"] and update.group == storm.group


def test_other_tenants_kinds_and_events_are_grouped_apart():
    state, grouping = State(), Grouping(window_s=60, threshold=2)
    needs = tracked(state, *(f"g{i}" for i in range(5)), tenant="globex")
    needs |= tracked(state, "x1", tenant="acme")
    needs |= tracked(state, "l1", tenant="globex", kind="loop")
    state.anomalies["r1"] = Tracked(tenant="globex", kind="fanout", severity="warning", sent_new=True,
                                    sent_severity="warning", resolved=True)
    needs["r1"] = "resolved"
    plan = grouping.plan(state, needs, T)
    assert sorted(shape(plan)) == [("new", ("g0", "g1", "g2", "g3", "g4"), True), ("new", ("l1",), False),
                                   ("new", ("x1",), False), ("resolved", ("r1",), False)]


def test_group_wait_holds_new_events_to_gather_a_burst_spanning_polls():
    state, grouping = State(), Grouping(window_s=60, threshold=1, wait_s=2)
    first = tracked(state, "w1")
    assert grouping.plan(state, first, T) == []
    assert grouping.plan(state, first | tracked(state, "w2"), T + 1) == []
    [burst] = grouping.plan(state, first | {"w2": "new"}, T + 2)
    assert burst.grouped and burst.ids == ["w1", "w2"]


def test_a_quiet_window_expires_and_the_next_event_is_sent_alone_again():
    state, grouping = State(), Grouping(window_s=60, threshold=1)
    [storm] = grouping.plan(state, tracked(state, "q1", "q2"), T)
    for aid in storm.ids:  # sent: nothing is held for the key any more
        state.anomalies[aid].sent_new, state.anomalies[aid].sent_severity = True, "warning"
    grouping.expire(state, T + 30)
    assert state.windows  # still within the window
    grouping.expire(state, T + 60)
    assert not state.windows
    [alone] = grouping.plan(state, tracked(state, "q3"), T + 61)
    assert not alone.grouped and alone.ids == ["q3"]


def test_the_storm_goes_on_after_a_restart_from_the_checkpoint():
    state, grouping = State(), Grouping(window_s=60, threshold=2)
    [storm] = grouping.plan(state, tracked(state, "c1", "c2", "c3"), T)
    restored = State.loads(str(state.position), state.dumps())
    again = Grouping(window_s=60, threshold=2)
    late = tracked(restored, "c4")
    assert again.plan(restored, late, T + 5) == []  # still the same storm's window: held
    [update] = again.plan(restored, late, T + 61)
    assert update.group == storm.group


def _anomaly(aid: str) -> Anomaly:
    moment = datetime(2025, 6, 3, tzinfo=timezone.utc)
    return Anomaly(anomaly_id=aid, kind="fanout", severity="warning", tenant="acme", agent="a", trace_id="t",
                   score=1.0, summary="s", evidence={}, status="open", detected_at=moment, first_seen=moment,
                   last_seen=moment)


def test_a_storm_is_one_incident_closed_only_when_all_its_anomalies_are_resolved():
    state, grouping = State(), Grouping(window_s=60, threshold=1)
    [storm] = grouping.plan(state, tracked(state, "p1", "p2", "p3"), T)
    trigger = Notification("new", [_anomaly(aid) for aid in storm.ids], grouped=True)
    incidents.assign(state, trigger, storm, set())
    assert list(trigger.incidents) == [storm.group]  # one dedup key for the whole storm
    for aid in storm.ids:
        incidents.opened(state, state.anomalies[aid], aid, storm.group)
    assert state.incidents == {storm.group: ["p1", "p2", "p3"]}

    # Two of three resolved: PagerDuty is not told to resolve the storm's incident yet.
    partial = Notification("resolved", [_anomaly("p1"), _anomaly("p2")], grouped=True)
    incidents.assign(state, partial, Planned("resolved", ["p1", "p2"], True), set())
    assert partial.close == {}
    incidents.closed(state, "p1")
    incidents.closed(state, "p2")
    last = Notification("resolved", [_anomaly("p3")])
    incidents.assign(state, last, Planned("resolved", ["p3"], False), set())
    assert list(last.close) == [storm.group]
    incidents.closed(state, "p3")
    assert state.incidents == {}

    # A lone anomaly is its own incident.
    alone = Planned("new", ["solo"], False)
    state.anomalies["solo"] = Tracked(tenant="acme", kind="loop", severity="critical")
    note = Notification("new", [_anomaly("solo")])
    incidents.assign(state, note, alone, set())
    assert list(note.incidents) == ["solo"]

"""fanout: a trace whose tree of agents and model calls is far larger than its kind's normal.

Five shapes of a trace, each against its learned baseline: model calls, peak
calls per minute, distinct agents below the root (sub-agents), agent
invocations, depth of the agent tree. Evaluated as the tree arrives, so a
runaway tree is raised at the span that takes it over the threshold, long
before its agent spans (which end last) arrive.

Baselines per (tenant, root agent kind), borrowing the fleet's for that kind,
then the tenant's and the fleet's for any kind (cold start: a new tenant or
kind). Until the root agent has arrived, its kind is unknown: the trace must be
anomalous against every baseline it could belong to. Finished normal traces
teach them.

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import SpanRow
    >>> from agentwatch.detectors.traces import TraceBook
    >>> fanout, traces, book = Fanout(DetectorConfig(fanout_max_sub_agents=5)), TraceBook(), AnomalyBook()
    >>> for k in range(6):  # six forks still running: only their chat spans have arrived
    ...     row = SpanRow(0, k, "t1", f"c{k}", f"fork{k}", "acme", "", "", "chat", "", "gpt-4o", 0.0)
    ...     fanout.observe(row, traces.observe(row), book)
    >>> [(a.kind, a.trace_id, a.severity) for a in book.open.values()]
    [('fanout', 't1', 'critical')]
"""

from __future__ import annotations

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.baselines import BaselineBook, judge, kind_keys
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_LISTED, NS, SpanRow, ago, severity, utc
from agentwatch.detectors.traces import OPEN, TraceState


class Fanout(Detector):
    kind = "fanout"
    stream = "spans"

    def __init__(self, config: DetectorConfig) -> None:
        self.baselines = BaselineBook(**config.baseline_options())
        super().__init__(config)

    def configure(self, config: DetectorConfig) -> None:
        c = self.config = config
        self.limits = {
            "model_calls": c.limits(c.fanout_min_model_calls, c.fanout_min_history, c.fanout_max_model_calls),
            "calls_per_minute": c.limits(c.fanout_min_calls_per_minute, c.fanout_min_history,
                                         c.fanout_max_calls_per_minute),
            "sub_agents": c.limits(c.fanout_min_sub_agents, c.fanout_min_history, c.fanout_max_sub_agents),
            "invocations": c.limits(c.fanout_min_invocations, c.fanout_min_history, c.fanout_max_invocations),
            "depth": c.limits(c.fanout_min_depth, c.fanout_min_history, c.fanout_max_depth),
        }

    @staticmethod
    def values(t: TraceState) -> dict[str, int]:
        return {"model_calls": t.calls, "calls_per_minute": t.peak_per_min, "sub_agents": t.sub_agents,
                "invocations": t.invocations, "depth": t.depth}

    @staticmethod
    def keys(metric: str, t: TraceState) -> list[tuple]:
        return kind_keys(t.tenant, t.root_name, metric)

    # --- the protocol ------------------------------------------------------------------------------------

    def observe(self, row: SpanRow, t: TraceState, book: AnomalyBook) -> None:
        if t.shape_changed:
            self._evaluate(t, row, book)

    def finish(self, t: TraceState, book: AnomalyBook) -> None:
        if not t.root_seen:
            return  # an incomplete trace teaches nothing; an anomalous one is held back (baselines.py)
        flagged = t.slots.get(self.kind) is not None
        for metric, value in self.values(t).items():
            self.baselines.learn(value, t.first_ts, *self.keys(metric, t), anomalous=flagged)

    def render(self, a: Anomaly) -> tuple[str, dict]:
        return render(a, a.ctx)

    # --- evaluation --------------------------------------------------------------------------------------

    def _evaluate(self, t: TraceState, row: SpanRow, book: AnomalyBook) -> None:
        values = self.values(t)
        state: FanoutCase | None = t.slots.get(self.kind)
        if state is not None and all(values[m] <= 1.1 * state.checked[m] for m in values) \
                and book.touch(state.anomaly, row.ts):
            return  # already flagged and not grown by 10 %: only LastSeen moves
        # quick reject: nothing above its floor or its hard limit can be anomalous
        if not any(values[m] > lim.floor or lim.hard_crossed(values[m]) for m, lim in self.limits.items()):
            return
        anomalous, score, hard, details = False, 0.0, False, {}
        for metric, value in values.items():
            limits = self.limits[metric]
            bad, s, thr, key, baseline = judge(value, row.ts, self.baselines, limits, self.keys(metric, t),
                                               certain=t.root_seen)
            details[metric] = {"value": value, "anomalous": bad, "score": round(s, 3),
                               "baseline": baseline.describe(row.ts, limits) if baseline else None,
                               "baseline_key": "/".join(k or "any kind" for k in key[1:]) if key else None,
                               "hard_limit": limits.hard}
            if bad:
                anomalous = True
                score = max(score, s)
                hard = hard or limits.hard_crossed(value)
        if not anomalous:
            return
        previous = state.anomaly.score if state is not None else 0.0
        agent = t.root_agent or next((k for k in t.groups if k.startswith(OPEN)), "")
        a, _ = book.observe(self.kind, t.tenant, row.trace, first_ns=t.first_ts, last_ns=row.ts, score=score,
                            severity=severity(self.config, score, hard), agent_id=agent, trace_id=row.trace, ctx=t)
        first = state is None
        if first:
            state = t.slots[self.kind] = FanoutCase(a, values, details)
        state.anomaly, state.checked = a, values  # (a new episode if the previous one was resolved meanwhile)
        if score >= previous:
            state.details = details
        if first:  # its spans belong to this anomaly now, not to the tenant's cost windows
            t.explained_by = a
            t.explain_pending = True


class FanoutCase:
    def __init__(self, anomaly: Anomaly, checked: dict, details: dict) -> None:
        self.anomaly = anomaly
        self.checked = checked
        self.details = details


def render(a: Anomaly, t: TraceState) -> tuple[str, dict]:
    e = t.slots["fanout"].details
    calls = e.get("model_calls", {}).get("baseline") or {}
    subs = e.get("sub_agents", {}).get("baseline") or {}
    span = max(t.last_ts - t.first_ts, 0)
    kind = t.root_name or "an agent tree (root agent not arrived yet)"
    sub_ids = [k for k in t.groups if k != t.root_agent]
    if calls.get("warm"):
        whose = f"a {t.root_name}" if t.root_seen and t.root_name else "a trace of this tenant or fleet"
        normal = (f"{whose} normally makes {calls['mean']:.0f} model calls with {subs.get('mean', 0):.1f} "
                  f"sub-agents per trace")
    else:
        normal = "no learned baseline for this agent kind yet, so its hard limits applied"
    # agent spans end (and arrive) after their children: depth is known only once agent spans arrived
    depth = f", depth {t.depth}" if t.depth else ""
    summary = (f"Runaway fan-out: {kind} {t.root_agent or a.agent_id} ({t.tenant}) has {t.sub_agents} sub-agents "
               f"that made {t.calls:,} model calls in {ago(span)} (peak {t.peak_per_min:,} calls/min{depth}) "
               f"in trace {a.trace_id}; {normal}.")
    evidence = {
        "trace_id": a.trace_id, "root_agent_name": t.root_name, "root_agent_id": t.root_agent,
        "root_arrived": t.root_seen, "root_span_id": t.root_span or None, "model_calls": t.calls,
        "calls_per_minute_peak": t.peak_per_min, "sub_agents": t.sub_agents, "sub_agent_ids": sub_ids[:MAX_LISTED],
        "invocations": t.invocations, "depth": t.depth, "duration_s": round(span / NS, 3),
        "cost_usd": round(t.cost, 6), "first_span_at": utc(t.first_ts), "last_span_at": utc(t.last_ts),
        "metrics": e, "span_ids": t.sample_spans,
    }
    return summary, evidence

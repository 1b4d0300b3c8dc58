"""cost_spike: a tenant (or one of its agent kinds) spending far more per window than it normally does.

Cost per window (a minute by default) per tenant and per (tenant, agent kind),
each against its learned baseline, plus the tenant's budget as a hard guard
rail. A window is judged as its spans arrive (so a spike is raised at the call
that takes it over) and once more when it closes; only closed normal windows
teach the baselines, idle minutes included. The largest single call a key makes
in normal traffic is added to its threshold, so one normal long reasoning call
is never a spike by itself. Spans of a trace already raised as a runaway
fan-out are that anomaly's cost and leave the windows.

Severity follows the money at stake: a spike is critical when it is far over
normal (`critical_score`) and its excess over normal, kept up for
`cost_stake_horizon_s` (about how long a warning waits for a person), would
cost at least `cost_critical_usd`, or when it crosses the budget. A small
tenant's spike of several times its normal is raised, as a warning.

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import SpanRow
    >>> from agentwatch.detectors.traces import TraceBook
    >>> spike, traces, book = CostSpike(DetectorConfig(tenant_budget_usd_per_minute=5)), TraceBook(), AnomalyBook()
    >>> for k in range(3):  # $6 within a minute: over the budget, before any baseline is learned
    ...     row = SpanRow(0, k * 10**9, "t1", f"s{k}", "", "acme", "bot-1", "writer", "chat", "", "o1", 2.0)
    ...     spike.observe(row, traces.observe(row), book)
    >>> [(a.kind, a.tenant, a.severity) for a in book.open.values()]
    [('cost_spike', 'acme', 'critical')]
"""

from __future__ import annotations

import math

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.baselines import BaselineBook, Limits, evaluate
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_IDLE_WINDOWS, MINUTE_NS, NS, SpanRow, hm, utc
from agentwatch.detectors.traces import TraceState


class CostWindow:
    """One tenant's cost in one window of event time (spans of traces flagged as fanout left out)."""

    def __init__(self, tenant: str, start: int, length: int) -> None:
        self.tenant = tenant
        self.start = start
        self.length = length
        self.total = 0.0
        self.by_name: dict[str, list] = {}  # agent name -> [usd, {agent id: usd}]
        self.traces: dict[str, float] = {}
        self.top_spans: list[tuple[float, str, str, str, str]] = []  # (usd, span, trace, model, agent id)
        self.last_ts = start
        self.spans = 0
        self.flagged = False
        self.agents_over: dict[str, dict] = {}  # agent name -> evidence, kinds found over their own baseline
        self.max_call = 0.0
        self.max_call_by_name: dict[str, float] = {}

    def add(self, row: SpanRow, name: str, agent: str) -> None:
        usd = row.cost
        self.total += usd
        self.max_call = max(self.max_call, usd)
        self.max_call_by_name[name] = max(self.max_call_by_name.get(name, 0.0), usd)
        entry = self.by_name.get(name)
        if entry is None:
            entry = self.by_name[name] = [0.0, {}]
        entry[0] += usd
        entry[1][agent] = entry[1].get(agent, 0.0) + usd
        self.traces[row.trace] = self.traces.get(row.trace, 0.0) + usd
        self.spans += 1
        self.last_ts = max(self.last_ts, row.ts)
        if len(self.top_spans) < 5 or usd > self.top_spans[-1][0]:
            self.top_spans.append((usd, row.span, row.trace, row.model, agent))
            self.top_spans.sort(reverse=True)
            del self.top_spans[5:]

    def remove(self, name: str, agent: str, usd: float, trace_id: str) -> None:
        self.total = max(0.0, self.total - usd)
        entry = self.by_name.get(name)
        if entry is not None:
            entry[0] = max(0.0, entry[0] - usd)
            entry[1][agent] = max(0.0, entry[1].get(agent, 0.0) - usd)
        self.traces.pop(trace_id, None)
        self.top_spans = [s for s in self.top_spans if s[2] != trace_id]

    def top_agent(self, name: str | None) -> str:
        entries = [self.by_name[name]] if name in self.by_name else list(self.by_name.values())
        best = ("", -1.0)
        for _, agents in entries:
            for agent, usd in agents.items():
                if usd > best[1]:
                    best = (agent, usd)
        return best[0]

    def top_trace(self) -> str:
        return max(self.traces.items(), key=lambda kv: kv[1])[0] if self.traces else ""


class CostCase:
    """What a cost_spike anomaly is rendered from: its worst window and the baselines at that time."""

    def __init__(self, window: CostWindow, facts: dict) -> None:
        self.window = window
        self.facts = facts


class CostSpike(Detector):
    kind = "cost_spike"
    stream = "spans"

    def __init__(self, config: DetectorConfig, long: bool = False) -> None:
        """long: the sustained scale (`cost_long_window_s`, several minutes), for spikes of a few times
        normal that one minute's noise hides; else the sharp scale (`window_s`, a minute)."""
        self.long = long
        self.baselines = BaselineBook(**config.baseline_options())
        self.window_ns = int((config.cost_long_window_s if long else config.window_s) * NS)
        self.windows: dict[tuple[str, int], CostWindow] = {}
        self.closed_until: int | None = None  # windows with index < this are final
        self.cost_keys: dict[str, set[str]] = {}  # tenant -> agent names seen (their zero windows count)
        self.first_window: dict[tuple, int] = {}  # cost key -> first window index with data (no zeros before)
        self.call_peak: dict[tuple, float] = {}  # cost key -> largest single call of its normal windows (decaying)
        self.late_rows = 0
        super().__init__(config)

    def configure(self, config: DetectorConfig) -> None:
        c = self.config = config
        minutes = self.window_ns / (60 * NS)
        self.floor = c.cost_min_usd_per_minute * minutes
        self.ratio = c.cost_long_ratio if self.long else c.cost_ratio
        # an agent kind's cost per window is sparse (most minutes nothing, then one run): a higher floor
        self.agent_limits = c.limits(c.cost_agent_min_usd_per_minute * minutes, c.cost_min_history, ratio=self.ratio)
        self._tenant_limits: dict[str, Limits] = {}

    def tenant_limits(self, tenant: str) -> Limits:
        limits = self._tenant_limits.get(tenant)
        if limits is None:
            c = self.config
            budget = None if self.long else c.budget_for(tenant)  # the budget is per minute: the sharp scale's
            limits = self._tenant_limits[tenant] = c.limits(self.floor, c.cost_min_history, budget, ratio=self.ratio)
        return limits

    # --- the protocol ------------------------------------------------------------------------------------

    def observe(self, row: SpanRow, t: TraceState, book: AnomalyBook) -> None:
        if row.cost <= 0:
            return
        w_index = row.ts // self.window_ns
        if self.closed_until is None:
            self.closed_until = w_index - math.ceil(self.config.allowed_lateness_s * NS / self.window_ns)
        if w_index < self.closed_until:
            self.late_rows += 1
            return
        tenant = row.tenant
        name = row.agent_name or t.names.get(t.current_agent, "")
        agent = row.agent_id or t.current_agent
        names = self.cost_keys.setdefault(tenant, set())
        if name not in names:
            names.add(name)
            self.first_window[(tenant, name)] = w_index
        first = self.first_window.get((tenant,))
        if first is None or w_index < first:
            self.first_window[(tenant,)] = w_index
        if w_index < self.first_window[(tenant, name)]:
            self.first_window[(tenant, name)] = w_index
        if t.explained_by is not None:
            return  # explained: this trace's cost is part of its fanout anomaly
        parts = t.slots.setdefault(self.kind, {})  # (window, agent name, agent) -> USD of this trace
        part = (w_index, name, agent)
        parts[part] = parts.get(part, 0.0) + row.cost
        w = self.windows.get((tenant, w_index))
        if w is None:
            w = self.windows[(tenant, w_index)] = CostWindow(tenant, w_index * self.window_ns, self.window_ns)
        w.add(row, name, agent)
        self._evaluate(w, name, book)

    def explain(self, t: TraceState) -> None:
        """A trace just raised as a fanout: move its cost out of the open windows."""
        for (w_index, name, agent), usd in t.slots.get(self.kind, {}).items():
            w = self.windows.get((t.tenant, w_index))
            if w is not None and not w.flagged:
                w.remove(name, agent, usd, t.explained_by.trace_id)

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        until = watermark_ns // self.window_ns  # windows with index < until have ended before the watermark
        if self.closed_until is None:
            return
        if until - self.closed_until > MAX_IDLE_WINDOWS:
            # a long idle gap: close what holds data, teach no more than MAX_IDLE_WINDOWS zero windows
            skip_to = until - MAX_IDLE_WINDOWS
            for key in [k for k in self.windows if k[1] < skip_to]:
                self._close(self.windows.pop(key), key[1], book)
            self.closed_until = skip_to
        for index in range(self.closed_until, until):
            for tenant, names in self.cost_keys.items():
                w = self.windows.pop((tenant, index), None)
                if w is None:
                    self._learn_zero_window(tenant, names, index)
                else:
                    self._close(w, index, book)
        self.closed_until = max(self.closed_until, until)

    def render(self, a: Anomaly) -> tuple[str, dict]:
        return render(a, a.ctx)

    # --- windows -----------------------------------------------------------------------------------------

    def _evaluate(self, w: CostWindow, name: str | None, book: AnomalyBook) -> None:
        limits = self.tenant_limits(w.tenant)
        agent_limits = self.agent_limits
        names = [name] if name is not None else list(w.by_name)
        # quick reject
        if w.total <= limits.floor and not limits.hard_crossed(w.total) and all(
                w.by_name.get(n, (0.0,))[0] <= agent_limits.floor for n in names):
            return
        t0 = w.start
        tb = self.baselines.peek(("tenant", w.tenant))
        allowance = self.call_peak.get(("tenant", w.tenant), 0.0)
        bad, score, thr = evaluate(w.total, t0, tb, limits, allowance)
        hard = limits.hard_crossed(w.total)
        for n in names:
            if not n or n not in w.by_name:
                continue
            value = w.by_name[n][0]
            ab = self.baselines.peek(("agent", w.tenant, n))
            a_allowance = self.call_peak.get(("agent", w.tenant, n), 0.0)
            a_bad, a_score, a_thr = evaluate(value, t0, ab, agent_limits, a_allowance)
            if a_bad:  # kept per window: every agent kind found over its own baseline is in the evidence
                w.agents_over[n] = {"agent_name": n, "usd": round(value, 6), "threshold": a_thr,
                                    "score": round(a_score, 3), "agent_id": w.top_agent(n),
                                    "largest_normal_call_usd": round(a_allowance, 6),
                                    "baseline": ab.describe(t0, agent_limits) if ab else None}
        if not bad and not w.agents_over:
            return
        over = sorted(w.agents_over.values(), key=lambda x: -x["score"])
        if over:
            score = max(score, over[0]["score"])
        w.flagged = True
        usual = tb.expected(t0)[0] if tb is not None and tb.n else 0.0
        at_stake = max(0.0, w.total - usual) * (self.config.cost_stake_horizon_s * NS / w.length)
        critical = hard or (score >= self.config.critical_score and at_stake >= self.config.cost_critical_usd)
        existing = book.get(self.kind, w.tenant, "")
        previous = existing.score if existing is not None else 0.0
        a, _ = book.observe(self.kind, w.tenant, "", first_ns=w.start, last_ns=max(w.last_ts, w.start),
                            score=score, severity="critical" if critical else "warning",
                            agent_id=w.top_agent(over[0]["agent_name"] if over else None), trace_id=w.top_trace())
        if a.ctx is None or score >= previous:
            a.ctx = CostCase(w, {
                "tenant_usd": round(w.total, 6), "tenant_anomalous": bad, "tenant_threshold": thr,
                "tenant_baseline": tb.describe(t0, limits) if tb else None,
                "largest_normal_call_usd": round(allowance, 6), "usd_at_stake": round(at_stake, 4),
                "stake_horizon_s": self.config.cost_stake_horizon_s,
                "budget_usd_per_minute": limits.hard, "over_budget": hard, "agents_over_baseline": over,
            })

    def _learn_zero_window(self, tenant: str, names: set[str], index: int) -> None:
        t0 = index * self.window_ns
        first = self.first_window
        if index >= first.get((tenant,), index + 1):
            self.baselines.learn(0.0, t0, ("tenant", tenant))
        for n in names:
            if n and index >= first.get((tenant, n), index + 1):
                self.baselines.learn(0.0, t0, ("agent", tenant, n))

    def _close(self, w: CostWindow, index: int, book: AnomalyBook) -> None:
        if not w.flagged:
            self._evaluate(w, None, book)  # final verdict on the whole window
        t0, bad = w.start, w.flagged  # an anomalous window is held back: it teaches only as a lasting new level
        self.baselines.learn(w.total, t0, ("tenant", w.tenant), anomalous=bad)
        if not bad:
            self._learn_call_peak(("tenant", w.tenant), w.max_call)
        for n in self.cost_keys.get(w.tenant, ()):
            if n and index >= self.first_window.get((w.tenant, n), index + 1):
                self.baselines.learn(w.by_name.get(n, (0.0,))[0], t0, ("agent", w.tenant, n), anomalous=bad)
                if not bad:
                    self._learn_call_peak(("agent", w.tenant, n), w.max_call_by_name.get(n, 0.0))

    def _learn_call_peak(self, key: tuple, largest: float) -> None:
        self.call_peak[key] = max(largest, self.call_peak.get(key, 0.0) * self.config.call_peak_decay)


def render(a: Anomaly, case: CostCase) -> tuple[str, dict]:
    w, f = case.window, case.facts
    minutes = w.length / MINUTE_NS
    per = "min" if minutes == 1 else f"{minutes:g} min"
    tb = f["tenant_baseline"] or {}
    parts = [f"Cost spike: {w.tenant} spent ${w.total:,.2f} in the {per} from {hm(w.start)}"]
    if tb.get("warm"):
        mean = tb["mean"] if tb["mean"] > 0 else 0.0  # a learned mean of no spend can be -0.0 or a hair below
        ratio = f"{w.total / mean:,.1f}x its usual" if mean >= 0.005 else "against its usual"
        parts.append(f", {ratio} ${mean:,.2f}/{per} (threshold ${tb['threshold']:,.2f})")
    if f["over_budget"]:
        parts.append(f", over its budget of ${f['budget_usd_per_minute']:,.2f}/{per}")
    over = f["agents_over_baseline"]
    if over:
        top = over[0]
        usual = (top["baseline"] or {}).get("mean")
        if usual is not None:
            usual = usual if usual > 0 else 0.0  # a learned mean of no spend can be -0.0 or a hair below
        parts.append(f"; {top['agent_name']} ({top['agent_id']}) spent ${top['usd']:,.2f}"
                     + (f" against its usual ${usual:,.2f}" if usual is not None else ""))
    summary = "".join(parts) + "."
    evidence = {
        "window_start": utc(w.start), "window_s": w.length / NS, "tenant_usd": round(w.total, 6),
        **{k: v for k, v in f.items() if k != "tenant_usd"},
        "spans_in_window": w.spans,
        "top_traces": [{"trace_id": tid, "usd": round(usd, 6)}
                       for tid, usd in sorted(w.traces.items(), key=lambda kv: -kv[1])[:5]],
        "top_spans": [{"span_id": s, "trace_id": tr, "usd": round(usd, 6), "model": m, "agent_id": ag}
                      for usd, s, tr, m, ag in w.top_spans],
        "trace_id": a.trace_id,
    }
    return summary, evidence

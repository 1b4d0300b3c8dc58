"""The detectors: fanout, cost_spike, loop (over agent_spans) and cross_tenant, credential_fanout
(over credential_events), as deterministic stream processors on event time.

Rows come in ingestion order (the worker reads them by IngestedAt, ties broken by
Timestamp, TraceId, SpanId) and are processed one at a time, so every decision is
a function of the row sequence alone: where a batch happens to end never changes
a verdict or an anomaly id, and a worker that replays rows after a crash from its
checkpoint reaches the same decisions.

Each stream keeps a watermark: the largest event time (span Timestamp) seen minus
the allowed lateness. A window (a minute of a tenant's cost, a credential's
5 minutes) or a trace is final once the watermark has passed it: only then does it
teach its baseline (and only if it was not anomalous), and anomalies with no new
evidence for the quiet period are resolved. Detectors do not wait for that to
raise: each row updates the current, possibly partial, window or trace and an
anomaly is raised as soon as the evidence crosses its threshold. The aggregates
only grow as rows arrive, so what a partial window raises, the final window
would raise as well. Rows later than the allowed lateness still count for the
per-trace and per-use rules; they are left out of windows already closed (and
counted in `late_rows`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.baselines import BaselineBook, Limits, evaluate
from agentwatch.detectors.config import DetectorConfig

NS = 1_000_000_000
MINUTE_NS = 60 * NS
MODEL_OPS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
SPAN_KINDS = ("fanout", "cost_spike", "loop")
CREDENTIAL_KINDS = ("cross_tenant", "credential_fanout")
MAX_LISTED = 50  # ids listed in evidence (counts are always complete)
MAX_IDLE_WINDOWS = 180  # an idle gap longer than this teaches the baselines no more zero windows


class SpanRow(NamedTuple):
    ingested_us: int
    ts: int  # span Timestamp, ns
    trace: str
    span: str
    parent: str
    tenant: str
    agent_id: str
    agent_name: str
    op: str
    tool: str
    model: str
    cost: float
    args_hash: int  # cityHash64 of gen_ai.tool.call.arguments; 0: not a tool call or no arguments recorded
    args_bytes: int
    args_sample: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    duration: int = 0  # ns
    error: bool = False


class CredentialRow(NamedTuple):
    ingested_us: int
    ts: int
    trace: str
    span: str
    tenant: str  # the actor's
    agent_id: str
    event: str
    credential: str
    credential_tenant: str
    resource: str
    resource_tenant: str
    action: str
    mine_actor: bool  # this shard owns the actor's tenant (cross_tenant)
    mine_owner: bool  # this shard owns the credential's tenant (credential_fanout)
    parent: str = ""  # the parent of the span the use happened on (read when the use names no agent)


def _severity(config: DetectorConfig, score: float, hard: bool) -> str:
    return "critical" if hard or score >= config.critical_score else "warning"


def _utc(ns: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ns / NS, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _hm(ns: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ns / NS, tz=_dt.UTC).strftime("%H:%M UTC")


def _ago(ns: int) -> str:
    s = ns / NS
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# =====================================================================================================
# agent_spans: traces (fanout, loop) and cost windows (cost_spike)
# =====================================================================================================

class TraceState:
    """What the detectors know of one trace so far."""

    def __init__(self, tenant: str, ts: int) -> None:
        self.tenant = tenant
        self.first_ts = ts
        self.last_ts = ts
        self.root_seen = False
        self.root_span = ""
        self.root_name = ""
        self.root_agent = ""
        self.root_ts = None  # earliest named span: the provisional root until the root span arrives
        self.agents: dict[str, str] = {}  # agent id -> agent name
        self.calls = 0
        self.calls_by_min: dict[int, int] = {}
        self.peak_per_min = 0
        self.invocations = 0
        self.parents: dict[str, str] = {}  # invoke_agent and execute_tool spans -> parent span
        self.invoke_spans: set[str] = set()
        self.depth = 0
        self.cost = 0.0
        self.cost_parts: dict[tuple[int, str, str], float] = {}  # (minute, agent name, agent id) -> USD
        self.sample_spans: list[str] = []
        # (agent, tool, arguments hash) -> [n, first ts, last ts, span ids, arguments preview, bytes, agent name]
        self.repeats: dict[tuple[str, str, int], list] = {}
        self.fanout: Anomaly | None = None
        self.fanout_eval: dict = {}
        self.fanout_checked: dict | None = None
        self.loop: Anomaly | None = None
        self.loop_key: tuple | None = None
        self.loop_eval: dict = {}

    @property
    def sub_agents(self) -> int:
        return len(self.agents) - (1 if self.root_agent in self.agents else 0)

    def compute_depth(self) -> int:
        """Longest chain of invoke_agent spans (through tool spans) seen in the trace."""
        memo: dict[str, int] = {}
        best = 0
        for span in self.invoke_spans:
            chain, node, depth = [], span, 0
            while node and node not in memo and len(chain) < 256:
                chain.append(node)
                node = self.parents.get(node, "")
            depth = memo.get(node, 0)
            for s in reversed(chain):
                depth += 1 if s in self.invoke_spans else 0
                memo[s] = depth
            best = max(best, memo[span])
        return best


FANOUT_METRICS = ("model_calls", "calls_per_minute", "sub_agents", "invocations", "depth")


class EventTimeStream:
    """One stream's event-time clock: the watermark, and `tick` each time it passes a boundary."""

    def __init__(self) -> None:
        self.max_ts = 0
        self.watermark = -(1 << 62)
        self.next_tick = -(1 << 62)
        self.late_rows = 0
        self.rows = 0

    def advance(self, row: SpanRow | CredentialRow, book: AnomalyBook, lateness_ns: int) -> None:
        """Take the next row's event time (and make it the row a new anomaly is raised by)."""
        self.rows += 1
        book.current_row = (row.trace, row.span, row.ts, row.ingested_us)
        if row.ts > self.max_ts:
            self.max_ts = row.ts
            wm = row.ts - lateness_ns
            if wm > self.watermark:
                self.watermark = wm
                if wm >= self.next_tick:
                    self.tick(book)

    def tick(self, book: AnomalyBook) -> None:
        raise NotImplementedError


class SpanDetectors(EventTimeStream):
    """fanout, loop and cost_spike over the agent_spans stream of one shard."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.traces: dict[str, TraceState] = {}
        self.trace_baselines = BaselineBook(**config.baseline_options())
        self.cost_baselines = BaselineBook(**config.baseline_options())
        self.window_ns = int(config.window_s * NS)
        self.windows: dict[tuple[str, int], CostWindow] = {}
        self.closed_until: int | None = None  # cost windows with index < this are final
        self.cost_keys: dict[str, set[str]] = {}  # tenant -> agent names seen (their zero windows count)
        self.first_window: dict[tuple, int] = {}  # cost key -> first window index with data (no zeros before)
        # cost key -> the largest single call in its normal windows (decaying peak): added to the learned
        # threshold, so one call of a size normal traffic makes (a long chain of thought) is no spike alone
        self.call_peak: dict[tuple, float] = {}
        self.configure(config)

    def configure(self, config: DetectorConfig) -> None:
        """(Re)derive the limits from the configuration (also after a restore from a checkpoint)."""
        c = self.config = config
        self.fanout_limits = {
            "model_calls": c.limits(c.fanout_min_model_calls, c.fanout_min_history, c.fanout_max_model_calls),
            "calls_per_minute": c.limits(c.fanout_min_calls_per_minute, c.fanout_min_history,
                                         c.fanout_max_calls_per_minute),
            "sub_agents": c.limits(c.fanout_min_sub_agents, c.fanout_min_history, c.fanout_max_sub_agents),
            "invocations": c.limits(c.fanout_min_invocations, c.fanout_min_history, c.fanout_max_invocations),
            "depth": c.limits(c.fanout_min_depth, c.fanout_min_history, c.fanout_max_depth),
        }
        self.loop_limits = c.limits(c.loop_min_repeats, c.loop_min_history, c.loop_max_repeats)
        self.agent_cost_limits = c.limits(c.cost_min_usd_per_minute, c.cost_min_history, ratio=c.cost_ratio)
        self._tenant_cost_limits: dict[str, Limits] = {}

    # --- the stream ---------------------------------------------------------------------------------

    def process(self, rows: list[SpanRow], book: AnomalyBook) -> None:
        lateness = int(self.config.allowed_lateness_s * NS)
        for row in rows:
            self.advance(row, book, lateness)
            trace = self._observe_trace(row, book)
            if row.cost > 0:
                self._observe_cost(row, trace, book)

    def tick(self, book: AnomalyBook) -> None:
        """The watermark passed a window boundary: close windows, finish traces, resolve quiet anomalies."""
        wm = self.watermark
        self._close_cost_windows(wm, book)
        self._finish_traces(wm)
        book.resolve_quiet(SPAN_KINDS, wm, int(self.config.quiet_period_s * NS))
        self.next_tick = (wm // self.window_ns + 1) * self.window_ns

    # --- traces: fanout and loop ----------------------------------------------------------------------

    def _observe_trace(self, row: SpanRow, book: AnomalyBook) -> TraceState:
        t = self.traces.get(row.trace)
        if t is None:
            t = self.traces[row.trace] = TraceState(row.tenant, row.ts)
        ts = row.ts
        if ts < t.first_ts:
            t.first_ts = ts
        if ts > t.last_ts:
            t.last_ts = ts
        changed = False
        agent = row.agent_id
        # the root: the span without a parent, else (until it arrives) the earliest span with an agent name
        if not row.parent:
            t.root_seen = True
            t.root_span = row.span
            if row.agent_name:
                t.root_name, t.root_agent, t.root_ts = row.agent_name, agent, ts
                changed = True
        elif row.agent_name and not t.root_seen and (t.root_ts is None or ts < t.root_ts):
            t.root_name, t.root_agent, t.root_ts = row.agent_name, agent, ts
            changed = True
        if agent and agent not in t.agents:
            t.agents[agent] = row.agent_name
            changed = True
        op = row.op
        if op in MODEL_OPS:
            t.calls += 1
            m = ts // MINUTE_NS
            n = t.calls_by_min.get(m, 0) + 1
            t.calls_by_min[m] = n
            if n > t.peak_per_min:
                t.peak_per_min = n
            if len(t.sample_spans) < 10:
                t.sample_spans.append(row.span)
            changed = True
        elif op == "invoke_agent":
            t.invoke_spans.add(row.span)
            t.parents[row.span] = row.parent
            if row.parent:
                t.invocations += 1
            if len(t.invoke_spans) <= 512:  # past that the depth is kept as it was (the other metrics flag)
                t.depth = t.compute_depth()
            changed = True
        elif op == "execute_tool":
            t.parents[row.span] = row.parent
            if row.args_hash:
                self._observe_tool(t, row, book)
        if changed and t.root_name:
            self._evaluate_fanout(t, row, book)
        return t

    def _fanout_values(self, t: TraceState) -> dict[str, int]:
        return {"model_calls": t.calls, "calls_per_minute": t.peak_per_min, "sub_agents": t.sub_agents,
                "invocations": t.invocations, "depth": t.depth}

    def _evaluate_fanout(self, t: TraceState, row: SpanRow, book: AnomalyBook) -> None:
        values = self._fanout_values(t)
        if t.fanout is not None and t.fanout_checked and all(
                values[m] <= 1.1 * t.fanout_checked[m] for m in values) and book.touch(t.fanout, row.ts):
            return  # already flagged and not grown by 10 %: only LastSeen moves
        # quick reject: nothing above its floor or its hard limit can be anomalous
        if not any(values[m] > lim.floor or lim.hard_crossed(values[m]) for m, lim in self.fanout_limits.items()):
            return
        anomalous, score, hard, details = False, 0.0, False, {}
        for metric, value in values.items():
            limits = self.fanout_limits[metric]
            key, baseline = self.trace_baselines.lookup(
                limits, ("fanout", metric, t.tenant, t.root_name), ("fanout", metric, "*", t.root_name))
            bad, s, thr = evaluate(value, row.ts, baseline, limits)
            crossed = limits.hard_crossed(value)
            details[metric] = {"value": value, "anomalous": bad, "score": round(s, 3),
                               "baseline": baseline.describe(row.ts, limits) if baseline else None,
                               "baseline_key": "/".join(key[2:]) if key else None, "hard_limit": limits.hard}
            if bad:
                anomalous = True
                score = max(score, s)
                hard = hard or crossed
        if not anomalous:
            return
        previous = t.fanout.score if t.fanout is not None else 0.0
        a, _ = book.observe("fanout", t.tenant, row.trace, first_ns=t.first_ts, last_ns=row.ts, score=score,
                            severity=_severity(self.config, score, hard), agent_id=t.root_agent,
                            trace_id=row.trace, ctx=t)
        t.fanout_checked = values
        if t.fanout is None or score >= previous:
            t.fanout_eval = details
        first = t.fanout is None
        t.fanout = a  # (a new episode if the previous one was resolved while the trace went on)
        if first:
            self._explain_cost(t)

    def _observe_tool(self, t: TraceState, row: SpanRow, book: AnomalyBook) -> None:
        key = (row.agent_id, row.tool, row.args_hash)
        r = t.repeats.get(key)
        if r is None:
            t.repeats[key] = [1, row.ts, row.ts, [row.span], row.args_sample, row.args_bytes, row.agent_name]
            return
        r[0] += 1
        r[1] = min(r[1], row.ts)
        r[2] = max(r[2], row.ts)
        if len(r[3]) < MAX_LISTED:
            r[3].append(row.span)
        n = r[0]
        limits = self.loop_limits
        if n <= limits.floor and not limits.hard_crossed(n):
            return
        key_b, baseline = self.trace_baselines.lookup(limits, ("loop", t.tenant, row.agent_name),
                                                      ("loop", "*", row.agent_name))
        bad, score, thr = evaluate(n, row.ts, baseline, limits)
        if not bad:
            return
        previous = t.loop.score if t.loop is not None else 0.0
        a, _ = book.observe("loop", t.tenant, row.trace, first_ns=r[1], last_ns=row.ts, score=score,
                            severity=_severity(self.config, score, limits.hard_crossed(n)), agent_id=row.agent_id,
                            trace_id=row.trace, ctx=t)
        t.loop = a
        if score >= previous or t.loop_key is None:
            t.loop_key = key
            t.loop_eval = {"threshold": thr, "baseline": baseline.describe(row.ts, limits) if baseline else None,
                           "baseline_key": "/".join(key_b[1:]) if key_b else None, "hard_limit": limits.hard}

    def _finish_traces(self, wm: int) -> None:
        """Traces are final when their root span arrived (it ends last) and the stream moved `trace_grace_s`
        past their last span, or, root or not, when the watermark passed their last span by `trace_idle_s`."""
        idle = int(self.config.trace_idle_s * NS)
        grace = self.max_ts - int(self.config.trace_grace_s * NS)
        done = [tid for tid, t in self.traces.items()
                if (t.root_seen and t.last_ts < grace) or wm > t.last_ts + idle]
        for tid in done:
            t = self.traces.pop(tid)
            if not t.root_seen or not t.root_name:
                continue  # an incomplete trace teaches nothing
            if t.fanout is None:
                for metric, value in self._fanout_values(t).items():
                    self.trace_baselines.learn(value, t.first_ts, ("fanout", metric, t.tenant, t.root_name),
                                               ("fanout", metric, "*", t.root_name))
            if t.loop is None:
                worst: dict[str, int] = {}
                for r in t.repeats.values():
                    worst[r[6]] = max(worst.get(r[6], 0), r[0])
                for name, n in worst.items():
                    if name:
                        self.trace_baselines.learn(n, t.first_ts, ("loop", t.tenant, name), ("loop", "*", name))

    # --- cost windows: cost_spike ---------------------------------------------------------------------

    def tenant_cost_limits(self, tenant: str) -> Limits:
        limits = self._tenant_cost_limits.get(tenant)
        if limits is None:
            c = self.config
            limits = self._tenant_cost_limits[tenant] = c.limits(c.cost_min_usd_per_minute, c.cost_min_history,
                                                                 c.budget_for(tenant), ratio=c.cost_ratio)
        return limits

    def _observe_cost(self, row: SpanRow, t: TraceState, book: AnomalyBook) -> None:
        w_index = row.ts // self.window_ns
        if self.closed_until is None:
            self.closed_until = w_index - math.ceil(self.config.allowed_lateness_s * NS / self.window_ns)
        if w_index < self.closed_until:
            self.late_rows += 1
            return
        tenant, name = row.tenant, row.agent_name
        names = self.cost_keys.get(tenant)
        if names is None:
            names = self.cost_keys[tenant] = set()
        if name not in names:
            names.add(name)
            self.first_window[(tenant, name)] = w_index
        first = self.first_window.get((tenant,))
        if first is None or w_index < first:
            self.first_window[(tenant,)] = w_index
        if w_index < self.first_window[(tenant, name)]:
            self.first_window[(tenant, name)] = w_index
        if t.fanout is not None:
            return  # explained: this trace's cost is part of its fanout anomaly
        part = (w_index, name, row.agent_id)
        t.cost_parts[part] = t.cost_parts.get(part, 0.0) + row.cost
        t.cost += row.cost
        w = self.windows.get((tenant, w_index))
        if w is None:
            w = self.windows[(tenant, w_index)] = CostWindow(tenant, w_index * self.window_ns, self.window_ns)
        w.add(row)
        self._evaluate_cost(w, name, row.ts, book)

    def _evaluate_cost(self, w: CostWindow, name: str, ts: int, book: AnomalyBook, closing: bool = False) -> None:
        limits = self.tenant_cost_limits(w.tenant)
        agent_limits = self.agent_cost_limits
        names = [name] if name is not None else list(w.by_name)
        # quick reject
        if w.total <= limits.floor and not limits.hard_crossed(w.total) and all(
                w.by_name.get(n, (0.0,))[0] <= agent_limits.floor for n in names):
            return
        t0 = w.start
        tb = self.cost_baselines.peek(("tenant", w.tenant))
        allowance = self.call_peak.get(("tenant", w.tenant), 0.0)
        bad, score, thr = evaluate(w.total, t0, tb, limits, allowance)
        hard = limits.hard_crossed(w.total)
        for n in names:
            if not n or n not in w.by_name:
                continue
            value = w.by_name[n][0]
            ab = self.cost_baselines.peek(("agent", w.tenant, n))
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
        existing = book.get("cost_spike", w.tenant, "")
        previous = existing.score if existing is not None else 0.0
        a, _ = book.observe("cost_spike", w.tenant, "", first_ns=w.start, last_ns=max(w.last_ts, w.start),
                            score=score, severity=_severity(self.config, score, hard),
                            agent_id=w.top_agent(over[0]["agent_name"] if over else None), trace_id=w.top_trace())
        if a.ctx is None or score >= previous:
            a.ctx = CostCase(w, {
                "tenant_usd": round(w.total, 6), "tenant_anomalous": bad, "tenant_threshold": thr,
                "tenant_baseline": tb.describe(t0, limits) if tb else None,
                "largest_normal_call_usd": round(allowance, 6),
                "budget_usd_per_minute": limits.hard, "over_budget": hard, "agents_over_baseline": over,
            })

    def _explain_cost(self, t: TraceState) -> None:
        """A trace just flagged as fanout: move its cost out of the open cost windows."""
        for (w_index, name, agent), usd in t.cost_parts.items():
            w = self.windows.get((t.tenant, w_index))
            if w is not None and not w.flagged:
                w.remove(name, agent, usd, t.fanout.trace_id)

    def _close_cost_windows(self, wm: int, book: AnomalyBook) -> None:
        until = wm // self.window_ns  # windows with index < until have ended before the watermark
        if self.closed_until is None:
            return
        if until - self.closed_until > MAX_IDLE_WINDOWS:
            # a long idle gap: close what holds data, teach no more than MAX_IDLE_WINDOWS zero windows
            skip_to = until - MAX_IDLE_WINDOWS
            for key in [k for k in self.windows if k[1] < skip_to]:
                self._close_window(self.windows.pop(key), key[1], book)
            self.closed_until = skip_to
        for index in range(self.closed_until, until):
            for tenant, names in self.cost_keys.items():
                w = self.windows.pop((tenant, index), None)
                if w is None:
                    self._learn_zero_window(tenant, names, index)
                else:
                    self._close_window(w, index, book)
        self.closed_until = max(self.closed_until, until)

    def _learn_zero_window(self, tenant: str, names: set[str], index: int) -> None:
        t0 = index * self.window_ns
        first = self.first_window
        if index >= first.get((tenant,), index + 1):
            self.cost_baselines.learn(0.0, t0, ("tenant", tenant))
        for n in names:
            if n and index >= first.get((tenant, n), index + 1):
                self.cost_baselines.learn(0.0, t0, ("agent", tenant, n))

    def _close_window(self, w: CostWindow, index: int, book: AnomalyBook) -> None:
        if not w.flagged:
            self._evaluate_cost(w, None, w.start, book, closing=True)  # final verdict on the whole window
        if w.flagged:
            return  # an anomalous window teaches nothing
        t0 = w.start
        self.cost_baselines.learn(w.total, t0, ("tenant", w.tenant))
        self._learn_call_peak(("tenant", w.tenant), w.max_call)
        for n in self.cost_keys.get(w.tenant, ()):
            if n and index >= self.first_window.get((w.tenant, n), index + 1):
                self.cost_baselines.learn(w.by_name.get(n, (0.0,))[0], t0, ("agent", w.tenant, n))
                self._learn_call_peak(("agent", w.tenant, n), w.max_call_by_name.get(n, 0.0))

    def _learn_call_peak(self, key: tuple, largest: float) -> None:
        self.call_peak[key] = max(largest, self.call_peak.get(key, 0.0) * self.config.call_peak_decay)

    # --- rendering --------------------------------------------------------------------------------------

    def render(self, a: Anomaly) -> tuple[str, dict]:
        if a.kind == "fanout":
            return render_fanout(a, a.ctx)
        if a.kind == "loop":
            return render_loop(a, a.ctx)
        return render_cost(a, a.ctx)


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

    def add(self, row: SpanRow) -> None:
        usd = row.cost
        self.total += usd
        if usd > self.max_call:
            self.max_call = usd
        if usd > self.max_call_by_name.get(row.agent_name, 0.0):
            self.max_call_by_name[row.agent_name] = usd
        entry = self.by_name.get(row.agent_name)
        if entry is None:
            entry = self.by_name[row.agent_name] = [0.0, {}]
        entry[0] += usd
        entry[1][row.agent_id] = entry[1].get(row.agent_id, 0.0) + usd
        self.traces[row.trace] = self.traces.get(row.trace, 0.0) + usd
        self.spans += 1
        self.last_ts = max(self.last_ts, row.ts)
        if len(self.top_spans) < 5 or usd > self.top_spans[-1][0]:
            self.top_spans.append((usd, row.span, row.trace, row.model, row.agent_id))
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


def render_fanout(a: Anomaly, t: TraceState) -> tuple[str, dict]:
    e = t.fanout_eval
    calls = e.get("model_calls", {}).get("baseline") or {}
    subs = e.get("sub_agents", {}).get("baseline") or {}
    span = max(t.last_ts - t.first_ts, 0)
    sub_ids = [aid for aid in t.agents if aid != t.root_agent]
    if calls.get("warm"):
        normal = (f"a {t.root_name} normally makes {calls['mean']:.0f} model calls with "
                  f"{subs.get('mean', 0):.1f} sub-agents per trace")
    else:
        normal = "no learned baseline for this agent kind yet, so its hard limits applied"
    # agent spans end (and arrive) after their children: depth is known only once invoke spans arrived
    depth = f", depth {t.depth}" if t.depth else ""
    summary = (f"Runaway fan-out: {t.root_name} agent {t.root_agent} ({t.tenant}) has {t.sub_agents} sub-agents "
               f"that made {t.calls:,} model calls in {_ago(span)} (peak {t.peak_per_min:,} calls/min{depth}) "
               f"in trace {a.trace_id}; {normal}.")
    evidence = {
        "trace_id": a.trace_id, "root_agent_name": t.root_name, "root_agent_id": t.root_agent,
        "root_span_id": t.root_span or None, "model_calls": t.calls, "calls_per_minute_peak": t.peak_per_min,
        "sub_agents": t.sub_agents, "sub_agent_ids": sub_ids[:MAX_LISTED], "invocations": t.invocations,
        "depth": t.depth, "duration_s": round(span / NS, 3), "cost_usd": round(t.cost, 6),
        "first_span_at": _utc(t.first_ts), "last_span_at": _utc(t.last_ts), "metrics": e,
        "span_ids": t.sample_spans,
    }
    return summary, evidence


def render_loop(a: Anomaly, t: TraceState) -> tuple[str, dict]:
    agent, tool, digest = t.loop_key
    n, first, last, spans, sample, size, name = t.repeats[t.loop_key]
    e = t.loop_eval
    b = e.get("baseline") or {}
    peak = round(b.get("peak") or 0)
    normal = (f"a {name} normally repeats a call at most {'once' if peak <= 1 else f'{peak} times'} per trace"
              if b.get("warm") else "no learned baseline for this agent kind yet, so the hard limit applied")
    summary = (f"Loop: {agent} ({t.tenant}) called {tool} with the same arguments {n} times in {_ago(last - first)} "
               f"in trace {a.trace_id}; {normal}.")
    evidence = {
        "trace_id": a.trace_id, "agent_id": agent, "agent_name": name, "tool": tool, "repeats": n,
        "arguments_hash": f"{digest:016x}", "arguments_bytes": size, "arguments_preview": sample,
        "first_call_at": _utc(first), "last_call_at": _utc(last), "threshold": e.get("threshold"),
        "baseline": e.get("baseline"), "baseline_key": e.get("baseline_key"), "hard_limit": e.get("hard_limit"),
        "span_ids": spans,
        "other_repeated_calls": sorted(([k[0], k[1], f"{k[2]:016x}", r[0]] for k, r in t.repeats.items()
                                        if r[0] > 1 and k != t.loop_key), key=lambda x: -x[3])[:10],
    }
    return summary, evidence


def render_cost(a: Anomaly, case: CostCase) -> tuple[str, dict]:
    w, f = case.window, case.facts
    minutes = w.length / MINUTE_NS
    per = "min" if minutes == 1 else f"{minutes:g} min"
    tb = f["tenant_baseline"] or {}
    parts = [f"Cost spike: {w.tenant} spent ${w.total:,.2f} in the {per} from {_hm(w.start)}"]
    if tb.get("warm"):
        ratio = w.total / tb["mean"] if tb["mean"] > 0 else math.inf
        parts.append(f", {ratio:,.1f}x its usual ${tb['mean']:,.2f}/{per} (threshold ${tb['threshold']:,.2f})")
    if f["over_budget"]:
        parts.append(f", over its budget of ${f['budget_usd_per_minute']:,.2f}/{per}")
    over = f["agents_over_baseline"]
    if over:
        top = over[0]
        usual = (top["baseline"] or {}).get("mean")
        parts.append(f"; {top['agent_name']} ({top['agent_id']}) spent ${top['usd']:,.2f}"
                     + (f" against its usual ${usual:,.2f}" if usual is not None else ""))
    summary = "".join(parts) + "."
    evidence = {
        "window_start": _utc(w.start), "window_s": w.length / NS, "tenant_usd": round(w.total, 6),
        **{k: v for k, v in f.items() if k != "tenant_usd"},
        "spans_in_window": w.spans,
        "top_traces": [{"trace_id": tid, "usd": round(usd, 6)}
                       for tid, usd in sorted(w.traces.items(), key=lambda kv: -kv[1])[:5]],
        "top_spans": [{"span_id": s, "trace_id": tr, "usd": round(usd, 6), "model": m, "agent_id": ag}
                      for usd, s, tr, m, ag in w.top_spans],
        "trace_id": a.trace_id,
    }
    return summary, evidence


# =====================================================================================================
# credential_events: cross_tenant and credential_fanout
# =====================================================================================================

class CrossTenantCase:
    def __init__(self, tenant: str, credential: str) -> None:
        self.tenant = tenant
        self.credential = credential
        self.uses = 0
        self.credential_tenants: set[str] = set()
        self.victims: set[str] = set()
        self.agents: dict[str, int] = {}
        self.resources: dict[str, int] = {}
        self.traces: list[str] = []
        self.events: list[dict] = []


class CredentialState:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.buckets: dict[int, dict[str, list]] = {}  # minute -> agent id -> [tenant, first ts, trace, span, new]
        self.known: set[str] = set()  # agents that used it before (first-seen pairs)
        self.max_bucket = -(1 << 62)
        self.first_bucket: int | None = None
        self.last_ts = 0
        self.flagged: set[int] = set()  # window ends (minute index) found anomalous


class CredentialDetectors(EventTimeStream):
    """cross_tenant and credential_fanout over the credential_events stream of one shard."""

    MAX_KNOWN = 5_000

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.cases: dict[tuple[str, str], CrossTenantCase] = {}
        self.credentials: dict[str, CredentialState] = {}
        self.baselines = BaselineBook(**config.baseline_options())
        self.buckets = max(1, round(config.credential_window_s / 60))
        self.closed_until: int | None = None
        self.configure(config)

    def configure(self, config: DetectorConfig) -> None:
        c = self.config = config
        self.agent_limits = c.limits(c.credential_min_agents, c.credential_min_history, c.credential_max_agents)

    def process(self, rows: list[CredentialRow], book: AnomalyBook, spans: SpanDetectors | None = None) -> None:
        lateness = int(self.config.allowed_lateness_s * NS)
        for row in rows:
            self.advance(row, book, lateness)
            if row.event != "use":
                continue
            if row.mine_actor:
                self._cross_tenant(row, book)
            if row.mine_owner and row.credential:
                self._credential_use(row, book)

    def tick(self, book: AnomalyBook) -> None:
        wm = self.watermark
        self._close_buckets(wm // MINUTE_NS, book)
        book.resolve_quiet(CREDENTIAL_KINDS, wm, int(self.config.quiet_period_s * NS))
        # cases of resolved anomalies start afresh
        for key in [k for k in self.cases if book.get("cross_tenant", k[0], k[1]) is None]:
            del self.cases[key]
        self.next_tick = (wm // MINUTE_NS + 1) * MINUTE_NS

    # --- cross_tenant ---------------------------------------------------------------------------------

    def _cross_tenant(self, row: CredentialRow, book: AnomalyBook) -> None:
        tenant = row.tenant
        foreign_credential = bool(row.credential_tenant) and row.credential_tenant != tenant
        foreign_resource = row.resource_tenant not in ("", tenant)
        if not (foreign_credential or foreign_resource):
            return
        key = (tenant, row.credential)
        case = self.cases.get(key)
        if case is None:
            case = self.cases[key] = CrossTenantCase(tenant, row.credential)
        case.uses += 1
        if row.credential_tenant:
            case.credential_tenants.add(row.credential_tenant)
        if foreign_credential:
            case.victims.add(row.credential_tenant)
        if foreign_resource:
            case.victims.add(row.resource_tenant)
        case.agents[row.agent_id] = case.agents.get(row.agent_id, 0) + 1
        case.resources[row.resource] = case.resources.get(row.resource, 0) + 1
        if row.trace not in case.traces and len(case.traces) < MAX_LISTED:
            case.traces.append(row.trace)
        if len(case.events) < MAX_LISTED:
            case.events.append({"at": _utc(row.ts), "agent_id": row.agent_id, "trace_id": row.trace,
                                "span_id": row.span, "credential_tenant": row.credential_tenant,
                                "resource": row.resource, "resource_tenant": row.resource_tenant,
                                "action": row.action})
        book.observe("cross_tenant", tenant, row.credential, first_ns=row.ts, last_ns=row.ts,
                     score=float(case.uses), severity="critical", agent_id=next(iter(case.agents)),
                     trace_id=case.traces[0], ctx=case)

    # --- credential_fanout ------------------------------------------------------------------------------

    def _credential_use(self, row: CredentialRow, book: AnomalyBook) -> None:
        owner = row.credential_tenant or row.tenant
        cs = self.credentials.get(row.credential)
        if cs is None:
            cs = self.credentials[row.credential] = CredentialState(owner)
        cs.last_ts = max(cs.last_ts, row.ts)
        new = row.agent_id not in cs.known
        if new and len(cs.known) < self.MAX_KNOWN:
            cs.known.add(row.agent_id)
        m = row.ts // MINUTE_NS
        if self.closed_until is None:
            self.closed_until = m - math.ceil(self.config.allowed_lateness_s / 60)
        if m < self.closed_until - self.buckets + 1:
            self.late_rows += 1  # every window holding this minute is final
            return
        bucket = cs.buckets.get(m)
        if bucket is None:
            bucket = cs.buckets[m] = {}
        entry = bucket.get(row.agent_id)
        if entry is not None:
            if row.ts < entry[1]:
                entry[1:4] = [row.ts, row.trace, row.span]
            return
        bucket[row.agent_id] = [row.tenant, row.ts, row.trace, row.span, new]
        cs.max_bucket = max(cs.max_bucket, m)
        cs.first_bucket = m if cs.first_bucket is None else min(cs.first_bucket, m)
        for end in range(max(m, self.closed_until), min(m + self.buckets - 1, cs.max_bucket) + 1):
            self._evaluate_window(row.credential, cs, end, book)

    def _window(self, cs: CredentialState, end: int) -> dict[str, list]:
        agents: dict[str, list] = {}
        for m in range(end - self.buckets + 1, end + 1):
            for agent, entry in cs.buckets.get(m, {}).items():
                seen = agents.get(agent)
                if seen is None or entry[1] < seen[1]:
                    agents[agent] = entry
        return agents

    def _evaluate_window(self, credential: str, cs: CredentialState, end: int, book: AnomalyBook) -> bool:
        agents = self._window(cs, end)
        n_agents = len(agents)
        tenants = {e[0] for e in agents.values()}
        limits = self.agent_limits
        tenant_limit = self.config.credential_max_tenants
        too_many_tenants = bool(tenant_limit) and len(tenants) >= tenant_limit
        if n_agents <= limits.floor and not limits.hard_crossed(n_agents) and not too_many_tenants:
            return False
        t_end = (end + 1) * MINUTE_NS
        key, baseline = self.baselines.lookup(limits, ("credential", credential), ("owner", cs.owner))
        bad, score, thr = evaluate(n_agents, t_end, baseline, limits)
        if too_many_tenants:
            bad, score = True, max(score, len(tenants) / tenant_limit)
        if not bad:
            return False
        cs.flagged.add(end)
        new_uses = [e[1] for e in agents.values() if e[4]]
        first = min(new_uses) if new_uses else min(e[1] for e in agents.values())
        last = max(e[1] for e in agents.values())
        hard = limits.hard_crossed(n_agents) or too_many_tenants
        existing = book.get("credential_fanout", cs.owner, credential)
        previous = existing.score if existing is not None else 0.0
        ordered = sorted(agents.items(), key=lambda kv: kv[1][1])
        lead = next(((agent, e) for agent, e in ordered if e[4]), ordered[0])  # the first agent new to it
        a, _ = book.observe("credential_fanout", cs.owner, credential, first_ns=first, last_ns=last, score=score,
                            severity=_severity(self.config, score, hard), agent_id=lead[0], trace_id=lead[1][2])
        if a.ctx is None or score >= previous:
            a.ctx = {
                "credential_id": credential, "credential_tenant": cs.owner,
                "window_start": _utc(t_end - self.buckets * MINUTE_NS), "window_end": _utc(t_end),
                "window_s": self.buckets * 60, "distinct_agents": n_agents, "distinct_tenants": len(tenants),
                "tenants": sorted(tenants), "threshold_agents": thr, "hard_limit_agents": limits.hard,
                "hard_limit_tenants": tenant_limit or None,
                "baseline": baseline.describe(t_end, limits) if baseline else None,
                "baseline_key": "/".join(key) if key else None,
                "first_seen_pairs": [{"agent_id": agent, "tenant": e[0], "at": _utc(e[1]), "trace_id": e[2],
                                      "span_id": e[3]} for agent, e in ordered if e[4]][:MAX_LISTED],
                "first_seen_count": sum(1 for _, e in ordered if e[4]),
                "uses": [{"agent_id": agent, "tenant": e[0], "at": _utc(e[1]), "trace_id": e[2], "span_id": e[3]}
                         for agent, e in ordered][:MAX_LISTED],
                "first_use_at": _utc(first), "last_use_at": _utc(last),
            }
        return True

    def _close_buckets(self, until: int, book: AnomalyBook) -> None:
        """Windows ending before minute `until` are final: evaluate them whole, learn the normal ones."""
        if self.closed_until is None:
            return
        start = max(self.closed_until, until - MAX_IDLE_WINDOWS)
        for credential, cs in self.credentials.items():
            for end in range(start, until):
                if end > cs.max_bucket + self.buckets:
                    break
                if not any(m in cs.buckets for m in range(end - self.buckets + 1, end + 1)):
                    continue
                # learn whole windows only: the first ones of a credential's history cover less than W minutes
                if (end not in cs.flagged and not self._evaluate_window(credential, cs, end, book)
                        and end - self.buckets + 1 >= cs.first_bucket):
                    self.baselines.learn(len(self._window(cs, end)), (end + 1) * MINUTE_NS,
                                         ("credential", credential), ("owner", cs.owner))
                cs.flagged.discard(end)
            for m in [m for m in cs.buckets if m < until - self.buckets + 1]:
                del cs.buckets[m]
        # forget credentials idle for the TTL (short-lived credentials must not grow the checkpoint forever)
        horizon = until * MINUTE_NS - int(self.config.credential_idle_ttl_s * NS)
        for credential in [c for c, cs in self.credentials.items() if not cs.buckets and cs.last_ts < horizon]:
            del self.credentials[credential]
            self.baselines.drop(("credential", credential))
        self.closed_until = max(self.closed_until, until)

    # --- rendering --------------------------------------------------------------------------------------

    def render(self, a: Anomaly) -> tuple[str, dict]:
        if a.kind == "cross_tenant":
            return render_cross_tenant(a, a.ctx)
        return render_credential_fanout(a, a.ctx)


def render_cross_tenant(a: Anomaly, case: CrossTenantCase) -> tuple[str, dict]:
    victims = ", ".join(sorted(case.victims))
    owners = ", ".join(sorted(case.credential_tenants)) or "unknown"
    agents = sorted(case.agents.items(), key=lambda kv: -kv[1])
    who = agents[0][0] if len(agents) == 1 else f"{len(agents)} agents (first {agents[0][0]})"
    resources = sorted(case.resources.items(), key=lambda kv: -kv[1])
    res = ", ".join(r for r, _ in resources[:3]) + (f" and {len(resources) - 3} more" if len(resources) > 3 else "")
    summary = (f"Cross-tenant access: {who} of tenant {case.tenant} used credential {case.credential} "
               f"(tenant {owners}) {case.uses} time{'s' if case.uses != 1 else ''} on resources of {victims}: {res}.")
    evidence = {
        "credential_id": case.credential, "credential_tenants": sorted(case.credential_tenants),
        "actor_tenant": case.tenant, "victim_tenants": sorted(case.victims), "uses": case.uses,
        "agents": [{"agent_id": k, "uses": v} for k, v in agents[:MAX_LISTED]],
        "resources": [{"resource": k, "uses": v} for k, v in resources[:MAX_LISTED]],
        "trace_ids": case.traces, "events": case.events, "trace_id": a.trace_id,
        "rule": "credential tenant != actor tenant, or resource tenant not in ('', actor tenant)",
    }
    return summary, evidence


def render_credential_fanout(a: Anomaly, ctx: dict) -> tuple[str, dict]:
    b = ctx.get("baseline") or {}
    normal = (f"it is normally used by {b['mean']:.1f} agents per {ctx['window_s'] // 60} minutes (threshold "
              f"{ctx['threshold_agents']:.0f})" if b.get("warm") else "it has no learned baseline yet")
    summary = (f"Credential fan-out: {ctx['credential_id']} of tenant {ctx['credential_tenant']} was used by "
               f"{ctx['distinct_agents']} distinct agents of {ctx['distinct_tenants']} tenants "
               f"({', '.join(ctx['tenants'])}) within {ctx['window_s'] // 60} minutes, {ctx['first_seen_count']} of "
               f"them for the first time; {normal}.")
    return summary, {**ctx, "trace_id": a.trace_id}

"""What the learned baselines catch on their own: every hard guard rail off, incidents a few times normal.

The detectors are fed rows directly (they are pure stream processors over rows; the worker only reads
and writes around them). Traffic is drawn here from seeded random distributions; every expectation is
measured on the drawn normal traffic (its mean cost per minute, its forks per trace), never taken from
the constants that drew it.
"""

from __future__ import annotations

import math
import random

import pytest

from agentwatch.detectors.anomalies import AnomalyBook
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.stream import SpanRow
from agentwatch.detectors.streams import SpanStream

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
START = 1_750_032_000 * NS  # 2025-06-16 00:00 UTC
SEEDS = (1, 2, 3)


def config(**overrides) -> DetectorConfig:
    return DetectorConfig(allowed_lateness_s=60, quiet_period_s=300, **overrides).without_hard_limits()


class Feed:
    """Rows into a span stream, in event-time order; the anomalies it raised, and when."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.stream = SpanStream(cfg)
        self.book = AnomalyBook()
        self.n = 0
        self.raised: dict[str, tuple[str, int]] = {}  # anomaly id -> (kind, event time of the raising row)
        self.anomalies = {}

    def span(self, ts: int, tenant: str, *, cost: float = 0.0, trace: str | None = None, parent: str = "",
             op: str = "chat", agent_id: str = "", agent_name: str = "", span: str | None = None) -> str:
        self.n += 1
        span = span or f"{self.n:016x}"
        row = SpanRow(self.n, ts, trace or f"{self.n:032x}", span, parent, tenant, agent_id, agent_name, op, "",
                      "gpt-4o", cost)
        self.stream.process([row], self.book)
        for a in self.book.take_dirty():
            self.anomalies[a.anomaly_id] = a
            self.raised.setdefault(a.anomaly_id, (a.kind, ts))
        return span


def cost_traffic(rng: random.Random, minutes: range, calls_per_minute: float, usd_per_call: float,
                 scale=lambda minute: 1.0, daily: bool = False):
    """(ts, usd) of chat calls: Poisson calls per minute, log-normal cost per call (heavy tailed)."""
    for m in minutes:
        rate = calls_per_minute
        if daily:  # busy at 14:00 UTC, ten times quieter at night
            hour = (m / 60) % 24
            rate *= 0.1 + 0.9 * (0.5 + 0.5 * math.cos((hour - 14) / 24 * 2 * math.pi)) ** 2
        n = _poisson(rng, rate)
        for i in range(n):
            ts = START + m * MINUTE + int((i + rng.random()) / max(n, 1) * MINUTE)
            yield ts, usd_per_call * rng.lognormvariate(0, 0.8) * scale(m)


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def per_minute(calls) -> dict[int, float]:
    out: dict[int, float] = {}
    for ts, usd in calls:
        out[(ts - START) // MINUTE] = out.get((ts - START) // MINUTE, 0.0) + usd
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slow_cost_ramp_is_raised_before_it_is_ten_times_normal(seed):
    rng = random.Random(seed)
    normal = list(cost_traffic(rng, range(0, 240), 12, 0.05))
    ramp_start = 240
    ramp = list(cost_traffic(rng, range(ramp_start, 330), 12, 0.05,
                             scale=lambda m: 2 ** ((m - ramp_start) / 10)))  # doubling every 10 minutes
    feed = Feed(config())
    for ts, usd in normal:
        feed.span(ts, "acme", cost=usd)
    assert feed.raised == {}, "normal traffic raised something"
    normal_mean = sum(usd for _, usd in normal) / 240
    spent = per_minute(ramp)
    for ts, usd in ramp:
        feed.span(ts, "acme", cost=usd)
        if feed.raised:
            break
    assert [kind for kind, _ in feed.raised.values()] == ["cost_spike"]
    (raised_at,) = [at for _, at in feed.raised.values()]
    minute = (raised_at - START) // MINUTE
    # how far the ramp had gone: its spend in the last ten minutes against normal
    recent = sum(spent.get(m, 0.0) for m in range(minute - 9, minute + 1)) / 10
    assert recent / normal_mean < 10, (minute - ramp_start, recent / normal_mean)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_level_shift_alerts_once_then_becomes_normal(seed):
    rng = random.Random(seed)
    feed = Feed(config())
    for ts, usd in cost_traffic(rng, range(0, 180), 12, 0.05):
        feed.span(ts, "acme", cost=usd)
    assert feed.raised == {}
    for ts, usd in cost_traffic(rng, range(180, 480), 12, 0.05 * 8):  # a new, lasting level
        feed.span(ts, "acme", cost=usd)
    assert len(feed.raised) == 1  # one episode, not one per window
    (a,) = feed.anomalies.values()
    assert a.kind == "cost_spike" and a.status == "resolved"
    # the evidence said when the new level would count as normal, and the baselines took it on
    cost = feed.stream.by_kind["cost_spike"]
    assert any(b.shifted_at is not None for b in cost.baselines.by_key.values())
    summary, evidence = feed.stream.render(a)
    assert "new_level_normal_from" in str(evidence) or "level_shift_accepted_at" in str(evidence)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_small_tenant_spike_is_raised_with_the_money_at_stake_as_severity(seed):
    rng = random.Random(seed)
    feed = Feed(config(cost_min_usd_per_minute=0.02))
    for ts, usd in cost_traffic(rng, range(0, 180), 1, 0.005):
        feed.span(ts, "tiny", cost=usd)
    normal = list(cost_traffic(random.Random(seed), range(0, 180), 1, 0.005))
    assert feed.raised == {}
    spike = list(cost_traffic(rng, range(180, 195), 1, 0.005 * 8))
    for ts, usd in spike:
        feed.span(ts, "tiny", cost=usd)
    (a,) = feed.anomalies.values()
    assert a.kind == "cost_spike" and a.tenant == "tiny"
    # little money at stake: a warning for the morning, not a page at night
    c = DetectorConfig()
    excess_per_minute = sum(u for _, u in spike) / 15 - sum(u for _, u in normal) / 180
    assert excess_per_minute * c.cost_stake_horizon_s / 60 < c.cost_critical_usd
    assert a.severity == "warning"


@pytest.mark.parametrize("seed", SEEDS)
def test_three_days_of_daily_peaks_raise_nothing(seed):
    rng = random.Random(seed)
    feed = Feed(config())
    for ts, usd in cost_traffic(rng, range(0, 3 * 24 * 60), 30, 0.05, daily=True):
        feed.span(ts, "acme", cost=usd)
    assert feed.raised == {}


def tree(feed: Feed, ts: int, tenant: str, kind: str, forks: int, calls: int, *, root_last: bool = True) -> str:
    """A stock agent tree: chat spans name no agent; fork agent spans, then the root's, arrive at the end."""
    trace = f"{feed.n + 1:032x}"
    root = f"r{feed.n:015x}"
    fork_spans = [f"f{feed.n:08x}{k:07x}" for k in range(forks)]
    for i in range(calls):
        parent = fork_spans[i % forks] if forks else root
        feed.span(ts + i * NS, tenant, trace=trace, parent=parent)
    for k, span in enumerate(fork_spans):
        feed.span(ts + k * NS, tenant, trace=trace, parent=root, op="invoke_agent", agent_id=f"{kind}-fork-{k}",
                  agent_name="worker", span=span)
    if root_last:
        feed.span(ts, tenant, trace=trace, op="invoke_agent", agent_id=f"{kind}-root", agent_name=kind, span=root)
    return trace


@pytest.mark.parametrize("seed", SEEDS)
def test_a_runaway_stock_tree_is_raised_before_its_agent_spans_arrive(seed):
    rng = random.Random(seed)
    feed = Feed(config())
    forks_seen = []
    for k in range(60):  # an hour of normal planner trees: 2-4 forks, 10-30 calls
        forks, calls = rng.randint(2, 4), rng.randint(10, 30)
        forks_seen.append(forks)
        tree(feed, START + k * MINUTE, "acme", "planner", forks, calls)
    assert feed.raised == {}
    # a runaway: five times the forks of a normal tree, its agents still running (no agent span yet)
    forks = 5 * max(forks_seen)
    trace = tree(feed, START + 61 * MINUTE, "acme", "planner", forks, 20 * forks, root_last=False)
    kinds = {kind for kind, _ in feed.raised.values()}
    assert "fanout" in kinds
    (a,) = [a for a in feed.anomalies.values() if a.kind == "fanout"]
    assert a.trace_id == trace and not feed.stream.traces.get(trace).root_seen


@pytest.mark.parametrize("seed", SEEDS)
def test_a_new_tenant_borrows_the_fleets_baseline_for_its_kind(seed):
    rng = random.Random(seed)
    feed = Feed(config())
    forks_seen = []
    for k in range(60):
        forks = rng.randint(2, 4)
        forks_seen.append(forks)
        tree(feed, START + k * MINUTE, rng.choice(["acme", "globex"]), "planner", forks, rng.randint(10, 30))
    tree(feed, START + 61 * MINUTE, "newco", "planner", max(forks_seen), 30)  # normal for the fleet
    assert feed.raised == {}
    trace = tree(feed, START + 62 * MINUTE, "newco", "planner", 6 * max(forks_seen), 60)
    assert [(a.kind, a.tenant, a.trace_id) for a in feed.anomalies.values()] == [("fanout", "newco", trace)]

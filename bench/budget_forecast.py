"""Budget forecast lead time: on ramps of several slopes, how early the `budget_forecast` anomaly comes.

A UTC day of agent runs, span for span as stock instrumentation records them (an
`invoke_agent` span per run, its `chat` calls priced from their model and token
counts by the receiver's price database, its `execute_tool` calls), in the order
an exporter delivers them (when each span ends), through the detector worker's
span stream. Each ramp tenant runs at a share of its budget pace (the day's
budget spread evenly over the day) until the ramp starts, then its run rate
climbs linearly; beside them, tenants at a steady share of pace and one bursty
tenant under pace. For each ramp and seed: when the anomaly was raised, the
fraction of the day's budget spent by then, and the lead time (minutes before
the actual crossing, which is read off the generated spend, not set).

    python bench/budget_forecast.py [--seeds 1 2 3] [--slopes 0.15 0.3 0.6 1.2]

The generator (`day_of_runs`, `Tenant`) is what tests/test_budget_forecast.py feeds the detector as well.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentwatch.collector.receiver.pricing import Pricer  # noqa: E402
from agentwatch.detectors.anomalies import AnomalyBook  # noqa: E402
from agentwatch.detectors.config import DetectorConfig  # noqa: E402
from agentwatch.detectors.stream import SpanRow  # noqa: E402
from agentwatch.detectors.streams import SpanStream  # noqa: E402

NS = 1_000_000_000
MINUTE = 60 * NS
DAY = 1440 * MINUTE
DAY_START_NS = 1_750_032_000 * NS  # Monday 2025-06-16 00:00 UTC
# (provider, request model, input tokens range, output tokens range, cache share): a mix as agent fleets use
MODELS = (("openai", "gpt-4o-mini", (300, 4000), (30, 400), 0.4),
          ("openai", "gpt-4o", (1200, 12000), (80, 900), 0.4),
          ("anthropic", "claude-sonnet-4-20250514", (1500, 16000), (100, 1200), 0.6),
          ("google", "gemini-2.5-flash", (600, 15000), (50, 1000), 0.3))
TOOLS = ("web_search", "sql_query", "http_get", "read_file")


@dataclass(frozen=True)
class Tenant:
    """A tenant's day (or days): its runs per minute as a share of its budget pace.

    `pace` is the share of budget pace it runs at until `ramp_from` (minute of the day), then its rate
    climbs by `slope` (shares of pace per hour). `bursts`: every hour, `burst_minutes` at `bursts` x its
    rate (the same daily mean), for a bursty but under-budget tenant.
    """

    name: str
    pace: float
    slope: float = 0.0
    ramp_from: int = 360
    bursts: float = 0.0
    burst_minutes: int = 10
    hours: tuple[float, ...] = ()  # a daily rhythm: 24 factors of its rate by UTC hour (mean 1)
    surge: float = 1.0  # from minute `surge_from` on, its rate times this
    surge_from: int = 0

    def pace_share(self, minute: int) -> float:
        share = self.pace + max(0, minute - self.ramp_from) / 60 * self.slope
        if self.hours:
            share *= self.hours[(minute // 60) % 24] * 24 / sum(self.hours)
        if minute >= self.surge_from:
            share *= self.surge
        if self.bursts:
            quiet = (60 - self.burst_minutes * self.bursts) / (60 - self.burst_minutes)
            share *= self.bursts if minute % 60 < self.burst_minutes else quiet
        return share


class RunMaker:
    """Agent runs of stock-shaped spans, priced the way the receiver prices them at ingest."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pricer = Pricer()
        self.n = 0

    def _id(self, digits: int) -> str:
        self.n += 1
        return f"{self.rng.getrandbits(4 * digits - 24):0{digits - 6}x}{self.n % (1 << 24):06x}"

    def run(self, tenant: str, start: int) -> list[SpanRow]:
        rng = self.rng
        trace, root = self._id(32), self._id(16)
        agent_name = rng.choice(("planner", "researcher", "writer"))
        agent_id = f"{tenant}-{agent_name}-{rng.randrange(4)}"
        t, rows = start, []
        for _ in range(rng.randint(1, 4)):
            provider, model, ins, outs, cache = rng.choice(MODELS)
            input_tokens = int(math.exp(rng.uniform(math.log(ins[0]), math.log(ins[1]))))
            output_tokens = int(math.exp(rng.uniform(math.log(outs[0]), math.log(outs[1]))))
            cached = int(input_tokens * cache * rng.random())
            cost = self.pricer.cost(provider, model, start // DAY, input_tokens, cached, output_tokens) or 0.0
            duration = int(output_tokens / 80 * NS)
            rows.append(SpanRow(0, t, trace, self._id(16), root, tenant, "", "", "chat", "", model, cost,
                                input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached,
                                duration=duration))
            t += duration
            if rng.random() < 0.6:
                tool_ns = int(rng.uniform(0.05, 2.0) * NS)
                rows.append(SpanRow(0, t, trace, self._id(16), root, tenant, "", "", "execute_tool",
                                    rng.choice(TOOLS), "", 0.0, duration=tool_ns))
                t += tool_ns
        rows.append(SpanRow(0, start, trace, root, "", tenant, agent_id, agent_name, "invoke_agent", "", "", 0.0,
                            duration=t - start))
        return rows

    def mean_run_cost(self, samples: int = 2000) -> float:
        """What a run costs on average, so that a share of pace can be turned into runs per minute."""
        probe = RunMaker(self.rng.randrange(1 << 30))
        return statistics.fmean(sum(r.cost for r in probe.run("probe", DAY_START_NS)) for _ in range(samples))


def day_of_runs(tenants: list[Tenant], budget_usd: float, seed: int, minutes: int = 1440) -> list[SpanRow]:
    """The spans of these tenants (each with a day budget of `budget_usd`) from 00:00 UTC for `minutes`,
    in delivery order."""
    maker = RunMaker(seed)
    pace_runs = budget_usd / 1440 / maker.mean_run_cost()  # runs per minute at budget pace
    rows: list[SpanRow] = []
    for tenant in tenants:
        for minute in range(minutes):
            lam = tenant.pace_share(minute) * pace_runs
            for _ in range(_poisson(maker.rng, lam)):
                start = DAY_START_NS + minute * MINUTE + int(maker.rng.random() * MINUTE)
                rows.extend(maker.run(tenant.name, start))
    rows.sort(key=lambda r: (r.ts + r.duration, r.trace, r.span))  # a span is exported when it ends
    return [r._replace(ingested_us=(r.ts + r.duration) // 1000 + k % 1000) for k, r in enumerate(rows)]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def config_for(budget_usd: float, **overrides) -> DetectorConfig:
    """The detector settings giving every tenant a day budget of `budget_usd` (through the per-minute one)."""
    share = DetectorConfig.budget_period_share
    return DetectorConfig(tenant_budget_usd_per_minute=budget_usd / (share * 1440), **overrides)


def replay(rows: list[SpanRow], config: DetectorConfig, batch: int = 5000) -> list:
    """The rows through the worker's span stream, in batches; every version of every budget_forecast
    anomaly as it was after the batch that changed it (kind, tenant, severity, status, evidence)."""
    stream, book, versions = SpanStream(config), AnomalyBook(), []
    for i in range(0, len(rows), batch):
        stream.process(rows[i:i + batch], book)
        for a in book.take_dirty():
            if a.kind == "budget_forecast":
                summary, evidence = stream.render(a)
                versions.append((a.anomaly_id, a.tenant, a.severity, a.status, a.first_seen_ns, summary, evidence))
    return versions


def crossing_ns(rows: list[SpanRow], tenant: str, budget_usd: float) -> int | None:
    """When the tenant's spend actually passed the budget (event time of the span that took it over)."""
    spent = 0.0
    for r in sorted((r for r in rows if r.tenant == tenant and r.cost > 0), key=lambda r: r.ts):
        spent += r.cost
        if spent >= budget_usd:
            return r.ts
    return None


def spent_by(rows: list[SpanRow], tenant: str, until_ns: int) -> float:
    return sum(r.cost for r in rows if r.tenant == tenant and r.ts <= until_ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--slopes", type=float, nargs="+", default=[0.15, 0.3, 0.6, 1.2],
                        help="ramp slopes: shares of budget pace added per hour, from 06:00 at 0.4 of pace")
    parser.add_argument("--budget", type=float, default=30.0, help="each tenant's day budget, USD")
    args = parser.parse_args()
    config = config_for(args.budget)
    print(f"day budget ${args.budget:.0f} per tenant; ramps from 0.4 of pace at 06:00 UTC; "
          f"forecast settings: half-life {config.budget_forecast_half_life_s:.0f}s, trend kept "
          f"{config.budget_forecast_trend_s:.0f}s, z {config.budget_forecast_z}")
    print(f"{'seed':>4} {'slope/h':>7} {'crossed':>8} {'raised':>8} {'spent at raise':>14} {'lead (min)':>10} "
          f"{'forecast at raise (crossing, earliest-latest)':>46}")
    steady_raised, leads, fractions = [], [], []
    for seed in args.seeds:
        tenants = [Tenant(f"ramp-{s:g}", 0.4, slope=s) for s in args.slopes]
        tenants += [Tenant(f"steady-{k}", 0.6) for k in range(3)] + [Tenant("bursty", 0.5, bursts=4.0)]
        rows = day_of_runs(tenants, args.budget, seed)
        began = time.perf_counter()
        versions = replay(rows, config, batch=500)  # evidence as rendered within ~5 min of the raise
        took = time.perf_counter() - began
        first = {}
        for v in versions:
            first.setdefault(v[1], v)
        steady_raised += [t for t in first if not t.startswith("ramp")]
        for s in args.slopes:
            name = f"ramp-{s:g}"
            crossed = crossing_ns(rows, name, args.budget)
            v = first.get(name)
            raised = _hm(v[4]) if v else "-"  # FirstSeen: the event time it was raised at
            crossed_at = _hm(crossed) if crossed else "-"
            fraction = v[6]["fraction_spent_at_raise"] if v else math.nan
            lead = (crossed - v[4]) / MINUTE if v and crossed else math.nan
            if v and crossed:
                leads.append(lead)
                fractions.append(fraction)
            forecast = v[6]["forecast"] if v else {}
            told = (f"{(forecast['crossing_at'] or '-')[11:16]}, {(forecast['crossing_earliest'] or '-')[11:16]}-"
                    f"{(forecast['crossing_latest'] or '-')[11:16]}") if v else "-"
            print(f"{seed:>4} {s:>7g} {crossed_at:>8} {raised:>8} {fraction:>14.1%} {lead:>10.0f} {told:>46}")
        print(f"     ({len(rows):,} spans replayed in {took:.1f}s)")
    print(f"steady (0.6 of pace) and bursty tenants raised: {sorted(set(steady_raised)) or 'none'}")
    if leads:
        print(f"lead time min/median {min(leads):.0f}/{statistics.median(leads):.0f} min; "
              f"fraction spent at raise max {max(fractions):.1%}")


def _hm(ns: int) -> str:
    return time.strftime("%H:%M", time.gmtime(ns / NS))


if __name__ == "__main__":
    main()

"""budget_forecast: a tenant on course to pass its day's budget is raised early, one under its pace never.

Each seed is a UTC day of agent runs as stock instrumentation records them (bench/budget_forecast.py:
invoke_agent, priced chat calls, tool calls, delivered as they end), fed through the worker's span stream:
ramps of four slopes, three tenants steady at 60 % of their budget pace and one bursty tenant under
pace; three days of a tenant with an office-hours rhythm check the learned daily pattern. When each
ramp actually passes its budget, and what it had spent when the anomaly came, is read off the generated
spans; the target is the issue's (raised before 80 % is spent). One day goes end to end through the
worker on the embedded store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agentwatch.detectors.budget_forecast import BudgetForecast, SpendTrend
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import store
from bench.budget_forecast import (
    DAY,
    DAY_START_NS,
    MINUTE,
    NS,
    Tenant,
    config_for,
    crossing_ns,
    day_of_runs,
    replay,
    spent_by,
)
from tests.helpers import fresh_database

SEEDS = (3, 11)
SLOPES = (0.15, 0.3, 0.6, 1.2)  # shares of budget pace added per hour, from 06:00
BUDGET_USD = 15.0  # each tenant's budget for the day
TARGET = 0.8  # raised before this share of the budget is spent


def test_the_spend_fit_recovers_a_line_and_widens_with_noise():
    line, noisy = SpendTrend(0.5 ** (1 / 60)), SpendTrend(0.5 ** (1 / 60))
    for minute in range(300):
        line.learn(0.10 + 0.002 * minute)
        noisy.learn(0.10 + 0.002 * minute + (0.05 if minute % 2 else -0.05))
    rate, slope, se_rate, se_slope = line.fit()
    assert rate == pytest.approx(0.10 + 0.002 * 299) and slope == pytest.approx(0.002)
    assert se_rate == pytest.approx(0, abs=1e-6) and se_slope == pytest.approx(0, abs=1e-6)
    n_rate, n_slope, n_se_rate, n_se_slope = noisy.fit()
    assert n_rate == pytest.approx(rate, abs=3 * n_se_rate) and n_slope == pytest.approx(slope, abs=3 * n_se_slope)
    assert n_se_rate > 0 and n_se_slope > 0


def _tenants() -> list[Tenant]:
    return ([Tenant(f"ramp-{s:g}", 0.4, slope=s) for s in SLOPES]
            + [Tenant(f"steady-{k}", 0.6) for k in range(3)] + [Tenant("bursty", 0.5, bursts=4.0)])


def _ns(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp()) * NS


@pytest.fixture(scope="module", params=SEEDS)
def day(request):
    rows = day_of_runs(_tenants(), BUDGET_USD, request.param)
    config = config_for(BUDGET_USD)
    by_tenant: dict[str, list] = {}
    for version in replay(rows, config):
        by_tenant.setdefault(version[1], []).append(version)
    return request.param, rows, config, by_tenant


def test_each_ramp_is_raised_before_80_percent_of_its_budget_is_spent(day):
    seed, rows, _, raised = day
    for slope in SLOPES:
        tenant = f"ramp-{slope:g}"
        crossed = crossing_ns(rows, tenant, BUDGET_USD)
        assert crossed is not None, (seed, tenant, "the scenario must pass the budget within the day")
        assert tenant in raised, (seed, tenant, "never raised")
        evidence = raised[tenant][0][6]
        at = raised[tenant][0][4]  # FirstSeen: the event time it was raised at
        assert at < crossed, (seed, tenant, evidence["forecast_at"])
        spent = spent_by(rows, tenant, at) / BUDGET_USD
        assert spent < TARGET and evidence["fraction_spent_at_raise"] < TARGET, (seed, tenant, spent)
        assert raised[tenant][0][2] == "warning"


def test_tenants_under_their_pace_steady_or_bursty_are_never_raised(day):
    seed, rows, _, raised = day
    for tenant in [t.name for t in _tenants() if not t.slope]:
        day_total = sum(r.cost for r in rows if r.tenant == tenant)
        assert 0 < day_total < BUDGET_USD, (seed, tenant, day_total)
        assert tenant not in raised, (seed, tenant, [v[5] for v in raised[tenant]])


def test_the_evidence_carries_the_forecast_and_its_interval(day):
    seed, rows, config, raised = day
    budget = BudgetForecast(config).period_budget("ramp-0.3")
    assert budget == pytest.approx(BUDGET_USD)
    for slope in SLOPES:
        tenant = f"ramp-{slope:g}"
        _, _, severity, status, _, summary, evidence = raised[tenant][0]
        forecast = evidence["forecast"]
        at = _ns(evidence["forecast_at"])
        assert evidence["budget_usd"] == pytest.approx(BUDGET_USD)
        assert evidence["spent_usd"] == pytest.approx(evidence["fraction_spent"] * BUDGET_USD, rel=1e-3)
        assert evidence["rate_usd_per_minute"] > 0 and evidence["rate_stderr"] > 0
        assert evidence["trend_stderr"] > 0 and evidence["minutes_learned"] >= config.budget_forecast_min_minutes
        # rendered at the end of the batch that raised it: the low path may have fallen short again by then
        # (an open anomaly is kept while the expected path crosses), a latest crossing of null says so
        earliest, expected = _ns(forecast["crossing_earliest"]), _ns(forecast["crossing_at"])
        latest = _ns(forecast["crossing_latest"]) if forecast["crossing_latest"] else None
        assert at < earliest <= expected <= (latest or expected) <= _ns(evidence["period_end"])
        projected = forecast["projected_period_usd"]
        assert projected["low"] <= projected["expected"] <= projected["high"]
        assert projected["expected"] >= BUDGET_USD and (latest is None) == (projected["low"] < BUDGET_USD)
        assert forecast["minutes_to_crossing"] == pytest.approx((expected - at) / MINUTE, abs=0.1)
        assert f"${evidence['spent_usd']:,.2f} of its ${BUDGET_USD:,.2f} budget" in summary
        # the ramp goes on: the anomaly stays open and turns critical when the budget is spent
        last = [v for v in raised[tenant] if v[6]["period_end"] == evidence["period_end"]][-1]
        assert last[3] == "open" and last[2] == "critical" and last[6]["over_budget"], (seed, tenant, last[5])
        assert last[6]["fraction_spent_at_raise"] == evidence["fraction_spent_at_raise"]
        assert len({v[0] for v in raised[tenant]}) == 1  # one episode, updated


def test_a_daily_rhythm_once_learned_is_not_a_ramp_and_twice_the_rhythm_is_raised():
    office = tuple([0.1] * 8 + [3.0] * 11 + [0.1] * 5)  # busy 08:00-19:00 UTC, near idle at night
    third_day_8am = 2 * 1440 + 480
    tenants = [Tenant("office", 0.8, hours=office),
               Tenant("office-surge", 0.8, hours=office, surge=2.0, surge_from=third_day_8am)]
    rows = day_of_runs(tenants, BUDGET_USD, seed=2, minutes=3 * 1440)
    third_day = DAY_START_NS + 2 * DAY
    versions = [v for v in replay(rows, config_for(BUDGET_USD)) if v[4] >= third_day]
    assert crossing_ns([r for r in rows if r.ts >= third_day], "office", BUDGET_USD) is None
    assert [v[1] for v in versions if v[1] == "office"] == [], [v[5] for v in versions]
    crossed = crossing_ns([r for r in rows if r.ts >= third_day], "office-surge", BUDGET_USD)
    assert crossed is not None
    first = versions[0][6]
    assert versions[0][1] == "office-surge" and first["fraction_spent_at_raise"] < TARGET
    assert _ns(first["forecast_at"]) < crossed
    # the forecast knew the hour: learned for days, and the office hours above the day's mean
    assert first["daily_profile_days"] >= 2 and first["hour_factor"] > 1


COLUMNS = ["Timestamp", "TraceId", "SpanId", "ParentSpanId", "Tenant", "AgentId", "AgentName", "Operation",
           "ToolName", "Model", "CostUSD", "InputTokens", "OutputTokens", "CachedInputTokens", "Duration",
           "IngestedAt"]


def test_end_to_end_through_the_worker_a_ramp_is_raised_and_nothing_halted(dsn):
    database = fresh_database(dsn, "t_budget_forecast_worker")
    tenants = [Tenant("ramp", 0.4, slope=0.6), Tenant("steady", 0.6)]
    rows = day_of_runs(tenants, BUDGET_USD, seed=5)
    client = store.connect(dsn, database)
    try:
        for i in range(0, len(rows), 2000):  # inserts as a receiver makes them: blocks in delivery order
            client.insert("agent_spans", [[r.ts, r.trace, r.span, r.parent, r.tenant, r.agent_id, r.agent_name,
                                           r.op, r.tool, r.model, r.cost, r.input_tokens, r.output_tokens,
                                           r.cached_tokens, r.duration, r.ingested_us] for r in rows[i:i + 2000]],
                          column_names=COLUMNS)
        worker = DetectorWorker(lambda: store.connect(dsn, database), config_for(BUDGET_USD))
        worker.catch_up(2000)  # batches of about one insert, as a worker keeping up with live traffic reads
        worker.close()
        found = client.query("SELECT Tenant, Severity, Status, Evidence, Summary FROM anomalies FINAL "
                             "WHERE Kind = 'budget_forecast'").result_rows
        assert [r[0] for r in found] == ["ramp"], found
        evidence = json.loads(found[0][3])
        crossed = crossing_ns(rows, "ramp", BUDGET_USD)
        assert evidence["fraction_spent_at_raise"] < TARGET
        assert datetime.fromisoformat(evidence["raised_by"]["at"]).timestamp() * NS < crossed
        # the ramp ran on past the budget: a later version of the same anomaly says so, and turned critical
        versions = client.query("SELECT Evidence FROM anomalies WHERE Kind = 'budget_forecast'").result_rows
        assert any(json.loads(v[0])["over_budget"] for v in versions) and found[0][1] == "critical"
        # a warning ahead of time: the default containment policy halts nothing for it
        halted = client.query("SELECT count() FROM halts WHERE Kind = 'budget_forecast'").result_rows
        assert halted[0][0] == 0
    finally:
        client.close()


def test_a_tenant_given_its_own_budget_for_the_day_is_forecast_against_it():
    from agentwatch.detectors.config import DetectorConfig

    config = DetectorConfig.from_env({"AGENTWATCH_DETECT_TENANT_PERIOD_BUDGETS": "acme=2000,globex=12.5",
                                      "AGENTWATCH_DETECT_TENANT_BUDGETS": "acme=5"})
    forecast = BudgetForecast(config)
    assert forecast.period_budget("acme") == 2000 and forecast.period_budget("globex") == 12.5
    # a tenant without one: its per-minute budget over the day, at the configured share
    assert forecast.period_budget("initech") == pytest.approx(
        config.tenant_budget_usd_per_minute * 1440 * config.budget_period_share)

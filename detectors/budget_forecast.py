"""budget_forecast: a tenant on course to pass its budget for the day, raised while there is time to act.

The period budget is the tenant's entry in `tenant_period_budgets` (USD per
period) when it has one; else its per-minute budget (`tenant_budgets`, else
`tenant_budget_usd_per_minute`) x the minutes of the period (`budget_period_s`,
a UTC day) x `budget_period_share`: the same per-tenant number the cost_spike
guard rail uses, so a person may set one budget per tenant. The share is below
one since cost_spike already stops any minute over the per-minute budget: a
tenant held under it every minute could never pass a full share.

Per tenant the detector keeps what it has spent in the current period (every
span's cost, late ones included: money is money) and a fit of its spend rate.
The fit is a discounted least-squares line through the closed minutes' spend
(`SpendTrend`: weights halve every `budget_forecast_half_life_s`), giving the
rate now, its trend, and their standard errors from the weighted residuals.
The minutes are first divided by their hour's usual share of the day
(`DailyProfile`, learned per UTC hour of day, trusted fully after
`seasonal_min_days`, the learned baselines' setting): a tenant busy in office
hours and quiet at night is then a flat line, not a morning ramp, and the
projection puts the rhythm back hour by hour (on a tenant's first day, before
every hour was seen, the rate is held flat). Projected forward, the trend is
damped beyond `budget_forecast_trend_s` (a ramp does not climb for ever, and an
undamped line held for twenty hours would flag every wobble), and the rate
never goes below zero. Three paths come out of it: expected (rate and trend as
fitted), high (both z standard errors up) and low (both down), each crossing
the budget at some minute of the period, or not at all. The interval is the
fit's noise, not the future's: a steep ramp that keeps climbing crosses sooner
than even the high path said when it was raised (bench/budget_forecast.py shows by
how much); the forecast catches up as the ramp goes on.

Why not a library forecaster: river's HoltWinters / SNARIMAX forecast the next
values but give no standard errors, and what is wanted is a sum over up to a
day of minutes with an interval on it; the discounted least-squares line is
Brown's double exponential smoothing with its variances written out.

Raised (a warning) once even the low path crosses before the end of the
period, after `budget_forecast_min_minutes` of the tenant's spend were learned:
the level now, held, already carries a ramp over the budget hours ahead, and a
tenant running steadily under its pace is not flagged by the noise of its
minutes (the expected and high paths alone would: early in the day a slope's
standard error, held for the rest of the day, reaches far). Critical once the
budget is spent. The evidence carries spent, budget, rate, trend, the crossing
under each path (expected, and the interval from the high path's to the low
path's) and the fraction spent when it was raised. While the expected path
keeps crossing the anomaly is updated; when it no longer does, the quiet
period resolves it. No halt: containment's default policy has no rule for
this kind, it is a warning ahead of time (a policy may add one, e.g. on
`over_budget`).
"""

from __future__ import annotations

import math

import numpy as np

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.detector import Detector
from agentwatch.detectors.stream import MAX_IDLE_WINDOWS, MINUTE_NS, NS, SpanRow, hm, utc
from agentwatch.detectors.traces import TraceState


PROFILE_DAYS = 7  # the daily profile's memory, in days
FACTOR_RANGE = (0.2, 5.0)  # an hour's factor of the daily mean spend, at most this far either way


class SpendTrend:
    """Discounted least squares of spend per minute against time, kept as decayed sums.

    Coordinates are minutes relative to the latest closed minute (u = 0), so the sums never grow with
    time: moving on a minute shifts them exactly. Weights w = decay ** age; the w**2 sums give the
    estimates' variances under independent residuals.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.minutes = 0  # minutes learned (zero minutes included)
        # sums of w, w u, w u^2, w y, w u y, w y^2, w^2, w^2 u, w^2 u^2
        self.s0 = self.s1 = self.s2 = self.sy = self.suy = self.syy = 0.0
        self.t0 = self.t1 = self.t2 = 0.0

    def learn(self, usd: float) -> None:
        """The next minute's spend: age every point by a minute, then add this one at u = 0."""
        d, d2 = self.decay, self.decay * self.decay
        s0, s1, s2 = self.s0 * d, self.s1 * d, self.s2 * d
        self.s2 = s2 - 2 * s1 + s0
        self.s1 = s1 - s0
        self.suy = (self.suy - self.sy) * d
        self.s0, self.sy, self.syy = s0 + 1.0, self.sy * d + usd, self.syy * d + usd * usd
        t0, t1, t2 = self.t0 * d2, self.t1 * d2, self.t2 * d2
        self.t2 = t2 - 2 * t1 + t0
        self.t1 = t1 - t0
        self.t0 = t0 + 1.0
        self.minutes += 1

    def fit(self) -> tuple[float, float, float, float]:
        """(rate at the latest minute, trend per minute, their standard errors), USD per minute."""
        s0 = self.s0
        mu, my = self.s1 / s0, self.sy / s0
        suu = max(self.s2 - self.s1 * mu, 1e-12)
        suy = self.suy - self.s1 * my
        syy = max(self.syy - self.sy * my, 0.0)
        slope = suy / suu
        rate = my - slope * mu
        n_eff = s0 * s0 / self.t0
        rss = max(syy - slope * suy, 0.0)
        var = rss / s0 * n_eff / max(n_eff - 2.0, 1.0)
        spread_u = max(self.t2 - 2 * mu * self.t1 + mu * mu * self.t0, 0.0)
        var_slope = var * spread_u / (suu * suu)
        cov = var * (self.t1 - mu * self.t0) / (s0 * suu)
        var_rate = max(var * self.t0 / (s0 * s0) + mu * mu * var_slope - 2 * mu * cov, 0.0)
        return rate, slope, math.sqrt(var_rate), math.sqrt(var_slope)


class DailyProfile:
    """A tenant's usual spend per UTC hour of day, as factors of its daily mean (1 until learned).

    Each hour folds its mean spend per minute into its slot, as an arithmetic mean over the first
    PROFILE_DAYS days, then exponentially weighted with that memory. A slot's factor leans on what it
    learned in proportion to the days it has seen, up to `full_days`, and stays within FACTOR_RANGE: an
    hour that is usually near idle would otherwise turn a single call into a many-fold jump in the fit.
    """

    def __init__(self, full_days: float) -> None:
        self.full_days = max(full_days, 1.0)
        self.means = [0.0] * 24
        self.days = [0] * 24
        self.hour = -1  # the hour (index since the epoch) being summed
        self.total = 0.0
        self.minutes = 0

    def learn(self, minute: int, usd: float) -> None:
        hour = minute // 60
        if hour != self.hour:
            if self.minutes:
                slot = self.hour % 24
                self.days[slot] += 1
                self.means[slot] += (self.total / self.minutes - self.means[slot]) / min(self.days[slot], PROFILE_DAYS)
            self.hour, self.total, self.minutes = hour, 0.0, 0
        self.total += usd
        self.minutes += 1

    def factors(self) -> np.ndarray:
        """Per slot, how many times the daily mean that hour usually spends (all 1 until every slot learned)."""
        if min(self.days) == 0:
            return np.ones(24)
        means = np.array(self.means)
        mean = float(means.mean())
        if mean <= 0:
            return np.ones(24)
        weight = np.minimum(np.array(self.days) / self.full_days, 1.0)
        return np.clip(1.0 + weight * (means / mean - 1.0), *FACTOR_RANGE)


class TenantSpend:
    """One tenant: spend per period, per open minute, its daily profile and the rate fit."""

    def __init__(self, decay: float, next_minute: int, full_days: float) -> None:
        self.profile = DailyProfile(full_days)
        self.factors = np.ones(24)
        self.trend = SpendTrend(decay)
        self.by_period: dict[int, float] = {}
        self.open_minutes: dict[int, float] = {}
        self.next_minute = next_minute  # the first minute not yet learned
        self.last_ts = 0
        self.spent_at_raise: float | None = None


class Forecast:
    """What an evaluation found: the period, spend so far, the fit, each path's crossing (ns or None)."""

    def __init__(self, **facts) -> None:
        self.__dict__.update(facts)


class BudgetForecast(Detector):
    kind = "budget_forecast"
    stream = "spans"

    def __init__(self, config: DetectorConfig) -> None:
        self.tenants: dict[str, TenantSpend] = {}
        self.closed_until: int | None = None  # minutes with index < this are learned
        self.late_rows = 0
        super().__init__(config)

    def configure(self, config: DetectorConfig) -> None:
        self.config = config
        self.period_ns = int(config.budget_period_s * NS)
        self.decay = 0.5 ** (60.0 / config.budget_forecast_half_life_s)
        self.damping = math.exp(-60.0 / config.budget_forecast_trend_s) if config.budget_forecast_trend_s > 0 else 0.0

    def period_budget(self, tenant: str) -> float:
        c = self.config
        if tenant in c.tenant_period_budgets:
            return c.tenant_period_budgets[tenant]
        return c.budget_for(tenant) * c.budget_period_share * c.budget_period_s / 60.0

    # --- the protocol ------------------------------------------------------------------------------------

    def observe(self, row: SpanRow, t: TraceState, book: AnomalyBook) -> None:
        if row.cost <= 0:
            return
        minute = row.ts // MINUTE_NS
        if self.closed_until is None:
            self.closed_until = minute - math.ceil(self.config.allowed_lateness_s * NS / MINUTE_NS)
        s = self.tenants.get(row.tenant)
        if s is None:
            s = self.tenants[row.tenant] = TenantSpend(self.decay, max(minute, self.closed_until),
                                                       self.config.seasonal_min_days)
        period = row.ts // self.period_ns
        s.by_period[period] = s.by_period.get(period, 0.0) + row.cost
        s.last_ts = max(s.last_ts, row.ts)
        if minute < self.closed_until:
            self.late_rows += 1  # counted in the period's spend, too late for the rate fit
        else:
            s.open_minutes[minute] = s.open_minutes.get(minute, 0.0) + row.cost

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        if self.closed_until is None:
            return
        until = watermark_ns // MINUTE_NS
        # now: the latest event time of the stream (a quiet tenant's clock runs on with everyone else's)
        now = watermark_ns + int(self.config.allowed_lateness_s * NS)
        if until <= self.closed_until:
            return
        for tenant, s in self.tenants.items():
            self._learn_until(s, until)
            for period in [p for p in s.by_period if p < s.last_ts // self.period_ns - 1]:
                del s.by_period[period]
            if self.period_budget(tenant) > 0 and s.trend.minutes >= self.config.budget_forecast_min_minutes:
                self._evaluate(tenant, s, now, book)
        self.closed_until = until

    def render(self, a: Anomaly) -> tuple[str, dict]:
        return render(a.ctx)

    # --- fit and forecast ----------------------------------------------------------------------------------

    def _learn_until(self, s: TenantSpend, until: int) -> None:
        if until - s.next_minute > MAX_IDLE_WINDOWS:
            # a long idle gap: its zero minutes would only teach a rate of zero; start the fit afresh
            s.trend = SpendTrend(self.decay)
            s.open_minutes = {m: v for m, v in s.open_minutes.items() if m >= until - MAX_IDLE_WINDOWS}
            s.next_minute = min([until - MAX_IDLE_WINDOWS, *s.open_minutes])
        for minute in range(s.next_minute, until):
            usd = s.open_minutes.pop(minute, 0.0)
            if minute % 60 == 0:
                s.factors = s.profile.factors()  # the profile moves by the hour
            s.profile.learn(minute, usd)
            # the fit follows spend relative to the usual for its hour: a daily rhythm is not a trend
            s.trend.learn(usd / s.factors[(minute // 60) % 24])
        s.next_minute = max(s.next_minute, until)

    def forecast(self, tenant: str, s: TenantSpend, now: int) -> Forecast:
        """Where the tenant's spend is headed from `now` (event time) to the end of that period."""
        c = self.config
        budget = self.period_budget(tenant)
        now = max(now, s.last_ts)
        period = now // self.period_ns
        start, end = period * self.period_ns, (period + 1) * self.period_ns
        spent = s.by_period.get(period, 0.0)
        factor = float(s.factors[(now // MINUTE_NS // 60) % 24])  # this hour's usual, of the daily mean
        rate, slope, se_rate, se_slope = s.trend.fit()
        lag = max(0.0, (now - s.next_minute * MINUTE_NS) / MINUTE_NS)  # minutes from the fit's latest to now
        horizon = max(0, math.ceil((end - now) / MINUTE_NS))
        z = c.budget_forecast_z
        paths = {"expected": (rate, slope), "high": (rate + z * se_rate, slope + z * se_slope),
                 "low": (rate - z * se_rate, slope - z * se_slope)}
        crossing, projected = {}, {}
        steps = self._trend_steps(lag, horizon)
        minutes = now // MINUTE_NS + np.arange(1, horizon + 1)
        usual = s.factors[(minutes // 60) % 24]  # the rest of the period's hours, as they usually go
        for name, (r, b) in paths.items():
            cumulative = np.cumsum(np.maximum(r + b * steps, 0.0) * usual) if horizon else np.zeros(0)
            total = spent + (float(cumulative[-1]) if horizon else 0.0)
            projected[name] = total
            if spent >= budget:
                crossing[name] = now
            elif total >= budget:
                k = int(np.searchsorted(cumulative, budget - spent))  # the minute (from now) it is crossed in
                crossing[name] = min(end, now + (k + 1) * MINUTE_NS)
            else:
                crossing[name] = None
        return Forecast(tenant=tenant, now=now, period_start=start, period_end=end, budget=budget, spent=spent,
                        rate=rate * factor, slope=slope * factor, se_rate=se_rate * factor,
                        se_slope=se_slope * factor, z=z, crossing=crossing, projected=projected,
                        minutes=s.trend.minutes, hour_factor=factor, profile_days=min(s.profile.days),
                        spent_at_raise=None)

    def _trend_steps(self, lag: float, horizon: int) -> np.ndarray:
        """How much of the fitted trend applies at each minute ahead: k minutes while it persists, damped on."""
        k = lag + np.arange(1, horizon + 1, dtype=float)
        phi = self.damping
        if phi <= 0:
            return np.zeros(horizon)
        return phi * (1.0 - phi ** k) / (1.0 - phi)

    def _evaluate(self, tenant: str, s: TenantSpend, now: int, book: AnomalyBook) -> None:
        f = self.forecast(tenant, s, now)
        crossed = f.spent >= f.budget
        existing = book.get(self.kind, tenant, "")
        # raised on the low path, kept on the expected one: a forecast at the margin does not flap
        if f.crossing["low" if existing is None else "expected"] is None:
            return
        if existing is None:
            s.spent_at_raise = f.spent
        f.spent_at_raise = s.spent_at_raise if s.spent_at_raise is not None else f.spent
        a, _ = book.observe(self.kind, tenant, "", first_ns=f.now, last_ns=f.now,
                            score=f.projected["expected"] / f.budget, severity="critical" if crossed else "warning")
        a.ctx = f


def _at(ns: int | None) -> str | None:
    return utc(ns) if ns is not None else None


def render(f: Forecast) -> tuple[str, dict]:
    crossing = f.crossing
    evidence = {
        "period_start": utc(f.period_start), "period_end": utc(f.period_end),
        "budget_usd": round(f.budget, 4), "spent_usd": round(f.spent, 4),
        "fraction_spent": round(f.spent / f.budget, 4),
        "fraction_spent_at_raise": round(f.spent_at_raise / f.budget, 4),
        "rate_usd_per_minute": round(f.rate, 6), "rate_stderr": round(f.se_rate, 6),
        "trend_usd_per_minute_per_hour": round(f.slope * 60, 6), "trend_stderr": round(f.se_slope * 60, 6),
        "minutes_learned": f.minutes, "forecast_at": utc(f.now), "interval_z": f.z,
        # the learned daily pattern: days each hour of day was seen (0: not learned, the rate is held flat)
        # and this hour's usual spend as a factor of the daily mean
        "daily_profile_days": f.profile_days, "hour_factor": round(f.hour_factor, 4),
        "forecast": {
            "crossing_at": _at(crossing["expected"]),
            # the interval: the crossing with level and trend z standard errors up (earliest) and down
            # (latest; null: the low path does not cross this period)
            "crossing_earliest": _at(crossing["high"]), "crossing_latest": _at(crossing["low"]),
            "minutes_to_crossing": None if crossing["expected"] is None
            else round((crossing["expected"] - f.now) / MINUTE_NS, 1),
            "minutes_to_earliest_crossing": round((crossing["high"] - f.now) / MINUTE_NS, 1),
            "projected_period_usd": {k: round(v, 4) for k, v in f.projected.items()},
        },
        "over_budget": f.spent >= f.budget,
    }
    head = (f"Budget forecast: {f.tenant} has spent ${f.spent:,.2f} of its ${f.budget:,.2f} budget for the period "
            f"to {utc(f.period_end)} ({100 * f.spent / f.budget:.0f}%), at ${f.rate:,.2f}/min")
    if f.slope * 60 >= 0.005:
        head += f" and rising ${f.slope * 60:,.2f}/min per hour"
    if f.spent >= f.budget:
        return head + "; the budget is spent.", evidence
    expected = crossing["expected"]
    when = f"on course to pass it at {hm(expected)}" if expected is not None else "could pass it"
    latest = hm(crossing["low"]) if crossing["low"] is not None else "not this period"
    return f"{head}; {when} (from {hm(crossing['high'])}, latest {latest}).", evidence

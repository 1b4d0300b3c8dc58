"""Learned baselines: what is normal for one key (a tenant, a tenant's agent kind, a credential).

Each `Baseline` learns a stream of per-window (or per-trace) values online:
river's exact rolling mean and variance of the last `window` values
(`utils.Rolling(stats.Var)`: no start-up bias, unlike an exponentially weighted
mean seeded with its first value), a slowly decaying peak of the normal values
it has seen, and, once it has two days of history, an hour-of-day profile
(daily seasonality). It turns into a threshold only when it
has enough history (cold start) and never below an absolute floor, so tiny
numbers never alert:

    threshold = max(floor, mean + sigmas' * std, ratio * mean, peak_factor * peak)

where sigmas' = sigmas * sqrt(1 + min_history / n) widens the band while the
history is short (n values learned) and tends to `sigmas` as it grows.

What a baseline learns is guarded three ways, so that what it should flag does
not become its normal:

- an anomalous value (a window or trace the detector raised) is held back, not
  learned;
- a value far above normal (over `hold_ratio` x mean and mean + `hold_sigmas`
  x std) is held back too, until a value below that line comes: then it was a
  blip and is learned late. So a slow ramp (cost doubling every ten minutes)
  does not drag the baseline up behind it and is raised once it is several
  times the level it started from;
- a level shift, values held back without a break for `learning_s` of event
  time, becomes the new normal: everything held is learned at once
  (`shifted_at` says when, and the evidence when it will), so a lasting
  change alerts once and then stops alerting.
Everything here pickles (river objects and plain floats) into the worker's
checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from river import stats, utils

NS = 1_000_000_000
DAY_NS = 86_400 * NS
HOUR_NS = 3_600 * NS
MAX_HELD = 1_000  # values held back per key at most (the oldest go first)


@dataclass(frozen=True)
class Limits:
    """How a learned baseline becomes a threshold, and the hard guard rail beside it."""

    floor: float  # never alert at or below this, whatever the baseline says
    sigmas: float = 6.0
    ratio: float = 3.0
    peak_factor: float = 1.5
    min_history: int = 10  # values learned before the baseline may flag (cold start)
    hard: float | None = None  # a configured limit no key may reach, history or not

    def hard_crossed(self, value: float) -> bool:
        return self.hard is not None and self.hard > 0 and value >= self.hard


class Baseline:
    """The learned normal of one key: rolling mean / variance (river), decaying peak, hourly profile."""

    def __init__(self, window: int = 60, peak_decay: float = 0.995, hourly_fading: float = 0.02,
                 seasonal_min_days: float = 2.0, seasonal_min_samples: int = 30, hold_ratio: float = 2.0,
                 hold_sigmas: float = 3.0, learning_s: float = 3600.0, min_history: int = 10) -> None:
        self.stats = utils.Rolling(stats.Var, window_size=window, ddof=0)
        self.n = 0
        self.peak = 0.0
        self.peak_decay = peak_decay
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        # hour-of-day profile: EW mean and variance per UTC hour (arithmetic while a slot has fewer than
        # 1 / hourly_fading values, so no start-up bias), kept as plain floats (24 x 3)
        self.hourly_fading = hourly_fading
        self.seasonal_min_days = seasonal_min_days
        self.seasonal_min_samples = seasonal_min_samples
        self.h_mean = [0.0] * 24
        self.h_var = [0.0] * 24
        self.h_n = [0] * 24
        self.hold_ratio = hold_ratio
        self.hold_sigmas = hold_sigmas
        self.learning_ns = int(learning_s * NS)
        self.min_history = min_history
        self.held: list[tuple[float, int, bool]] = []  # (value, t_ns, anomalous) held back, oldest first
        self.shifted_at: int | None = None  # event time the last level shift was accepted

    # --- learning ---------------------------------------------------------------------------------

    def observe(self, value: float, t_ns: int, anomalous: bool = False) -> None:
        """A final value: learned now, or held back (see the module doc)."""
        value = float(value)
        line = self.hold_line(t_ns)
        if anomalous or (line is not None and value > line):
            if len(self.held) >= MAX_HELD:
                del self.held[0]
            self.held.append((value, t_ns, anomalous))
            if t_ns - self.held[0][1] >= self.learning_ns:  # held without a break: the new normal
                for v, t, _ in self.held:
                    self.learn(v, t)
                self.held.clear()
                self.shifted_at = t_ns
            return
        if self.held:  # a break: what was held was a blip; anomalous values teach nothing
            for v, t, bad in self.held:
                if not bad:
                    self.learn(v, t)
            self.held.clear()
        self.learn(value, t_ns)

    def hold_line(self, t_ns: int) -> float | None:
        """Values above this are held back (None while the baseline is cold)."""
        if self.n < self.min_history:
            return None
        mean, std, _ = self.expected(t_ns)
        return max(self.hold_ratio * mean, mean + self.hold_sigmas * std)

    def learning_until(self) -> int | None:
        """When what is held now becomes the new normal, if it goes on without a break."""
        return self.held[0][1] + self.learning_ns if self.held else None

    def learn(self, value: float, t_ns: int) -> None:
        """Learn a value as normal, unconditionally (`observe` decides whether to)."""
        value = float(value)
        self.stats.update(value)
        self.n += 1
        self.peak = max(value, self.peak * self.peak_decay)
        self.first_ns = t_ns if self.first_ns is None else min(self.first_ns, t_ns)
        self.last_ns = t_ns if self.last_ns is None else max(self.last_ns, t_ns)
        h = (t_ns // HOUR_NS) % 24
        self.h_n[h] += 1
        a = max(self.hourly_fading, 1.0 / self.h_n[h])
        delta = value - self.h_mean[h]
        self.h_mean[h] += a * delta
        self.h_var[h] = (1 - a) * (self.h_var[h] + a * delta * delta)

    # --- reading ----------------------------------------------------------------------------------

    def warm(self, limits: Limits) -> bool:
        return self.n >= limits.min_history

    def seasonal(self, t_ns: int) -> bool:
        """Daily seasonality is used only once the history spans `seasonal_min_days` days."""
        if self.first_ns is None or self.last_ns - self.first_ns < self.seasonal_min_days * DAY_NS:
            return False
        return self.h_n[(t_ns // HOUR_NS) % 24] >= self.seasonal_min_samples

    def expected(self, t_ns: int) -> tuple[float, float, bool]:
        """(mean, standard deviation, seasonal?) expected at event time t_ns."""
        if self.seasonal(t_ns):
            h = (t_ns // HOUR_NS) % 24
            return self.h_mean[h], math.sqrt(max(self.h_var[h], 0.0)), True
        if self.n == 0:
            return 0.0, 0.0, False
        return self.stats.obj.mean.get(), math.sqrt(max(self.stats.get(), 0.0)), False

    def threshold(self, t_ns: int, limits: Limits) -> float | None:
        """The learned threshold at t_ns, or None while the baseline is cold."""
        if self.n < limits.min_history:
            return None
        mean, std, _ = self.expected(t_ns)
        sigmas = limits.sigmas * math.sqrt(1 + limits.min_history / self.n)
        return max(limits.floor, mean + sigmas * std, limits.ratio * mean, limits.peak_factor * self.peak)

    def describe(self, t_ns: int, limits: Limits) -> dict:
        """The baseline as evidence: what normal looks like and the threshold it gives."""
        mean, std, seasonal = self.expected(t_ns)
        thr = self.threshold(t_ns, limits)
        out = {"mean": _r(mean), "std": _r(std), "peak": _r(self.peak), "history": self.n,
               "seasonal": seasonal, "warm": thr is not None, "threshold": _r(thr) if thr is not None else None,
               "floor": limits.floor, "hard_limit": limits.hard}
        until = self.learning_until()
        if until is not None:  # a level that lasts until then becomes the new normal
            out["held_values"] = len(self.held)
            out["new_level_normal_from"] = _iso(until)
        if self.shifted_at is not None:
            out["level_shift_accepted_at"] = _iso(self.shifted_at)
        return out


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, tz=UTC).isoformat(timespec="seconds")


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


class BaselineBook:
    """Baselines by key, each created on first use; `lookup` falls back to a wider key while cold."""

    def __init__(self, **baseline_options) -> None:
        self.options = baseline_options
        self.by_key: dict[tuple, Baseline] = {}

    def get(self, key: tuple) -> Baseline:
        baseline = self.by_key.get(key)
        if baseline is None:
            baseline = self.by_key[key] = Baseline(**self.options)
        return baseline

    def peek(self, key: tuple) -> Baseline | None:
        return self.by_key.get(key)

    def lookup(self, limits: Limits, *keys: tuple) -> tuple[tuple | None, Baseline | None]:
        """The first warm baseline among `keys` (most specific first), else the first that exists."""
        first = (None, None)
        for key in keys:
            baseline = self.by_key.get(key)
            if baseline is None:
                continue
            if baseline.warm(limits):
                return key, baseline
            if first[1] is None:
                first = (key, baseline)
        return first

    def learn(self, value: float, t_ns: int, *keys: tuple, anomalous: bool = False) -> None:
        """A final value of each key: learned, or held back (`Baseline.observe`)."""
        for key in keys:
            self.get(key).observe(value, t_ns, anomalous)

    def drop(self, key: tuple) -> None:
        self.by_key.pop(key, None)

    def __len__(self) -> int:
        return len(self.by_key)


def evaluate(value: float, t_ns: int, baseline: Baseline | None, limits: Limits,
             allowance: float = 0.0) -> tuple[bool, float, float | None]:
    """(anomalous?, score, threshold used) of one value against a baseline and its guard rail.

    Score is value / threshold (>= 1 when anomalous); with a cold baseline only the
    hard limit can flag, and the score is then value / hard limit. `allowance` is added
    to the learned threshold (not to the hard limit): e.g. the largest single call a
    key makes in normal traffic, so that one normal-sized call is never a spike by itself.
    """
    thr = baseline.threshold(t_ns, limits) if baseline is not None else None
    if thr is not None:
        thr += allowance
    hard = limits.hard_crossed(value)
    if thr is not None:
        score = value / thr if thr > 0 else math.inf
        if hard and limits.hard:
            score = max(score, value / limits.hard)
        return value > thr or hard, score, thr
    if limits.hard:
        return hard, value / limits.hard, None
    return False, 0.0, None


def kind_keys(tenant: str, kind: str, *prefix: str) -> list[tuple]:
    """Baseline keys of an agent kind, most specific first: the tenant's kind, the fleet's kind, then the
    tenant's and the fleet's of any kind ("": also all there is when the kind is not known yet)."""
    named = [(*prefix, tenant, kind), (*prefix, "*", kind)] if kind else []
    return named + [(*prefix, tenant, ""), (*prefix, "*", "")]


def judge(value: float, t_ns: int, book: BaselineBook, limits: Limits, keys: list[tuple], certain: bool = True,
          allowance: float = 0.0) -> tuple[bool, float, float | None, tuple | None, Baseline | None]:
    """(anomalous?, score, threshold, key, baseline) of a value against the baselines of `keys`.

    certain: the first warm baseline among `keys` (most specific first) decides. Not certain (what the
    value belongs to is still a guess, e.g. a trace whose root agent has not arrived): anomalous only
    if anomalous against every warm baseline among `keys`, the most lenient decides.
    """
    if certain:
        key, baseline = book.lookup(limits, *keys)
        return (*evaluate(value, t_ns, baseline, limits, allowance), key, baseline)
    warm = [(key, b) for key in keys if (b := book.peek(key)) is not None and b.warm(limits)]
    if not warm:
        return (*evaluate(value, t_ns, None, limits, allowance), None, None)
    verdicts = [(evaluate(value, t_ns, b, limits, allowance), key, b) for key, b in warm]
    (bad, score, thr), key, baseline = min(verdicts, key=lambda v: (v[0][0], v[0][1]))
    return bad, score, thr, key, baseline

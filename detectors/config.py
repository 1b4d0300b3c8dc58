"""Detector settings: `DetectorConfig`, from AGENTWATCH_DETECT_* environment variables.

Every field can be set with AGENTWATCH_DETECT_<FIELD NAME IN UPPER CASE>, e.g.
AGENTWATCH_DETECT_TENANT_BUDGET_USD_PER_MINUTE=25 or
AGENTWATCH_DETECT_QUIET_PERIOD_S=600. Per-tenant budgets:
AGENTWATCH_DETECT_TENANT_BUDGETS="acme=5,globex=12.5" (USD per minute; the
others get tenant_budget_usd_per_minute). A limit of 0 turns that guard rail off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from agentwatch.detectors.baselines import Limits

ENV_PREFIX = "AGENTWATCH_DETECT_"
# the hard guard rails: limits that raise whatever was learned (0 turns one off)
HARD_LIMITS = ("tenant_budget_usd_per_minute", "fanout_max_model_calls", "fanout_max_calls_per_minute",
               "fanout_max_sub_agents", "fanout_max_invocations", "fanout_max_depth", "loop_max_repeats",
               "credential_max_agents", "credential_max_tenants")


@dataclass
class DetectorConfig:
    # --- tailing and checkpoints -----------------------------------------------------------------
    audit_interval_s: float = 60.0  # how often run_forever counts rows stored vs processed (0: never)
    batch_rows: int = 50_000  # rows per table per batch in run_forever
    checkpoint_interval_s: float = 5.0  # run_forever checkpoints at most this often (a crash replays the rest)
    start_at_latest: bool = False  # a worker with no checkpoint starts at the end of the tables, not the start
    # --- event time ----------------------------------------------------------------------------
    window_s: int = 60  # cost windows (cost per minute)
    allowed_lateness_s: float = 600.0  # watermark = max event time seen - this; later rows miss closed windows
    quiet_period_s: float = 300.0  # event time with no anomalous evidence before an anomaly is resolved
    trace_idle_s: float = 300.0  # a trace whose root never arrived is finished this long after its last span
    trace_grace_s: float = 60.0  # a trace whose root arrived (it ends last) is finished this long after its last span
    # --- learned baselines (river) ---------------------------------------------------------------
    baseline_window: int = 60  # values (windows or traces) the rolling mean / variance remember
    sigmas: float = 6.0  # threshold >= mean + sigmas * std
    ratio: float = 3.0  # threshold >= ratio * mean
    peak_factor: float = 1.5  # threshold >= peak_factor * (slowly decaying) peak of normal values
    seasonal_min_days: float = 2.0  # hour-of-day baselines once this much history is learned
    hold_ratio: float = 2.0  # a value over this x mean (and mean + hold_sigmas x std) is held back ...
    hold_sigmas: float = 3.0
    learning_s: float = 3600.0  # ... until it breaks (learned late) or lasts this long (the new normal)
    critical_score: float = 3.0  # score (value / threshold) from which an anomaly is critical
    # --- cost_spike ------------------------------------------------------------------------------
    tenant_budget_usd_per_minute: float = 10.0  # hard guard rail: no tenant may spend more in one window
    tenant_budgets: dict[str, float] = field(default_factory=dict)  # per-tenant overrides
    # floor: below this (per minute of window) no cost spike is raised; kept low so that a small tenant's
    # spike of several times its normal is raised (as a warning: severity follows the money at stake)
    cost_min_usd_per_minute: float = 0.05
    cost_critical_usd: float = 5.0  # a spike is critical when its excess, kept up for the horizon, costs this
    cost_stake_horizon_s: float = 600.0
    cost_agent_min_usd_per_minute: float = 2.0  # floor for one agent kind of a tenant
    cost_long_window_s: int = 600  # the sustained scale: cost per 10 minutes (0: off) ...
    cost_long_ratio: float = 3.0  # ... where noise averages out, so a few times normal is a spike
    cost_ratio: float = 6.0  # cost per minute is heavy-tailed (one long reasoning call): threshold >= 6 x mean
    cost_min_history: int = 10  # minutes learned before a cost baseline may flag
    call_peak_decay: float = 0.9995  # per window: the largest normal single call is remembered ~a day
    # --- budget_forecast -------------------------------------------------------------------------
    # The budget of a period (a UTC day) comes from the same per-tenant budget: the per-minute budget x the
    # period's minutes x this share. The share is below 1 because no minute may pass the per-minute budget
    # (cost_spike), so a full share could never be crossed. 0 turns the forecast off.
    budget_period_share: float = 0.25
    # Explicit budgets per period (USD per UTC day by default), per tenant: "acme=2000,globex=500". A tenant
    # listed here is forecast against this figure instead of the derived one.
    tenant_period_budgets: dict[str, float] = field(default_factory=dict)
    budget_period_s: int = 86_400  # the period spend is summed over, aligned to the epoch (UTC days)
    budget_forecast_half_life_s: float = 3600.0  # memory of the spend-rate fit (level and trend)
    budget_forecast_trend_s: float = 1800.0  # how long a trend is assumed to persist (damped beyond)
    budget_forecast_z: float = 3.0  # the forecast's interval: level and trend +/- z standard errors
    budget_forecast_min_minutes: int = 60  # minutes of a tenant's spend learned before a forecast may raise
    # --- fanout ----------------------------------------------------------------------------------
    fanout_min_history: int = 10  # traces of a root agent kind before its baseline may flag
    fanout_min_model_calls: int = 200  # floors
    fanout_min_calls_per_minute: int = 100
    fanout_min_sub_agents: int = 8
    fanout_min_invocations: int = 10
    fanout_min_depth: int = 4
    fanout_max_model_calls: int = 5_000  # hard guard rails, any agent, any history
    fanout_max_calls_per_minute: int = 1_000
    fanout_max_sub_agents: int = 25
    fanout_max_invocations: int = 50
    fanout_max_depth: int = 8
    # --- loop ------------------------------------------------------------------------------------
    loop_min_history: int = 10  # traces of an agent kind before its baseline may flag
    loop_min_repeats: int = 5  # floor: same tool + same arguments in one trace
    loop_max_repeats: int = 20  # hard guard rail
    # --- novel_trace -----------------------------------------------------------------------------
    novel_min_traces: int = 500  # finished normal traces of an agent kind before its shape model judges (0: off)
    novel_shift_traces: int = 50  # novel traces of a kind within learning_s that make its new normal
    # --- credential_fanout -----------------------------------------------------------------------
    credential_window_s: int = 300
    credential_min_history: int = 10  # windows learned before a credential's baseline may flag
    credential_min_agents: int = 10  # floor: distinct agents in the window
    # traffic bursts bring more agents to every credential at once: fan-out is judged against the most agents
    # the credential had at once (slowly decaying peak) times this, besides mean and spread
    credential_peak_factor: float = 3.0
    # hard guard rail; with stock instrumentation an agent is an agent run (span), and a busy tenant's
    # provider key is used by dozens of runs every few minutes
    credential_max_agents: int = 200
    credential_max_tenants: int = 3  # hard guard rail: distinct tenants using one credential in the window
    credential_idle_ttl_s: float = 7 * 86_400.0  # a credential unused this long (event time) is forgotten
    # --- writing ---------------------------------------------------------------------------------
    update_score_step: float = 1.25  # write a new version when the score rose by this factor ...
    update_last_seen_step_s: float = 60.0  # ... or the condition lasted this much longer

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> DetectorConfig:
        """Defaults, overridden by AGENTWATCH_DETECT_* variables, overridden by keyword arguments."""
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw.strip())
        values.update(overrides)
        return cls(**values)

    def without_hard_limits(self) -> DetectorConfig:
        """The same settings with every hard guard rail off: only the learned baselines (and the
        cross-tenant rule) raise. How detection quality is measured for what the learning does alone."""
        return replace(self, tenant_budgets={}, **{name: 0 for name in HARD_LIMITS})

    # --- limits the detectors use ------------------------------------------------------------------

    def budget_for(self, tenant: str) -> float:
        return self.tenant_budgets.get(tenant, self.tenant_budget_usd_per_minute)

    def limits(self, floor: float, min_history: int, hard: float | None = None, ratio: float | None = None) -> Limits:
        return Limits(floor=floor, sigmas=self.sigmas, ratio=self.ratio if ratio is None else ratio,
                      peak_factor=self.peak_factor, min_history=min_history, hard=hard if hard else None)

    def baseline_options(self) -> dict:
        return {"window": self.baseline_window, "seasonal_min_days": self.seasonal_min_days,
                "hold_ratio": self.hold_ratio, "hold_sigmas": self.hold_sigmas, "learning_s": self.learning_s}


def _parse(name: str, kind, raw: str):
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind.startswith("dict"):
            out = {}
            for part in raw.replace(";", ",").split(","):
                if part.strip():
                    key, _, value = part.partition("=")
                    out[key.strip()] = float(value)
            return out
        if kind == "bool":
            return raw.lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(float(raw))
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
    return raw

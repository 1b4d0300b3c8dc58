"""The novel_trace model on synthetic agent kinds (no database).

Three agent kinds with realistic variation (log-normal calls and tokens per
call, Poisson sub-agents, binomial tool use and errors, a cache-hit fraction
that can fall towards 0) are drawn with several seeds. Every expectation is
derived from the normal sample the test drew (its max, min, quantiles), never
from constants inside the model.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from agentwatch.detectors.shape_model import FEATURES, FLEET, NovelTraceModel, NovelVerdict, _Forest, vector

KINDS = {
    "support": dict(calls=6, calls_sigma=0.5, tool_share=0.6, tools=4, sub_agents=0.0, tin=1500, tout=180,
                    reasoning=0, error_rate=0.01, s_per_call=1.2),
    "research": dict(calls=25, calls_sigma=0.5, tool_share=0.8, tools=8, sub_agents=2.0, tin=6000, tout=400,
                     reasoning=300, error_rate=0.02, s_per_call=3.0),
    "coder": dict(calls=40, calls_sigma=0.7, tool_share=0.9, tools=10, sub_agents=0.3, tin=12000, tout=600,
                  reasoning=800, error_rate=0.05, s_per_call=4.0),
}
SEEDS = (11, 12, 13)
HISTORY = 2000
FRESH = 2000  # fresh normal traces per kind and seed
MAX_FALSE_ALERTS = 0.002


def draw(kind: str, n: int, rng: np.random.Generator) -> list[dict]:
    p = KINDS[kind]
    out = []
    for _ in range(n):
        calls = 1 + int(rng.poisson(p["calls"] * rng.lognormal(0, p["calls_sigma"])))
        tools = int(rng.binomial(calls, p["tool_share"]))
        distinct = min(tools, 1 + int(rng.binomial(p["tools"] - 1, 0.5))) if tools else 0
        subs = int(rng.poisson(p["sub_agents"])) if p["sub_agents"] else 0
        tin = calls * p["tin"] * rng.lognormal(0, 0.35)
        cached = tin * rng.beta(2, 3)
        tout = calls * p["tout"] * rng.lognormal(0, 0.5)
        reasoning = calls * p["reasoning"] * rng.lognormal(0, 0.6) if p["reasoning"] else 0.0
        out.append({
            "model_calls": calls, "tool_calls": tools, "distinct_tools": distinct, "sub_agents": subs,
            "depth": (1 + int(rng.random() < 0.3)) if subs else 0,
            "input_tokens": round(tin), "output_tokens": round(tout), "cached_input_tokens": round(cached),
            "reasoning_tokens": round(reasoning),
            "duration_s": calls * p["s_per_call"] * rng.lognormal(0, 0.3) + tools * 0.3 * rng.lognormal(0, 0.8),
            "cost_usd": (tin - cached) * 3e-6 + cached * 0.3e-6 + (tout + reasoning) * 15e-6,
            "errors": int(rng.binomial(tools, p["error_rate"])) if tools else 0,
        })
    return out


class Fleet:
    """One seed's model, trained on `history` normal traces per kind, with the samples it learned."""

    def __init__(self, seed: int, history: int, **options) -> None:
        self.rng = np.random.default_rng(seed)
        self.model = NovelTraceModel(seed=seed, **options)
        self.normal = {}
        for kind in KINDS:
            self.normal[kind] = draw(kind, history, self.rng)
            for trace in self.normal[kind]:
                self.model.learn(kind, trace)

    def column(self, kind: str, feature: str) -> np.ndarray:
        return np.array([t[feature] for t in self.normal[kind]], dtype=np.float64)


@pytest.fixture(scope="module")
def fleets() -> list[Fleet]:
    # min_traces as in production; one refit when the history is full (instead of nine on the way)
    return [Fleet(seed, HISTORY, min_traces=200, refit_every=HISTORY - 200) for seed in SEEDS]


def _false_alerts(fleets: list[Fleet]) -> tuple[int, int, list[str]]:
    flagged, total, examples = 0, 0, []
    for fleet in fleets:
        for kind in KINDS:
            for trace in draw(kind, FRESH, fleet.rng):
                verdict = fleet.model.score(kind, trace)
                total += 1
                if verdict.novel:
                    flagged += 1
                    examples.append(f"{kind}: {verdict.summary}")
    return flagged, total, examples


# --- (a) quiet on normal traffic -------------------------------------------------------------------------

def test_false_alert_rate_on_fresh_normal_traces(fleets):
    flagged, total, examples = _false_alerts(fleets)
    rate = flagged / total
    print(f"\nnovel_trace false alerts, {HISTORY} normal traces of history: {flagged}/{total} = {rate:.4%}")
    assert rate <= MAX_FALSE_ALERTS, (rate, examples[:10])


def test_false_alert_rate_on_a_kinds_first_model():
    fresh = [Fleet(seed, 200, min_traces=200) for seed in SEEDS]
    assert all(fleet.model.score(kind, fleet.normal[kind][0]).trained_on == 200 for fleet in fresh for kind in KINDS)
    flagged, total, examples = _false_alerts(fresh)
    rate = flagged / total
    print(f"\nnovel_trace false alerts, first model (200 normal traces): {flagged}/{total} = {rate:.4%}")
    assert rate <= MAX_FALSE_ALERTS, (rate, examples[:10])


# --- (b) novel traces are flagged, naming the right features ----------------------------------------------

def _named(verdict: NovelVerdict, feature: str, direction: str | None = None) -> dict | None:
    for finding in verdict.unusual:
        if finding["features"] == [feature] and (direction is None or finding["direction"] == direction):
            return finding
    return None


def test_five_times_the_most_model_calls(fleets):
    for fleet in fleets:
        for kind in KINDS:
            calls = fleet.column(kind, "model_calls")
            for trace in draw(kind, 10, fleet.rng):
                verdict = fleet.model.score(kind, {**trace, "model_calls": 5 * calls.max()})
                assert verdict.novel and verdict.score > 1, (kind, verdict)
                assert "model_calls" in verdict.unusual[0]["features"], verdict.unusual[0]
                finding = _named(verdict, "model_calls", "above")
                assert finding["value"] == 5 * calls.max()
                assert finding["normal_max"] == pytest.approx(calls.max())
                assert finding["normal_min"] == pytest.approx(calls.min())
                assert finding["normal_p50"] == pytest.approx(np.median(calls))
                assert finding["trained_on"] == verdict.trained_on == HISTORY
                assert finding["text"].startswith(f"model_calls {5 * calls.max():,.0f} vs {calls.min():,.0f}-"
                                                  f"{calls.max():,.0f} in {HISTORY:,} normal traces")


def test_many_calls_but_zero_tokens(fleets):
    for fleet in fleets:
        for kind in KINDS:
            calls = fleet.column(kind, "model_calls")
            tokens = fleet.column(kind, "input_tokens")
            assert tokens.min() > 0
            for trace in draw(kind, 10, fleet.rng):
                odd = {**trace, "model_calls": calls.max(), "input_tokens": 0, "output_tokens": 0,
                       "cached_input_tokens": 0, "reasoning_tokens": 0, "cost_usd": 0.0}
                verdict = fleet.model.score(kind, odd)
                assert verdict.novel, (kind, verdict)
                finding = _named(verdict, "input_tokens", "below")
                assert finding is not None, verdict.unusual
                assert finding["normal_min"] == pytest.approx(tokens.min())
                assert _named(verdict, "model_calls") is None  # within its range


def test_an_unseen_combination_of_features_within_their_ranges(fleets):
    """Many calls but few tokens, each within what the kind has done: the pair is named."""
    caught = total = 0
    for fleet in fleets:
        for kind in KINDS:
            calls, tokens = fleet.column(kind, "model_calls"), fleet.column(kind, "input_tokens")
            many, few = np.quantile(calls, 0.99), np.quantile(tokens, 0.01)
            assert calls.min() <= many <= calls.max() and tokens.min() <= few <= tokens.max()
            for trace in draw(kind, 20, fleet.rng):
                verdict = fleet.model.score(kind, {**trace, "model_calls": many, "input_tokens": few})
                total += 1
                if verdict.novel:
                    pairs = [u for u in verdict.unusual if set(u["features"]) == {"input_tokens", "model_calls"}]
                    assert pairs and pairs[0]["direction"] == "below", verdict.unusual
                    assert _named(verdict, "model_calls") is None and _named(verdict, "input_tokens") is None
                    caught += 1
    print(f"\nnovel_trace: {caught}/{total} unseen combinations caught")
    assert caught >= 0.9 * total


def test_a_never_used_number_of_tools(fleets):
    for fleet in fleets:
        for kind in KINDS:
            distinct = fleet.column(kind, "distinct_tools")
            used = 2 * int(distinct.max())
            for trace in draw(kind, 10, fleet.rng):
                verdict = fleet.model.score(kind, {**trace, "distinct_tools": used,
                                                   "tool_calls": max(trace["tool_calls"], used)})
                assert verdict.novel, (kind, verdict)
                finding = _named(verdict, "distinct_tools", "above")
                assert finding is not None, verdict.unusual
                assert finding["normal_max"] == distinct.max() and finding["value"] == used


def test_ordinary_traces_name_nothing(fleets):
    fleet = fleets[0]
    for kind in KINDS:
        median = {f: float(np.median(fleet.column(kind, f))) for f in FEATURES}
        verdict = fleet.model.score(kind, median)
        assert not verdict.novel and verdict.score <= 1 and verdict.unusual == []
        assert 0 < verdict.isolation < verdict.threshold <= 1


# --- (c) deterministic, and a pickle round trip changes nothing --------------------------------------------

def _stream(seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    rows = [(kind, t) for kind in ("support", "coder") for t in draw(kind, 450, rng)]
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def _probes(seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed + 1)
    probes = [(kind, t) for kind in ("support", "coder") for t in draw(kind, 40, rng)]
    probes += [(kind, {**t, "model_calls": 1000}) for kind, t in probes[:10]]
    return probes


def test_same_sequence_same_verdicts_and_pickle_round_trip():
    stream, probes = _stream(5), _probes(5)
    a, b = NovelTraceModel(seed=3), NovelTraceModel(seed=3)
    for kind, trace in stream[:700]:
        a.learn(kind, trace)
        b.learn(kind, trace)
    before = [a.score(kind, t) for kind, t in probes]
    assert before == [b.score(kind, t) for kind, t in probes]
    assert any(v.novel for v in before) and not all(v.novel for v in before)

    blob = pickle.dumps(a)
    kept = sum(a.history(kind) for kind in ("support", "coder"))
    assert len(blob) < 2 * kept * len(FEATURES) * 4 + 20_000  # rows, not forests
    restored = pickle.loads(blob)
    assert [restored.score(kind, t) for kind, t in probes] == before
    for kind, trace in stream[700:]:  # past another refit
        a.learn(kind, trace)
        restored.learn(kind, trace)
    after = [a.score(kind, t) for kind, t in probes]
    assert [restored.score(kind, t) for kind, t in probes] == after
    assert max(v.model_version for v in after) > max(v.model_version for v in before)


# --- (d) cold start ---------------------------------------------------------------------------------------

def test_no_model_before_min_traces_then_the_fleet_stands_in():
    rng = np.random.default_rng(2)
    model = NovelTraceModel(min_traces=120, refit_every=50, fleet=True)
    support = draw("support", 200, rng)
    for trace in support[:119]:
        model.learn("support", trace)
    assert model.score("support", support[150]) is None
    model.learn("support", support[119])
    verdict = model.score("support", support[150])
    assert verdict.trained_on == 120 and verdict.model_version == 1 and verdict.model_kind == "support"
    assert not verdict.fleet

    # a kind with too few traces of its own is judged by the fleet-wide model, and says so
    coder = draw("coder", 30, rng)
    for trace in coder[:10]:
        model.learn("coder", trace)
    stand_in = model.score("coder", {**coder[20], "model_calls": 50_000})
    assert stand_in.fleet and stand_in.model_kind == FLEET and stand_in.trained_on == 120  # refit at 170
    assert stand_in.novel and "whole fleet" in stand_in.summary
    assert NovelTraceModel(min_traces=120).score("coder", coder[20]) is None  # fleet off by default


# --- (e) bounded memory -----------------------------------------------------------------------------------

def test_history_is_a_bounded_ring_of_the_latest_traces():
    rng = np.random.default_rng(4)
    model = NovelTraceModel(min_traces=100, refit_every=100, max_history=300)
    old = [{**t, "model_calls": t["model_calls"] + 100} for t in draw("support", 400, rng)]
    new = draw("support", 400, rng)
    for trace in old + new:
        model.learn("support", trace)
        assert model.history("support") <= 300 + 100
    verdict = model.score("support", new[-1])
    assert verdict.trained_on == 300
    # the model knows only the latest 300: the old traces' many calls are forgotten
    latest = np.array([t["model_calls"] for t in new[-300:]], dtype=float)
    assert model.score("support", old[0]).novel
    finding = _named(model.score("support", {**new[-1], "model_calls": 10 * latest.max()}), "model_calls")
    assert finding["normal_max"] == latest.max()


def test_kinds_beyond_max_kinds_are_forgotten_least_recently_used_first():
    rng = np.random.default_rng(6)
    model = NovelTraceModel(min_traces=20, refit_every=20, max_history=40, max_kinds=3)
    traces = draw("support", 20, rng)
    for name in ("a", "b", "c"):
        for trace in traces:
            model.learn(name, trace)
    assert model.score("a", traces[0]) is not None  # "a" is now the most recently used
    model.learn("d", traces[0])
    assert len(model) == 3 and "b" not in model and "a" in model and "d" in model
    assert model.score("b", traces[0]) is None


# --- pieces -----------------------------------------------------------------------------------------------

def test_missing_or_invalid_features_are_zero():
    row = vector({"model_calls": 3, "cost_usd": None, "errors": -1, "duration_s": math.nan, "unknown": 5})
    assert row.tolist() == [3.0] + [0.0] * (len(FEATURES) - 1)


def test_a_kind_whose_traces_never_vary():
    model = NovelTraceModel(min_traces=50)
    same = {"model_calls": 4, "tool_calls": 2, "distinct_tools": 1, "input_tokens": 4000, "duration_s": 3.0}
    for _ in range(60):
        model.learn("cron", same)
    assert not model.score("cron", same).novel
    verdict = model.score("cron", {**same, "model_calls": 9})
    assert verdict.novel and verdict.unusual[0]["feature"] == "model_calls"


def test_flattened_forest_scores_like_scikit_learn():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    X = np.log1p(rng.lognormal(3, 1, (600, len(FEATURES)))).astype(np.float32)
    forest = IsolationForest(n_estimators=50, max_samples=256, random_state=7).fit(X)
    Y = np.vstack([X[:100], X[:100] * 1.5, rng.normal(0, 5, (100, len(FEATURES))).astype(np.float32)])
    assert np.allclose(_Forest(forest).anomaly(Y), -forest.score_samples(Y), rtol=0, atol=1e-12)


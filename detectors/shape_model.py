"""The shape model behind novel_trace: what finished traces of an agent kind look like.

Per agent kind, `NovelTraceModel` keeps the most recent finished traces judged
normal, as the twelve `FEATURES` of their shape on a log1p scale (they are
heavy-tailed counts, tokens, seconds and money), and every `refit_every` of
them fits a scikit-learn `IsolationForest`. A finished trace is judged against
its kind's model; a novel one comes with what made it unusual, in words an
on-call person reads at a glance: "model_calls 480 vs 8-40 in 1,200 normal
traces (median 19), far above".

A trace is novel in one of two ways, because the forest sees only one of them:

- **beyond the range**: a feature past anything the kind's normal traces had,
  by a clear margin (5x the most model calls, zero tokens, a never-used number
  of tools). Every split of a forest lies inside its training range, so a value
  5x past the largest lands in the same leaf as the largest and scores like
  it: the forest cannot tell "at the edge" from "far past it" (measured: such
  traces score below the forest's own threshold). The range test can, and it
  decides these alone.
- **an unseen combination**: many calls but few tokens, each within its own
  range. This is what the forest is for. It is fitted on the features rotated
  onto their principal axes (`_Whitening`; a forest splits one axis at a time
  and on the raw features barely sees a broken correlation); the trace must
  score past the forest's threshold, and the ratio of some pair of features
  must lie outside anything the kind's normal traces had, by a clear margin:
  that pair is what the verdict names ("input_tokens/model_calls 52 vs
  210-880"). The forest saturates here too (a trace far past the range of a
  ratio scores like the edge of it), so a ratio outside by twice the margin
  (`pair_alone`) is novel whatever the forest says.

Why this stays quiet on normal traffic (a detector that flags 1 % of 100,000
traces a day gets switched off) is set out where the thresholds are made
(`_ranges`, `NovelTraceModel._fit`).

Everything is deterministic: refits happen every `refit_every` learned traces
of a kind, never on a clock, and a forest's random state derives from the seed
and the kind. Memory is bounded: per kind the latest `max_history` normal traces
(plus those learned since the last refit), at most `max_kinds` kinds (the least
recently used is forgotten), about 0.6 MB per kind with a model. The object
pickles into the worker's checkpoint without its forests (about 0.1 MB per
kind): after a restore a kind's model is refitted from the same rows with the
same random state, so it gives the same verdicts. Feed `learn` only traces
judged normal (not the novel ones), or an incident teaches the model that the
incident is normal.

    >>> import random
    >>> rng = random.Random(1)
    >>> def trace(calls):
    ...     return {"model_calls": calls, "tool_calls": calls // 2, "distinct_tools": 3,
    ...             "input_tokens": calls * rng.randint(900, 1100), "output_tokens": calls * rng.randint(80, 120),
    ...             "duration_s": calls * rng.uniform(1.0, 2.0), "cost_usd": calls * 0.004}
    >>> model = NovelTraceModel(min_traces=200, seed=0)
    >>> for _ in range(400):
    ...     model.learn("support", trace(rng.randint(8, 40)))
    >>> model.score("billing", trace(20)) is None    # no model for a kind before min_traces
    True
    >>> model.score("support", trace(20)).novel
    False
    >>> verdict = model.score("support", trace(480))
    >>> verdict.novel, verdict.score > 1, verdict.trained_on, verdict.model_version
    (True, True, 400, 2)
    >>> finding = verdict.unusual[0]
    >>> finding["feature"], finding["direction"], finding["value"], finding["normal_min"], finding["normal_max"]
    ('model_calls', 'above', 480.0, 8.0, 40.0)
    >>> finding["text"]
    'model_calls 480 vs 8-40 in 400 normal traces (median 24), far above'
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

FEATURES = ("model_calls", "tool_calls", "distinct_tools", "sub_agents", "depth", "input_tokens", "output_tokens",
            "cached_input_tokens", "reasoning_tokens", "duration_s", "cost_usd", "errors")
FLEET = "*"  # the fleet-wide model's kind
_N = len(FEATURES)
_PAIRS = np.array(list(combinations(range(_N), 2)), dtype=np.intp)  # (66, 2), a < b
_PAIR_MIN_DISTINCT = 10  # a feature enters ratios only if it took this many values (a ratio of small counts
#                          such as errors per depth means nothing to a person and is noise)
_QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
# Units before log1p: money in micro-USD and time in milliseconds, so that log1p is a logarithm for them as
# for tokens (a trace's cost is mostly well under a dollar, where log1p(USD) would be nearly linear).
_UNIT = np.array([1e6 if name == "cost_usd" else 1e3 if name == "duration_s" else 1.0 for name in FEATURES])
_MAX_FINDINGS = 12


@dataclass(frozen=True)
class NovelVerdict:
    """How one finished trace compares with what its agent kind (or the fleet) has done.

    novel: the trace is unlike anything the kind's normal traces did.
    score: how unusual, relative to the thresholds, comparable across kinds: > 1 exactly when novel.
        Past a feature's range it is how far past, in margins (2: twice the margin beyond the largest
        normal value); for an unseen combination, the smaller of the forest score (1 at its threshold,
        0 at the kind's median trace) and the pair's distance in margins, or that distance over
        `pair_alone` (2) when larger.
    threshold: the forest's anomaly-score threshold for the kind (scores are in (0, 1], ~0.45 ordinary).
    isolation: the forest's anomaly score of this trace.
    unusual: what made it unusual, farthest outside first: dicts with `feature` (a name, or "b/a" for
        the ratio of two: b per a, as (1 + b) / (1 + a) in counts, micro-USD and milliseconds, converted
        back to the features' units), `features` (the names), `value`, `direction` ("above" or
        "below"), `normal_min`, `normal_p05`, `normal_p50`, `normal_p95`, `normal_max` (of the kind's
        normal traces), `trained_on`, `margins` (how far outside, in margins: > 1) and `text`.
        Empty when the trace is not novel.
    trained_on: normal traces the model was fitted on.
    model_version: refits of that model so far.
    model_kind: the kind whose model judged; "*" when the fleet-wide model stood in for a kind
        without a model of its own (`fleet` is then True).
    """

    novel: bool
    score: float
    threshold: float
    isolation: float
    unusual: list[dict] = field(default_factory=list)
    trained_on: int = 0
    model_version: int = 0
    model_kind: str = ""

    @property
    def fleet(self) -> bool:
        return self.model_kind == FLEET

    @property
    def summary(self) -> str:
        """One line for an alert: the three farthest-out findings."""
        parts = [u["text"] for u in self.unusual[:3]]
        if self.fleet:
            parts.append("judged against the whole fleet (no model of its own kind yet)")
        return "; ".join(parts)


def vector(features: Mapping[str, float]) -> np.ndarray:
    """The raw feature row of a trace, in `FEATURES` order: a missing, None, NaN or negative value is 0."""
    row = np.zeros(_N)
    for i, name in enumerate(FEATURES):
        v = features.get(name)
        if v is not None:
            v = float(v)
            row[i] = v if v > 0 and math.isfinite(v) else 0.0
    return row


def _log(raw: np.ndarray) -> np.ndarray:
    """Raw rows (float32, as stored) on the models' scale: log1p of the counts, micro-USD, milliseconds."""
    return np.log1p(np.asarray(raw, dtype=np.float32).astype(np.float64) * _UNIT)


def _c(n: np.ndarray) -> np.ndarray:
    """The forest's c(n): average path length of an unsuccessful search in a binary search tree of n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class _Whitening:
    """Standardize the log1p features and rotate them onto their principal axes, each scaled to unit
    variance (floored, so a near-exact relation is not blown up). A forest splits one axis at a time:
    on the raw features it barely notices a broken correlation (many calls but few tokens, each within
    its range); on the principal axes such a trace lies far out on a minor axis."""

    def __init__(self, log: np.ndarray, floor: float = 0.01) -> None:
        self.mean = log.mean(axis=0)
        sd = log.std(axis=0)
        self.sd = np.where(sd > 1e-9, sd, 1.0)
        _, s, vt = np.linalg.svd((log - self.mean) / self.sd, full_matrices=False)
        var = s ** 2 / len(log)
        keep = var > 1e-9 * max(float(var.sum()), 1e-12)
        keep[0] = True
        self.rotation = vt[keep].T / np.sqrt(np.maximum(var[keep], floor))

    def __call__(self, log: np.ndarray) -> np.ndarray:
        return (((log - self.mean) / self.sd) @ self.rotation).astype(np.float32)


class _Forest:
    """A fitted IsolationForest flattened into padded arrays: one trace scores in ~0.1 ms, with no
    per-tree Python call, and the scores equal `-IsolationForest.score_samples`."""

    def __init__(self, forest) -> None:
        trees = [est.tree_ for est in forest.estimators_]
        shape = (len(trees), max(t.node_count for t in trees))
        self.feature = np.full(shape, -1, dtype=np.int8)  # -1: a leaf
        self.threshold = np.zeros(shape)
        index = np.int16 if shape[1] < 2 ** 15 else np.int32
        self.left = np.zeros(shape, dtype=index)
        self.right = np.zeros(shape, dtype=index)
        self.path = np.zeros(shape)  # at a leaf: its depth + c(training points that reached it)
        for k, t in enumerate(trees):
            n = t.node_count
            leaf = t.children_left[:n] < 0
            self.feature[k, :n] = np.where(leaf, -1, t.feature[:n])
            self.threshold[k, :n] = t.threshold[:n]
            self.left[k, :n] = np.where(leaf, 0, t.children_left[:n])
            self.right[k, :n] = np.where(leaf, 0, t.children_right[:n])
            inner = np.flatnonzero(~leaf)
            depth = np.zeros(n)
            for _ in range(int(t.max_depth)):  # one level per pass
                depth[t.children_left[inner]] = depth[inner] + 1
                depth[t.children_right[inner]] = depth[inner] + 1
            self.path[k, :n] = depth + _c(t.n_node_samples[:n])
        self.depth = max(int(t.max_depth) for t in trees)
        self.norm = len(trees) * float(_c(np.array([forest.max_samples_]))[0])

    def anomaly(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores in (0, 1] of rows X: ~0.45 ordinary, towards 1 easily isolated."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        trees = np.arange(self.feature.shape[0])[None, :]
        rows = np.arange(X.shape[0])[:, None]
        node = np.zeros((X.shape[0], self.feature.shape[0]), dtype=np.intp)
        for _ in range(self.depth):
            f = self.feature[trees, node]
            inner = f >= 0
            if not inner.any():
                break
            go_left = X[rows, np.maximum(f, 0)] <= self.threshold[trees, node]
            node = np.where(inner, np.where(go_left, self.left[trees, node], self.right[trees, node]), node)
        if self.norm == 0:
            return np.ones(X.shape[0])
        return 2.0 ** (-self.path[trees, node].sum(axis=1) / self.norm)


def _ranges(x: np.ndarray, central: float, tail: float, floor: float):
    """Per column of x: min, max, and the margins below the min and above the max past which a value is
    clearly outside the range.

    A margin is the largest of `floor`, `central` x (95th - 5th percentile) and `tail` x the distance from
    that side's 5 % quantile to its extreme. Why: a fresh normal value falls past the largest of n normal
    values with probability 1 / (n + 1) on each side of each feature (0.5 % per side at n = 200), far too
    often for 12 features and 66 ratios; the margin pushes the bar out to where a normal value rarely
    reaches. The central term scales with the feature's spread (~1.3 standard deviations of a
    log-normal, more at small n, see `_fit`); the tail term gives a long tail (a ratio that can fall
    towards 0, a count with rare bursts), whose extremes lie far from its bulk, a proportionally longer
    margin; the floor (x1.5) keeps a count that barely varies from alerting on one more or one less.
    """
    if x.shape[1] == 0:
        e = np.zeros(0)
        return e, e, e, e
    lo, q05, q95, hi = np.quantile(x, [0.0, 0.05, 0.95, 1.0], axis=0)
    base = np.maximum(floor, central * (q95 - q05))
    return lo, hi, np.maximum(base, tail * (q05 - lo)), np.maximum(base, tail * (hi - q95))


class _Fitted:
    """A kind's fitted model: whitening, forest and its threshold, the ranges of features and ratios."""

    def __init__(self, whiten: _Whitening, forest: _Forest, threshold: float, median: float, raw: np.ndarray,
                 log: np.ndarray, margins: tuple[float, float, float]) -> None:
        self.whiten = whiten
        self.forest = forest
        self.threshold = threshold
        self.median = median
        self.n = len(log)
        self.lo, self.hi, self.m_lo, self.m_hi = _ranges(log, *margins)
        self.raw_q = np.quantile(raw, _QUANTILES, axis=0)  # for the verdict's words
        many = np.array([len(np.unique(log[:, i])) >= _PAIR_MIN_DISTINCT for i in range(_N)])
        self.pairs = _PAIRS[many[_PAIRS[:, 0]] & many[_PAIRS[:, 1]]]
        d = log[:, self.pairs[:, 1]] - log[:, self.pairs[:, 0]]  # log((1 + b) / (1 + a))
        self.d_lo, self.d_hi, self.dm_lo, self.dm_hi = _ranges(d, *margins)
        self.d_q = _ratio(np.quantile(d, _QUANTILES, axis=0), self.pairs) if len(self.pairs) else np.zeros((5, 0))


class _Kind:
    """A kind's latest normal traces (raw, float32): the current model's training rows and those since."""

    def __init__(self) -> None:
        self.train = np.zeros((0, _N), dtype=np.float32)
        self.pending: list[np.ndarray] = []
        self.version = 0
        self.model: _Fitted | None = None

    def __len__(self) -> int:
        return len(self.train) + len(self.pending)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["model"] = None  # refitted from `train` when next needed: same rows, same random state
        return state


class NovelTraceModel:
    """Per agent kind, an isolation forest over the shape of its normal finished traces.

    min_traces: normal traces a kind needs before it has a model (until then `score` gives None, or
        the fleet-wide model's verdict when `fleet` is on).
    refit_every: a kind's model is refitted after this many more normal traces.
    max_history: the most traces a model is fitted on: the kind's latest normal traces.
    max_kinds: kinds remembered; past it the least recently used (learned or scored) is forgotten.
    fleet: also fit a fleet-wide model ("*") on the latest traces of all kinds, to judge a kind that
        has no model yet. Off by default: a new kind unlike the rest would be flagged trace after trace.
    seed: the forests' random states derive from it and the kind.
    n_estimators, max_samples: the forests' size (a refit on 2,000 traces: ~0.15 s of CPU, bench/novel_trace.py).
    margin, tail_margin, min_margin: how far past the normal range is "clearly outside" (`_ranges`).
    isolation_quantile, isolation_margin: the forest's threshold (`_fit`).
    pair_alone: a ratio this many margins outside its range is novel whatever the forest says.
    below: a feature far below its range is novel on its own too. Off by default: a trace that did less
        than ever (one tool call where three are usual, no reasoning tokens) is rarely an incident and,
        over 12 features, often seen; doing less counts only when the forest also finds the trace unusual.
    """

    def __init__(self, *, min_traces: int = 200, refit_every: int = 200, max_history: int = 2000,
                 max_kinds: int = 256, fleet: bool = False, seed: int = 0, n_estimators: int = 100,
                 max_samples: int = 256, margin: float = 0.4, tail_margin: float = 0.75,
                 min_margin: float = math.log(1.5), isolation_quantile: float = 0.99,
                 isolation_margin: float = 0.25, pair_alone: float = 2.0, below: bool = False) -> None:
        if not 2 <= min_traces <= max_history:
            raise ValueError("need 2 <= min_traces <= max_history")
        if refit_every < 1 or max_kinds < 1:
            raise ValueError("refit_every and max_kinds must be positive")
        self.min_traces = min_traces
        self.refit_every = refit_every
        self.max_history = max_history
        self.max_kinds = max_kinds
        self.fleet = fleet
        self.seed = seed
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.margin = margin
        self.tail_margin = tail_margin
        self.min_margin = min_margin
        self.isolation_quantile = isolation_quantile
        self.isolation_margin = isolation_margin
        self.pair_alone = pair_alone
        self.below = below
        self.kinds: OrderedDict[str, _Kind] = OrderedDict()  # least recently used first
        self.fleet_kind = _Kind()

    # --- learning -----------------------------------------------------------------------------------

    def learn(self, kind: str, features: Mapping[str, float]) -> None:
        """Add a finished trace judged normal to the kind's history; refit the kind's model when due."""
        row = vector(features).astype(np.float32)
        k = self.kinds.get(kind)
        if k is None:
            k = self.kinds[kind] = _Kind()
            while len(self.kinds) > self.max_kinds:
                self.kinds.popitem(last=False)
        else:
            self.kinds.move_to_end(kind)
        self._add(kind, k, row)
        if self.fleet:
            self._add(FLEET, self.fleet_kind, row)

    def _add(self, kind: str, k: _Kind, row: np.ndarray) -> None:
        k.pending.append(row)
        if len(k) >= self.min_traces and (k.version == 0 or len(k.pending) >= self.refit_every):
            k.train = np.vstack([k.train, np.stack(k.pending)])[-self.max_history:]
            k.pending = []
            k.version += 1
            k.model = self._fit(kind, k.train)

    def _fit(self, kind: str, train: np.ndarray) -> _Fitted:
        from sklearn.ensemble import IsolationForest

        log = _log(train)
        whiten = _Whitening(log)
        z = whiten(log)
        state = np.random.SeedSequence([self.seed, zlib.crc32(kind.encode())]).generate_state(1)[0]
        forest = _Forest(IsolationForest(n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(z)),
                                         random_state=int(state)).fit(z))
        # The decision rule, and why it stays quiet on normal traffic:
        # - the forest's threshold comes from the kind's own traces: the 99th percentile of their anomaly
        #   scores, plus a quarter of the way from their median up to it. Alone it would still flag ~1 %
        #   of normal traffic (100s of alerts a day), so it is never enough on its own: a trace is novel
        #   as a combination only if, besides, the ratio of some pair of features is clearly outside
        #   (`_ranges`) anything the kind's normal traces had; normal traces rarely meet both.
        # - a feature clearly outside its range is novel without the forest, and so is a ratio outside by
        #   twice the margin (`pair_alone`): the forest's splits all lie inside the training range, so it
        #   scores "5x past the largest" like "the largest" (below its threshold, measured) and cannot
        #   be the judge there. The margins make these rare on normal traffic (`_ranges`).
        # Measured on synthetic kinds (tests/test_novel_trace.py): ~0.01 % of fresh normal traces
        # flagged with 2,000 traces of history, ~0.1 % on a kind's first model (200 traces).
        scores = forest.anomaly(z)
        median = float(np.median(scores))
        q = float(np.quantile(scores, self.isolation_quantile))
        threshold = q + self.isolation_margin * (q - median)
        # The ranges of a small sample are narrow: widen the margins by sqrt(1 + min_traces / n), like the
        # learned baselines' bands (x1.41 on a kind's first model, x1.05 on 2,000 traces).
        widen = math.sqrt(1.0 + self.min_traces / len(log))
        return _Fitted(whiten, forest, threshold, median, train.astype(np.float64), log,
                       (self.margin * widen, self.tail_margin, self.min_margin))

    def _model(self, kind: str, k: _Kind) -> _Fitted:
        if k.model is None:  # restored from a checkpoint: refit, identically
            k.model = self._fit(kind, k.train)
        return k.model

    # --- judging ------------------------------------------------------------------------------------

    def score(self, kind: str, features: Mapping[str, float]) -> NovelVerdict | None:
        """Verdict for a finished trace of agent kind `kind` (None: no fitted model for the kind yet)."""
        k = self.kinds.get(kind)
        if k is not None:
            self.kinds.move_to_end(kind)
        model_kind = kind
        if k is None or k.version == 0:
            if not (self.fleet and self.fleet_kind.version > 0):
                return None
            k, model_kind = self.fleet_kind, FLEET
        m = self._model(model_kind, k)
        raw = vector(features)
        log = _log(raw)
        isolation = float(m.forest.anomaly(m.whiten(log[None, :]))[0])
        forest = (isolation - m.median) / (m.threshold - m.median) if m.threshold > m.median else 0.0

        # how far outside the normal range, in margins (<= 0: inside)
        f_out = np.maximum((log - m.hi) / m.m_hi, (m.lo - log) / m.m_lo)
        d = log[m.pairs[:, 1]] - log[m.pairs[:, 0]]
        d_out = np.maximum((d - m.d_hi) / m.dm_hi, (m.d_lo - d) / m.dm_lo)
        # a ratio is evidence of a combination only when both its features are within their ranges
        # (zero tokens makes every "per token" ratio absurd: "input_tokens 0" says it)
        d_out[(f_out[m.pairs[:, 0]] > 1.0) | (f_out[m.pairs[:, 1]] > 1.0)] = -math.inf
        # a feature above its range counts alone; one below it (doing less than ever) only if `below`, or if
        # the forest finds the whole unusual too (zero tokens over as many calls as ever)
        alone = f_out if self.below or forest > 1.0 else (log - m.hi) / m.m_hi
        beyond = float(alone.max())
        pair = float(d_out.max()) if len(d_out) else -math.inf
        combination = max(min(forest, pair), pair / self.pair_alone)
        score = max(beyond, combination)

        unusual = [_finding(FEATURES[i], (FEATURES[i],), raw[i], log[i] > m.hi[i], m.raw_q[:, i], m.n, f_out[i])
                   for i in np.flatnonzero(alone > 1.0)]
        if forest > 1.0 or pair > self.pair_alone:
            for p in np.flatnonzero(d_out > (1.0 if forest > 1.0 else self.pair_alone)):
                a, b = FEATURES[m.pairs[p, 0]], FEATURES[m.pairs[p, 1]]
                value = float(_ratio(d[p], m.pairs[p]))
                unusual.append(_finding(f"{b}/{a}", (b, a), value, d[p] > m.d_hi[p], m.d_q[:, p], m.n, d_out[p]))
        unusual.sort(key=lambda u: -u["margins"])
        del unusual[_MAX_FINDINGS:]
        return NovelVerdict(novel=score > 1.0, score=score, threshold=round(m.threshold, 6),
                            isolation=round(isolation, 6), unusual=unusual, trained_on=m.n,
                            model_version=k.version, model_kind=model_kind)

    # --- introspection ------------------------------------------------------------------------------

    def history(self, kind: str) -> int:
        """Normal traces kept for a kind: its model's training rows and those learned since."""
        k = self.fleet_kind if kind == FLEET else self.kinds.get(kind)
        return 0 if k is None else len(k)

    def __contains__(self, kind: str) -> bool:
        return kind in self.kinds

    def __len__(self) -> int:
        return len(self.kinds)


def _ratio(d: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """A pair's log((1 + b) / (1 + a)) (in model units) as a ratio b / a in the features' own units."""
    pairs = np.asarray(pairs)
    return np.exp(d) * _UNIT[pairs[..., 0]] / _UNIT[pairs[..., 1]]


def _finding(name: str, names: tuple[str, ...], value: float, above: bool, q: np.ndarray, n: int,
             margins: float) -> dict:
    lo, p05, p50, p95, hi = (float(x) for x in q)
    where = "above" if above else "below"
    return {"feature": name, "features": list(names), "value": float(value), "direction": where,
            "normal_min": lo, "normal_p05": p05, "normal_p50": p50, "normal_p95": p95, "normal_max": hi,
            "trained_on": n, "margins": round(float(margins), 3),
            "text": f"{name} {_fmt(value)} vs {_fmt(lo)}-{_fmt(hi)} in {n:,} normal traces "
                    f"(median {_fmt(p50)}), far {where}"}


def _fmt(x: float) -> str:
    """A number for people: 480, 1,200, 0.0123, 3.5."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}"

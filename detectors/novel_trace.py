"""novel_trace: a finished trace unlike anything its agent kind has done.

Per agent kind, `NovelTraceModel` keeps the most recent finished traces judged
normal (their shape: the twelve `FEATURES`, on a log1p scale, since they are
heavy-tailed counts, tokens, seconds and money) and periodically fits a
scikit-learn `IsolationForest` on them. A finished trace is then judged against
its kind's model and, when novel, the verdict names what made it unusual, in
terms an on-call person reads at a glance: "model_calls 480 vs 8-40 in 1,200
normal traces".

Two kinds of novelty, because an isolation forest sees only one of them:

- a feature beyond anything the kind has done, by a clear margin (5x the model
  calls, zero tokens, a never-used number of tools). Every split of the forest
  lies inside the training range, so a value 5x past the largest lands in the
  same leaf as the largest and scores like it: the forest cannot tell "at the
  edge" from "far past it". The range test with a margin can, and it is the
  one that decides here.
- a combination the kind has never made (many calls but few tokens, each within
  its own range). This is what the forest is for: the trace must score past the
  forest's threshold, and some pair of features must have a ratio outside
  anything the kind's normal traces had (the pair the verdict names).

How it stays quiet on normal traffic (a detector that flags 1 % of 100,000
traces a day is switched off) is set out where the thresholds are computed
(`_fit`). Everything is deterministic (refits happen every `refit_every`
learned traces of a kind, never on a clock; the forest's random state derives
from the seed and the kind), bounded (a ring of the latest `max_history`
traces per kind, at most `max_kinds` kinds, least recently used forgotten) and
pickles small (forests are left out of the pickle and refitted, identically,
from the stored training rows when next needed).

    >>> import random
    >>> rng = random.Random(1)
    >>> model = NovelTraceModel(min_traces=200, seed=0)
    >>> def trace(calls):
    ...     return {"model_calls": calls, "tool_calls": calls // 2, "distinct_tools": 3,
    ...             "input_tokens": calls * rng.randint(900, 1100), "output_tokens": calls * rng.randint(80, 120),
    ...             "duration_s": calls * rng.uniform(1.0, 2.0), "cost_usd": calls * 0.004}
    >>> for _ in range(300):
    ...     model.learn("support", trace(rng.randint(8, 40)))
    >>> model.score("support", trace(20)).novel
    False
    >>> verdict = model.score("support", trace(480))
    >>> verdict.novel, verdict.unusual[0]["feature"], verdict.unusual[0]["direction"]
    (True, 'model_calls', 'above')
    >>> verdict.trained_on, verdict.model_version
    (300, 1)
    >>> model.score("billing", trace(20)) is None   # no model for a kind before min_traces
    True
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
N_FEATURES = len(FEATURES)
_PAIRS = np.array(list(combinations(range(N_FEATURES), 2)), dtype=np.intp)  # (66, 2): i < j


@dataclass(frozen=True)
class NovelVerdict:
    """How one finished trace compares with what its agent kind (or the fleet) has done.

    score: how unusual, relative to the thresholds, comparable across kinds: > 1 exactly when novel.
        For a trace beyond a feature's range it is how far beyond, in margins (2: twice the margin past
        the largest normal value); for an unseen combination, the smaller of the forest score over its
        threshold and the pair's distance in margins.
    threshold: the forest's anomaly-score threshold for this kind (scores in (0, 1], 0.5 is ordinary).
    isolation: this trace's forest anomaly score.
    unusual: what made it unusual, farthest outside first; each a dict with `feature` (a name, or
        "a/b" for the ratio of two), `features`, `value`, `direction` ("above" or "below"),
        `normal_min`, `normal_p05`, `normal_p50`, `normal_p95`, `normal_max`, `trained_on`,
        `margins` (how far past the normal range, in margins; > 1 is past the margin) and `text`.
        Empty when nothing is outside the normal range.
    trained_on: normal traces the model was fitted on.
    model_version: refits of that model so far.
    model_kind: the kind whose model judged ("*": the fleet-wide model, standing in for a kind
        without its own yet).
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
            parts.append("judged by the fleet-wide model (no model of its own kind yet)")
        return "; ".join(parts)


def vector(features: Mapping[str, float]) -> np.ndarray:
    """The raw feature row (float64) of a trace: a missing, None, NaN or negative value is 0."""
    row = np.zeros(N_FEATURES)
    for i, name in enumerate(FEATURES):
        v = features.get(name)
        if v is None:
            continue
        v = float(v)
        row[i] = v if v > 0 and math.isfinite(v) else 0.0
    return row


def _c(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful search in a binary search tree of n points (the forest's c(n))."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class _Forest:
    """A fitted IsolationForest flattened into padded numpy arrays: scores one row in ~0.1 ms (no
    per-tree Python calls) and gives the same scores as `IsolationForest.score_samples` (negated)."""

    def __init__(self, forest) -> None:
        trees = [est.tree_ for est in forest.estimators_]
        width = max(t.node_count for t in trees)
        shape = (len(trees), width)
        self.feature = np.full(shape, -1, dtype=np.int8)
        self.threshold = np.zeros(shape)
        self.left = np.zeros(shape, dtype=np.int16)
        self.right = np.zeros(shape, dtype=np.int16)
        self.path = np.zeros(shape)  # at a leaf: its depth + c(training points in it)
        for k, t in enumerate(trees):
            n = t.node_count
            leaf = t.children_left[:n] < 0
            self.feature[k, :n] = np.where(leaf, -1, t.feature[:n])
            self.threshold[k, :n] = t.threshold[:n]
            self.left[k, :n] = np.where(leaf, 0, t.children_left[:n])
            self.right[k, :n] = np.where(leaf, 0, t.children_right[:n])
            self.path[k, :n] = t.compute_node_depths()[:n] - 1.0 + _c(t.n_node_samples[:n])
        self.depth = int(max(t.max_depth for t in trees))
        self.norm = len(trees) * float(_c(np.array([forest.max_samples_]))[0])

    def anomaly(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores in (0, 1] of rows X (log1p scale, float32): 0.5 ordinary, towards 1 isolated."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        trees = np.arange(self.feature.shape[0])[None, :]
        node = np.zeros((X.shape[0], self.feature.shape[0]), dtype=np.intp)
        rows = np.arange(X.shape[0])[:, None]
        for _ in range(self.depth):
            f = self.feature[trees, node]
            inner = f >= 0
            if not inner.any():
                break
            go_left = X[rows, np.maximum(f, 0)] <= self.threshold[trees, node]
            nxt = np.where(go_left, self.left[trees, node], self.right[trees, node])
            node = np.where(inner, nxt, node)
        depths = self.path[trees, node].sum(axis=1)
        if self.norm == 0:
            return np.ones(X.shape[0])
        return 2.0 ** (-depths / self.norm)


class _Whitening:
    """Standardize the log1p features and rotate them onto their principal axes, each scaled to unit
    variance (floored, so near-exact relations are not blown up). An isolation forest splits one
    feature at a time, so on raw features it barely sees a broken correlation (many calls but few
    tokens, each within its range); on the principal axes such a trace is far out on a minor axis."""

    def __init__(self, log: np.ndarray, floor: float = 0.01) -> None:
        self.mean = log.mean(axis=0)
        sd = log.std(axis=0)
        self.sd = np.where(sd > 1e-9, sd, 1.0)
        Z = (log - self.mean) / self.sd
        _, s, vt = np.linalg.svd(Z, full_matrices=False)
        var = s ** 2 / len(Z)
        keep = var > 1e-9 * max(var.sum(), 1e-12)
        if not keep.any():
            keep[0] = True
        self.rotation = vt[keep].T / np.sqrt(np.maximum(var[keep], floor))

    def __call__(self, log: np.ndarray) -> np.ndarray:
        return (((log - self.mean) / self.sd) @ self.rotation).astype(np.float32)


class _Fitted:
    """One kind's fitted model: the forest, its threshold, and the ranges of features and ratios."""

    def __init__(self, whiten: _Whitening, forest: _Forest, threshold: float, median: float, raw: np.ndarray,
                 log: np.ndarray, margins: tuple[float, float, float], pair_min_distinct: int) -> None:
        self.whiten = whiten
        self.forest = forest
        self.threshold = threshold
        self.median = median
        self.n = log.shape[0]
        # features: the range of the log1p values, and the margins past it that count as "clearly outside"
        self.lo, self.hi, self.m_lo, self.m_hi = _ranges(log, *margins)
        self.raw_q = np.quantile(raw, [0.0, 0.05, 0.5, 0.95, 1.0], axis=0)  # for the verdict's words
        # pairs: log((1 + b) / (1 + a)) for features a < b that take many values in the kind's traces
        # (a ratio of two small counts, errors per depth, means nothing to a person and is noisy)
        many = np.array([len(np.unique(log[:, i])) >= pair_min_distinct for i in range(N_FEATURES)])
        self.pairs = _PAIRS[many[_PAIRS[:, 0]] & many[_PAIRS[:, 1]]]
        d = log[:, self.pairs[:, 1]] - log[:, self.pairs[:, 0]]
        self.d_lo, self.d_hi, self.dm_lo, self.dm_hi = _ranges(d, *margins)
        self.d_q = np.exp(np.quantile(d, [0.0, 0.05, 0.5, 0.95, 1.0], axis=0))


def _ranges(x: np.ndarray, central: float, tail: float, floor: float):
    """Per column: min, max, and the margins below the min and above the max that count as clearly outside.

    A margin is the largest of `floor`, `central` x (95th - 5th percentile) and `tail` x the distance from
    that side's 5 % quantile to its extreme: a long tail (a ratio that can fall towards 0, a count with
    rare bursts) gets a proportionally longer margin than a tight one."""
    if x.shape[1] == 0:
        e = np.zeros(0)
        return e, e, e, e
    lo, q05, q95, hi = np.quantile(x, [0.0, 0.05, 0.95, 1.0], axis=0)
    base = np.maximum(floor, central * (q95 - q05))
    return lo, hi, np.maximum(base, tail * (q05 - lo)), np.maximum(base, tail * (hi - q95))


class _Kind:
    """One kind's recent normal traces: the rows of the current model (`train`) and those learned since."""

    def __init__(self) -> None:
        self.train = np.zeros((0, N_FEATURES), dtype=np.float32)  # raw values
        self.pending: list[np.ndarray] = []
        self.learned = 0
        self.version = 0
        self.model: _Fitted | None = None

    def __len__(self) -> int:
        return self.train.shape[0] + len(self.pending)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["model"] = None  # refitted from `train` (same rows, same random state: same model) when needed
        return state


class NovelTraceModel:
    """Per agent kind, an isolation forest over the shape of its normal finished traces.

    min_traces: normal traces a kind needs before it has a model (until then `score` gives None,
        or the fleet-wide model's verdict when `fleet` is on).
    refit_every: a kind's model is refitted after this many more normal traces.
    max_history: traces a model is fitted on: the kind's most recent normal traces.
    max_kinds: kinds remembered; beyond it the least recently used is forgotten.
    fleet: also fit a fleet-wide model on all kinds' traces, to judge kinds without their own.
    seed: the forests' random state derives from it and the kind.
    n_estimators, max_samples: the forests' size (a refit on 2,000 traces takes ~0.1 s).
    margin, min_margin: "clearly outside the range" is past the largest (smallest) normal value by
        margin x (95th - 5th percentile), at least min_margin, on the log1p scale.
    isolation_quantile: the forest's threshold is this quantile of the training traces' own scores,
        plus `isolation_margin` of the score's spread above it.
    """

    def __init__(self, *, min_traces: int = 200, refit_every: int = 200, max_history: int = 2000,
                 max_kinds: int = 500, fleet: bool = False, seed: int = 0, n_estimators: int = 100,
                 max_samples: int = 256, margin: float = 0.4, tail_margin: float = 0.0,
                 min_margin: float = math.log(1.5), pair_min_distinct: int = 10,
                 isolation_quantile: float = 0.99, isolation_margin: float = 0.0) -> None:
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
        self.min_margin = min_margin
        self.tail_margin = tail_margin
        self.pair_min_distinct = pair_min_distinct
        self.isolation_quantile = isolation_quantile
        self.isolation_margin = isolation_margin
        self.kinds: OrderedDict[str, _Kind] = OrderedDict()
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
        k.learned += 1
        if len(k) >= self.min_traces and (k.version == 0 or len(k.pending) >= self.refit_every):
            k.train = np.vstack([k.train, np.array(k.pending, dtype=np.float32)])[-self.max_history:]
            k.pending = []
            k.version += 1
            k.model = self._fit(kind, k.train)

    def _fit(self, kind: str, train: np.ndarray) -> _Fitted:
        from sklearn.ensemble import IsolationForest

        log = np.log1p(train.astype(np.float64))
        whiten = _Whitening(log)
        Z = whiten(log)
        state = np.random.SeedSequence([self.seed, zlib.crc32(kind.encode())]).generate_state(1)[0]
        forest = IsolationForest(n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(Z)),
                                 random_state=int(state)).fit(Z)
        flat = _Forest(forest)
        # The forest's threshold, from the kind's own scores: the `isolation_quantile` (99th percentile)
        # of its training traces' anomaly scores, plus `isolation_margin` of their spread. On its own
        # this would flag ~1 % of normal traffic, far too many; it is only one of two conditions for a
        # combination to be novel (the other: a pair of features with a ratio outside anything the kind's
        # normal traces had, by a clear margin), and the two together are rare on normal traces.
        scores = flat.anomaly(Z)
        median = float(np.median(scores))
        q = float(np.quantile(scores, self.isolation_quantile))
        threshold = q + self.isolation_margin * (q - median)
        widen = math.sqrt(1.0 + self.min_traces / len(log))
        return _Fitted(whiten, flat, threshold, median, train.astype(np.float64), log,
                       (self.margin * widen, self.tail_margin, self.min_margin), self.pair_min_distinct)

    def _model(self, k: _Kind, kind: str) -> _Fitted | None:
        if k.model is None and k.version > 0:  # restored from a checkpoint: refit, identically
            k.model = self._fit(kind, k.train)
        return k.model

    # --- judging ------------------------------------------------------------------------------------

    def score(self, kind: str, features: Mapping[str, float]) -> NovelVerdict | None:
        """Verdict for a finished trace of agent kind `kind` (None: no fitted model for the kind yet)."""
        k = self.kinds.get(kind)
        model_kind = kind
        if k is not None:
            self.kinds.move_to_end(kind)
        if k is None or k.version == 0:
            if not (self.fleet and self.fleet_kind.version > 0):
                return None
            k, model_kind = self.fleet_kind, FLEET
        m = self._model(k, model_kind)
        raw = vector(features)
        log = np.log1p(raw.astype(np.float32).astype(np.float64))
        isolation = float(m.forest.anomaly(m.whiten(log[None, :]))[0])
        # the forest's score relative to its threshold: 0 at the kind's median trace, 1 at the threshold
        ratio = (isolation - m.median) / (m.threshold - m.median) if m.threshold > m.median else 0.0

        # how far outside the normal range, in margins (<= 0: inside)
        f_out = np.maximum((log - m.hi) / m.m_hi, (m.lo - log) / m.m_lo)
        d = log[m.pairs[:, 1]] - log[m.pairs[:, 0]]
        d_out = np.maximum((d - m.d_hi) / m.dm_hi, (m.d_lo - d) / m.dm_lo)
        marginal = float(f_out.max())
        pair = float(d_out.max()) if len(d_out) else -math.inf
        combination = min(ratio, pair)
        score = max(marginal, combination)
        novel = score > 1.0

        unusual = []
        for i in np.flatnonzero(f_out > 1.0):
            unusual.append(self._finding(FEATURES[i], [FEATURES[i]], raw[i], log[i] > m.hi[i], m.raw_q[:, i],
                                         m.n, float(f_out[i])))
        if ratio > 1.0:
            for p in np.flatnonzero(d_out > 1.0):
                a, b = FEATURES[m.pairs[p, 0]], FEATURES[m.pairs[p, 1]]
                unusual.append(self._finding(f"{b}/{a}", [b, a], math.exp(float(d[p])), d[p] > m.d_hi[p],
                                             m.d_q[:, p], m.n, float(d_out[p])))
        unusual.sort(key=lambda u: -u["margins"])
        return NovelVerdict(novel=novel, score=score, threshold=m.threshold, isolation=isolation,
                            unusual=unusual, trained_on=m.n, model_version=k.version, model_kind=model_kind)

    @staticmethod
    def _finding(name: str, names: list[str], value: float, above: bool, q: np.ndarray, n: int,
                 margins: float) -> dict:
        lo, p05, p50, p95, hi = (float(x) for x in q)
        return {
            "feature": name, "features": names, "value": float(value), "direction": "above" if above else "below",
            "normal_min": lo, "normal_p05": p05, "normal_p50": p50, "normal_p95": p95, "normal_max": hi,
            "trained_on": n, "margins": round(margins, 3),
            "text": (f"{name} {_fmt(value)} vs {_fmt(lo)}-{_fmt(hi)} in {n:,} normal traces "
                     f"(median {_fmt(p50)}), far {'above' if above else 'below'}"),
        }

    # --- introspection ------------------------------------------------------------------------------

    def history(self, kind: str) -> int:
        """Normal traces kept for a kind (its model's training rows and those learned since)."""
        k = self.fleet_kind if kind == FLEET else self.kinds.get(kind)
        return 0 if k is None else len(k)

    def __len__(self) -> int:
        return len(self.kinds)


def _fmt(x: float) -> str:
    """A number for people: 480, 1,200, 0.0123, 3.5."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}"

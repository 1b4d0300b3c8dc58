"""The novel_trace model's costs: refit time, scoring latency, memory and checkpoint size per kind.

A kind's history is filled with `--history` synthetic normal traces (log-normal
calls and tokens per call, binomial tools and errors); then the refit on the
full history is timed (`--repeats` times, median and max), single traces are
scored one at a time, and the pickled size of the model (what the worker
checkpoints: the rows, not the forests) and the in-memory size of a fitted
forest are reported. Measured figures, no pass/fail.

    python bench/novel_trace.py [--history 2000] [--repeats 10] [--scores 2000]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time

import numpy as np

from agentwatch.detectors.shape_model import NovelTraceModel


def traces(n: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(n):
        calls = 1 + int(rng.poisson(25 * rng.lognormal(0, 0.5)))
        tools = int(rng.binomial(calls, 0.8))
        tin = calls * 6000 * rng.lognormal(0, 0.35)
        cached = tin * rng.beta(2, 3)
        tout = calls * 400 * rng.lognormal(0, 0.5)
        reasoning = calls * 300 * rng.lognormal(0, 0.6)
        out.append({"model_calls": calls, "tool_calls": tools, "distinct_tools": min(tools, 1 + rng.binomial(7, 0.5)),
                    "sub_agents": int(rng.poisson(2)), "depth": 1 + int(rng.random() < 0.3), "input_tokens": tin,
                    "output_tokens": tout, "cached_input_tokens": cached, "reasoning_tokens": reasoning,
                    "duration_s": calls * 3 * rng.lognormal(0, 0.3),
                    "cost_usd": (tin - cached) * 3e-6 + cached * 3e-7 + (tout + reasoning) * 15e-6,
                    "errors": int(rng.binomial(tools, 0.02))})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scores", type=int, default=2000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    model = NovelTraceModel(max_history=args.history, min_traces=min(200, args.history))
    for trace in traces(args.history, rng):
        model.learn("research", trace)
    kind = model.kinds["research"]

    fits = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model._fit("research", kind.train)
        fits.append(time.perf_counter() - start)

    fresh = traces(args.scores, rng)
    start = time.perf_counter()
    flagged = sum(model.score("research", trace).novel for trace in fresh)
    per_score = (time.perf_counter() - start) / len(fresh)

    forest = kind.model.forest
    forest_bytes = sum(a.nbytes for a in (forest.feature, forest.threshold, forest.left, forest.right, forest.path))
    print(json.dumps({
        "history": len(kind.train),
        "refit_s_median": round(statistics.median(fits), 4),
        "refit_s_max": round(max(fits), 4),
        "score_ms_per_trace": round(per_score * 1e3, 3),
        "fresh_normal_flagged": f"{flagged}/{len(fresh)}",
        "forest_bytes_in_memory": forest_bytes,
        "pickled_bytes_per_kind": len(pickle.dumps(model)),
    }, indent=2))


if __name__ == "__main__":
    main()

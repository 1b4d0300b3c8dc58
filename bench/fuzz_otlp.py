"""Fuzz the OTLP decode and conversion path with atheris (coverage-guided libFuzzer).

    python bench/fuzz_otlp.py --seconds 600          # the long run
    python bench/fuzz_otlp.py --runs 1500 --seed 1   # the short run the test suite makes

Each input is one of two kinds, by its first byte:
- raw bytes taken as a request body, the signal and protobuf or JSON picked by that
  byte; libFuzzer mutates real requests from a seed corpus (valid requests of every
  signal in both encodings, and the inputs in tests/data/otlp_fuzz);
- choices for the hypothesis strategies of tests/otlp_cases.py (well-formed, odd and
  broken requests of every signal), through hypothesis' fuzz_one_input.

Every answer is checked by tests/otlp_checks.py: a request is refused whole with a
reason, or its accepted and rejected counts cover every record it holds; accepted rows
go into an embedded store, a batch at a time, and the store must take every one. An
input that fails a check or raises is a crash: it is written to --crashes (one file
per distinct failure, with its traceback beside it) and the run goes on. The last line
printed is a JSON summary; the exit status is 1 when there were crashes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["agentwatch.collector.receiver"]):
    from agentwatch.collector.receiver import otlp  # noqa: E402,F401 (instrumented for coverage)

from hypothesis import HealthCheck, given, settings  # noqa: E402

from agentwatch.schemas import store  # noqa: E402
from tests.helpers import fresh_database  # noqa: E402
from tests.otlp_cases import SIGNALS, Case, any_case, to_json  # noqa: E402
from tests.otlp_checks import Broken, StoreCheck, answer  # noqa: E402
from tests.otlp_requests import gauge_case, spans_request  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "otlp_fuzz"
RAW = 0x80  # first byte at or above: a raw body; bits 0-1 the signal, bit 2 JSON


class Crashes:
    """Failing inputs, one file per distinct failure (its kind and message, numbers aside)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seen: set[str] = set()
        self.count = 0

    def record(self, case: Case, error: BaseException) -> None:
        self.count += 1
        kind = f"{type(error).__name__}: {re.sub(r'[0-9]+', 'N', str(error))[:120]}"
        if kind in self.seen:
            return
        self.seen.add(kind)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{case.signal}-{'json' if case.is_json else 'pb'}-{hashlib.sha1(case.body).hexdigest()[:12]}"
        (self.folder / f"{name}.bin").write_bytes(case.body)
        (self.folder / f"{name}.txt").write_text(kind + "\n\n" + "".join(traceback.format_exception(error)))
        print(f"crash: {kind} -> {self.folder / name}.bin", file=sys.stderr, flush=True)


def seed_corpus(folder: Path) -> None:
    """Valid requests of every signal in both encodings, and the inputs fuzzing found before."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    traces = ExportTraceServiceRequest.FromString(spans_request([{"name": "chat"}, {"name": "tool"}],
                                                                resource={"service.name": "agent"}))
    gauge = gauge_case([0.5, 2.0]).request
    seeds = [(0, traces.SerializeToString(), False), (0, to_json(traces), True),
             (1, gauge.SerializeToString(), False), (1, to_json(gauge), True)]
    for path in sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []:
        signal, encoding = path.name.split("-")[:2]
        seeds.append((SIGNALS.index(signal), path.read_bytes(), encoding == "json"))
    folder.mkdir(parents=True, exist_ok=True)
    for signal, body, is_json in seeds:
        data = bytes([RAW | signal | (4 if is_json else 0)]) + body
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="stop after this long (default 60 without --runs)")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many executions")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer seed (0: random)")
    parser.add_argument("--batch", type=int, default=200, help="converted requests per store insert")
    parser.add_argument("--crashes", type=Path, default=ROOT / "bench" / "results" / "otlp_fuzz",
                        help="where failing inputs are written")
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = float("inf") if args.runs else 60.0

    work = Path(tempfile.mkdtemp(prefix="agentwatch-fuzz-"))
    dsn = f"chdb://{work / 'store'}"
    client = store.connect(dsn, fresh_database(dsn, "fuzz"))
    checker = StoreCheck(client, batch_size=args.batch)
    crashes = Crashes(args.crashes)
    started = time.monotonic()
    executions = 0

    def check(case: Case) -> None:
        try:
            converted = answer(case)
            if converted is not None:
                checker.add(case, converted)
        except Broken as error:
            crashes.record(error.case or case, error)
        except Exception as error:  # anything else would be a 5xx from the receiver
            crashes.record(case, error)

    @settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(any_case())
    def generated(case: Case) -> None:
        check(case)

    def finish() -> None:
        try:
            checker.flush()
        except Broken as error:
            crashes.record(error.case or Case("traces", b"", False), error)
        print(json.dumps({
            "executions": executions, "seconds": round(time.monotonic() - started, 1), "crashes": crashes.count,
            "distinct_crashes": len(crashes.seen), "rows_stored": checker.rows_stored,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "crash_folder": str(args.crashes) if crashes.count else None,
        }), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        os._exit(1 if crashes.count else 0)  # libFuzzer would otherwise keep going

    def one_input(data: bytes) -> None:
        nonlocal executions
        executions += 1
        if data and data[0] >= RAW:
            check(Case(SIGNALS[data[0] % 4 % 3], data[1:], bool(data[0] & 4)))
        else:
            generated.hypothesis.fuzz_one_input(data[1:])
        if (args.runs and executions >= args.runs) or time.monotonic() - started >= args.seconds:
            finish()

    seed_corpus(work / "corpus")
    atheris.Setup([sys.argv[0], str(work / "corpus"), f"-seed={args.seed}", "-max_len=16384", "-timeout=60",
                   "-rss_limit_mb=8192", "-print_final_stats=0"], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

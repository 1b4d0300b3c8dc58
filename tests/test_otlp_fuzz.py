"""Fuzzing the OTLP decode and conversion path: every request gets a 2xx (with partial
success for refused records) or a 4xx with a reason, never a 5xx or a crash, and every
row the converter emits is one the store takes, since rows are acknowledged before they
are inserted. Generated requests come from tests/otlp_cases.py; a bounded atheris run
of bench/fuzz_otlp.py and the inputs fuzzing has found (tests/data/otlp_fuzz) are here too.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentwatch.collector.receiver import otlp, records
from agentwatch.collector.receiver.server import GRPC_SERVICES, RESPONSES
from agentwatch.schemas import store
from tests.helpers import fresh_database, prometheus_value, start_receiver
from tests.otlp_cases import LAST_NS, SIGNALS, Case, any_case, tagged, well_formed
from tests.otlp_checks import ALL_TABLES, Broken, StoreCheck, answer
from tests.otlp_requests import (
    assert_stored_as_sent,
    deep_any_value_request,
    gauge_case,
    many_attributes_request,
    spans_request,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "data" / "otlp_fuzz"
LIMIT = 32 << 20  # the test receiver's max_request_bytes
PROTOBUF, JSON = "application/x-protobuf", "application/json"


def fuzz(examples: int) -> settings:
    # No example database: a failure prints the example to reproduce it, and nothing is left behind.
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def store_client(dsn):
    client = store.connect(dsn, fresh_database(dsn, "t_otlp_fuzz_store"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def fuzz_receiver(dsn, database):
    running = start_receiver(dsn, database, max_request_bytes=LIMIT, max_queue_bytes=1 << 30)
    yield running
    running.stop()


def post(receiver, signal: str, body: bytes, content_type: str = PROTOBUF, **headers) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/{signal}", content=body, timeout=120,
                      headers={"Content-Type": content_type, **headers})


def table_counts(client) -> dict[str, int]:
    return {table: client.query(f"SELECT count() FROM {table}").result_rows[0][0] for table in ALL_TABLES}


# --- properties of the converter against the real store ---------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_generated_requests_are_answered_per_record_and_stored_as_sent(store_client, signal):
    @fuzz(20)
    @given(st.lists(well_formed(signal), min_size=1, max_size=4))
    def holds(cases):
        marker = uuid.uuid4().hex
        cases = [tagged(case, marker) for case in cases]
        checker = StoreCheck(store_client, batch_size=len(cases))
        for case in cases:
            checker.add(case, answer(case))
        checker.flush()
        assert_stored_as_sent(store_client, signal, marker, cases)

    holds()


def test_random_truncated_and_mangled_bodies_are_refused_or_stored(store_client):
    @fuzz(40)
    @given(st.lists(any_case(), min_size=1, max_size=6))
    def holds(cases):
        checker = StoreCheck(store_client, batch_size=len(cases))
        for case in cases:
            converted = answer(case)
            if converted is not None:
                checker.add(case, converted)
        checker.flush()

    holds()


# --- the same over HTTP and gRPC, through a running receiver -----------------------------------------

@functools.cache
def gzip_bomb() -> bytes:
    return gzip.compress(bytes(LIMIT + 1), compresslevel=9)  # 32 KB that inflate past the limit


@st.composite
def http_requests(draw):
    """(case, Content-Type, Content-Encoding, body on the wire, status the receiver must answer)."""
    case = draw(any_case())
    content_type = draw(st.sampled_from([JSON if case.is_json else PROTOBUF] * 4 + [
        JSON + "; charset=utf-8" if case.is_json else PROTOBUF, "text/plain"]))
    wrapping = draw(st.sampled_from(["identity", "gzip", "gzip truncated", "gzip members", "gzip bomb"]))
    status, body, encoding = None, case.body, "gzip"
    if wrapping == "identity":
        encoding = "identity"
    elif wrapping == "gzip":
        body = gzip.compress(case.body)
    elif wrapping == "gzip truncated":
        body = gzip.compress(case.body)
        body, status = body[:draw(st.integers(0, len(body) - 1))], 400
    elif wrapping == "gzip members":  # several gzip members end to end are one body (RFC 1952)
        cut = draw(st.integers(0, len(case.body)))
        body = gzip.compress(case.body[:cut]) + gzip.compress(case.body[cut:])
    else:
        body, status = gzip_bomb(), 413
    if content_type == "text/plain":
        status = 415
    return case, content_type, encoding, body, status


def _refusal_reason(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith(JSON):
        return response.json()["message"]
    return status_pb2.Status.FromString(response.content).message


def _rejected(signal: str, response: httpx.Response) -> tuple[int, str]:
    """(rejected count, error message) of a 200 answer's partial success."""
    response_type, field = RESPONSES[signal]
    if response.headers["content-type"].startswith(JSON):
        partial = response.json().get("partialSuccess", {})
        camel = field.split("_")[0] + "".join(word.title() for word in field.split("_")[1:])
        return int(partial.get(camel, 0)), partial.get("errorMessage", "")
    partial = response_type.FromString(response.content).partial_success
    return getattr(partial, field), partial.error_message


def test_every_http_and_grpc_request_gets_2xx_or_4xx_with_a_reason_and_accepted_rows_are_stored(
        fuzz_receiver, client):
    fuzz_receiver.flush()
    before = table_counts(client)
    accepted, sent_rows = 0, set()
    channel = grpc.insecure_channel(f"127.0.0.1:{fuzz_receiver.grpc_port}")

    @fuzz(60)
    @given(http_requests(), st.booleans())
    def holds(request, over_grpc):
        nonlocal accepted
        case, content_type, encoding, body, status = request
        try:
            local = otlp.convert(case.signal, case.body, case.is_json, None)
        except otlp.BadRequest:
            local = None
        # The receiver stores the same rows once (a retried request is acknowledged, not stored
        # again): rows are sent once here, so that every accepted row is one more in the store.
        rows = local and tuple((table, block) for table, block, _ in local.blocks)
        assume(not rows or rows not in sent_rows)
        sent_rows.add(rows)
        status = status or (400 if local is None else 200)
        if over_grpc and not case.is_json and status in (200, 400):
            export = channel.unary_unary(f"/{GRPC_SERVICES[case.signal]}/Export")
            try:
                partial = RESPONSES[case.signal][0].FromString(export(case.body, timeout=60)).partial_success
            except grpc.RpcError as error:
                assert (error.code(), local) == (grpc.StatusCode.INVALID_ARGUMENT, None) and error.details(), error
                return
            assert (getattr(partial, RESPONSES[case.signal][1]), partial.error_message) == (
                local.rejected, local.error_message)
            accepted += local.accepted
            return
        response = post(fuzz_receiver, case.signal, body, content_type, **{"Content-Encoding": encoding})
        assert response.status_code == status, response.text
        if status != 200:
            assert _refusal_reason(response)
            return
        assert _rejected(case.signal, response) == (local.rejected, local.error_message)
        accepted += local.accepted

    try:
        holds()
    finally:
        channel.close()
    assert fuzz_receiver.flush()
    after = table_counts(client)
    assert sum(after.values()) - sum(before.values()) == accepted
    metrics = httpx.get(f"http://127.0.0.1:{fuzz_receiver.http_port}/metrics").text
    assert prometheus_value(metrics, "agentwatch_receiver_write_errors_total") == 0
    assert prometheus_value(metrics, "agentwatch_receiver_rejected_items_total", reason="store_refused") == 0


def test_grpc_gzip_bomb_is_refused_by_size(fuzz_receiver):
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_receiver.grpc_port}") as channel:
        export = channel.unary_unary(f"/{GRPC_SERVICES['traces']}/Export")
        with pytest.raises(grpc.RpcError) as refused:
            export(bytes(LIMIT + 1), timeout=60, compression=grpc.Compression.Gzip)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- the cases the contract names ---------------------------------------------------------------------


def test_thousands_of_levels_of_nesting_get_400_with_a_reason(fuzz_receiver):
    response = post(fuzz_receiver, "traces", deep_any_value_request(5000))
    assert response.status_code == 400 and "protobuf" in _refusal_reason(response)
    deep_json = ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + "ab" * 16 + '", "spanId": "'
                 + "cd" * 8 + '", "attributes": [{"key": "deep", "value": '
                 + '{"arrayValue": {"values": [' * 5000 + '{"stringValue": "x"}' + "]}}" * 5000 + "}]}]}]}]}")
    response = post(fuzz_receiver, "traces", deep_json.encode(), JSON)
    assert response.status_code == 400 and _refusal_reason(response)


def test_a_million_attributes_are_stored_whole(fuzz_receiver, client):
    trace_id = os.urandom(16)
    body = many_attributes_request(trace_id, 1_000_000)
    assert len(body) < LIMIT  # within the size limit: stored, not refused
    response = post(fuzz_receiver, "traces", body)
    assert response.status_code == 200 and _rejected("traces", response) == (0, "")
    assert fuzz_receiver.flush(timeout_s=300)
    assert client.query("SELECT length(SpanAttributes), SpanAttributes['k999999'] FROM otel_traces "
                        "WHERE TraceId = {t:String}", parameters={"t": trace_id.hex()}).result_rows == [
        (1_000_000, "v999999")]


def test_invalid_utf8_is_refused_with_a_reason(fuzz_receiver):
    body = spans_request([{"name": "name to spoil"}]).replace(b"name to spoil", b"\xff" * 13)
    response = post(fuzz_receiver, "traces", body)
    assert response.status_code == 400 and _refusal_reason(response)
    response = post(fuzz_receiver, "logs", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": '
                                           b'[{"body": {"stringValue": "\xc3\x28"}}]}]}]}', JSON)
    assert response.status_code == 400 and _refusal_reason(response)


def test_out_of_range_times_and_wrong_ids_are_refused_by_record_the_rest_stored(fuzz_receiver, client):
    trace_id = os.urandom(16)
    good = {"trace_id": trace_id}
    body = spans_request([
        {**good, "name": "now"},
        {**good, "name": "end before start", "start": 2_000_000_000_000_000_000, "end": 1},
        {**good, "name": "1970", "start": 1_500_000_001, "end": 1_500_000_002},
        {**good, "name": "duplicate", "span_id": b"\x01" * 8},
        {**good, "name": "duplicate", "span_id": b"\x01" * 8},
        {**good, "name": "2262", "start": LAST_NS + 1, "end": LAST_NS + 2},
        {**good, "name": "end past 2262", "end": (1 << 64) - 1},
        {**good, "name": "short span id", "span_id": b"\x01\x02"},
        {**good, "name": "long parent", "parent": b"\x01" * 9},
        {"trace_id": trace_id[:15], "name": "short trace id"},
    ])
    response = post(fuzz_receiver, "traces", body)
    assert response.status_code == 200
    rejected, reason = _rejected("traces", response)
    assert rejected == 5 and "2262" in reason and "span_id must be 8" in reason
    assert fuzz_receiver.flush()
    assert client.query("SELECT SpanName, Duration, toUnixTimestamp64Nano(Timestamp) FROM otel_traces "
                        "WHERE TraceId = {t:String} AND SpanName != 'now' ORDER BY SpanName",
                        parameters={"t": trace_id.hex()}).result_rows == [
        ("1970", 1, 1_500_000_001),
        ("duplicate", 1000, 1_700_000_000_000_000_000),  # the same ids twice are two records, both kept
        ("duplicate", 1000, 1_700_000_000_000_000_000),
        ("end before start", 0, 2_000_000_000_000_000_000),
    ]


def test_a_gzip_body_of_several_members_is_read_whole(fuzz_receiver, client):
    trace_id = os.urandom(16)
    body = spans_request([{"trace_id": trace_id} for _ in range(4)])
    half = len(body) // 2  # a member may end anywhere, even inside a span
    response = post(fuzz_receiver, "traces", gzip.compress(body[:half]) + gzip.compress(body[half:]),
                    **{"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert fuzz_receiver.flush()
    assert client.query("SELECT count() FROM otel_traces WHERE TraceId = {t:String}",
                        parameters={"t": trace_id.hex()}).result_rows == [(4,)]
    response = post(fuzz_receiver, "traces", gzip.compress(body) + b"trailing", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "gzip" in _refusal_reason(response)


def test_a_request_expanding_past_its_row_budget_is_refused_not_built(fuzz_receiver):
    # 300 spans of a few bytes under a 1 MiB resource attribute would be 300 MiB of rows.
    body = spans_request([{} for _ in range(300)], resource={"big": "x" * (1 << 20)})
    assert len(body) < 2 << 20
    response = post(fuzz_receiver, "traces", body)
    assert response.status_code == 400 and "fewer records" in _refusal_reason(response)


# --- inputs fuzzing found, and the fuzzer itself --------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda path: path.name)
def test_inputs_fuzzing_found_are_answered_and_stored(store_client, path):
    signal, encoding = path.name.split("-")[:2]
    case = Case(signal, path.read_bytes(), encoding == "json")
    checker = StoreCheck(store_client)
    converted = answer(case)
    if converted is not None:
        checker.add(case, converted)


def test_the_checks_catch_rows_the_store_would_refuse(store_client, monkeypatch):
    year_2262 = Case("traces", spans_request([{"start": LAST_NS + 1}]), False)
    monkeypatch.setattr(records, "MAX_TIME_NS", 1 << 64)  # as if the converter did not check
    with pytest.raises(Broken, match="accepted/rejected 1/0.*time after 2262"):
        answer(year_2262)
    converted = otlp.convert(year_2262.signal, year_2262.body, False, None)
    with pytest.raises(Broken, match="store refuses"):
        StoreCheck(store_client).add(year_2262, converted)


def test_a_bounded_atheris_run_finds_no_crash():
    run = subprocess.run([sys.executable, "bench/fuzz_otlp.py", "--runs", "3000", "--seed", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.stdout.strip(), run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])  # the run's last line
    assert run.returncode == 0 and summary["crashes"] == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["executions"] >= 3000 and summary["rows_stored"] > 0


def test_nan_and_infinities_are_stored_as_sent(store_client):
    marker = uuid.uuid4().hex
    case = tagged(gauge_case([math.nan, math.inf, -math.inf, -0.0, 1.5]), marker)
    StoreCheck(store_client).add(case, answer(case))
    assert_stored_as_sent(store_client, "metrics", marker, [case])

"""The receiver's write-ahead spool: what it hands back after a crash, and how a batch
interrupted half-way is completed without storing anything twice."""

from __future__ import annotations

import pytest

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from agentwatch.collector.receiver import otlp
from agentwatch.collector.receiver.spool import Spool, SpoolError
from agentwatch.collector.receiver.writer import BatchWriter, _join
from agentwatch.schemas import store
from tests.crash_sender import request_body, trace_id


def _blocks(request: int, spans: int = 5):
    return otlp.convert("traces", request_body(request, spans, 64), False, None).blocks


def _spool_requests(spool: Spool, requests: range) -> None:
    for request in requests:
        durable, duplicate = spool.append(bytes([request]) * 16, _blocks(request))
        durable.result(10)
        assert not duplicate


def test_uncommitted_requests_come_back_in_order_and_a_torn_tail_is_cut(tmp_path):
    spool = Spool(tmp_path)
    assert spool.open().records == []
    _spool_requests(spool, range(4))
    spool.begin(1, 2)
    spool.commit(2)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as file:  # a record cut short by a crash before its fsync
        file.write(b"AWS1\x40\x00\x00\x00partial")

    recovered = Spool(tmp_path).open()
    assert [record.seq for record in recovered.records] == [3, 4]
    assert recovered.records[0].blocks == _blocks(2)
    assert recovered.begun is None
    assert recovered.torn_bytes == 15


def test_a_spool_serves_one_receiver(tmp_path):
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(SpoolError, match="in use by another receiver"):
        Spool(tmp_path).open()
    first.close()
    second = Spool(tmp_path)
    second.open()
    second.close()


def test_a_retried_request_is_recognised_after_a_restart_and_after_its_segment_is_gone(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1)  # one record per segment: committed ones are deleted
    spool.open()
    _spool_requests(spool, range(3))
    spool.commit(3)
    assert spool.segments == 1  # only the newest segment is kept
    spool.close()

    reopened = Spool(tmp_path, segment_bytes=1)
    assert reopened.open().records == []
    durable, duplicate = reopened.append(bytes([0]) * 16, _blocks(0))
    assert duplicate and durable.done()
    durable, duplicate = reopened.append(bytes([9]) * 16, _blocks(9))
    assert not duplicate
    durable.result(10)
    reopened.close()

    expired = Spool(tmp_path, segment_bytes=1, dedup_window_s=0)
    expired.open()
    assert not expired.append(bytes([1]) * 16, _blocks(1))[1]
    expired.close()


def _log_blocks(message: str):
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[
        LogRecord(time_unix_nano=1_764_547_200_000_000_000, body=AnyValue(string_value=message))])])])
    return otlp.convert("logs", request.SerializeToString(), False, None).blocks


def test_a_batch_interrupted_between_tables_is_completed_once(tmp_path, dsn, database):
    client = store.connect(dsn, database)
    spool = Spool(tmp_path / "spool")
    spool.open()
    requests = [_blocks(100), _log_blocks("batch interrupted between tables"), _blocks(101)]
    for number, blocks in enumerate(requests):
        spool.append(bytes([number]) * 16, blocks)[0].result(10)
    # The writer began a batch of the three requests and the process died
    # after the batch's otel_traces insert (with its views) and before its
    # otel_logs insert.
    spool.begin(1, 3)
    traces = _join([requests[0][0][1], requests[2][0][1]])
    client.raw_insert("otel_traces", None, insert_block=traces, fmt="JSONEachRow",
                      settings={"insert_deduplication_token": spool.token(1, 3)})
    spool.close()

    reopened = Spool(tmp_path / "spool")
    recovered = reopened.open()
    assert recovered.begun == (1, 3)
    assert [record.seq for record in recovered.records] == [1, 2, 3]
    writer = BatchWriter(lambda: store.connect(dsn, database), spool=reopened)
    writer.start(recovered.records, recovered.begun)
    assert writer.flush(30)
    writer.close()
    reopened.close()

    ids = ",".join(repr(trace_id(r).hex()) for r in (100, 101))
    for table in ("otel_traces", "agent_spans"):
        counts = dict(client.query(f"SELECT TraceId, count() FROM {table} WHERE TraceId IN ({ids}) "
                                   "GROUP BY TraceId").result_rows)
        assert counts == {trace_id(100).hex(): 5, trace_id(101).hex(): 5}, table
    assert client.query("SELECT count() FROM otel_logs WHERE Body = 'batch interrupted between tables'"
                        ).result_rows[0][0] == 1
    assert Spool(tmp_path / "spool").open().records == []

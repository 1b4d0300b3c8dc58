"""Hand-built OTLP requests for the cases fuzzing must cover (deep nesting, a million
attributes, chosen ids and times), and what the store should hold for a request:
its accepted records as sent, read back by the marker tests/otlp_cases.tagged adds.
"""

from __future__ import annotations

import os
from collections import Counter

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agentwatch.collector.receiver.records import SPAN_KINDS
from tests.otlp_cases import MARKER, Case, log_storable, point_storable, records_by_resource, span_storable

NOW_NS = 1_700_000_000_000_000_000
COST = "agentwatch.cost.usd"  # added at ingest when the receiver can price a span


# --- building requests ---------------------------------------------------------------------------------

def spans_request(specs: list[dict], resource: dict[str, str] | None = None) -> bytes:
    """A traces request of one span per spec: trace_id, span_id, parent, name, start, end (all optional)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for key, value in (resource or {}).items():
        resource_spans.resource.attributes.add(key=key).value.string_value = value
    scope = resource_spans.scope_spans.add()
    for spec in specs:
        start = spec.get("start", NOW_NS)
        scope.spans.append(Span(trace_id=spec.get("trace_id", os.urandom(16)),
                                span_id=spec.get("span_id", os.urandom(8)), parent_span_id=spec.get("parent", b""),
                                name=spec.get("name", "span"), start_time_unix_nano=start,
                                end_time_unix_nano=spec.get("end", start + 1000)))
    return request.SerializeToString()


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _traces_around(span: bytes) -> bytes:
    # ExportTraceServiceRequest.resource_spans(1) > ResourceSpans.scope_spans(2) > ScopeSpans.spans(2)
    return _field(1, _field(2, _field(2, span)))


def many_attributes_request(trace_id: bytes, count: int) -> bytes:
    """One span with `count` attributes k<i> = v<i>, encoded directly (a million in about a second)."""
    head = Span(trace_id=trace_id, span_id=os.urandom(8), name="many attributes", start_time_unix_nano=NOW_NS,
                end_time_unix_nano=NOW_NS + 1).SerializeToString()
    # Span.attributes(9) > KeyValue{key(1), value(2) > AnyValue.string_value(1)}
    attributes = b"".join(_field(9, _field(1, b"k%d" % i) + _field(2, _field(1, b"v%d" % i))) for i in range(count))
    return _traces_around(head + attributes)


def deep_any_value_request(depth: int) -> bytes:
    """One span whose attribute nests `depth` arrays in one another."""
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value(5) > ArrayValue.values(1)
    span = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="deep").SerializeToString()
    return _traces_around(span + _field(9, _field(1, b"deep") + _field(2, value)))


def gauge_case(values: list[float]) -> Case:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="g")
    for value in values:
        metric.gauge.data_points.add(as_double=value, time_unix_nano=NOW_NS)
    return Case("metrics", request.SerializeToString(), False, request)


# --- what the store should hold ------------------------------------------------------------------------

def _id(value: bytes) -> str:
    return value.hex() if any(value) else ""  # an all-zero id is an unset one


def _text(value) -> str | None:
    """An AnyValue's stored text where it is plain; None for the kinds whose text follows the
    Collector's AsString (doubles, bytes, arrays, maps), which these checks leave alone."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return "" if kind is None else None


def _real(number: float) -> str:
    return repr(number)  # 'nan', 'inf' and '-0.0' compare as sent


def _records(signal: str, cases: list[Case]):
    """(kind, metric name, record) of every record in the cases; kind is the metric type for points."""
    for case in cases:
        for group in records_by_resource(signal, case.request):
            for scope in getattr(group, {"traces": "scope_spans", "metrics": "scope_metrics",
                                         "logs": "scope_logs"}[signal]):
                if signal != "metrics":
                    yield from ((signal, "", record) for record in
                                (scope.spans if signal == "traces" else scope.log_records))
                    continue
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    if kind in ("gauge", "sum", "histogram"):
                        yield from ((kind, metric.name, point) for point in getattr(metric, kind).data_points)


class _Attributes:
    """Attribute maps made comparable: a key whose text is unchecked anywhere is compared by presence only."""

    def __init__(self, records) -> None:
        self.unchecked = {MARKER, COST}
        for _, _, record in records:
            self.unchecked.update(kv.key for kv in record.attributes if _text(kv.value) is None)

    def sent(self, key_values, event_name: str = "") -> tuple:
        result = {kv.key: _text(kv.value) for kv in key_values}  # a repeated key: the last one wins
        if event_name:  # a log record's event name is stored as an attribute, unless one says otherwise
            result.setdefault("event.name", event_name)
        return self.stored(result)

    def stored(self, attributes: dict) -> tuple:
        return tuple(sorted((key, None if key in self.unchecked else value)
                            for key, value in attributes.items() if key not in (MARKER, COST)))


def assert_stored_as_sent(client, signal: str, marker: str, cases: list[Case]) -> None:
    """The store holds exactly the storable records of `cases` (tagged with `marker`), as sent."""
    found = list(_records(signal, cases))
    attributes = _Attributes(found)
    sent: list[tuple] = []
    for kind, name, record in found:
        if signal == "traces" and span_storable(record):
            sent.append((record.trace_id.hex(), record.span_id.hex(), _id(record.parent_span_id), record.name,
                         SPAN_KINDS[record.kind] if 0 <= record.kind < len(SPAN_KINDS) else str(record.kind),
                         record.start_time_unix_nano,
                         max(record.end_time_unix_nano - record.start_time_unix_nano, 0),
                         attributes.sent(record.attributes), [e.time_unix_nano for e in record.events],
                         [e.name for e in record.events], [_id(link.trace_id) for link in record.links]))
        elif signal == "logs" and log_storable(record):
            sent.append((record.time_unix_nano or record.observed_time_unix_nano, record.severity_number,
                         record.severity_text, _id(record.trace_id), _id(record.span_id), record.flags & 0xFF,
                         attributes.sent(record.attributes, record.event_name)))
        elif signal == "metrics" and point_storable(record):
            if kind == "histogram":
                value = (record.count, _real(record.sum), list(record.bucket_counts),
                         [_real(bound) for bound in record.explicit_bounds], _real(record.min), _real(record.max))
            else:
                value = _real(record.as_double if record.WhichOneof("value") == "as_double"
                              else float(record.as_int))
            sent.append((kind, name, record.start_time_unix_nano, record.time_unix_nano, record.flags, value,
                         attributes.sent(record.attributes),
                         [_real(e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int))
                          for e in record.exemplars]))
    stored = _stored(client, signal, marker, attributes)
    assert sorted(stored, key=repr) == sorted(sent, key=repr)
    if signal == "logs":  # bodies, where their text is plain
        bodies = [_text(record.body) for _, _, record in found if log_storable(record)]
        stored_bodies = [row[0] for row in client.query(
            f"SELECT Body FROM otel_logs WHERE ResourceAttributes['{MARKER}'] = {{m:String}}",
            parameters={"m": marker}).result_rows]
        assert not Counter(body for body in bodies if body is not None) - Counter(stored_bodies)


def _stored(client, signal: str, marker: str, attributes: _Attributes) -> list[tuple]:
    where = f"WHERE ResourceAttributes['{MARKER}'] = {{m:String}}"

    def query(sql: str) -> list[tuple]:
        return client.query(sql, parameters={"m": marker}).result_rows

    if signal == "traces":
        return [(*row[:7], attributes.stored(row[7]), *row[8:]) for row in query(
            "SELECT TraceId, SpanId, ParentSpanId, SpanName, SpanKind, toUnixTimestamp64Nano(Timestamp), Duration, "
            "SpanAttributes, arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp), Events.Name, Links.TraceId "
            f"FROM otel_traces {where}")]
    if signal == "logs":
        return [(*row[:6], attributes.stored(row[6])) for row in query(
            "SELECT toUnixTimestamp64Nano(Timestamp), SeverityNumber, SeverityText, TraceId, SpanId, TraceFlags, "
            f"LogAttributes FROM otel_logs {where}")]
    rows = []
    for kind, value in (("gauge", "Value"), ("sum", "Value"),
                        ("histogram", "tuple(Count, Sum, BucketCounts, ExplicitBounds, Min, Max)")):
        for row in query("SELECT MetricName, toUnixTimestamp64Nano(StartTimeUnix), toUnixTimestamp64Nano(TimeUnix), "
                         f"Flags, {value}, Attributes, Exemplars.Value FROM otel_metrics_{kind} {where}"):
            shown = ((row[4][0], _real(row[4][1]), list(row[4][2]), [_real(b) for b in row[4][3]],
                      _real(row[4][4]), _real(row[4][5])) if kind == "histogram" else _real(row[4]))
            rows.append((kind, *row[:4], shown, attributes.stored(row[5]), [_real(v) for v in row[6]]))
    return rows

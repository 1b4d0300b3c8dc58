"""OTLP export requests for fuzzing the receiver: hypothesis strategies for
well-formed, odd and broken requests of every signal, their protobuf and JSON
encodings, and which records the OTLP contract and the store let through.

Shared by tests/test_otlp_fuzz.py and bench/fuzz_otlp.py (which feeds atheris
bytes to the same strategies through hypothesis' fuzz_one_input).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from google.protobuf import json_format
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SIGNALS = ("traces", "metrics", "logs")
MARKER = "fuzz.example"  # a resource attribute naming the example its rows came from
LAST_NS = (1 << 63) - 1  # the last instant a DateTime64(9) column holds (2262-04-11)
STORED_METRICS = ("gauge", "sum", "histogram")

# --- values -----------------------------------------------------------------------------------------

# Text as protobuf carries it: any code point but surrogates (which UTF-8 cannot encode), NUL included.
texts = st.text(max_size=24)
keys = st.one_of(st.sampled_from(["service.name", "gen_ai.request.model", "gen_ai.usage.input_tokens",
                                  "gen_ai.usage.output_tokens", "agentwatch.tenant.id", "agentwatch.cost.usd",
                                  "gen_ai.agent.id", "a", ""]), texts)
numbers_as_text = st.one_of(st.integers().map(str), st.floats().map(repr),
                            st.sampled_from(["1e400", "-0", "9" * 400]))
int64s = st.integers(-(1 << 63), (1 << 63) - 1)
point_values = st.one_of(st.builds(dict, as_double=st.floats()), st.builds(dict, as_int=int64s))


def mostly(valid, odd, odds: int = 6):
    """`valid` values, and one time in `odds` an `odd` one: most records should get through."""
    return st.integers(0, odds - 1).flatmap(lambda draw: odd if draw == 0 else valid)


odd_ids = st.one_of(st.binary(max_size=20), st.sampled_from([b"", bytes(16), bytes(8)]))
trace_ids = mostly(st.binary(min_size=16, max_size=16), odd_ids)
span_ids = mostly(st.binary(min_size=8, max_size=8), odd_ids)
optional_trace_ids = mostly(st.one_of(st.just(b""), st.binary(min_size=16, max_size=16)), odd_ids)
optional_span_ids = mostly(st.one_of(st.just(b""), st.binary(min_size=8, max_size=8)), odd_ids)
times = mostly(st.integers(0, (1 << 62)), st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.sampled_from([0, 1, 1_500_000_000, 10**17 - 1, LAST_NS, LAST_NS + 1, (1 << 64) - 1])))
int32s = st.one_of(st.integers(-3, 30), st.integers(-(1 << 31), (1 << 31) - 1))
uint32s = st.integers(0, (1 << 32) - 1)
doubles = st.floats(allow_nan=True, allow_infinity=True)

scalar_values = st.one_of(
    st.builds(AnyValue, string_value=st.one_of(texts, numbers_as_text)),
    st.builds(AnyValue, int_value=int64s),
    st.builds(AnyValue, double_value=doubles),
    st.builds(AnyValue, bool_value=st.booleans()),
    st.builds(AnyValue, bytes_value=st.binary(max_size=12)),
    st.just(AnyValue()),
)


def _nest(children):
    return st.one_of(
        st.lists(children, max_size=3).map(lambda values: AnyValue(array_value=ArrayValue(values=values))),
        st.lists(st.builds(KeyValue, key=keys, value=children), max_size=3).map(
            lambda pairs: AnyValue(kvlist_value=KeyValueList(values=pairs))),
    )


any_values = st.recursive(scalar_values, _nest, max_leaves=8)
key_values = st.lists(st.builds(KeyValue, key=keys, value=any_values), max_size=5)


def _with(message, **repeated):
    for name, items in repeated.items():
        getattr(message, name).extend(items)
    return message


def _resource_and_scope(records):
    """(resource attributes, scope, records) groups: one or two resources of one or two scopes."""
    scope = st.fixed_dictionaries({"name": texts, "version": texts, "attributes": key_values})
    return st.lists(st.tuples(key_values, st.lists(st.tuples(scope, records), min_size=1, max_size=2)),
                    min_size=1, max_size=2)


# --- traces -----------------------------------------------------------------------------------------

events = st.builds(lambda t, name, attrs: _with(Span.Event(time_unix_nano=t, name=name), attributes=attrs),
                   times, texts, key_values)
links = st.builds(lambda trace, span, state, attrs: _with(Span.Link(trace_id=trace, span_id=span,
                                                                    trace_state=state), attributes=attrs),
                  optional_trace_ids, optional_span_ids, texts, key_values)
spans = st.builds(
    lambda trace, span, parent, name, kind, start, end, attrs, evs, lks, code, message: _with(
        Span(trace_id=trace, span_id=span, parent_span_id=parent, name=name, kind=kind,
             start_time_unix_nano=start, end_time_unix_nano=end, status=Status(code=code, message=message)),
        attributes=attrs, events=evs, links=lks),
    trace_ids, span_ids, optional_span_ids, texts, int32s, times, times, key_values, st.lists(events, max_size=3),
    st.lists(links, max_size=2), int32s, texts)


def _trace_request(groups) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for resource, scopes in groups:
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(resource)
        for scope, records in scopes:
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name, scope_spans.scope.version = scope["name"], scope["version"]
            scope_spans.spans.extend(records)
    return request


# --- metrics ----------------------------------------------------------------------------------------

exemplars = st.builds(
    lambda t, value, trace, span, attrs: _with(Exemplar(time_unix_nano=t, trace_id=trace, span_id=span, **value),
                                               filtered_attributes=attrs),
    times, point_values, optional_trace_ids, optional_span_ids, key_values)
_point_common = {"start_time_unix_nano": times, "time_unix_nano": times, "flags": uint32s}
number_points = st.builds(
    lambda common, value, attrs, exs: _with(NumberDataPoint(**common, **value), attributes=attrs, exemplars=exs),
    st.fixed_dictionaries(_point_common), point_values, key_values, st.lists(exemplars, max_size=2))
histogram_points = st.builds(
    lambda common, count, total, counts, bounds, low, high, attrs, exs: _with(
        HistogramDataPoint(**common, count=count, sum=total, bucket_counts=counts, explicit_bounds=bounds,
                           min=low, max=high), attributes=attrs, exemplars=exs),
    st.fixed_dictionaries(_point_common), st.integers(0, (1 << 64) - 1), doubles,
    st.lists(st.integers(0, (1 << 64) - 1), max_size=4), st.lists(doubles, max_size=4), doubles, doubles,
    key_values, st.lists(exemplars, max_size=2))


def _metric(name, description, unit, kind, points, temporality, monotonic) -> Metric:
    metric = Metric(name=name, description=description, unit=unit)
    if kind == "gauge":
        metric.gauge.data_points.extend(points)
    elif kind == "sum":
        metric.sum.data_points.extend(points)
        metric.sum.aggregation_temporality, metric.sum.is_monotonic = temporality, monotonic
    elif kind == "histogram":
        metric.histogram.data_points.extend(points)
        metric.histogram.aggregation_temporality = temporality
    elif kind == "summary":
        metric.summary.data_points.extend(SummaryDataPoint(count=len(points)) for _ in points)
    elif kind == "exponential_histogram":
        metric.exponential_histogram.data_points.extend(ExponentialHistogramDataPoint(scale=1) for _ in points)
    return metric


metrics = st.one_of(
    st.builds(_metric, texts, texts, texts, st.sampled_from(["gauge", "sum", "summary", "exponential_histogram",
                                                             "none"]),
              st.lists(number_points, max_size=3), int32s, st.booleans()),
    st.builds(_metric, texts, texts, texts, st.just("histogram"), st.lists(histogram_points, max_size=3),
              int32s, st.booleans()),
)


def _metric_request(groups) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    for resource, scopes in groups:
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(resource)
        for scope, records in scopes:
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.name, scope_metrics.scope.version = scope["name"], scope["version"]
            scope_metrics.scope.attributes.extend(scope["attributes"])
            scope_metrics.metrics.extend(records)
    return request


# --- logs -------------------------------------------------------------------------------------------

log_records = st.builds(
    lambda t, observed, severity, text, body, attrs, trace, span, flags, event: _with(
        LogRecord(time_unix_nano=t, observed_time_unix_nano=observed, severity_number=severity,
                  severity_text=text, body=body, trace_id=trace, span_id=span, flags=flags, event_name=event),
        attributes=attrs),
    times, times, mostly(st.integers(0, 24), st.one_of(st.integers(-2, 300), int32s)), texts, any_values,
    key_values, optional_trace_ids, optional_span_ids, uint32s, texts)


def _log_request(groups) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for resource, scopes in groups:
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(resource)
        for scope, records in scopes:
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name, scope_logs.scope.version = scope["name"], scope["version"]
            scope_logs.scope.attributes.extend(scope["attributes"])
            scope_logs.log_records.extend(records)
    return request


REQUESTS = {
    "traces": _resource_and_scope(st.lists(spans, max_size=4)).map(_trace_request),
    "metrics": _resource_and_scope(st.lists(metrics, max_size=3)).map(_metric_request),
    "logs": _resource_and_scope(st.lists(log_records, max_size=4)).map(_log_request),
}

# --- encodings --------------------------------------------------------------------------------------

_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def to_json(message) -> bytes:
    """OTLP/JSON as the specification writes it: the protobuf JSON mapping with hex trace and span ids."""
    document = json_format.MessageToDict(message)
    stack = [document]
    while stack:
        node = stack.pop()
        for item in node if isinstance(node, list) else [node]:
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key in _ID_KEYS and isinstance(value, str):
                    item[key] = base64.b64decode(value).hex()
                elif isinstance(value, (dict, list)):
                    stack.append(value)
    return json.dumps(document).encode()


@dataclass
class Case:
    signal: str
    body: bytes
    is_json: bool
    request: object | None = None  # the message a well-formed body encodes, when there is one


def encode(signal: str, request, is_json: bool) -> Case:
    return Case(signal, to_json(request) if is_json else request.SerializeToString(), is_json, request)


def well_formed(signal: str):
    """Cases of one signal encoding a generated request, as protobuf or JSON."""
    return st.builds(encode, st.just(signal), REQUESTS[signal], st.booleans())


def tagged(case: Case, marker: str) -> Case:
    """The case with MARKER=marker added to every resource, to find its rows in the store."""
    request = type(case.request)()
    request.CopyFrom(case.request)
    for group in records_by_resource(case.signal, request):
        group.resource.attributes.add(key=MARKER).value.string_value = marker
    return encode(case.signal, request, case.is_json)


@st.composite
def broken(draw) -> Case:
    """Bodies that are not quite OTLP: random bytes, and requests truncated, cut or with bytes flipped."""
    signal = draw(st.sampled_from(SIGNALS))
    is_json = draw(st.booleans())
    body = draw(st.one_of(st.binary(max_size=64), well_formed(signal).map(lambda case: case.body)))
    how = draw(st.sampled_from(["whole", "truncate", "flip", "splice"]))
    if body and how == "truncate":
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif body and how == "flip":
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
    elif how == "splice":
        body = body + draw(st.binary(max_size=16))
    return Case(signal, body, is_json)


def any_case():
    return st.one_of(broken(), *(well_formed(signal) for signal in SIGNALS))


# --- what the contract lets through ---------------------------------------------------------------


def records_by_resource(signal: str, request):
    names = {"traces": "resource_spans", "metrics": "resource_metrics", "logs": "resource_logs"}
    return getattr(request, names[signal])


def _bad_id(value: bytes, size: int, required: bool = False) -> bool:
    if required:
        return len(value) != size or not any(value)
    return bool(value) and len(value) != size


def _first(checks: dict[str, bool]) -> str | None:
    return next((name for name, failed in checks.items() if failed), None)


def span_refusal(span) -> str | None:
    """Why the contract refuses a span (a short name), or None when it must be stored."""
    return _first({
        "trace id": _bad_id(span.trace_id, 16, True),
        "span id": _bad_id(span.span_id, 8, True),
        "parent span id": _bad_id(span.parent_span_id, 8),
        "time after 2262": max(span.start_time_unix_nano, span.end_time_unix_nano,
                               *(event.time_unix_nano for event in span.events)) > LAST_NS,
        "link id": any(_bad_id(link.trace_id, 16) or _bad_id(link.span_id, 8) for link in span.links),
    })


def point_refusal(point) -> str | None:
    return _first({
        "time after 2262": max(point.start_time_unix_nano, point.time_unix_nano,
                               *(e.time_unix_nano for e in point.exemplars)) > LAST_NS,
        "exemplar id": any(_bad_id(e.trace_id, 16) or _bad_id(e.span_id, 8) for e in point.exemplars),
    })


def log_refusal(record) -> str | None:
    return _first({
        "time after 2262": (record.time_unix_nano or record.observed_time_unix_nano) > LAST_NS,
        "severity number": not 0 <= record.severity_number <= 255,
        "log id": _bad_id(record.trace_id, 16) or _bad_id(record.span_id, 8),
    })


def span_storable(span) -> bool:
    return span_refusal(span) is None


def point_storable(point) -> bool:
    return point_refusal(point) is None


def log_storable(record) -> bool:
    return log_refusal(record) is None


def records(signal: str, request):
    """(record, refusal) for every record the answer must count as accepted (refusal None) or
    rejected. A metric of a type not stored counts once per data point, or once when it has none."""
    for group in records_by_resource(signal, request):
        for scope in getattr(group, {"traces": "scope_spans", "metrics": "scope_metrics",
                                     "logs": "scope_logs"}[signal]):
            if signal == "traces":
                yield from ((span, span_refusal(span)) for span in scope.spans)
            elif signal == "logs":
                yield from ((record, log_refusal(record)) for record in scope.log_records)
            else:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    points = list(getattr(metric, kind).data_points) if kind else []
                    if kind in STORED_METRICS:
                        yield from (((metric, point), point_refusal(point)) for point in points)
                    else:
                        yield from (((metric, point), f"type {kind}") for point in points or [None])

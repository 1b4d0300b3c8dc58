"""OTLP requests (protobuf or JSON) to rows of the clickhouseexporter-compatible tables.

Rows are plain dicts serialised with orjson to JSONEachRow: ClickHouse parses
that in C++, which beats building the Native format in Python per value.
Attribute values become strings the way the Collector's exporter writes them
(AnyValue.AsString), so rows from us and from otelcol-contrib look alike.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentwatch.schemas.attributes import TENANT_ID

SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")
TENANT_CLAIMED = "agentwatch.tenant.claimed_id"


class BadRequest(ValueError):
    """The request cannot be decoded; answered with HTTP 400 / gRPC INVALID_ARGUMENT."""


@dataclass
class Rows:
    """Rows per table decoded from one request, and what was refused in it."""

    tables: dict[str, list[dict]] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, table: str, row: dict) -> None:
        self.tables.setdefault(table, []).append(row)

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 5:
            self.errors.append(message)

    @property
    def error_message(self) -> str:
        return "; ".join(self.errors)


def timestamp(ns: int) -> str | int:
    # ClickHouse reads "seconds.nanoseconds" into DateTime64(9) exactly (a bare
    # integer would be taken as seconds). Before 1973 that string has fewer than
    # nine integer digits and is parsed as a date instead: those (in practice
    # an unset 0) go as whole seconds.
    if ns < 100_000_000_000_000_000:
        return ns // 1_000_000_000
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def any_value(value) -> object:
    """An OTLP AnyValue as a plain Python value (for JSON of arrays and maps)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def value_string(value) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        number = value.double_value
        return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
    if kind is None:
        return ""
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return orjson.dumps(any_value(value)).decode()


def attributes(key_values) -> dict[str, str]:
    result = {}
    for kv in key_values:
        value = kv.value
        # Strings are most attributes: skip the general conversion for them.
        result[kv.key] = value.string_value if value.WhichOneof("value") == "string_value" else value_string(value)
    return result


# --- decoding -----------------------------------------------------------------

_ID_FIELDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(node) -> None:
    # OTLP/JSON writes trace and span ids as hex (either case), where the
    # protobuf JSON mapping expects base64 for bytes: convert in place.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise BadRequest(f"{key} {value[:40]!r} is not hex") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


REQUEST_TYPES = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


def decode(signal: str, body: bytes, is_json: bool):
    message = REQUEST_TYPES[signal]()
    if is_json:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"body is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise BadRequest("body must be a JSON object")
        _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError) as error:
            raise BadRequest(f"body is not an OTLP {signal} request: {error}") from None
    else:
        try:
            message.ParseFromString(body)
        except DecodeError as error:
            raise BadRequest(f"body is not a protobuf OTLP {signal} request: {error}") from None
    return message


# --- traces -------------------------------------------------------------------

PriceSpan = Callable[[dict[str, str], int], "float | None"]


def _tenant_override(attrs: dict[str, str], tenant: str) -> None:
    claimed = attrs.get(TENANT_ID)
    if claimed and claimed != tenant:
        attrs[TENANT_CLAIMED] = claimed
    attrs[TENANT_ID] = tenant


def trace_rows(request, tenant: str | None, price: PriceSpan | None, rows: Rows | None = None) -> Rows:
    """Rows for otel_traces. `tenant` (from an API key) overrides what spans claim."""
    rows = rows or Rows()
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        if tenant:
            _tenant_override(resource, tenant)
        service = resource.get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            scope_version = scope_spans.scope.version
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or not any(span.trace_id):
                    rows.reject(f"span {span.name!r}: trace_id must be 16 non-zero bytes")
                    continue
                if len(span.span_id) != 8 or not any(span.span_id):
                    rows.reject(f"span {span.name!r}: span_id must be 8 non-zero bytes")
                    continue
                attrs = attributes(span.attributes)
                if tenant:
                    _tenant_override(attrs, tenant)
                if price is not None:
                    price(attrs, span.start_time_unix_nano)
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                status = span.status
                row = {
                    "Timestamp": timestamp(start),
                    "TraceId": span.trace_id.hex(),
                    "SpanId": span.span_id.hex(),
                    "ParentSpanId": span.parent_span_id.hex(),
                    "SpanName": span.name,
                    "SpanKind": SPAN_KINDS[span.kind] if span.kind < len(SPAN_KINDS) else str(span.kind),
                    "ServiceName": service,
                    "ResourceAttributes": resource,
                    "ScopeName": scope_name,
                    "ScopeVersion": scope_version,
                    "SpanAttributes": attrs,
                    "Duration": end - start if end > start else 0,
                    "StatusCode": STATUS_CODES[status.code] if status.code < 3 else "Unset",
                }
                # Empty fields are left out: ClickHouse fills column defaults,
                # and most spans have no events, links or status message.
                if span.trace_state:
                    row["TraceState"] = span.trace_state
                if status.message:
                    row["StatusMessage"] = status.message
                events = span.events
                if events:
                    row["Events.Timestamp"] = [timestamp(e.time_unix_nano) for e in events]
                    row["Events.Name"] = [e.name for e in events]
                    row["Events.Attributes"] = [attributes(e.attributes) for e in events]
                links = span.links
                if links:
                    row["Links.TraceId"] = [link.trace_id.hex() for link in links]
                    row["Links.SpanId"] = [link.span_id.hex() for link in links]
                    row["Links.TraceState"] = [link.trace_state for link in links]
                    row["Links.Attributes"] = [attributes(link.attributes) for link in links]
                rows.add("otel_traces", row)
                rows.accepted += 1
    return rows


# --- metrics ------------------------------------------------------------------

def _exemplars(exemplars) -> dict:
    return {
        "Exemplars.FilteredAttributes": [attributes(e.filtered_attributes) for e in exemplars],
        "Exemplars.TimeUnix": [timestamp(e.time_unix_nano) for e in exemplars],
        "Exemplars.Value": [e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int)
                            for e in exemplars],
        "Exemplars.SpanId": [e.span_id.hex() for e in exemplars],
        "Exemplars.TraceId": [e.trace_id.hex() for e in exemplars],
    }


def metric_rows(request, tenant: str | None, rows: Rows | None = None) -> Rows:
    """Rows for otel_metrics_gauge / _sum / _histogram. Other metric types are
    refused by name in the partial-success answer, never dropped silently."""
    rows = rows or Rows()
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        if tenant:
            _tenant_override(resource, tenant)
        common = {
            "ResourceAttributes": resource,
            "ResourceSchemaUrl": resource_metrics.schema_url,
            "ServiceName": resource.get("service.name", ""),
        }
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            scope_common = {
                **common,
                "ScopeName": scope.name,
                "ScopeVersion": scope.version,
                "ScopeAttributes": attributes(scope.attributes),
                "ScopeDroppedAttrCount": scope.dropped_attributes_count,
                "ScopeSchemaUrl": scope_metrics.schema_url,
            }
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                base = {**scope_common, "MetricName": metric.name,
                        "MetricDescription": metric.description, "MetricUnit": metric.unit}
                if kind in ("gauge", "sum"):
                    data = getattr(metric, kind)
                    extra = {} if kind == "gauge" else {
                        "AggregationTemporality": data.aggregation_temporality,
                        "IsMonotonic": data.is_monotonic,
                    }
                    for point in data.data_points:
                        value = point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
                        rows.add(f"otel_metrics_{kind}", {
                            **base, **extra,
                            "Attributes": attributes(point.attributes),
                            "StartTimeUnix": timestamp(point.start_time_unix_nano),
                            "TimeUnix": timestamp(point.time_unix_nano),
                            "Value": value,
                            "Flags": point.flags,
                            **_exemplars(point.exemplars),
                        })
                        rows.accepted += 1
                elif kind == "histogram":
                    for point in metric.histogram.data_points:
                        rows.add("otel_metrics_histogram", {
                            **base,
                            "Attributes": attributes(point.attributes),
                            "StartTimeUnix": timestamp(point.start_time_unix_nano),
                            "TimeUnix": timestamp(point.time_unix_nano),
                            "Count": point.count,
                            "Sum": point.sum,
                            "BucketCounts": list(point.bucket_counts),
                            "ExplicitBounds": list(point.explicit_bounds),
                            "Flags": point.flags,
                            "Min": point.min,
                            "Max": point.max,
                            "AggregationTemporality": metric.histogram.aggregation_temporality,
                            **_exemplars(point.exemplars),
                        })
                        rows.accepted += 1
                else:
                    points = getattr(metric, kind).data_points if kind else []
                    for _ in points or [None]:
                        rows.reject(f"metric {metric.name!r}: type {kind or 'empty'} is not stored")
    return rows


# --- logs ---------------------------------------------------------------------

def log_rows(request, tenant: str | None, rows: Rows | None = None) -> Rows:
    rows = rows or Rows()
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        if tenant:
            _tenant_override(resource, tenant)
        service = resource.get("service.name", "")
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_attrs = attributes(scope.attributes)
            for record in scope_logs.log_records:
                attrs = attributes(record.attributes)
                if record.event_name:
                    attrs.setdefault("event.name", record.event_name)
                time_ns = record.time_unix_nano or record.observed_time_unix_nano
                rows.add("otel_logs", {
                    "Timestamp": timestamp(time_ns),
                    "TraceId": record.trace_id.hex(),
                    "SpanId": record.span_id.hex(),
                    "TraceFlags": record.flags & 0xFF,
                    "SeverityText": record.severity_text,
                    "SeverityNumber": int(record.severity_number),
                    "ServiceName": service,
                    "Body": value_string(record.body),
                    "ResourceSchemaUrl": resource_logs.schema_url,
                    "ResourceAttributes": resource,
                    "ScopeSchemaUrl": scope_logs.schema_url,
                    "ScopeName": scope.name,
                    "ScopeVersion": scope.version,
                    "ScopeAttributes": scope_attrs,
                    "LogAttributes": attrs,
                })
                rows.accepted += 1
    return rows


def to_rows(signal: str, request, tenant: str | None, price: PriceSpan | None) -> Rows:
    if signal == "traces":
        return trace_rows(request, tenant, price)
    if signal == "metrics":
        return metric_rows(request, tenant)
    return log_rows(request, tenant)


def encode_rows(rows: list[Mapping]) -> bytes:
    """A JSONEachRow block (ClickHouse accepts a JSON array of row objects)."""
    return orjson.dumps(rows)


@dataclass
class Converted:
    """One request, ready for the writer: (table, JSONEachRow block, row count) per table."""

    blocks: list[tuple[str, bytes, int]]
    accepted: int
    rejected: int
    error_message: str
    unknown_models: list[str]


_pricer = None


def warm_up() -> None:
    """Load the price data in a fresh worker before the first request needs it."""
    convert("traces", b"", False, None)


def convert(signal: str, body: bytes | None, is_json: bool, tenant: str | None, message=None) -> Converted:
    """Decode and convert one request. Pure and picklable: the receiver runs it in
    worker processes, since converting spans in Python is CPU-bound."""
    global _pricer
    if _pricer is None:
        from agentwatch.collector.receiver.pricing import Pricer

        _pricer = Pricer()
    if message is None:
        message = decode(signal, body, is_json)
    unknown: list[str] = []
    _pricer.on_unknown = unknown.append
    rows = to_rows(signal, message, tenant, _pricer)
    blocks = [(table, encode_rows(table_rows), len(table_rows)) for table, table_rows in rows.tables.items()]
    return Converted(blocks, rows.accepted, rows.rejected, rows.error_message, unknown)

"""OTLP records (spans, metric data points, log records) to rows of the
clickhouseexporter-compatible tables.

Rows are plain dicts serialised with orjson to JSONEachRow: ClickHouse parses
that in C++, which beats building the Native format in Python per value.
Attribute values become strings the way the Collector's exporter writes them
(AnyValue.AsString: values.py), so rows from us and from otelcol-contrib look alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


from agentwatch.collector.receiver.secrets import FINDINGS_TABLE, SecretPolicy, Shared, scan_log, scan_span
from agentwatch.collector.receiver.values import attributes, value_string
from agentwatch.schemas.attributes import TENANT_ID

SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")
TENANT_CLAIMED = "agentwatch.tenant.claimed_id"

# Rows are acknowledged before they are inserted, so a row ClickHouse would
# refuse is data lost after the ack: what cannot be stored as sent is refused
# here, by record, in the partial-success answer.
MAX_TIME_NS = (1 << 63) - 1  # DateTime64(9) ends at 2262-04-11 23:47:16.854775807
TIME_RANGE = "a time is past 2262-04-11 (the end of nanosecond timestamps)"

# Resource and scope attributes are stored again with every record, so a small
# request can expand into rows many times its size: the rows of one request may
# cost at most EXPANSION times its bytes (at least MIN_ROWS_BUDGET), each row
# counted as ROW_BYTES (a row dict and its JSON keys) plus what it repeats.
EXPANSION = 16
MIN_ROWS_BUDGET = 256 << 20
ROW_BYTES = 1024
MAX_REASON_CHARS = 500  # an answer says why, without echoing a huge body back


class BadRequest(ValueError):
    """The request is refused whole (it cannot be decoded, or is too large once converted);
    answered with HTTP 400 / gRPC INVALID_ARGUMENT."""

    def __init__(self, message: str):
        super().__init__(message if len(message) <= MAX_REASON_CHARS else message[:MAX_REASON_CHARS] + "...")


@dataclass
class Rows:
    """Rows per table decoded from one request, and what was refused in it."""

    tables: dict[str, list[dict]] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    budget: int = MIN_ROWS_BUDGET
    spent: int = 0

    def add(self, table: str, row: dict, repeated: int = 0) -> None:
        """Accept one row; `repeated` is the size of the resource and scope data it repeats."""
        self.spent += ROW_BYTES + repeated
        if self.spent > self.budget:
            raise BadRequest(f"request expands to more than {self.budget} bytes of rows (resource and scope "
                             "attributes are stored with every record): send fewer records per request")
        self.tables.setdefault(table, []).append(row)
        self.accepted += 1

    def add_findings(self, found: list[dict]) -> None:
        """secret_findings rows of the record just added (not records of the request: not counted as accepted)."""
        self.spent += ROW_BYTES * len(found)
        if self.spent > self.budget:
            raise BadRequest(f"request expands to more than {self.budget} bytes of rows: send fewer records "
                             "per request")
        self.tables.setdefault(FINDINGS_TABLE, []).extend(found)

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < 5:
            self.errors.append(message)

    @property
    def error_message(self) -> str:
        return "; ".join(self.errors)


def timestamp(ns: int) -> str:
    # ClickHouse reads "seconds.nanoseconds" into DateTime64(9) exactly (a bare
    # integer would be taken as seconds) when the seconds have nine or ten
    # digits; with fewer it reads a date, so they are zero-padded to nine.
    # Callers refuse ns past MAX_TIME_NS first.
    return f"{ns // 1_000_000_000:09d}.{ns % 1_000_000_000:09d}"


def real(number: float) -> float | str:
    # orjson writes NaN and the infinities as null, which ClickHouse stores as
    # 0; quoted, they are read back exactly.
    return number if math.isfinite(number) else repr(number)


def optional_id(value: bytes, size: int) -> str | None:
    """Hex of an id that may be unset (empty or all zero: ''), None when its length is wrong."""
    if len(value) != size:
        return None if value else ""
    return value.hex() if any(value) else ""


def quoted(name: str) -> str:
    """A record's name for an error message, cut: the message is not the data."""
    return repr(name) if len(name) <= 100 else repr(name[:100]) + "..."


def repeated_size(*parts) -> int:
    """Characters in strings and str->str dicts, to count what each row repeats."""
    return sum(sum(map(len, part)) + sum(map(len, part.values())) if isinstance(part, dict) else len(part)
               for part in parts)


# --- traces -------------------------------------------------------------------

PriceSpan = Callable[[dict[str, str], int], "float | None"]


def _tenant_override(attrs: dict[str, str], tenant: str) -> None:
    claimed = attrs.get(TENANT_ID)
    if claimed and claimed != tenant:
        attrs[TENANT_CLAIMED] = claimed
    attrs[TENANT_ID] = tenant


def span_problem(span) -> str | None:
    """Why a span cannot be stored as sent, or None."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id must be 16 non-zero bytes"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id must be 8 non-zero bytes"
    if optional_id(span.parent_span_id, 8) is None:
        return "parent_span_id must be empty or 8 bytes"
    if span.start_time_unix_nano > MAX_TIME_NS or span.end_time_unix_nano > MAX_TIME_NS:
        return TIME_RANGE
    for event in span.events:
        if event.time_unix_nano > MAX_TIME_NS:
            return TIME_RANGE
    for link in span.links:
        if optional_id(link.trace_id, 16) is None or optional_id(link.span_id, 8) is None:
            return "a link's trace_id and span_id must be empty or 16 and 8 bytes"
    return None


def trace_rows(request, tenant: str | None, price: PriceSpan | None, rows: Rows | None = None,
               secrets: SecretPolicy | None = None) -> Rows:
    """Rows for otel_traces. `tenant` (from an API key) overrides what spans and their resources claim;
    `secrets`: scan payloads for credential material (secrets.py)."""
    rows = rows or Rows()
    shared = Shared()
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        if tenant:
            _tenant_override(resource, tenant)
        service = resource.get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            scope_version = scope_spans.scope.version
            repeated = repeated_size(resource, scope_name, scope_version)
            for span in scope_spans.spans:
                problem = span_problem(span)
                if problem:
                    rows.reject(f"span {quoted(span.name)}: {problem}")
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
                    "ParentSpanId": optional_id(span.parent_span_id, 8),
                    "SpanName": span.name,
                    "SpanKind": SPAN_KINDS[span.kind] if 0 <= span.kind < len(SPAN_KINDS) else str(span.kind),
                    "ServiceName": service,
                    "ResourceAttributes": resource,
                    "ScopeName": scope_name,
                    "ScopeVersion": scope_version,
                    "SpanAttributes": attrs,
                    "Duration": end - start if end > start else 0,
                    "StatusCode": STATUS_CODES[status.code] if 0 <= status.code < 3 else "Unset",
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
                    row["Links.TraceId"] = [optional_id(link.trace_id, 16) for link in links]
                    row["Links.SpanId"] = [optional_id(link.span_id, 8) for link in links]
                    row["Links.TraceState"] = [link.trace_state for link in links]
                    row["Links.Attributes"] = [attributes(link.attributes) for link in links]
                rows.add("otel_traces", row, repeated)
                if secrets is not None:
                    found = scan_span(row, secrets, tenant, shared)
                    if found:
                        rows.add_findings(found)
    return rows


# --- metrics ------------------------------------------------------------------

def point_problem(point) -> str | None:
    """Why a metric data point cannot be stored as sent, or None."""
    if point.start_time_unix_nano > MAX_TIME_NS or point.time_unix_nano > MAX_TIME_NS:
        return TIME_RANGE
    for exemplar in point.exemplars:
        if exemplar.time_unix_nano > MAX_TIME_NS:
            return TIME_RANGE
        if optional_id(exemplar.trace_id, 16) is None or optional_id(exemplar.span_id, 8) is None:
            return "an exemplar's trace_id and span_id must be empty or 16 and 8 bytes"
    return None


def _exemplars(exemplars) -> dict:
    return {
        "Exemplars.FilteredAttributes": [attributes(e.filtered_attributes) for e in exemplars],
        "Exemplars.TimeUnix": [timestamp(e.time_unix_nano) for e in exemplars],
        "Exemplars.Value": [real(e.as_double) if e.WhichOneof("value") == "as_double" else float(e.as_int)
                            for e in exemplars],
        "Exemplars.SpanId": [optional_id(e.span_id, 8) for e in exemplars],
        "Exemplars.TraceId": [optional_id(e.trace_id, 16) for e in exemplars],
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
                repeated = repeated_size(*(value for value in base.values() if isinstance(value, (str, dict))))
                if kind not in ("gauge", "sum", "histogram"):
                    points = getattr(metric, kind).data_points if kind else []
                    for _ in points or [None]:
                        rows.reject(f"metric {quoted(metric.name)}: type {kind or 'empty'} is not stored")
                    continue
                data = getattr(metric, kind)
                for point in data.data_points:
                    problem = point_problem(point)
                    if problem:
                        rows.reject(f"metric {quoted(metric.name)}: {problem}")
                        continue
                    point_attrs = attributes(point.attributes)
                    if tenant:
                        _tenant_override(point_attrs, tenant)
                    row = {
                        **base,
                        "Attributes": point_attrs,
                        "StartTimeUnix": timestamp(point.start_time_unix_nano),
                        "TimeUnix": timestamp(point.time_unix_nano),
                        "Flags": point.flags,
                        **_exemplars(point.exemplars),
                    }
                    if kind == "histogram":
                        row.update({
                            "Count": point.count,
                            "Sum": real(point.sum),
                            "BucketCounts": list(point.bucket_counts),
                            "ExplicitBounds": [real(bound) for bound in point.explicit_bounds],
                            "Min": real(point.min),
                            "Max": real(point.max),
                            "AggregationTemporality": data.aggregation_temporality,
                        })
                    else:
                        row["Value"] = (real(point.as_double) if point.WhichOneof("value") == "as_double"
                                        else float(point.as_int))
                        if kind == "sum":
                            row["AggregationTemporality"] = data.aggregation_temporality
                            row["IsMonotonic"] = data.is_monotonic
                    rows.add(f"otel_metrics_{kind}", row, repeated)
    return rows


# --- logs ---------------------------------------------------------------------

def log_problem(record) -> str | None:
    """Why a log record cannot be stored as sent, or None."""
    if (record.time_unix_nano or record.observed_time_unix_nano) > MAX_TIME_NS:
        return TIME_RANGE
    if not 0 <= record.severity_number <= 255:  # the UInt8 column would wrap or refuse it
        return "severity_number must be 0..255"
    if optional_id(record.trace_id, 16) is None or optional_id(record.span_id, 8) is None:
        return "trace_id and span_id must be empty or 16 and 8 bytes"
    return None


def log_rows(request, tenant: str | None, rows: Rows | None = None, secrets: SecretPolicy | None = None) -> Rows:
    rows = rows or Rows()
    shared = Shared()
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        if tenant:
            _tenant_override(resource, tenant)
        service = resource.get("service.name", "")
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_attrs = attributes(scope.attributes)
            repeated = repeated_size(resource, resource_logs.schema_url, scope_logs.schema_url, scope.name,
                                     scope.version, scope_attrs)
            for record in scope_logs.log_records:
                problem = log_problem(record)
                if problem:
                    rows.reject(f"log record: {problem}")
                    continue
                attrs = attributes(record.attributes)
                if record.event_name:
                    attrs.setdefault("event.name", record.event_name)
                if tenant:
                    _tenant_override(attrs, tenant)
                row = {
                    "Timestamp": timestamp(record.time_unix_nano or record.observed_time_unix_nano),
                    "TraceId": optional_id(record.trace_id, 16),
                    "SpanId": optional_id(record.span_id, 8),
                    "TraceFlags": record.flags & 0xFF,
                    "SeverityText": record.severity_text,
                    "SeverityNumber": record.severity_number,
                    "ServiceName": service,
                    "Body": value_string(record.body),
                    "ResourceSchemaUrl": resource_logs.schema_url,
                    "ResourceAttributes": resource,
                    "ScopeSchemaUrl": scope_logs.schema_url,
                    "ScopeName": scope.name,
                    "ScopeVersion": scope.version,
                    "ScopeAttributes": scope_attrs,
                    "LogAttributes": attrs,
                }
                rows.add("otel_logs", row, repeated)
                if secrets is not None:
                    found = scan_log(row, secrets, tenant, shared)
                    if found:
                        rows.add_findings(found)
    return rows


def to_rows(signal: str, request, tenant: str | None, price: PriceSpan | None, rows: Rows | None = None,
            secrets: SecretPolicy | None = None) -> Rows:
    if signal == "traces":
        return trace_rows(request, tenant, price, rows, secrets)
    if signal == "metrics":
        return metric_rows(request, tenant, rows)
    return log_rows(request, tenant, rows, secrets)

"""OTLP export requests (protobuf or JSON) to JSONEachRow blocks for the writer.

Decoding is here; what each span, data point and log record becomes is in
records.py.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agentwatch.collector.receiver.records import EXPANSION, MIN_ROWS_BUDGET, BadRequest, Rows, to_rows
from agentwatch.collector.receiver.secrets import SecretPolicy, might_hold_secret

__all__ = ["BadRequest", "Converted", "convert", "decode", "encode_rows", "warm_up"]


# --- decoding -----------------------------------------------------------------

_ID_FIELDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _hex_ids_to_base64(document) -> None:
    # OTLP/JSON writes trace and span ids as hex (either case), where the
    # protobuf JSON mapping expects base64 for bytes: convert in place. A loop,
    # not recursion: a body may nest a thousand levels deep.
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))
            continue
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise BadRequest(f"{key} {value[:40]!r} is not hex") from None
            elif isinstance(value, (dict, list)):
                stack.append(value)


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
    """Load the price data and the secret rules in a fresh worker before the first request needs them."""
    convert("traces", b"", False, None)
    might_hold_secret("")


def convert(signal: str, body: bytes | None, is_json: bool, tenant: str | None, message=None,
            secrets: SecretPolicy | None = None) -> Converted:
    """Decode and convert one request. Pure and picklable: the receiver runs it in
    worker processes, since converting spans in Python is CPU-bound. `secrets`: scan
    payloads for credential material by this policy (None: store as sent, unscanned)."""
    global _pricer
    if _pricer is None:
        from agentwatch.collector.receiver.pricing import Pricer

        _pricer = Pricer()
    if message is None:
        message = decode(signal, body, is_json)
    size = len(body) if body is not None else message.ByteSize()
    if secrets is not None and body and not is_json:
        secrets = secrets.within(body)  # one pass over the body answers for most requests
    unknown: list[str] = []
    _pricer.on_unknown = unknown.append
    rows = to_rows(signal, message, tenant, _pricer, Rows(budget=max(MIN_ROWS_BUDGET, EXPANSION * size)), secrets)
    blocks = [(table, encode_rows(table_rows), len(table_rows)) for table, table_rows in rows.tables.items()]
    return Converted(blocks, rows.accepted, rows.rejected, rows.error_message, unknown)

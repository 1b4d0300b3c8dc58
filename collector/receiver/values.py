"""OTLP AnyValues and attribute lists as the strings the rows hold, the way the Collector's
clickhouseexporter writes them (AnyValue.AsString), so rows from us and from otelcol-contrib look alike."""

from __future__ import annotations

import base64

import orjson


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

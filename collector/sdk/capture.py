"""Turning captured Python values into span attributes: whole, never truncated."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import orjson

from .settings import settings, warn_once

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    """orjson's `default`: what it cannot serialise natively."""
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    model_dump = getattr(value, "model_dump", None)  # pydantic models (OpenAI SDK responses, ...)
    if callable(model_dump):
        return model_dump()
    tolist = getattr(value, "tolist", None)  # numpy values, where orjson's own support does not apply
    if callable(tolist):
        return tolist()
    return str(value)


def to_json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_fallback, option=_JSON_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        # orjson refuses integers beyond 64 bits and very deep nesting; the stdlib does not.
        return json.dumps(value, default=_fallback, ensure_ascii=False)


def to_text(value: Any) -> str:
    """Strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else to_json(value)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _part(value: Any) -> dict:
    if isinstance(value, str):
        return {"type": "text", "content": value}
    return {"type": "data", "content": value}


def input_messages_json(value: Any) -> str:
    """GenAI input messages: a messages list as is, anything else as one user message."""
    if isinstance(value, str) or not _is_messages(value):
        value = [{"role": "user", "parts": [_part(value)]}]
    return to_json(value)


def output_messages_json(value: Any) -> str:
    """GenAI output messages: a messages list as is, anything else as one assistant message."""
    if not _is_messages(value):
        value = [{"role": "assistant", "parts": [_part(value)], "finish_reason": "stop"}]
    return to_json(value)


def system_instructions_json(value: Any) -> str:
    if isinstance(value, str):
        value = [{"type": "text", "content": value}]
    return to_json(value)


def set_content(span: Any, name: str, value: Any, to_attribute: Callable[[Any], str]) -> None:
    """Set one captured value, after the redaction hook; never raises."""
    try:
        redact = settings.redact
        if redact is not None:
            value = redact(name, value)
        if value is None:
            return
        span.set_attribute(name, to_attribute(value))
    except Exception:
        # A failing redaction hook drops the value rather than leaking what it was meant to hide.
        warn_once("capture:" + name, "agentwatch could not capture %s; value dropped", name)


def joined(items: list) -> Any:
    """What a stream produced: text chunks joined, other items as a list."""
    if all(isinstance(item, str) for item in items):
        return "".join(items)
    return items


class Arguments:
    """Binds call arguments to parameter names, from a signature read once per function."""

    def __init__(self, func: Callable) -> None:
        self.positional: tuple[str, ...] = ()
        self.var_positional: str | None = None
        self.skip: str | None = None
        self.takes_messages = False
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # builtins and odd callables: keep arguments unnamed
            self.var_positional = "args"
            return
        kinds = inspect.Parameter
        self.positional = tuple(
            p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        self.var_positional = next((p.name for p in parameters if p.kind is kinds.VAR_POSITIONAL), None)
        if self.positional and self.positional[0] in ("self", "cls"):
            self.skip = self.positional[0]
        self.takes_messages = any(p.name == "messages" for p in parameters)

    def bind(self, args: tuple, kwargs: dict) -> dict:
        # Cheaper than Signature.bind on every call; **kwargs land flat, by their own names.
        bound = dict(zip(self.positional, args))
        extra = args[len(self.positional) :]
        if extra:
            bound[self.var_positional or "args"] = list(extra)
        if kwargs:
            bound.update(kwargs)
        if self.skip is not None:
            bound.pop(self.skip, None)
        return bound

"""`init(redact=fn)` and `capture_content=False`, applied to what the instrumentations record.

The decorators pass each value they capture through the hook as they set it
(capture.py). The instrumentations `init` enables set attributes of their own;
before one of their spans leaves the process, agentwatch's exporter passes each
attribute that holds content through the same hook: the GenAI messages
(`gen_ai.input.messages`, `gen_ai.output.messages`, `gen_ai.system_instructions`,
tool call arguments and results), OpenInference's (`input.value`, `output.value`,
`llm.input_messages.*`, `llm.output_messages.*`, `llm.prompts.*`, ...) and
OpenLLMetry's (`gen_ai.prompt.*`, `gen_ai.completion.*`, `traceloop.entity.input`
and `.output`, ...). A value holding a JSON document (messages, arguments)
reaches the hook parsed and is written back as JSON; the hook returning None, or
raising, drops the attribute. With content capture off, these attributes are
dropped, whatever the instrumentation's own switch said.

Only the spans agentwatch's own exporter sends are rewritten: where `init`
joined an application's provider without an endpoint, the application's
exporters send the spans as the instrumentations made them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from agentwatch.schemas.attributes import (
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
)

from .capture import to_json
from .settings import warn_once

# Attributes whose whole value is a JSON document when it holds one.
DOCUMENTS = frozenset({
    GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES, GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_TOOL_CALL_ARGUMENTS, GEN_AI_TOOL_CALL_RESULT,
    "input.value", "output.value",  # OpenInference
    "traceloop.entity.input", "traceloop.entity.output", "gen_ai.task.input", "gen_ai.task.output",  # OpenLLMetry
})
CONTENT = DOCUMENTS | {"gen_ai.prompt", "gen_ai.completion"}
CONTENT_PREFIXES = (
    "gen_ai.prompt.", "gen_ai.completion.",  # OpenLLMetry's messages, one attribute per field
    "llm.input_messages.", "llm.output_messages.", "llm.prompts.", "llm.prompt_template.",  # OpenInference's
    "retrieval.documents.", "reranker.input_documents.", "reranker.output_documents.", "reranker.query",
    "embedding.embeddings.",
)

_DROP = object()
_NOT_JSON = object()


def is_content(key: str) -> bool:
    return key in CONTENT or key.startswith(CONTENT_PREFIXES)


def _document(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not (key in DOCUMENTS or key.endswith(".arguments")):
        return _NOT_JSON
    if not value.startswith(("{", "[")):
        return _NOT_JSON
    try:
        return json.loads(value)
    except ValueError:
        return _NOT_JSON


def _attribute(value: Any) -> Any:
    """What the hook returned, as an attribute value."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return to_json(value)


def _redacted(redact: Callable[[str, Any], Any], key: str, value: Any) -> Any:
    try:
        document = _document(key, value)
        if document is _NOT_JSON:
            result = redact(key, value)
            if result is None:
                return _DROP
            return value if result == value else _attribute(result)
        result = redact(key, document)
        if result is None:
            return _DROP
        # Compared with a fresh parse: the hook may have changed its argument in place.
        if result == _document(key, value):
            return value  # unchanged: exported byte for byte as the instrumentation wrote it
        return result if isinstance(result, str) else to_json(result)
    except Exception:
        # A failing hook drops the value rather than leaking what it was meant to hide.
        warn_once("redact:" + key, "agentwatch's redaction hook failed on %s; value dropped", key)
        return _DROP


def rewrite(attributes: Mapping[str, Any], redact: Callable[[str, Any], Any] | None, capture: bool) -> dict | None:
    """The attributes to export instead: content redacted, or dropped when capture is off.
    None where nothing changes."""
    if capture and redact is None:
        return None
    out: dict | None = None
    for key, value in attributes.items():
        if not is_content(key):
            continue
        new = _redacted(redact, key, value) if capture and redact is not None else _DROP
        if new is value:
            continue
        if out is None:
            out = dict(attributes)
        if new is _DROP:
            del out[key]
        else:
            out[key] = new
    return out

"""One model span per model call, however many layers saw it.

An `@agentwatch.llm` function that calls an instrumented client, or a framework
whose model span wraps an instrumented client's, would give one call two model
spans and count its tokens and cost twice. The outer span is the one kept: it
is what the user (or the framework) named, and it is the parent of whatever
the call does. A model span whose parent is a model span, and that has no
spans of its own below it, is folded into that parent when it ends: each of
its attributes the parent lacks is copied onto the parent (tokens, model,
messages, the instrumentation's request details), and the span itself is not
exported. Only the first such span per parent is folded; a second call under
the same parent stays its own span, so that no call is lost. The decorator
then reads usage from the response only where the parent still lacks it.

Where init joined an application's provider without an endpoint, the spans are
exported by the application's processors, which cannot be told to skip one:
nothing is folded there, and the decorator leaves the usage to the inner span
(two spans, the call's tokens counted once).
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from agentwatch.schemas.attributes import GEN_AI_OPERATION_NAME, LLM_REQUEST_TYPE, OPENINFERENCE_SPAN_KIND

from .settings import warn_once

MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
_OPENINFERENCE_MODEL_KINDS = frozenset({"LLM", "EMBEDDING"})
_TRACELOOP_MODEL_TYPES = frozenset({"chat", "completion", "embedding"})


def _attributes(span: Any) -> Any:
    # A live SDK span's public `attributes` copies the mapping on every read; `_attributes` is it.
    return getattr(span, "_attributes", None) or getattr(span, "attributes", None) or {}


def is_model_span(attributes: Any) -> bool:
    operation = attributes.get(GEN_AI_OPERATION_NAME)
    if operation:
        return operation in MODEL_OPERATIONS
    return (
        attributes.get(OPENINFERENCE_SPAN_KIND) in _OPENINFERENCE_MODEL_KINDS
        or attributes.get(LLM_REQUEST_TYPE) in _TRACELOOP_MODEL_TYPES
    )


class ModelSpanFolder(SpanProcessor):
    """Folds a model span into its model-span parent (see the module's doc); runs before export."""

    def __init__(self, fold: bool = True) -> None:
        self.fold = fold  # False: the exporter is not ours; only note which parents had a model child
        self._lock = threading.Lock()
        self._parent_of: dict[int, Span] = {}  # span id -> its live model-span parent
        self._children: dict[int, int] = {}  # model span id -> its children not folded away
        self._absorbed: set[int] = set()  # parents that took one span in already
        self._folded: set[int] = set()  # span ids the exporter must skip

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            parent = trace.get_current_span(parent_context)
            if not isinstance(parent, Span) or not parent.is_recording():
                return
            if not is_model_span(_attributes(parent)):
                return
            parent_id = parent.get_span_context().span_id
            with self._lock:
                self._parent_of[span.get_span_context().span_id] = parent
                self._children[parent_id] = self._children.get(parent_id, 0) + 1
        except Exception:
            warn_once("fold-start", "agentwatch could not follow a model span")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_id = span.context.span_id
            with self._lock:
                self._absorbed.discard(span_id)
                has_children = self._children.pop(span_id, 0) > 0
                parent = self._parent_of.pop(span_id, None)
                if parent is None:
                    return
                parent_id = parent.get_span_context().span_id
                fold = (
                    not has_children
                    and parent_id not in self._absorbed
                    and parent.is_recording()
                    and is_model_span(span.attributes)
                )
                if fold:
                    self._absorbed.add(parent_id)
                    fold = self.fold
                if fold:
                    self._folded.add(span_id)
                    remaining = self._children.get(parent_id, 1) - 1
                    if remaining > 0:
                        self._children[parent_id] = remaining
                    else:
                        self._children.pop(parent_id, None)
            if fold:
                present = _attributes(parent)
                parent.set_attributes({k: v for k, v in span.attributes.items() if k not in present})
        except Exception:
            warn_once("fold-end", "agentwatch could not fold a model span into its parent")

    def took_model_child(self, span: Any) -> bool:
        """Whether a model span ended under this (still open) model span."""
        return span.get_span_context().span_id in self._absorbed

    def folded(self, span: ReadableSpan) -> bool:
        """True (once) for a span folded into its parent: the exporter leaves it out."""
        span_id = span.context.span_id
        if span_id not in self._folded:
            return False
        with self._lock:
            self._folded.discard(span_id)
        return True

"""One model span per model call, however many layers saw it.

An `@agentwatch.llm` function that calls an instrumented client, or a framework
whose model span wraps an instrumented client's, would give one call two model
spans and count its tokens and cost twice. The outer span is the one kept: it
is what the user (or the framework) named, and it sits where the call belongs
in the trace. The inner span is folded into it when it ends: each of its
attributes the outer span lacks is copied onto it (tokens, model, messages, the
instrumentation's request details), and the inner span is not exported. Only
the first such span per outer span is folded; a second call under the same
span stays its own span, so that no call is lost. The decorator then reads
usage from the response only where its span still lacks it.

Two layers are recognised:

- a model span whose parent is a model span, and that has no spans of its own
  below it (a client's span under `@agentwatch.llm`, or under a framework's
  model span that is the current span);
- a client's model span started while a framework's span of the same trace is
  open and has nothing below it: the framework's model call, which LangChain's
  instrumentations (OpenInference's, OpenLLMetry's) do not make the current
  span, so the client's span is not its child. Where several are open, the one
  started last in the same thread (or asyncio task) is the one. OpenInference
  names a span's kind only when it ends: the client's span is held until the
  framework's span ends, then folded into it if it is a model span, else sent
  on as it was.

Where init joined an application's provider without an endpoint, the spans are
exported by the application's processors, which cannot be told to skip one:
nothing is folded there, and the decorator leaves the usage to the inner span
(two spans, the call's tokens counted once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from agentwatch.schemas.attributes import GEN_AI_OPERATION_NAME, LLM_REQUEST_TYPE, OPENINFERENCE_SPAN_KIND

from . import redaction
from .settings import TRACER_NAME, settings, warn_once

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


def with_attributes(span: ReadableSpan, attributes: Mapping[str, Any]) -> ReadableSpan:
    """A copy of an ended span with other attributes (an ended span's own cannot change)."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _missing(attributes: Mapping[str, Any], into: Any) -> dict:
    """The attributes `into` lacks; redacted when `into` is ours (the exporter leaves ours as they are)."""
    present = _attributes(into)
    missing = {k: v for k, v in attributes.items() if k not in present}
    scope = getattr(into, "instrumentation_scope", None)
    if missing and getattr(scope, "name", None) == TRACER_NAME:
        missing = redaction.rewrite(missing, settings.redact, settings.capture_content) or missing
    return missing


def _where() -> tuple:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop running in this thread
        task = None
    return threading.get_ident(), id(task) if task is not None else None


class _Layer:
    """An open span of a framework's instrumentation."""

    __slots__ = ("span", "where", "busy", "held")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.where = _where()
        self.busy = False  # a span started below it, or a client's span was paired with it
        self.held: ReadableSpan | None = None  # that client's span, ended before this one's kind was known


class ModelSpanFolder(SpanProcessor):
    """Folds a model span into the outer one (see the module's doc); runs before export."""

    def __init__(self, fold: bool = True, frameworks: Collection[str] = ()) -> None:
        self.fold = fold  # False: the exporter is not ours; only note which parents had a model child
        self.frameworks = frameworks  # names of the frameworks' tracers (forwarding.FRAMEWORK_TRACERS)
        self._lock = threading.Lock()
        self._parent_of: dict[int, Span] = {}  # span id -> its live model-span parent
        self._children: dict[int, int] = {}  # model span id -> its children not folded away
        self._absorbed: set[int] = set()  # parents that took one span in already
        self._layers: dict[int, _Layer] = {}  # open framework spans by span id
        self._traces: dict[int, list[int]] = {}  # trace id -> its open framework spans, oldest first
        self._paired: dict[int, _Layer] = {}  # client model span id -> the framework span it repeats
        self._outbox: dict[int, list[ReadableSpan]] = {}  # span id -> what to export in its place

    # --- starting ----------------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            parent = trace.get_current_span(parent_context)
            context = span.get_span_context()
            parent_id = parent.get_span_context().span_id if parent.get_span_context().is_valid else None
            framework = span.instrumentation_scope is not None and span.instrumentation_scope.name in self.frameworks
            with self._lock:
                above = self._layers.get(parent_id) if parent_id is not None else None
                if above is not None:
                    above.busy = True
                if framework:
                    layer = _Layer(span)
                    self._layers[context.span_id] = layer
                    self._traces.setdefault(context.trace_id, []).append(context.span_id)
            if isinstance(parent, Span) and parent.is_recording() and is_model_span(_attributes(parent)):
                with self._lock:
                    self._parent_of[context.span_id] = parent
                    self._children[parent_id] = self._children.get(parent_id, 0) + 1
            elif self.fold and not framework and is_model_span(_attributes(span)):
                self._pair(span, parent_id)
        except Exception:
            warn_once("fold-start", "agentwatch could not follow a model span")

    def _pair(self, span: Span, parent_id: int | None) -> None:
        """A client's model span: pair it with the framework model call it repeats, if one is open."""
        context = span.get_span_context()
        with self._lock:
            candidates = [
                layer for layer in map(self._layers.get, self._traces.get(context.trace_id, ()))
                if layer is not None and not layer.busy and layer.span.get_span_context().span_id != parent_id
            ]
            if not candidates:
                return
            here = _where()
            local = [layer for layer in candidates if layer.where == here]
            if local:
                layer = local[-1]
            elif len(candidates) == 1:
                layer = candidates[0]
            else:
                return  # several framework calls open elsewhere: which one this is cannot be told
            layer.busy = True
            self._paired[context.span_id] = layer

    # --- ending --------------------------------------------------------------------
    def on_end(self, span: ReadableSpan) -> None:
        try:
            out = self._settle(span)
        except Exception:
            out = None
            warn_once("fold-end", "agentwatch could not fold a model span into its parent")
        if out is not None:
            with self._lock:
                self._outbox[span.context.span_id] = out

    def _settle(self, span: ReadableSpan) -> list[ReadableSpan] | None:
        """What the exporter sends in the span's place (None: the span itself)."""
        context = span.context
        span_id = context.span_id
        live_fold = None
        with self._lock:
            layer = self._layers.pop(span_id, None)
            if layer is not None:
                siblings = self._traces.get(context.trace_id, [])
                if span_id in siblings:
                    siblings.remove(span_id)
                if not siblings:
                    self._traces.pop(context.trace_id, None)
            self._absorbed.discard(span_id)
            has_children = self._children.pop(span_id, 0) > 0
            parent = self._parent_of.pop(span_id, None)
            repeated = self._paired.pop(span_id, None)
            if repeated is not None and self._layers.get(repeated.span.get_span_context().span_id) is repeated:
                # A client's span of a framework's model call that is still open.
                if is_model_span(_attributes(repeated.span)):
                    live_fold = repeated.span
                else:
                    repeated.held = span  # its kind is named when it ends
                    return []
        if live_fold is not None:
            live_fold.set_attributes(_missing(span.attributes, live_fold))
            return []
        out: list[ReadableSpan] | None = None
        attributes: Mapping[str, Any] = span.attributes
        if layer is not None and layer.held is not None:
            if is_model_span(attributes):
                attributes = {**attributes, **_missing(layer.held.attributes, span)}
                span = with_attributes(span, attributes)
                out = [span]
            else:
                out = [layer.held, span]  # not a model call after all: both go as they were
        if parent is not None and self._fold_into(parent, span_id, has_children, attributes):
            return [s for s in out or () if s is not span]
        return out

    def _fold_into(self, parent: Span, span_id: int, has_children: bool, attributes: Mapping[str, Any]) -> bool:
        """Fold an ended model child into its live model parent; True when it is not exported."""
        with self._lock:
            parent_id = parent.get_span_context().span_id
            fold = (
                not has_children
                and parent_id not in self._absorbed
                and parent.is_recording()
                and is_model_span(attributes)
            )
            if fold:
                self._absorbed.add(parent_id)
                fold = self.fold
            if fold:
                remaining = self._children.get(parent_id, 1) - 1
                if remaining > 0:
                    self._children[parent_id] = remaining
                else:
                    self._children.pop(parent_id, None)
        if fold:
            parent.set_attributes(_missing(attributes, parent))
        return fold

    # --- for the decorator and the exporter ------------------------------------------
    def took_model_child(self, span: Any) -> bool:
        """Whether a model span ended under this (still open) model span."""
        return span.get_span_context().span_id in self._absorbed

    def take(self, span: ReadableSpan) -> list[ReadableSpan]:
        """What the exporter sends for this ended span: itself, nothing (folded, or held for
        later), or spans held until now."""
        span_id = span.context.span_id
        if span_id not in self._outbox:
            return [span]
        with self._lock:
            return self._outbox.pop(span_id, [span])

"""Decorators (also context managers) that put agents, tools and model calls in the trace.

Each works on sync and async functions, generators and async generators (the
span lives until the stream is exhausted or closed) and methods. Nothing here
may raise into the user's code: our own work is guarded, the user's exceptions
pass through unchanged. The one exception is by design: a model call, tool call
or agent start under a halt raises `AgentHalted` before it starts (guard.py).
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode

from agentwatch.schemas.attributes import (
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    TENANT_ID,
)

from . import guard, model_output
from .capture import Arguments, input_messages_json, joined, output_messages_json, set_content, to_json, to_text
from .settings import AGENT_PARENT_ID, INPUT, OUTPUT, SCOPE_KEY, Scope, current_scope, now, settings, warn_once


def new_agent_id() -> str:
    """A uuid4 in hex, like uuid.uuid4().hex at a fifth of the cost (random bits, as OTel's span ids)."""
    bits = random.getrandbits(128)
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    return f"{bits:032x}"


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Call:
    """One started span, the context its body runs in, and whether content is captured."""

    __slots__ = ("span", "context", "capture")

    def __init__(self, span: trace.Span, context: otel_context.Context, capture: bool) -> None:
        self.span = span
        self.context = context
        self.capture = capture


class _Instrumentation:
    """What one decorator starts and captures; subclasses say what differs per kind."""

    span_kind = SpanKind.INTERNAL
    operation = ""
    name_from_function = True
    guarded: str | None = None  # the call the guard checks before the span starts (guard.py)
    agent_id: str | None = None

    def __init__(self, name: str | None, capture: bool | None) -> None:
        self.name = name
        self.capture = capture
        self._entered: list = []  # (call, token) per `with` block, innermost last
        self._describe()

    def _describe(self) -> None:
        """Precompute the span name and the attributes every call starts with."""
        self.span_name = f"{self.operation} {self.name}" if self.name else self.operation
        self.static_attributes = {GEN_AI_OPERATION_NAME: self.operation}

    # --- per kind --------------------------------------------------------------
    def scope_attributes(self, attributes: dict, scope: Scope) -> Scope | None:
        """Add the enclosing agent to `attributes`; return a new scope for children (agents only)."""
        if scope.agent_id is not None:
            attributes[GEN_AI_AGENT_ID] = scope.agent_id
            if scope.agent_name is not None:
                attributes[GEN_AI_AGENT_NAME] = scope.agent_name
        return None

    def capture_input(self, span: trace.Span, arguments: dict) -> None:
        pass

    def capture_output(self, span: trace.Span, value: Any) -> None:
        pass

    # --- starting and ending ---------------------------------------------------
    def _start(self, args: tuple, kwargs: dict, arguments: Arguments | None) -> _Call | None:
        scope = current_scope()
        if self.guarded is not None:
            guard.check(self.guarded, scope, self.agent_id)  # a call under a halt raises AgentHalted here
        try:
            attributes = dict(self.static_attributes)
            if scope.tenant is not None:
                attributes[TENANT_ID] = scope.tenant
            child_scope = self.scope_attributes(attributes, scope)
            span = settings.tracer.start_span(
                self.span_name, kind=self.span_kind, attributes=attributes, start_time=now()
            )
            context = trace.set_span_in_context(span)
            if child_scope is not None:
                context = otel_context.set_value(SCOPE_KEY, child_scope, context)
            call = _Call(span, context, self.capture is not False and settings.capture_content and span.is_recording())
        except Exception:
            warn_once("start", "agentwatch could not start a span; running uninstrumented")
            return None
        if call.capture and arguments is not None:
            try:
                self.capture_input(call.span, arguments.bind(args, kwargs))
            except Exception:
                warn_once("arguments", "agentwatch could not capture arguments")
        return call

    def _finish(self, call: _Call, token: object | None, output: Any = None) -> Any:
        """End the call's span; returns what the caller gets back (`output`, or a stream wrapping it)."""
        if token is not None:
            otel_context.detach(token)
        if call.capture and output is not None:
            try:
                self.capture_output(call.span, output)
            except Exception:
                warn_once("output", "agentwatch could not capture a return value")
        self._end(call)
        return output

    def _fail(self, call: _Call, token: object | None, exc: BaseException, output: Any = None) -> None:
        if token is not None:
            otel_context.detach(token)
        span = call.span
        try:
            if span.is_recording():
                span.record_exception(exc, timestamp=now())
                span.set_attribute(ERROR_TYPE, error_type(exc))
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        except Exception:
            warn_once("exception", "agentwatch could not record an exception")
        if call.capture and output is not None:
            try:
                self.capture_output(span, output)
            except Exception:
                warn_once("output", "agentwatch could not capture a return value")
        self._end(call)

    def _end(self, call: _Call) -> None:
        try:
            call.span.end(end_time=now())
        except Exception:
            warn_once("end", "agentwatch could not end a span")

    # --- as a decorator --------------------------------------------------------
    def __call__(self, func: Callable) -> Callable:
        if isinstance(func, (classmethod, staticmethod)):  # @agent() written above @classmethod
            return type(func)(self(func.__func__))
        instrumentation = self
        if self.name is None and self.name_from_function:
            instrumentation = copy.copy(self)
            instrumentation.name = getattr(func, "__name__", type(func).__name__)
            instrumentation._entered = []
            instrumentation._describe()
        # Read once per function: binding by name per call is then a zip, not Signature.bind.
        arguments = Arguments(func)
        if inspect.isasyncgenfunction(func):
            return instrumentation._wrap_async_generator(func, arguments)
        if inspect.iscoroutinefunction(func):
            return instrumentation._wrap_coroutine(func, arguments)
        if inspect.isgeneratorfunction(func):
            return instrumentation._wrap_generator(func, arguments)
        return instrumentation._wrap_function(func, arguments)

    def _wrap_function(self, func: Callable, arguments: Arguments) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            call = self._start(args, kwargs, arguments)
            if call is None:
                return func(*args, **kwargs)
            token = otel_context.attach(call.context)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self._fail(call, token, exc)
                raise
            return self._finish(call, token, result)

        return wrapper

    def _wrap_coroutine(self, func: Callable, arguments: Arguments) -> Callable:
        @functools.wraps(func)
        async def wrapper(*args, **kwargs):
            call = self._start(args, kwargs, arguments)
            if call is None:
                return await func(*args, **kwargs)
            token = otel_context.attach(call.context)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                self._fail(call, token, exc)
                raise
            return self._finish(call, token, result)

        return wrapper

    def _wrap_generator(self, func: Callable, arguments: Arguments) -> Callable:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            generator = func(*args, **kwargs)
            call = self._start(args, kwargs, arguments)
            if call is None:
                return (yield from generator)
            items: list | None = [] if call.capture else None
            to_send = None
            to_throw = None
            try:
                while True:
                    # The span is current only while the generator body runs,
                    # not while the caller holds an item.
                    token = otel_context.attach(call.context)
                    try:
                        if to_throw is None:
                            item = generator.send(to_send)
                        else:
                            error, to_throw = to_throw, None
                            item = generator.throw(error)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    finally:
                        otel_context.detach(token)
                    if items is not None:
                        items.append(item)
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:  # thrown in by the caller: pass it to the generator
                        to_throw = exc
            except BaseException as exc:
                output = joined(items) if items else None
                if not isinstance(exc, GeneratorExit):
                    self._fail(call, None, exc, output)
                    raise
                # Closed early (close() or garbage collection): close the inner stream too.
                token = otel_context.attach(call.context)
                try:
                    generator.close()
                except BaseException as close_error:
                    otel_context.detach(token)
                    self._fail(call, None, close_error, output)
                    raise
                otel_context.detach(token)
                self._finish(call, None, output)
                raise
            self._finish(call, None, joined(items) if items else result)
            return result

        return wrapper

    def _wrap_async_generator(self, func: Callable, arguments: Arguments) -> Callable:
        @functools.wraps(func)
        async def wrapper(*args, **kwargs):
            generator = func(*args, **kwargs)
            call = self._start(args, kwargs, arguments)
            if call is None:
                async for item in generator:
                    yield item
                return
            items: list | None = [] if call.capture else None
            to_send = None
            to_throw = None
            try:
                while True:
                    token = otel_context.attach(call.context)
                    try:
                        if to_throw is None:
                            item = await generator.asend(to_send)
                        else:
                            error, to_throw = to_throw, None
                            item = await generator.athrow(error)
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    if items is not None:
                        items.append(item)
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        to_throw = exc
            except BaseException as exc:
                output = joined(items) if items else None
                if not isinstance(exc, GeneratorExit):
                    self._fail(call, None, exc, output)
                    raise
                token = otel_context.attach(call.context)
                try:
                    await generator.aclose()
                except BaseException as close_error:
                    otel_context.detach(token)
                    self._fail(call, None, close_error, output)
                    raise
                otel_context.detach(token)
                self._finish(call, None, output)
                raise
            self._finish(call, None, joined(items) if items else None)

        return wrapper

    # --- as a context manager --------------------------------------------------
    def __enter__(self) -> trace.Span:
        call = self._start((), {}, None)
        token = otel_context.attach(call.context) if call is not None else None
        self._entered.append((call, token))
        return call.span if call is not None else INVALID_SPAN

    def __exit__(self, exc_type, exc, traceback) -> bool:
        call, token = self._entered.pop()
        if call is not None:
            if exc is None:
                self._finish(call, token)
            else:
                self._fail(call, token, exc)
        return False

    async def __aenter__(self) -> trace.Span:
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, traceback) -> bool:
        return self.__exit__(exc_type, exc, traceback)


class _Agent(_Instrumentation):
    operation = "invoke_agent"
    guarded = "agent"

    def __init__(self, name: str | None, agent_id: str | None, capture: bool | None) -> None:
        self.agent_id = agent_id
        super().__init__(name, capture)

    def _describe(self) -> None:
        super()._describe()
        if self.name:
            self.static_attributes[GEN_AI_AGENT_NAME] = self.name

    def scope_attributes(self, attributes: dict, scope: Scope) -> Scope:
        agent_id = self.agent_id or new_agent_id()
        attributes[GEN_AI_AGENT_ID] = agent_id
        if scope.agent_id is not None:
            attributes[AGENT_PARENT_ID] = scope.agent_id
        return Scope(agent_id, self.name, scope.tenant)

    def capture_input(self, span: trace.Span, arguments: dict) -> None:
        if "messages" in arguments:
            value = arguments["messages"]
        elif len(arguments) == 1:  # a single argument: its value, not {"name": value}
            (value,) = arguments.values()
        elif arguments:
            value = arguments
        else:
            return
        set_content(span, GEN_AI_INPUT_MESSAGES, value, input_messages_json)

    def capture_output(self, span: trace.Span, value: Any) -> None:
        set_content(span, GEN_AI_OUTPUT_MESSAGES, value, output_messages_json)


class _Tool(_Instrumentation):
    operation = "execute_tool"
    guarded = "tool"

    def _describe(self) -> None:
        super()._describe()
        if self.name:
            self.static_attributes[GEN_AI_TOOL_NAME] = self.name

    def capture_input(self, span: trace.Span, arguments: dict) -> None:
        set_content(span, GEN_AI_TOOL_CALL_ARGUMENTS, arguments, to_json)

    def capture_output(self, span: trace.Span, value: Any) -> None:
        set_content(span, GEN_AI_TOOL_CALL_RESULT, value, to_text)


class _ModelCall(_Instrumentation):
    span_kind = SpanKind.CLIENT
    guarded = "model"
    name_from_function = False  # the span is named after the model, not the function

    def __init__(self, model: str | None, provider: str | None, operation: str, capture: bool | None) -> None:
        self.provider = provider
        self.operation = operation
        super().__init__(model, capture)

    def _describe(self) -> None:
        super()._describe()
        if self.name:
            self.static_attributes[GEN_AI_REQUEST_MODEL] = self.name
        if self.provider:
            self.static_attributes[GEN_AI_PROVIDER_NAME] = self.provider

    def capture_input(self, span: trace.Span, arguments: dict) -> None:
        if "messages" in arguments:
            set_content(span, GEN_AI_INPUT_MESSAGES, arguments["messages"], input_messages_json)

    def _finish(self, call: _Call, token: object | None, output: Any = None) -> Any:
        # Usage, model and output messages from a known client's response (model_output.py);
        # a returned stream keeps the span open until it is consumed.
        if output is not None and call.span.is_recording():
            measured = model_output.finish(self, call, token, output)
            if measured is not None:
                return measured
        return super()._finish(call, token, output)

    def capture_output(self, span: trace.Span, value: Any) -> None:
        # The SDK's public `attributes` copies the mapping on every read; its
        # `_attributes` is the mapping itself (fallback for other span types).
        attributes = getattr(span, "_attributes", None) or getattr(span, "attributes", None)
        if attributes and GEN_AI_OUTPUT_MESSAGES in attributes:  # record_usage(output_messages=...) said it already
            return
        set_content(span, GEN_AI_OUTPUT_MESSAGES, value, output_messages_json)


class _Span(_Instrumentation):
    def _describe(self) -> None:
        self.span_name = self.name or "span"
        self.static_attributes = {}

    def capture_input(self, span: trace.Span, arguments: dict) -> None:
        if arguments:
            set_content(span, INPUT, arguments, to_json)

    def capture_output(self, span: trace.Span, value: Any) -> None:
        set_content(span, OUTPUT, value, to_text)


def agent(name: str | Callable | None = None, *, agent_id: str | None = None, capture: bool | None = None):
    """An agent invocation: span "invoke_agent {name}" carrying gen_ai.agent.id / name.

    agent_id defaults to a new uuid4 hex per invocation. capture=False turns off
    argument / return capture here; the global setting turns it off everywhere.
    """
    if callable(name):  # bare @agent
        return _Agent(None, agent_id, capture)(name)
    return _Agent(name, agent_id, capture)


def tool(name: str | Callable | None = None, *, capture: bool | None = None):
    """A tool execution: span "execute_tool {name}", arguments and result captured."""
    if callable(name):
        return _Tool(None, capture)(name)
    return _Tool(name, capture)


def llm(
    model: str | Callable | None = None,
    *,
    provider: str | None = None,
    operation: str = "chat",
    capture: bool | None = None,
):
    """A model call: span "{operation} {model}" (CLIENT); call record_usage(...) inside."""
    if callable(model):
        return _ModelCall(None, provider, operation, capture)(model)
    return _ModelCall(model, provider, operation, capture)


def span(name: str | Callable | None = None, *, capture: bool | None = None):
    """A plain span: arguments -> agentwatch.input, return value -> agentwatch.output."""
    if callable(name):
        return _Span(None, capture)(name)
    return _Span(name, capture)

"""Streamed model responses, measured as they are consumed.

A `@agentwatch.llm` function that returns a client's stream (OpenAI's
`stream=True`, Anthropic's `stream=True`, Gemini's `generate_content_stream`)
gets it back wrapped: every item passes through unchanged, the items are read
on the way (text and tool call deltas, the usage in OpenAI's final chunk when
`stream_options={"include_usage": True}`, Anthropic's message_start and
message_delta usage, Gemini's last usage_metadata), and the model call's span
ends when the stream is exhausted, closed, or dropped.

Anthropic's `messages.stream(...)` returns a stream manager, whose request is
made when its `with` block is entered: it is handed back wrapped too, entered
in the model call's context, and the span ends with the `with` block, with the
message the stream accumulated.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context

from . import responses as R
from .settings import warn_once

Done = Callable[["R.Reading | None", "BaseException | None"], None]


class StreamReader:
    """Builds one Reading from a client's stream items, whichever client made them."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.model = self.response_id = None
        self.usage: dict = {}
        self.choices: dict[int, dict] = {}  # index -> {"parts": {key: part}, "finish_reason": ...}
        self.complete: R.Reading | None = None  # a whole response a stream ended with (Responses API)

    def _choice(self, index: int) -> dict:
        return self.choices.setdefault(index, {"parts": {}, "finish_reason": None})

    def _text(self, index: int, key: Any, kind: str, text: Any) -> None:
        if text:
            parts = self._choice(index)["parts"]
            part = parts.setdefault(key, {"type": kind, "content": ""})
            part["content"] += text

    def feed(self, item: Any) -> bool:
        """Read one item; False when it is no known client's stream item."""
        kind = getattr(item, "object", None) or getattr(item, "type", None)
        if kind == "chat.completion.chunk":
            self._openai_chunk(item)
        elif isinstance(kind, str) and kind.startswith("response."):
            self.kind = "openai"
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.complete = R.read(getattr(item, "response", None))
        elif kind in ("message_start", "message_delta", "content_block_start", "content_block_delta",
                      "content_block_stop", "message_stop", "ping"):
            self._anthropic_event(kind, item)
        elif hasattr(item, "candidates") and hasattr(item, "usage_metadata"):
            self._gemini_chunk(item)
        else:
            return False
        return True

    def _openai_chunk(self, chunk: Any) -> None:
        self.kind = "openai"
        self.model = self.model or R._get(chunk, "model")
        self.response_id = self.response_id or R._get(chunk, "id")
        if R._get(chunk, "usage") is not None:
            self.usage = R.openai_chat_usage(R._get(chunk, "usage"))
        for choice in R._get(chunk, "choices") or ():
            index = R._get(choice, "index") or 0
            delta = R._get(choice, "delta")
            self._text(index, "reasoning", "reasoning", R._get(delta, "reasoning_content"))
            self._text(index, "text", "text", R._get(delta, "content"))
            for call in R._get(delta, "tool_calls") or ():
                parts = self._choice(index)["parts"]
                part = parts.setdefault(("tool", R._get(call, "index")),
                                        {"type": "tool_call", "id": None, "name": None, "arguments": ""})
                part["id"] = part["id"] or R._get(call, "id")
                part["name"] = part["name"] or R._get(call, "function", "name")
                part["arguments"] += R._get(call, "function", "arguments") or ""
            if R._get(choice, "finish_reason"):
                self._choice(index)["finish_reason"] = R._get(choice, "finish_reason")

    def _anthropic_event(self, kind: str, event: Any) -> None:
        self.kind = "anthropic"
        if kind == "message_start":
            message = R._get(event, "message")
            self.model, self.response_id = R._get(message, "model"), R._get(message, "id")
            self.usage = R.anthropic_usage(R._get(message, "usage"))
        elif kind == "content_block_start":
            block = R._get(event, "content_block")
            part = R.anthropic_part(block)
            if part is not None:
                if part["type"] in ("text", "reasoning"):
                    part["content"] = part["content"] or ""
                if part["type"] == "tool_call":
                    part["arguments"], part["_json"] = part["arguments"] or None, ""
                self._choice(0)["parts"][R._get(event, "index")] = part
        elif kind == "content_block_delta":
            delta = R._get(event, "delta")
            part = self._choice(0)["parts"].get(R._get(event, "index"))
            delta_kind = R._get(delta, "type")
            if part is None:
                return
            if delta_kind == "text_delta":
                part["content"] += R._get(delta, "text") or ""
            elif delta_kind == "thinking_delta":
                part["content"] += R._get(delta, "thinking") or ""
            elif delta_kind == "input_json_delta":
                part["_json"] = part.get("_json", "") + (R._get(delta, "partial_json") or "")
        elif kind == "message_delta":
            self._choice(0)["finish_reason"] = R._get(event, "delta", "stop_reason")
            usage = R._get(event, "usage")
            # message_delta's output_tokens are the running total; newer APIs repeat the input counts.
            if R._get(usage, "input_tokens") is not None:
                self.usage = R.anthropic_usage(usage)
            elif R._get(usage, "output_tokens") is not None:
                self.usage["output_tokens"] = R._get(usage, "output_tokens")

    def _gemini_chunk(self, chunk: Any) -> None:
        self.kind = "gemini"
        self.model = R._get(chunk, "model_version") or self.model
        self.response_id = R._get(chunk, "response_id") or self.response_id
        if R._get(chunk, "usage_metadata") is not None:
            self.usage = R.gemini_usage(R._get(chunk, "usage_metadata"))
        for position, candidate in enumerate(R._get(chunk, "candidates") or ()):
            index = R._get(candidate, "index") or position
            for part in R.gemini_parts(R._get(candidate, "content")):
                if part["type"] == "tool_call":
                    parts = self._choice(index)["parts"]
                    parts[("tool", len(parts))] = part
                else:
                    self._text(index, part["type"], part["type"], part["content"])
            if R.gemini_reason(candidate):
                self._choice(index)["finish_reason"] = R.gemini_reason(candidate)

    def result(self) -> R.Reading | None:
        if self.complete is not None:
            return self.complete
        if self.kind is None:
            return None
        messages, reasons = [], []
        for index in sorted(self.choices):
            choice = self.choices[index]
            parts = []
            for part in choice["parts"].values():
                part = dict(part)
                if "_json" in part:
                    text = part.pop("_json")
                    part["arguments"] = R._arguments(text) if text else part["arguments"]
                elif part["type"] == "tool_call" and isinstance(part["arguments"], str):
                    part["arguments"] = R._arguments(part["arguments"])
                parts.append(part)
            reasons.append(choice["finish_reason"])
            messages.append({"role": "assistant", "parts": parts, "finish_reason": choice["finish_reason"]})
        provider = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gen_ai"}[self.kind]
        return R.reading(provider, model=self.model, response_id=self.response_id, finish_reasons=reasons,
                         messages=messages, **self.usage)


def is_stream(value: Any) -> bool:
    """A stream a model client returned (or a generator of its chunks), to be measured as consumed."""
    if inspect.isgenerator(value) or inspect.isasyncgen(value):
        return True
    kind = type(value)
    # OpenAI's and Anthropic's Stream / AsyncStream (or an instrumentation's proxy of one) hold the HTTP response.
    return (hasattr(kind, "__next__") or hasattr(kind, "__anext__")) and hasattr(value, "response")


class _Measured:
    """What the sync and async wrappers share: the reader and ending exactly once."""

    def __init__(self, inner: Any, done: Done) -> None:
        self._inner = inner
        self._done: Done | None = done
        self._reader: StreamReader | None = StreamReader()

    def _read(self, item: Any) -> None:
        reader = self._reader
        if reader is not None:
            try:
                if not reader.feed(item):
                    self._reader = None  # not a client's stream after all: nothing to read
            except Exception:
                self._reader = None
                warn_once("stream", "agentwatch could not read a model stream item")

    def _end(self, error: BaseException | None = None) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        try:
            found = self._reader.result() if self._reader is not None else None
        except Exception:
            found = None
            warn_once("stream", "agentwatch could not read a model stream")
        done(found, error)

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_done", "_reader"):  # not set yet (a failed __init__): not the inner's
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __del__(self) -> None:  # dropped unconsumed: the span still ends, with what was read
        try:
            self._end()
        except Exception:
            pass


class MeasuredStream(_Measured):
    def __iter__(self):
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._inner)
        except StopIteration:
            self._end()
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._read(item)
        return item

    def __enter__(self):
        enter = getattr(self._inner, "__enter__", None)
        if enter is not None:
            enter()
        return self

    def __exit__(self, exc_type, exc, traceback):
        leave = getattr(self._inner, "__exit__", None)
        try:
            return leave(exc_type, exc, traceback) if leave is not None else None
        finally:
            self._end(exc)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._end()


class AsyncMeasuredStream(_Measured):
    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._inner.__anext__()
        except StopAsyncIteration:
            self._end()
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._read(item)
        return item

    async def __aenter__(self):
        enter = getattr(self._inner, "__aenter__", None)
        if enter is not None:
            await enter()
        return self

    async def __aexit__(self, exc_type, exc, traceback):
        leave = getattr(self._inner, "__aexit__", None)
        try:
            return await leave(exc_type, exc, traceback) if leave is not None else None
        finally:
            self._end(exc)

    async def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None) or getattr(self._inner, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._end()


def measure(stream: Any, done: Done) -> Any:
    """`stream`, wrapped so that `done(reading, error)` is called once when it is over."""
    # An instrumentation's proxy may define both protocols; what it wraps says which one works.
    kind = type(getattr(stream, "__wrapped__", stream))
    if inspect.isasyncgen(stream) or (hasattr(kind, "__anext__") and not hasattr(kind, "__next__")):
        return AsyncMeasuredStream(stream, done)
    return MeasuredStream(stream, done)


def is_stream_manager(value: Any) -> bool:
    """Anthropic's (Async)MessageStreamManager, or its beta's: `with client.messages.stream(...) as s`."""
    kind = type(value)
    return kind.__name__.endswith("MessageStreamManager") and (
        hasattr(kind, "__enter__") or hasattr(kind, "__aenter__"))


class MeasuredStreamManager:
    """A stream manager, entered in the model call's context; the call ends with its `with` block."""

    def __init__(self, inner: Any, done: Done, context: Any) -> None:
        self._inner = inner
        self._done: Done | None = done
        self._context = context
        self._stream: Any = None

    def _end(self, error: BaseException | None = None) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        found = None
        try:
            message = getattr(self._stream, "current_message_snapshot", None) if self._stream is not None else None
            found = R.read(message)
        except Exception:  # nothing accumulated (the request failed, or no event came)
            found = None
        done(found, error)

    def __enter__(self) -> Any:
        token = otel_context.attach(self._context)  # the request, and its instrumentation's span, inside the call
        try:
            self._stream = self._inner.__enter__()
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            otel_context.detach(token)
        return self._stream

    def __exit__(self, exc_type, exc, traceback):
        try:
            return self._inner.__exit__(exc_type, exc, traceback)
        finally:
            self._end(exc)

    async def __aenter__(self) -> Any:
        token = otel_context.attach(self._context)
        try:
            self._stream = await self._inner.__aenter__()
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            otel_context.detach(token)
        return self._stream

    async def __aexit__(self, exc_type, exc, traceback):
        try:
            return await self._inner.__aexit__(exc_type, exc, traceback)
        finally:
            self._end(exc)

    def __getattr__(self, name: str) -> Any:
        if name in ("_inner", "_done", "_context", "_stream"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __del__(self) -> None:  # never entered: the span still ends
        try:
            self._end()
        except Exception:
            pass

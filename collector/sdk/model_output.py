"""What `@agentwatch.llm` does with its function's return value.

A known client's response (responses.py) gives the span its usage, model,
finish reasons and output messages; a stream, or Anthropic's stream manager
(streams.py), is handed back wrapped, and the span ends once the stream is
consumed (the manager's `with` block is left), with what it carried.
Anything else is captured as before, and `record_usage` stays for it.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context

from . import responses, streams
from .settings import settings, warn_once


def finish(instrumentation: Any, call: Any, token: object | None, output: Any) -> Any:
    """Record what `output` says on the call's span. For a stream, return it wrapped: the
    span then ends when the stream does. None: the caller ends the span as usual."""
    folder = getattr(settings.telemetry, "folder", None)
    try:
        manager = streams.is_stream_manager(output)
        if manager or streams.is_stream(output):

            def done(found: responses.Reading | None, error: BaseException | None) -> None:
                try:
                    if found is not None:
                        responses.record(call.span, found, call.capture, folder)
                except Exception:
                    warn_once("response", "agentwatch could not read a model response")
                if error is not None and not isinstance(error, GeneratorExit):
                    instrumentation._fail(call, None, error)
                else:
                    instrumentation._end(call)

            measured = streams.MeasuredStreamManager(output, done, call.context) if manager else \
                streams.measure(output, done)
            if token is not None:
                otel_context.detach(token)
            return measured
        found = responses.read(output)
        if found is not None:
            responses.record(call.span, found, call.capture, folder)
    except Exception:
        warn_once("response", "agentwatch could not read a model response")
    return None

"""A tracer provider that hands every span to the provider of the last `init`.

Instrumentations are enabled once per process, with this provider: a later
`init` (a new provider, a test's fresh one) redirects them instead of removing
and re-applying them, which some instrumentations do not survive (OpenLLMetry's
leave their wrappers in place when removed, still recording, so a second
`instrument` would record every call twice).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

_NO_OP = trace.NoOpTracerProvider()


class ForwardingTracerProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.target: Any = None  # the last init's provider; None after its shutdown: spans are not recorded

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ForwardingTracer(self, args, kwargs)


class _ForwardingTracer(trace.Tracer):
    """Asks the current target for the same tracer on each span, cached per target."""

    def __init__(self, provider: ForwardingTracerProvider, args: tuple, kwargs: dict) -> None:
        self._provider = provider
        self._args = args
        self._kwargs = kwargs
        self._cached: tuple[Any, trace.Tracer | None] = (None, None)

    def _tracer(self) -> trace.Tracer:
        target = self._provider.target or _NO_OP
        cached_target, tracer = self._cached
        if cached_target is not target or tracer is None:
            tracer = target.get_tracer(*self._args, **self._kwargs)
            self._cached = (target, tracer)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


forwarding = ForwardingTracerProvider()

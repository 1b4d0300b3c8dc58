"""Tracer providers that hand every span to the provider of the last `init`.

Instrumentations are enabled once per process, each with a provider of its own
from here: a later `init` (a new provider, a test's fresh one) redirects them
instead of removing and re-applying them, which some instrumentations do not
survive. One that a later `init` switches off is silenced here, not removed,
and switched back on as it is; one that is removed (`uninstrument`) is silenced
for good: its spans go nowhere even where its removal leaves wrappers or trace
processors in place (OpenLLMetry's 0.62 LangChain instrumentation removes none
of its wrappers, its OpenAI Agents one keeps its trace processor), so that one
enabled in its place is not recorded twice.

Frameworks' instrumentations note the names of their tracers in
FRAMEWORK_TRACERS: a model span of such a tracer may be the same call that a
client's instrumentation records again below it (folding.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace

FRAMEWORK_TRACERS: set[str] = set()


class _Route:
    target: Any = None  # the last init's provider; None after its shutdown: spans are not recorded


_route = _Route()


class ForwardingTracerProvider(trace.TracerProvider):
    def __init__(self, names: set[str] | None = None) -> None:
        self.silenced = False  # the instrumentation using it was switched off
        self.names = names  # where given: the names of the tracers handed out are noted there

    @property
    def target(self) -> Any:
        return None if self.silenced else _route.target

    @target.setter
    def target(self, provider: Any) -> None:
        _route.target = provider

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        if self.names is not None:
            name = args[0] if args else kwargs.get("instrumenting_module_name")
            if name:
                self.names.add(name)
        return _ForwardingTracer(self, args, kwargs)


class _ForwardingTracer(trace.Tracer):
    """Asks the current target for the same tracer on each span, cached per target."""

    def __init__(self, provider: ForwardingTracerProvider, args: tuple, kwargs: dict) -> None:
        self._provider = provider
        self._args = args
        self._kwargs = kwargs
        self._cached: tuple[Any, trace.Tracer | None] = (None, None)

    def _tracer(self) -> trace.Tracer | None:
        target = self._provider.target
        if target is None:
            return None
        cached_target, tracer = self._cached
        if cached_target is not target or tracer is None:
            tracer = target.get_tracer(*self._args, **self._kwargs)
            self._cached = (target, tracer)
        return tracer

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        tracer = self._tracer()
        if tracer is None:
            # Recording nothing, and changing nothing for the spans started below it: it stands
            # for its parent (a no-op tracer's invalid span would start them a trace of their own).
            return trace.NonRecordingSpan(trace.get_current_span(context).get_span_context())
        return tracer.start_span(name, context, *args, **kwargs)

    @contextlib.contextmanager
    def start_as_current_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Iterator[Any]:
        tracer = self._tracer()
        if tracer is not None:
            with tracer.start_as_current_span(name, context, *args, **kwargs) as span:
                yield span
            return
        with trace.use_span(self.start_span(name, context), end_on_exit=True) as span:
            yield span


forwarding = ForwardingTracerProvider()  # sets the target all of them share
_providers: dict[str, ForwardingTracerProvider] = {}


def provider_for(distribution: str, framework: bool) -> ForwardingTracerProvider:
    """The provider of one instrumentation, recording (the same one while it is enabled or idle)."""
    provider = _providers.get(distribution)
    if provider is None:
        provider = _providers[distribution] = ForwardingTracerProvider(FRAMEWORK_TRACERS if framework else None)
    provider.silenced = False
    return provider


def retire(distribution: str) -> None:
    """The instrumentation was removed: its provider, still held by whatever the removal left in
    place, records nothing from now on; enabled again, it gets a new one."""
    provider = _providers.pop(distribution, None)
    if provider is not None:
        provider.silenced = True

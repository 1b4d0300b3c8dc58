"""The process-wide settings the decorators read on every call.

`init` fills them; until then the decorators use the global (proxy) tracer,
so decorated code runs unchanged whether or not telemetry was set up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.context import attach, create_key, detach, get_value, set_value

logger = logging.getLogger("agentwatch.sdk")

TRACER_NAME = "agentwatch"

# Span attributes of ours that attributes.py (the stored contract) does not need.
AGENT_PARENT_ID = "agentwatch.agent.parent.id"
INPUT = "agentwatch.input"
OUTPUT = "agentwatch.output"


class Settings:
    def __init__(self) -> None:
        self.tracer: trace.Tracer = trace.get_tracer(TRACER_NAME)
        self.capture_content: bool = True
        self.redact: Callable[[str, Any], Any] | None = None
        self.clock: Callable[[], int] | None = None
        self.telemetry: Any = None  # the Telemetry of the last init()


settings = Settings()


class Scope(NamedTuple):
    """Who the work in the current context is done for: innermost agent and tenant."""

    agent_id: str | None = None
    agent_name: str | None = None
    tenant: str | None = None


# Kept in the OpenTelemetry context (not a separate contextvar) so it travels
# with the span context: processors see it in `on_start(parent_context)`.
SCOPE_KEY = create_key("agentwatch.scope")
NO_SCOPE = Scope()


def current_scope(context=None) -> Scope:
    return get_value(SCOPE_KEY, context) or NO_SCOPE


def now() -> int | None:
    """The configured clock's time, or None to let OpenTelemetry read the wall clock."""
    clock = settings.clock
    return clock() if clock is not None else None


_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a problem in our own instrumentation once, never per call (the hot path must stay quiet)."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args, exc_info=True)


@contextlib.contextmanager
def tenant(tenant_id: str) -> Iterator[None]:
    """Spans started inside carry agentwatch.tenant.id=tenant_id (one process serving many tenants)."""
    token = attach(set_value(SCOPE_KEY, current_scope()._replace(tenant=tenant_id)))
    try:
        yield
    finally:
        detach(token)

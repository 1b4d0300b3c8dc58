"""agentwatch: observability and anomaly detection for fleets of AI agents."""

from agentwatch.collector.sdk import (
    Telemetry,
    agent,
    credentials,
    flush,
    init,
    llm,
    record_usage,
    shutdown,
    span,
    tenant,
    tool,
)

__all__ = [
    "Telemetry",
    "agent",
    "credentials",
    "flush",
    "init",
    "llm",
    "record_usage",
    "shutdown",
    "span",
    "tenant",
    "tool",
]

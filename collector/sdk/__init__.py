"""The drop-in SDK: OpenTelemetry setup, decorators, usage and credential API, GPU sampler, guard."""

from . import credentials
from .decorators import agent, llm, span, tool
from .verdicts import AgentHalted
from .settings import tenant
from .telemetry import Telemetry, flush, init, shutdown
from .usage import record_usage

__all__ = [
    "AgentHalted",
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

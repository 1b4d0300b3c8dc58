"""agentwatch: observability and anomaly detection for fleets of AI agents.

The drop-in SDK is the top-level API: `agentwatch.init`, `@agentwatch.agent`, ...
"""

from agentwatch.collector import sdk
from agentwatch.collector.sdk import *  # noqa: F403 (re-export the SDK's public names, listed once there)

__all__ = sdk.__all__

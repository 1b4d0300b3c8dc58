"""The OTLP receiver that writes spans, metrics and logs into ClickHouse."""

from agentwatch.collector.receiver.server import Receiver, ReceiverConfig

__all__ = ["Receiver", "ReceiverConfig"]

"""The one protocol every detector follows: one anomaly kind, one module, fed one stream row by row.

A detector is handed each row of its stream in commit order (`observe`), told
when event time passes a window boundary (`tick`), and, on the span stream,
when a trace is final (`finish`) and when another detector has claimed a trace
as its own anomaly (`explain`). It raises and updates anomalies in the
`AnomalyBook` and renders their summary and evidence (`render`). It holds its
own learned state, which pickles into the worker's checkpoint. The worker
dispatches through this protocol, never on kind strings.

A detector of failed spans, as an example:

    >>> from agentwatch.detectors.anomalies import AnomalyBook
    >>> from agentwatch.detectors.stream import SpanRow
    >>> class Errors(Detector):
    ...     kind, stream = "errors", "spans"
    ...     def observe(self, row, trace, book):
    ...         if row.error:
    ...             book.observe(self.kind, row.tenant, row.trace, first_ns=row.ts, last_ns=row.ts, score=1.0,
    ...                          severity="warning", trace_id=row.trace)
    ...     def render(self, anomaly):
    ...         return f"{anomaly.trace_id} failed", {"trace_id": anomaly.trace_id}
    >>> book = AnomalyBook()
    >>> row = SpanRow(0, 10**18, "t1", "s1", "", "acme", "", "", "chat", "", "gpt-4o", 0.0, error=True)
    >>> Errors(None).observe(row, None, book)
    >>> [(a.kind, a.tenant, a.trace_id) for a in book.take_dirty()]
    [('errors', 'acme', 't1')]
"""

from __future__ import annotations

from typing import Any, ClassVar

from agentwatch.detectors.anomalies import Anomaly, AnomalyBook
from agentwatch.detectors.config import DetectorConfig


class Detector:
    """Base of every detector: `kind` and `stream` set, the hooks it needs overridden."""

    kind: ClassVar[str]
    stream: ClassVar[str]  # "spans" (agent_spans) or "credentials" (credential_events)

    def __init__(self, config: DetectorConfig | None) -> None:
        if config is not None:
            self.configure(config)

    def configure(self, config: DetectorConfig) -> None:
        """(Re)derive limits from the configuration; also called after a restore from a checkpoint."""
        self.config = config

    def observe(self, row: Any, trace: Any, book: AnomalyBook) -> None:
        """One row. Span stream: `trace` is the row's `TraceState` (agent attribution done); credential
        stream: `trace` is None and the row's agent_id is already resolved."""

    def tick(self, watermark_ns: int, book: AnomalyBook) -> None:
        """Event time passed a window boundary: close what is final before `watermark_ns`."""

    def finish(self, trace: Any, book: AnomalyBook) -> None:
        """Span stream: a trace is final (all its spans arrived or it went idle): learn or score it whole."""

    def explain(self, trace: Any) -> None:
        """Span stream: another detector raised this trace as its own anomaly (its spans are explained)."""

    def render(self, anomaly: Anomaly) -> tuple[str, dict]:
        """The anomaly's one-line summary and its evidence (JSON-ready)."""
        raise NotImplementedError

"""What every query of the dashboard shares: DataFrames through Arrow, UTC times, and the tenant scope.

The scope is the one rule of who sees what: a query reads the rows of the
tenants a Viewer is granted (every tenant for an admin), through a
parameterized predicate (`tenant_scope`), never a pasted tenant name. A row of
another tenant is as absent as a row that was never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa

from agentwatch.dashboard.auth import Viewer
from agentwatch.schemas.attributes import TENANT_ID, sql_templates

# Rollup choice: minutes up to this range, hours beyond.
MINUTE_ROLLUP_MAX = timedelta(days=2)
# The tenant of a metric data point: the receiver writes the API key's tenant into its resource.
METRIC_TENANT_SQL = f"ResourceAttributes['{TENANT_ID}']"
# The tenant of an otel_traces row, as agent_spans types it: the receiver writes the API key's tenant into both
# its span and its resource attributes. A span is its tenant's by this, never by its (TraceId, SpanId), which any
# tenant may send again (both travel in W3C traceparent).
SPAN_TENANT_SQL = sql_templates()["tenant"]

# ClickHouse DateTime / Date arrive through Arrow as integers (seconds / days): these names are times.
TIME_COLUMNS = ("Minute", "Hour", "Time", "First", "Last", "Start", "End")
DATE_COLUMNS = ("Day",)


class NotAllowed(PermissionError):
    """The viewer's role does not allow this action (the page hides its button too)."""


def _plain(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    if isinstance(frame, pl.Series):
        frame = frame.to_frame()
    casts = []
    for name, dtype in frame.schema.items():
        if dtype in (pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
            casts.append(pl.col(name).cast(pl.Utf8))
        elif dtype.is_integer() and name in TIME_COLUMNS:
            casts.append(pl.from_epoch(pl.col(name).cast(pl.Int64), time_unit="s").dt.replace_time_zone("UTC")
                         .dt.cast_time_unit("ns").alias(name))
        elif dtype.is_integer() and name in DATE_COLUMNS:
            casts.append(pl.col(name).cast(pl.Int32).cast(pl.Date).alias(name))
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone not in (None, "UTC"):
            casts.append(pl.col(name).dt.convert_time_zone("UTC"))
    return frame.with_columns(casts) if casts else frame


def frame(client, sql: str, parameters: dict | None = None) -> pl.DataFrame:
    """Run a query, return a polars DataFrame (LowCardinality columns as plain strings)."""
    return _plain(client.query_arrow(sql, parameters=parameters or {}))


def ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def utc(value_ns: int) -> datetime:
    return datetime.fromtimestamp(value_ns / 1e9, tz=UTC)


def time_range(start: datetime, end: datetime) -> dict:
    return {"start": ns(start), "end": ns(end)}


_T64 = "fromUnixTimestamp64Nano({%s:Int64})"
START, END = _T64 % "start", _T64 % "end"


def rollup(start: datetime, end: datetime) -> tuple[str, str]:
    """(table, bucket SQL) of the rollup to read for this range: minutes, or hours for long ranges."""
    if end - start <= MINUTE_ROLLUP_MAX:
        return "agent_minutes", "toStartOfMinute"
    return "agent_hours", "toStartOfHour"


def among(column: str, values: Sequence[str] | None, name: str, params: dict) -> str:
    """` AND column IN {name}` when values are given (a filter the person chose), else ''."""
    if not values:
        return ""
    params[name] = list(values)
    return f" AND {column} IN {{{name}:Array(String)}}"


def granted(viewer: Viewer) -> frozenset[str] | None:
    """The tenants a viewer may read: None for every tenant (admins only; anyone else without a grant sees none)."""
    if not isinstance(viewer, Viewer):
        raise TypeError(f"a dashboard query needs the Viewer it runs for, not {type(viewer).__name__}")
    if viewer.role == "admin" and viewer.tenants is None:
        return None
    return frozenset(viewer.tenants or ())


def tenant_scope(viewer: Viewer, params: dict, column: str = "Tenant") -> str:
    """` AND column IN {scope_tenants}` for a viewer limited to some tenants; '' for an admin."""
    tenants = granted(viewer)
    if tenants is None:
        return ""
    params["scope_tenants"] = sorted(tenants)
    return f" AND {column} IN {{scope_tenants:Array(String)}}"


def rollup_where(viewer: Viewer, start: datetime, end: datetime, params: dict) -> tuple[str, str]:
    """(rollup table, WHERE of the range and the viewer's tenants)."""
    table, bucket = rollup(start, end)
    params.update(time_range(start, end))
    where = f"Minute >= {bucket}(toDateTime({START})) AND Minute <= toDateTime({END})"
    return table, where + tenant_scope(viewer, params)

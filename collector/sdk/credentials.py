"""Credential grant / use / revoke, as span events the detectors read.

    agentwatch.credentials.grant("key-1", tenant="acme", scope="s3:read")
    agentwatch.credentials.use("key-1", resource="s3://globex/x", resource_tenant="globex", action="read")
"""

from __future__ import annotations

from opentelemetry import trace

from agentwatch.schemas.attributes import (
    CREDENTIAL_ACTION,
    CREDENTIAL_GRANT,
    CREDENTIAL_ID,
    CREDENTIAL_REVOKE,
    CREDENTIAL_SCOPE,
    CREDENTIAL_TENANT_ID,
    CREDENTIAL_USE,
    RESOURCE_NAME,
    RESOURCE_TENANT_ID,
)

from .settings import now, settings, warn_once


def _record(event: str, short_name: str, attributes: dict) -> None:
    try:
        attributes = {name: str(value) for name, value in attributes.items() if value is not None}
        timestamp = now()
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(event, attributes, timestamp=timestamp)
            return
        # No span to carry it: a short span of its own, so that nothing is lost.
        span = settings.tracer.start_span(f"credential {short_name}", start_time=timestamp)
        span.add_event(event, attributes, timestamp=timestamp)
        span.end(end_time=timestamp)
    except Exception:
        warn_once("credential", "agentwatch could not record a credential event")


def grant(credential_id: str, *, tenant: str, scope: str | None = None) -> None:
    """A credential of `tenant` was handed to the current agent."""
    _record(
        CREDENTIAL_GRANT,
        "grant",
        {CREDENTIAL_ID: credential_id, CREDENTIAL_TENANT_ID: tenant, CREDENTIAL_SCOPE: scope},
    )


def use(
    credential_id: str,
    *,
    resource: str,
    resource_tenant: str | None = None,
    action: str | None = None,
    credential_tenant: str | None = None,
    scope: str | None = None,
) -> None:
    """The current agent used a credential on `resource` (owned by `resource_tenant`)."""
    _record(
        CREDENTIAL_USE,
        "use",
        {
            CREDENTIAL_ID: credential_id,
            CREDENTIAL_TENANT_ID: credential_tenant,
            CREDENTIAL_SCOPE: scope,
            RESOURCE_NAME: resource,
            RESOURCE_TENANT_ID: resource_tenant,
            CREDENTIAL_ACTION: action,
        },
    )


def revoke(credential_id: str, *, tenant: str | None = None) -> None:
    """A credential was revoked."""
    _record(CREDENTIAL_REVOKE, "revoke", {CREDENTIAL_ID: credential_id, CREDENTIAL_TENANT_ID: tenant})

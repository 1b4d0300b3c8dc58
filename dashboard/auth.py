"""Who is looking at the dashboard: a Viewer with a role and the tenants granted to it.

Every page asks `current_viewer()` once per run and passes the Viewer to the
scoped queries; nothing else in the dashboard decides who may see what.

Roles, least to most: `viewer` reads the tenants granted to it, `responder`
may also acknowledge and resolve anomalies and halt or release agents of those
tenants, `admin` sees and does everything, every tenant included.

On loopback with no sign-in configured the local user is admin (one person on
their own laptop). Sign-in (OpenID Connect or a trusted proxy) replaces that.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "responder", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Viewer:
    """A signed-in person: `tenants` None means every tenant (admins only).

    >>> Viewer("ana@acme", "viewer", frozenset({"acme"})).sees("globex")
    False
    >>> Viewer("local", "admin", None).sees("globex")
    True
    >>> Viewer("bo", "responder", frozenset({"acme"})).may("responder"), Viewer("cy", "viewer", frozenset()).may("responder")
    (True, False)
    """

    name: str
    role: str
    tenants: frozenset[str] | None

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def may(self, role: str) -> bool:
        """Whether this viewer holds `role` or a higher one."""
        return _RANK.get(self.role, -1) >= _RANK[role]


LOCAL_ADMIN = Viewer("local", "admin", None)


def current_viewer() -> Viewer | None:
    """The Viewer of the running Streamlit session; None when nobody is signed in.

    Without sign-in configured the dashboard only runs on loopback (the command refuses otherwise),
    where the local user is admin.
    """
    return LOCAL_ADMIN

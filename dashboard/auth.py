"""Who is looking at the dashboard: a Viewer with a role and the tenants granted to it.

Every page asks `current_viewer()` once per run and passes the Viewer to the
scoped queries; nothing else in the dashboard decides who may see what.

Roles, least to most: `viewer` reads the tenants granted to it, `responder`
may also acknowledge and resolve anomalies and halt or release agents of those
tenants, `admin` sees and does everything, every tenant included.

Sign-in comes one of two ways, both from agentwatch settings:
- OpenID Connect (AGENTWATCH_OIDC_ISSUER, _CLIENT_ID, _CLIENT_SECRET), through
  Streamlit's own st.login; the role and tenants come from the id_token claims
  named by AGENTWATCH_OIDC_ROLES_CLAIM / _TENANTS_CLAIM;
- a trusted auth proxy in front (AGENTWATCH_TRUSTED_PROXY_HEADER names the header
  carrying the user, AGENTWATCH_TRUSTED_PROXIES the addresses it may come from).
A local mapping file (AGENTWATCH_DASHBOARD_USERS, TOML or JSON: user -> role,
tenants) grants roles in either mode and overrides the claims. A signed-in user
granted nothing is a viewer of no tenants: it sees nothing, never everything.

With neither configured the dashboard only listens on loopback (the command
refuses otherwise) and a loopback user is admin (one person on their own laptop).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agentwatch import config
from agentwatch.dashboard.text import literal

ROLES = ("viewer", "responder", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
# Claims naming the person, most readable first: the first present is the Viewer's name.
NAME_CLAIMS = ("email", "preferred_username", "sub")


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
    # How this viewer signed in: "local" (loopback, nothing configured), "oidc" or "proxy".
    via: str = "local"

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def may(self, role: str) -> bool:
        """Whether this viewer holds `role` or a higher one."""
        return _RANK.get(self.role, -1) >= _RANK[role]


LOCAL_ADMIN = Viewer("local", "admin", None)

_configured: config.Settings | None = None


def configure(settings: config.Settings) -> None:
    """Use these settings (what the command resolved, --config included) instead of loading them again."""
    global _configured
    _configured = settings


def settings() -> config.Settings:
    global _configured
    if _configured is None:
        _configured = config.load()
    return _configured


def oidc_enabled(s: config.Settings) -> bool:
    return bool(s.oidc_issuer)


def proxy_enabled(s: config.Settings) -> bool:
    return bool(s.trusted_proxy_header)


def configuration_problems(s: config.Settings) -> list[str]:
    """What is missing or malformed in the sign-in settings (empty when usable or not configured).

    >>> s = config.Settings(oidc_issuer="https://id.example", trusted_proxies="10.0.0.0/8, nonsense")
    >>> configuration_problems(s)  # doctest: +NORMALIZE_WHITESPACE
    ['AGENTWATCH_OIDC_CLIENT_ID is not set', 'AGENTWATCH_OIDC_CLIENT_SECRET is not set',
     'AGENTWATCH_TRUSTED_PROXIES without AGENTWATCH_TRUSTED_PROXY_HEADER',
     "AGENTWATCH_TRUSTED_PROXIES: 'nonsense' is not an address or network"]
    """
    problems = []
    if oidc_enabled(s):
        problems += [f"AGENTWATCH_OIDC_{name.upper()} is not set"
                     for name in ("client_id", "client_secret") if not getattr(s, f"oidc_{name}")]
        if not s.oidc_issuer.startswith(("https://", "http://")):
            problems.append("AGENTWATCH_OIDC_ISSUER must be an http(s) URL")
    if proxy_enabled(s) and not s.trusted_proxies.strip():
        problems.append("AGENTWATCH_TRUSTED_PROXY_HEADER without AGENTWATCH_TRUSTED_PROXIES "
                        "(the addresses the proxy connects from)")
    if s.trusted_proxies.strip() and not proxy_enabled(s):
        problems.append("AGENTWATCH_TRUSTED_PROXIES without AGENTWATCH_TRUSTED_PROXY_HEADER")
    for entry in _split(s.trusted_proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(f"AGENTWATCH_TRUSTED_PROXIES: {entry!r} is not an address or network")
    if s.dashboard_users:
        problems += _mapping_problems(s.dashboard_users)
    return problems


def _mapping_problems(path: str) -> list[str]:
    """A mapping file that will not parse, or grants a role that does not exist, is refused at start."""
    try:
        users = local_grants(path)
    except (OSError, ValueError) as error:  # tomllib and json errors are ValueErrors
        return [f"AGENTWATCH_DASHBOARD_USERS: cannot read {path}: {error}"]
    return [f"AGENTWATCH_DASHBOARD_USERS: {name}: role {entry.get('role')!r} is none of {', '.join(ROLES)}"
            for name, entry in users.items() if entry.get("role") not in _RANK]


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _strings(value) -> list[str]:
    """A claim or mapping value as strings: a list, or one string of comma/space-separated words."""
    if value is None:
        return []
    if isinstance(value, str):
        return _split(value)
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [str(item) for item in value]
    return [str(value)]


def grant(name: str, roles, tenants, via: str) -> Viewer:
    """The Viewer for a person granted `roles` (the highest known one counts) and `tenants`.

    >>> ana = grant("ana", ["viewer", "responder"], "acme globex", "oidc")
    >>> ana.role, sorted(ana.tenants)
    ('responder', ['acme', 'globex'])
    >>> grant("bo", ["superuser"], ["acme"], "oidc").tenants  # an unknown role grants nothing
    frozenset()
    >>> grant("cy", "admin", [], "proxy").tenants is None
    True
    """
    known = [role for role in _strings(roles) if role in _RANK]
    if not known:
        return Viewer(name, "viewer", frozenset(), via)
    role = max(known, key=_RANK.__getitem__)
    return Viewer(name, role, None if role == "admin" else frozenset(_strings(tenants)), via)


_users_cache: tuple[str, float, dict] | None = None


def local_grants(path: str) -> dict[str, dict]:
    """The mapping file, user -> {"role": ..., "tenants": [...]}; re-read when it changes on disk.

    TOML: `["ana@acme.com"]` then `role = "viewer"` and `tenants = ["acme"]`; JSON: the same as an object.
    """
    global _users_cache
    if not path:
        return {}
    mtime = os.stat(path).st_mtime
    if _users_cache is None or _users_cache[:2] != (path, mtime):
        text = Path(path).read_text()
        users = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
        if not isinstance(users, dict) or not all(isinstance(entry, dict) for entry in users.values()):
            raise ValueError("expected a table per user, with role and tenants")
        _users_cache = (path, mtime, {str(name): dict(entry) for name, entry in users.items()})
    return _users_cache[2]


def viewer_from_claims(claims: Mapping, s: config.Settings, via: str = "oidc") -> Viewer | None:
    """The Viewer an identity provider's claims (or a proxy's user, as {"sub": user}) make; None without a name.

    The local mapping wins over the claims: the operator's grant is the one to trust.
    """
    # An address names the user only when the provider says it verified it: some providers let a user
    # type any address (and send no email_verified), which would borrow that address's grant.
    usable = [key for key in NAME_CLAIMS if claims.get(key) and not (key == "email" and
                                                                     claims.get("email_verified") not in (True, "true"))]
    name = str(claims[usable[0]]) if usable else ""
    if not name:
        return None
    mapped = local_grants(s.dashboard_users).get(name)
    if mapped is not None:
        return grant(name, mapped.get("role"), mapped.get("tenants"), via)
    roles = claims.get(s.oidc_roles_claim) if s.oidc_roles_claim else None
    tenants = claims.get(s.oidc_tenants_claim) if s.oidc_tenants_claim else None
    return grant(name, roles, tenants, via)


LOOPBACK = ("127.0.0.1", "::1")


def peer_trusted(peer: str | None, proxies: str) -> bool:
    """Whether a connection from `peer` may speak for its user; None is a loopback peer (Streamlit's way).

    >>> peer_trusted("10.1.2.3", "10.0.0.0/8"), peer_trusted("192.0.2.9", "10.0.0.0/8, 127.0.0.1")
    (True, False)
    >>> peer_trusted(None, "127.0.0.1"), peer_trusted(None, "10.0.0.0/8")
    (True, False)
    """
    networks = [ipaddress.ip_network(entry, strict=False) for entry in _split(proxies)]
    candidates = LOOPBACK if peer is None else (peer,)
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate.split("%", 1)[0])
        except ValueError:
            continue
        if any(address.version == net.version and address in net for net in networks):
            return True
    return False


def _proxy_viewer(s: config.Settings) -> Viewer | None:
    import streamlit as st

    values = st.context.headers.get_all(s.trusted_proxy_header)
    # Two values mean the client sent its own and the proxy added one: trust neither.
    if len(values) != 1 or not values[0].strip():
        return None
    if not peer_trusted(st.context.ip_address, s.trusted_proxies):
        return None
    return viewer_from_claims({"sub": values[0].strip()}, s, via="proxy")


def _oidc_viewer(s: config.Settings) -> Viewer | None:
    import streamlit as st

    if not st.user.get("is_logged_in"):
        return None
    return viewer_from_claims(st.user.to_dict(), s, via="oidc")


def session_viewer() -> Viewer | None:
    """Who the running Streamlit session belongs to, without drawing anything; None when nobody is signed in."""
    import streamlit as st

    s = settings()
    if proxy_enabled(s):
        viewer = _proxy_viewer(s)
        if viewer is not None or not oidc_enabled(s):
            return viewer
    if oidc_enabled(s):
        return _oidc_viewer(s)
    # Nothing configured: the command only listens on loopback then, but a server started some
    # other way (`streamlit run` on a wider address) must still not hand admin to a remote peer.
    return LOCAL_ADMIN if st.context.ip_address is None else None


def current_viewer() -> Viewer | None:
    """The Viewer of the running Streamlit session; None when nobody is signed in.

    Call it once per run, before any page draws: it puts who is signed in (and a sign-out
    button, for OpenID Connect) in the sidebar, or, when nobody is, the sign-in button.
    """
    import streamlit as st

    viewer = session_viewer()
    if viewer is None:
        _draw_sign_in(settings())
        return None
    if viewer.via != "local":
        scope = "every tenant" if viewer.tenants is None else (", ".join(sorted(viewer.tenants)) or "no tenant")
        st.sidebar.caption(f"Signed in as **{literal(viewer.name)}** · {viewer.role} · {literal(scope)}")
        if viewer.via == "oidc" and st.sidebar.button("Sign out", key="agentwatch_sign_out"):
            st.logout()
    return viewer


def _draw_sign_in(s: config.Settings) -> None:
    import streamlit as st

    st.title("agentwatch")
    if oidc_enabled(s):
        st.write("Sign in to see your tenants' agents.")
        if st.button("Sign in", key="agentwatch_sign_in", type="primary"):
            st.login()
    elif proxy_enabled(s):
        st.write("Not signed in: this dashboard is reached through its sign-in proxy.")
    else:
        st.write("Not signed in: without sign-in configured the dashboard answers on loopback only.")

"""Signed halt/release links: what an alert carries so a responder can act from it.

A link is `<AGENTWATCH_ACTIONS_URL>/v1/actions/<token>`, served by the receiver
(collector/receiver/actions.py): GET shows what the link would do and a confirm
button, POST does it. The token is self-contained, so any receiver sharing the
key can verify it without a lookup:

    token = base64url(payload JSON) "." base64url(HMAC-SHA256(key, "agentwatch-action-v1." + payload part))

The payload names the action (halt | release), scope (trace | agent | tenant),
target, tenant, the anomaly the alert was about, the calls a halt stops, and an
expiry (Unix seconds). Stdlib only: the receiver imports this without the
detectors' dependencies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from agentwatch.schemas.vocabulary import HALT_ACTIONS, HALT_CALLS, HALT_SCOPES

PATH = "/v1/actions"
_CONTEXT = b"agentwatch-action-v1."  # binds a signature to this use of the key


class TokenError(Exception):
    """A token that does not verify; `reason` is the counted outcome."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # malformed | forged | expired


@dataclass(frozen=True)
class Action:
    """What a link does, as signed."""

    action: str  # halt | release
    scope: str  # trace | agent | tenant
    target: str
    tenant: str
    anomaly_id: str
    expires_at: int  # Unix seconds
    calls: str = "all"

    def payload(self) -> dict:
        return {"a": self.action, "s": self.scope, "t": self.target, "n": self.tenant, "x": self.anomaly_id,
                "c": self.calls, "e": self.expires_at}

    def describe(self) -> str:
        what = f"tenant {self.tenant}" if self.scope == "tenant" \
            else f"{self.scope} {self.target} of tenant {self.tenant}"
        if self.action == "halt":
            return f"halt {'the model calls of ' if self.calls == 'model' else ''}{what}"
        return f"release {what}"


@dataclass(frozen=True)
class ActionLink:
    """One link of an alert."""

    action: str
    scope: str
    target: str
    url: str
    expires_at: int

    def json(self) -> dict:
        return {"action": self.action, "scope": self.scope, "target": self.target, "url": self.url,
                "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: str, payload_part: str) -> bytes:
    return hmac.new(key.encode(), _CONTEXT + payload_part.encode(), hashlib.sha256).digest()


def sign(key: str, action: Action) -> str:
    payload_part = _b64(json.dumps(action.payload(), separators=(",", ":"), sort_keys=True).encode())
    return f"{payload_part}.{_b64(_mac(key, payload_part))}"


MIN_KEY_LENGTH = 32  # characters: anyone holding one link may try keys offline against its signature


def check_key(key: str) -> str:
    """`key`, if long enough to sign links; ValueError otherwise."""
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"AGENTWATCH_ACTIONS_KEY must be at least {MIN_KEY_LENGTH} characters (a long random "
                         "secret, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return key


def verify(key: str, token: str, now: float | None = None) -> Action:
    """The action a token signs, or TokenError (malformed, forged, expired)."""
    payload_part, dot, signature_part = token.partition(".")
    if not dot or not payload_part or not signature_part:
        raise TokenError("malformed", "this link is incomplete: copy the whole link from the alert")
    try:
        signature = _unb64(signature_part)
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "this link is damaged: copy the whole link from the alert") from None
    # One spelling per token: base64 decoding forgives padding and spare bits, and a variant spelling of a
    # used link must not pass as a new one.
    if _b64(signature) != signature_part:
        raise TokenError("malformed", "this link is damaged: copy the whole link from the alert")
    if not hmac.compare_digest(signature, _mac(key, payload_part)):
        raise TokenError("forged", "this link's signature does not match: it was altered or not made here")
    try:
        data = json.loads(_unb64(payload_part))
        action = Action(action=data["a"], scope=data["s"], target=data["t"], tenant=data["n"],
                        anomaly_id=data["x"], expires_at=int(data["e"]), calls=data.get("c", "all"))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise TokenError("malformed", "this link's content cannot be read") from None
    if (action.action not in HALT_ACTIONS or action.scope not in HALT_SCOPES or action.calls not in HALT_CALLS
            or not action.target or not action.tenant or not action.anomaly_id):
        raise TokenError("malformed", "this link names no action this receiver knows")
    if (time.time() if now is None else now) >= action.expires_at:
        expired = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(action.expires_at))
        raise TokenError("expired", f"this link expired at {expired}: act from the dashboard or the command line")
    return action


def token_id(token: str) -> str:
    """A stable id for one token: the digest of what it signs (the payload text the MAC covers, so no
    other spelling verifies), the HaltId of what it writes, so it acts once."""
    return "link-" + hashlib.sha256(token.partition(".")[0].encode()).hexdigest()[:32]


class ActionSigner:
    """Makes the links of one anomaly: halt and release of each of its trace, agent and tenant."""

    def __init__(self, key: str, base_url: str, ttl_s: float):
        self.key = check_key(key)
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def links(self, tenant: str, anomaly_id: str, targets: list[tuple[str, str]], calls: dict[str, str] | None = None,
              now: float | None = None) -> list[ActionLink]:
        """`targets`: (scope, target) pairs, most specific first; `calls`: per scope, the calls a halt stops."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        out = []
        for scope, target in targets:
            for verb in HALT_ACTIONS:
                action = Action(verb, scope, target, tenant, anomaly_id, expires, (calls or {}).get(scope, "all"))
                out.append(ActionLink(verb, scope, target, f"{self.base_url}{PATH}/{sign(self.key, action)}",
                                      expires))
        return out

"""`/v1/actions/<token>`: the signed halt/release links of alerts, served by the receiver.

An alert carries, when AGENTWATCH_ACTIONS_URL and AGENTWATCH_ACTIONS_KEY are set,
links to halt or release the anomaly's trace, agent and tenant
(agentwatch/detectors/alerting/links.py makes and verifies the tokens). Here:

- GET shows what the link would do, what is in force for its target now, and a
  confirm button. GET never acts: chat apps and mail scanners fetch links ahead
  of any person.
- POST (the button) verifies the signature, the expiry and that the token was not
  used, then writes the decision to `halts` (schemas/halts.py) with DecidedBy
  'link:<anomaly id>': the receivers' verdicts serve it to the SDKs' guards, a
  release lets the agents carry on without a restart.
- Single use is read from the store, so it holds across restarts and across
  receivers sharing the store: what a token writes has the token's own HaltId
  (`links.token_id`), and a token whose id is already in `halts` answers so.
- Refusals are plain pages with a 4xx, counted in
  `agentwatch_action_link_requests{outcome}`: malformed 400, forged 403, disabled
  404 (no key set here), used 409, not_halted 409 (a release of a target not
  halted), expired 410; the store down is 503.

The token is the credential: no API key or sign-in is asked. Pages are sent with
no-referrer (the token must not leak to other sites), no-store and frame-ancestors
'none' (the confirm button cannot be clicked through another page).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry, Counter

from agentwatch.detectors.alerting.links import PATH, Action, TokenError, check_key, token_id, verify
from agentwatch.schemas import audit, halts, store
from agentwatch.schemas.vocabulary import AUDIT_HALT, AUDIT_RELEASE

log = logging.getLogger(__name__)

STATUS = {"malformed": 400, "forged": 403, "disabled": 404, "used": 409, "not_halted": 409, "expired": 410,
          "unavailable": 503}
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'",
           "X-Robots-Tag": "noindex"}
REASON_LIMIT = 2000  # characters of a responder's reason; a longer one is refused, not cut


class Refused(Exception):
    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


def signing_key(key: str | None) -> str:
    """`key`, or when None the setting AGENTWATCH_ACTIONS_KEY (environment or agentwatch.toml)."""
    if key is not None:
        return key
    from agentwatch import config

    return config.load().actions_key


class Actions:
    """The endpoint: `register(app)` adds the routes."""

    def __init__(self, connect: Callable[[], Client], key: str | None, registry: CollectorRegistry | None = None):
        self._connect = connect
        self._client: Client | None = None
        self._key = signing_key(key)
        if self._key:
            check_key(self._key)
        self._lock = asyncio.Lock()  # one decision at a time here: a double click acts once
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("agentwatch_action_link_requests", "Signed alert links answered, by method and "
                                "outcome: shown, halted, released, and refusals: malformed (400), forged (403), "
                                "disabled (404), used and not_halted (409), expired (410), unavailable (503)",
                                ["method", "outcome"], registry=registry)

    def register(self, app: web.Application) -> None:
        app.router.add_get(PATH + "/{token}", self.show)
        app.router.add_post(PATH + "/{token}", self.act)

    # --- handlers ---------------------------------------------------------------------------------------

    async def show(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            action = self._verify(token)
            used, in_force = await self._run(self._read_state, action, token)
            if used is not None:
                raise Refused("used", f"This link was already used: {_decision_text(used)}.")
        except Refused as refused:
            return self._refuse("GET", refused)
        self.requests.labels("GET", "shown").inc()
        now = (f"Now: {_decision_text(in_force)}." if in_force is not None
               else f"Now: {_target_text(action)} is not halted.")
        verb = "Halt" if action.action == "halt" else "Release"
        body = (f"<h1>{html.escape(verb)} {html.escape(_target_text(action))}?</h1>"
                f"<p>From the alert for anomaly <code>{html.escape(action.anomaly_id)}</code>: this will "
                f"<strong>{html.escape(action.describe())}</strong>. {html.escape(_effect(action))}</p>"
                f"<p>{html.escape(now)}</p>"
                f"<form method=\"post\"><p><label>Reason (kept with the decision, optional)<br>"
                f"<input name=\"reason\" size=\"60\" maxlength=\"{REASON_LIMIT}\"></label></p>"
                f"<p><button type=\"submit\">{html.escape(verb)} {html.escape(_target_text(action))}</button></p>"
                f"</form><p><small>The link works once and expires at {html.escape(_when(action.expires_at))}."
                f"</small></p>")
        return _page(200, f"{verb} {_target_text(action)}", body)

    async def act(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            action = self._verify(token)
            form = await request.post()
            reason = str(form.get("reason") or "").strip()
            if len(reason) > REASON_LIMIT:
                raise Refused("malformed", f"The reason is longer than {REASON_LIMIT} characters.")
            async with self._lock:
                made = await self._run(self._decide, action, token, reason)
        except Refused as refused:
            return self._refuse("POST", refused)
        outcome = "halted" if made.action == "halt" else "released"
        self.requests.labels("POST", outcome).inc()
        log.info("actions: %s %s %s of tenant %s by the link for anomaly %s", outcome, made.scope, made.target,
                 made.tenant, action.anomaly_id)
        done = (f"Halted {_target_text(action)}: agents with the guard on stop at their next call."
                if made.action == "halt" else f"Released {_target_text(action)}: its agents carry on, without "
                                               "a restart.")
        return _page(200, done, f"<h1>{html.escape(done)}</h1><p>Recorded as decided by "
                                f"<code>{html.escape(made.decided_by)}</code> at {html.escape(made.decided_at)}.</p>")

    # --- checks and decisions ---------------------------------------------------------------------------

    def _verify(self, token: str) -> Action:
        if not self._key:
            raise Refused("disabled", "Signed links are not enabled on this receiver (AGENTWATCH_ACTIONS_KEY).")
        try:
            return verify(self._key, token)
        except TokenError as error:
            raise Refused(error.reason, str(error).capitalize() + ".") from None

    async def _run(self, work, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work, *args)
        except Refused:
            raise
        except Exception as error:  # noqa: BLE001 - the store: the link may be tried again
            log.warning("actions: the store failed (%s)", error)
            self._drop_client()
            raise Refused("unavailable", "The store cannot be reached right now; try the link again shortly.") \
                from None

    def _store(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _drop_client(self) -> None:
        store.close_quietly(self._client)
        self._client = None

    def _read_state(self, action: Action, token: str) -> tuple[halts.Decision | None, halts.Decision | None]:
        """(the decision this token already made, or None; the halt in force on its target, or None)."""
        client = self._store()
        mine = token_id(token)
        used = next((d for d in halts.for_anomalies(client, [action.anomaly_id]) if d.halt_id == mine), None)
        in_force = [d for d in halts.current(client, targets=[(action.tenant, action.scope, action.target)])
                    if d.action == "halt"]
        return used, (in_force[0] if in_force else None)

    def _decide(self, action: Action, token: str, reason: str) -> halts.Decision:
        used, in_force = self._read_state(action, token)
        if used is not None:
            raise Refused("used", f"This link was already used: {_decision_text(used)}.")
        decided_by = f"link:{action.anomaly_id}"
        reason = reason or f"{action.action} from the signed link in the alert for anomaly {action.anomaly_id}"
        if action.action == "release":
            if in_force is None:
                raise Refused("not_halted", f"{_target_text(action).capitalize()} is not halted: nothing to "
                                            "release.")
            made = replace(halts.released(in_force, reason=reason, decided_by=decided_by,
                                          anomaly_id=action.anomaly_id), halt_id=token_id(token))
        else:
            made = halts.decision(action.tenant, action.scope, action.target, "halt", halt_id=token_id(token),
                                  calls=action.calls, anomaly_id=action.anomaly_id, reason=reason,
                                  decided_by=decided_by, **self._anomaly_fields(action.anomaly_id))
        halts.record(self._store(), [made])
        # Who acted is known only as the holder of the link: the audit names the link's anomaly.
        audit.record(self._store(), decided_by, AUDIT_HALT if action.action == "halt" else AUDIT_RELEASE,
                     tenant=action.tenant, target=action.target,
                     detail={"scope": action.scope, "calls": action.calls, "anomaly_id": action.anomaly_id,
                             "halt_id": made.halt_id, "reason": reason})
        return made

    def _anomaly_fields(self, anomaly_id: str) -> dict:
        """What an SDK shows in AgentHalted: the anomaly's kind, severity, agent, trace and summary."""
        rows = self._store().query("SELECT Kind, Severity, AgentId, TraceId, Summary FROM anomalies FINAL "
                                   "WHERE AnomalyId = {a:String} LIMIT 1", parameters={"a": anomaly_id}).result_rows
        if not rows:
            return {}
        kind, severity, agent, trace, summary = rows[0]
        return {"kind": kind, "severity": severity, "agent_id": agent, "trace_id": trace, "summary": summary}

    def _refuse(self, method: str, refused: Refused) -> web.Response:
        self.requests.labels(method, refused.outcome).inc()
        status = STATUS[refused.outcome]
        response = _page(status, "Link refused", f"<h1>Link refused</h1><p>{html.escape(str(refused))}</p>")
        if status == 503:
            response.headers["Retry-After"] = "5"
        return response


def _target_text(action: Action) -> str:
    if action.scope == "tenant":
        return f"tenant {action.tenant}"
    return f"{action.scope} {action.target} of tenant {action.tenant}"


def _effect(action: Action) -> str:
    if action.action == "release":
        return "Agents with the guard on carry on at their next call, without a restart."
    return "Agents with the guard on stop at their next call until it is released."


def _decision_text(d: halts.Decision) -> str:
    verb = "halted" if d.action == "halt" else "released"
    what = f"tenant {d.target}" if d.scope == "tenant" else f"{d.scope} {d.target}"
    return f"{what} {verb} by {d.decided_by or 'unknown'} at {d.decided_at}"


def _when(unix_s: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))


def _page(status: int, title: str, body: str) -> web.Response:
    text = (f"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">"
            f"<title>agentwatch: {html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:46em;"
            f"margin:2em auto;padding:0 1em}}</style></head><body>{body}</body></html>")
    return web.Response(status=status, text=text, content_type="text/html", headers=HEADERS)

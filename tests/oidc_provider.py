"""An OpenID Connect provider on loopback, for signing in to the dashboard in tests.

Authorization code flow with PKCE (S256), a discovery document, a JWKS, id_tokens
signed RS256 with joserfc (the Authlib project's JOSE library, which Authlib
itself uses), a login form that accepts the configured users and puts their
claims (role, tenants) in the id_token, a userinfo and an end-session endpoint.
Clients authenticate at the token endpoint with client_secret_basic or
client_secret_post. Served by the standard library's threading HTTP server.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

CODE_LIFETIME_S = 120
TOKEN_LIFETIME_S = 3600


@dataclass
class User:
    password: str
    claims: dict  # put in the id_token as they are: email, name, the role and tenant claims


@dataclass
class OIDCProvider:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    users: dict[str, User]
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8)}))
    codes: dict = field(default_factory=dict)
    access_tokens: dict = field(default_factory=dict)
    signed_in: list[str] = field(default_factory=list)  # the users who completed a sign-in, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> OIDCProvider:
        provider = self

        class Handler(_Handler):
            oidc = provider

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="oidc-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "end_session_endpoint": f"{self.issuer}/logout",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        }

    def id_token(self, username: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": username, "aud": self.client_id, "iat": now, "auth_time": now,
                  "exp": now + TOKEN_LIFETIME_S, **self.users[username].claims}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)


class _Handler(BaseHTTPRequestHandler):
    oidc: OIDCProvider

    def log_message(self, format, *args):  # the test output stays readable
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: dict) -> None:
        self._send(status, json.dumps(document).encode())

    def _redirect(self, url: str) -> None:
        self._send(302, headers={"Location": url}, content_type="text/plain")

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        return {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            return self._json(200, self.oidc.discovery())
        if url.path == "/jwks":
            return self._json(200, KeySet([self.oidc.key]).as_dict(private=False))
        if url.path == "/authorize":
            problem = self._authorization_problem(query)
            return self._send(400, problem.encode(), "text/plain") if problem else self._login_page(query)
        if url.path == "/userinfo":
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            username = self.oidc.access_tokens.get(token)
            if username is None:
                return self._json(401, {"error": "invalid_token"})
            return self._json(200, {"sub": username, **self.oidc.users[username].claims})
        if url.path == "/logout":
            target = query.get("post_logout_redirect_uri")
            return self._redirect(target) if target in self.oidc.redirect_uris else self._send(200, b"signed out",
                                                                                                 "text/plain")
        self._send(404, b"not found", "text/plain")

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path == "/authorize":
            return self._sign_in(self._form())
        if url.path == "/token":
            return self._token(self._form())
        self._send(404, b"not found", "text/plain")

    def _authorization_problem(self, params: dict) -> str | None:
        if params.get("client_id") != self.oidc.client_id:
            return "unknown client"
        if params.get("redirect_uri") not in self.oidc.redirect_uris:
            return "redirect_uri not registered for this client"
        if params.get("response_type") != "code" or "openid" not in params.get("scope", "").split():
            return "only the authorization code flow with the openid scope"
        if params.get("code_challenge") and params.get("code_challenge_method") != "S256":
            return "only S256 code challenges"
        return None

    def _login_page(self, params: dict, error: str = "") -> None:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items() if k not in ("username", "password"))
        page = (f"<!doctype html><title>Sign in</title><h1>Sign in to the identity provider</h1>"
                f"<p role='alert'>{html.escape(error)}</p><form method='post' action='/authorize'>{hidden}"
                "<label>Username <input name='username' autocomplete='username'></label>"
                "<label>Password <input name='password' type='password'></label>"
                "<button type='submit'>Continue</button></form>")
        self._send(401 if error else 200, page.encode(), "text/html; charset=utf-8")

    def _sign_in(self, form: dict) -> None:
        problem = self._authorization_problem(form)
        if problem:
            return self._send(400, problem.encode(), "text/plain")
        user = self.oidc.users.get(form.get("username", ""))
        if user is None or not secrets.compare_digest(user.password, form.get("password", "")):
            return self._login_page(form, "Wrong username or password.")
        code = secrets.token_urlsafe(24)
        with self.oidc.lock:
            self.oidc.codes[code] = {"username": form["username"], "redirect_uri": form["redirect_uri"],
                                     "nonce": form.get("nonce"), "challenge": form.get("code_challenge"),
                                     "expires": time.time() + CODE_LIFETIME_S}
        answer = {"code": code, **({"state": form["state"]} if form.get("state") else {})}
        self._redirect(f"{form['redirect_uri']}?{urlencode(answer)}")

    def _client_authenticated(self, form: dict) -> bool:
        basic = self.headers.get("Authorization") or ""
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.oidc.client_id and secrets.compare_digest(secret, self.oidc.client_secret)

    def _token(self, form: dict) -> None:
        if not self._client_authenticated(form):
            return self._json(401, {"error": "invalid_client"})
        if form.get("grant_type") != "authorization_code":
            return self._json(400, {"error": "unsupported_grant_type"})
        with self.oidc.lock:  # a code is good once
            grant = self.oidc.codes.pop(form.get("code", ""), None)
        if grant is None or grant["expires"] < time.time() or grant["redirect_uri"] != form.get("redirect_uri"):
            return self._json(400, {"error": "invalid_grant"})
        if grant["challenge"]:
            verifier = form.get("code_verifier", "").encode()
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if not secrets.compare_digest(computed, grant["challenge"]):
                return self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
        access_token = secrets.token_urlsafe(24)
        with self.oidc.lock:
            self.oidc.access_tokens[access_token] = grant["username"]
            self.oidc.signed_in.append(grant["username"])
        self._json(200, {"access_token": access_token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S,
                         "scope": "openid email profile",
                         "id_token": self.oidc.id_token(grant["username"], grant["nonce"])})

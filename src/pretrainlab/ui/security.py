"""Who may use the dashboard, and how a state change proves it came from the dashboard's own page.

- Bound to a loopback address (the default, 127.0.0.1): no token, but the Host header must
  name a loopback host, so a page on another site cannot reach the dashboard by DNS rebinding.
- Bound elsewhere (--host 0.0.0.0): every request needs the access token printed at start:
  once as ?token=... (kept in an HttpOnly cookie, and the URL is redirected without it), or on
  every request as `Authorization: Bearer TOKEN` or `X-Pretrainlab-Token: TOKEN`.
- Every POST (the only requests that change anything) needs its session's CSRF token, in the
  form field `csrf` or the `X-CSRF-Token` header, and is refused when its Origin (or Referer,
  or Sec-Fetch-Site) says another site sent it. Other methods than GET, HEAD and POST: 405.

`Guard` is plain ASGI middleware, so the checks run before any route and no route can skip
them; it also sets the security headers (a Content-Security-Policy without inline scripts).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode, urlsplit

TOKEN_COOKIE = "pretrainlab_token"
SESSION_COOKIE = "pretrainlab_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_POST_BYTES = 1 << 20  # notes and reasons: far below this
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"), (b"cache-control", b"no-store")]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(netloc: str) -> str:
    """'127.0.0.1:8780' -> '127.0.0.1'; '[::1]:80' -> '::1'."""
    return (urlsplit("//" + netloc).hostname or "").lower()


class Guard:
    """ASGI middleware enforcing the rules in the module docstring around `app`.

    token: the access token (None: none needed; only for a loopback bind). The CSRF token of a
    session is an HMAC of its session cookie under a per-process secret, so nothing is stored."""

    def __init__(self, app, token: str | None, loopback: bool):
        assert token or loopback, "a dashboard bound beyond loopback needs a token"
        self.app, self.token, self.loopback = app, token, loopback
        self.secret = secrets.token_bytes(32)

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cookies = _cookies(headers.get("cookie", ""))
        method = scope["method"]
        host = headers.get("host", "")
        set_cookies: list[str] = []

        if self.loopback and not is_loopback(host_name(host)):
            return await _refuse(send, 403, f"Host {host!r} is not this dashboard's: open it at http://127.0.0.1 or http://localhost")
        if method not in ("GET", "HEAD", "POST"):
            return await _refuse(send, 405, f"{method} is not supported here")

        if self.token:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = (query.get("token") or [None])[0]
            if given is not None and method in ("GET", "HEAD") and _same(given, self.token):
                # keep the token in a cookie and drop it from the address bar (and from history)
                rest = urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs], doseq=True)
                location = scope["path"] + (f"?{rest}" if rest else "")
                return await _redirect(send, location, [_cookie(TOKEN_COOKIE, self.token)])
            header = headers.get("authorization", "").removeprefix("Bearer ").strip() or headers.get("x-pretrainlab-token", "")
            if not any(_same(t, self.token) for t in (cookies.get(TOKEN_COOKIE), header) if t):
                return await _refuse(send, 401, "this dashboard needs its access token: open the address `pretrainlab ui` printed "
                                                "(it ends in ?token=...)")

        session = cookies.get(SESSION_COOKIE)
        if not session or len(session) > 64:
            session = secrets.token_urlsafe(24)
            set_cookies.append(_cookie(SESSION_COOKIE, session))
        scope.setdefault("state", {})
        scope["state"]["csrf"] = self.csrf_token(session)

        if method == "POST":
            reason = _cross_site(headers, host)
            if reason:
                return await _refuse(send, 403, reason)
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_POST_BYTES:
                    return await _refuse(send, 413, "request too large")
            sent = headers.get(CSRF_HEADER)
            if sent is None and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                sent = (parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD) or [None])[0]
            if not sent or not _same(sent, scope["state"]["csrf"]):
                return await _refuse(send, 403, "missing or stale CSRF token: reload the page and try again")
            receive = _replay(body)  # the route reads the body consumed here

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"set-cookie", c.encode("latin-1")) for c in set_cookies]
                message = {**message, "headers": list(message.get("headers", [])) + HEADERS + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cross_site(headers: dict[str, str], host: str) -> str | None:
    """Why a POST looks sent by another site, or None. Browsers send Origin with every POST;
    Referer and Sec-Fetch-Site are checked as well when present."""
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        return f"cross-origin request refused (Origin {origin})"
    referer = headers.get("referer")
    if origin is None and referer and urlsplit(referer).netloc.lower() != host.lower():
        return "cross-origin request refused (Referer from another site)"
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "cross-origin request refused (Sec-Fetch-Site)"
    return None


def _replay(body: bytes):
    done = False

    async def receive():
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _cookies(header: str) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is just no cookies
        return {}
    return {k: m.value for k, m in jar.items()}


def _cookie(name: str, value: str) -> str:
    return f"{name}={value}; Path=/; HttpOnly; SameSite=Lax"


async def _refuse(send, status: int, message: str) -> None:
    body = (f"<!doctype html><meta charset=utf-8><title>{status}</title>"
            f"<p>{html.escape(message)}</p>\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())] + HEADERS})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send, location: str, cookies: list[str]) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")] + HEADERS
                + [(b"set-cookie", c.encode("latin-1")) for c in cookies]})
    await send({"type": "http.response.body", "body": b""})

"""Dashboard sign-in: the session cookie and the one-time sign-in links of ``slimline serve``.

The cookie holds the API key the user signed in with (HttpOnly: page scripts cannot read it;
SameSite=Strict: no other site's page can send it; Secure when served over https). Requests
authenticated by the cookie that change something must also carry ``X-Requested-With``, a
header another origin cannot add without a CORS preflight this API never grants.

``slimline serve`` signs the local user in through a link ``/signin#token=...``: the token sits
in the URL fragment, which browsers never send, so it is in no access log; the page posts it
to ``POST /v1/session``, which trades it (once, within ``SIGNIN_TOKEN_TTL_S``) for the cookie.
Tokens live in this process's memory (only hashes are kept); a restart prints a new link.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from fastapi import Request, Response

COOKIE = "slimline_session"
CSRF_HEADER = "x-requested-with"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
SIGNIN_TOKEN_TTL_S = 24 * 3600.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SigninTokens:
    """One-time tokens, each standing for an API key, kept hashed in memory."""

    def __init__(self, ttl_s: float = SIGNIN_TOKEN_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, key: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[_digest(token)] = (key, time.monotonic() + self.ttl_s)
        return token

    def redeem(self, token: str) -> str | None:
        """The key the token stands for, once; None if unknown, used or expired."""
        with self._lock:
            key, expires = self._tokens.pop(_digest(token), (None, 0.0))
        return key if key is not None and time.monotonic() < expires else None


def set_session_cookie(request: Request, response: Response, key: str) -> None:
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )

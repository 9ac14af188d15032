"""The sign-in cookie: a signed, expiring session token (never the API key); the session itself
is a row (app.services.accounts), so signing out or revoking the key ends it at once."""

from __future__ import annotations

from fastapi import Request, Response

from app.runtime import Runtime
from app.security import unsign

SESSION_COOKIE = "nanonet_session"
SESSION_SALT = "nanonet.web-session"
# Where the key itself was kept before sessions: cleared wherever it is still found.
OLD_KEY_COOKIE = "nanonet_key"


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def session_token(request: Request) -> str | None:
    """The token of the session cookie when its signature holds and it is not too old (whether
    the session still lives is the database's to say)."""
    runtime = runtime_of(request)
    return unsign(runtime.secret.timestamp_signer(SESSION_SALT),
                  request.cookies.get(SESSION_COOKIE),
                  max_age=runtime.settings.session_max_age)


def set_cookie(request: Request, response: Response, name: str, value: str, *,
               max_age: int | None = None) -> None:
    """An httponly, SameSite=Strict cookie for the whole site; Secure over https (behind a TLS
    proxy: with NANONET_FORWARDED_ALLOW_IPS)."""
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def keep_session(request: Request, response: Response, token: str) -> None:
    runtime = runtime_of(request)
    set_cookie(request, response, SESSION_COOKIE,
               runtime.secret.timestamp_signer(SESSION_SALT).sign(token).decode(),
               max_age=runtime.settings.session_max_age)

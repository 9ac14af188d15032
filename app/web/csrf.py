"""CSRF protection of the web form: a token in every form (and in the scripts' X-CSRF-Token
header), checked with the Origin (or Referer) on every state-changing request.

The token is an HMAC under the server secret of what binds it to this browser: the session
token once signed in, before that a random value in a signed pre-session cookie (so the sign-in
form is protected too: a foreign page cannot sign a visitor into its own account). A page can
read neither cookie, and its token names neither.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request, Response

from app.errors import NanoNetError
from app.security import unsign
from app.web.sessions import clear_cookie, runtime_of, session_token, set_cookie

CSRF_COOKIE = "nanonet_csrf"
CSRF_SALT = "nanonet.csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfRefused(NanoNetError):
    status = 403
    code = "csrf_failed"


FOREIGN_ORIGIN = ("This form was sent from another site, so it was refused. Open NanoNet "
                  "itself and send it from there.")
BAD_TOKEN = ("This form could not be checked: its security token is missing or out of date "
             "(after signing in or out in another tab, say). Go back, reload the page and send "
             "it again.")


def _binding(request: Request, *, create: bool) -> str | None:
    """What this browser's tokens are bound to; with `create`, a new pre-session value (its
    cookie is set by keep_csrf_cookie) when there is none yet."""
    if getattr(request.state, "csrf_binding", None) is not None:
        return str(request.state.csrf_binding)
    binding = None
    token = session_token(request)
    if token is not None:
        binding = "session:" + token
    else:
        signer = runtime_of(request).secret.signer(CSRF_SALT)
        visitor = unsign(signer, request.cookies.get(CSRF_COOKIE))
        if visitor is None and create:
            visitor = secrets.token_urlsafe(32)
            request.state.new_csrf_cookie = signer.sign(visitor).decode()
        if visitor is not None:
            binding = "visitor:" + visitor
    request.state.csrf_binding = binding
    return binding


def csrf_token(request: Request) -> str:
    """The token this page's forms and scripts send back."""
    binding = _binding(request, create=True)
    assert binding is not None  # create=True always binds
    return runtime_of(request).secret.digest("csrf", binding)


def keep_csrf_cookie(request: Request, response: Response) -> None:
    """Set the pre-session cookie that csrf_token made for this response's forms, if it did."""
    value = getattr(request.state, "new_csrf_cookie", None)
    if value is not None:
        set_cookie(request, response, CSRF_COOKIE, value)


def forget_visitor(request: Request, response: Response) -> None:
    """Signed in: tokens bind to the session from now on."""
    if CSRF_COOKIE in request.cookies:
        clear_cookie(request, response, CSRF_COOKIE)


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme else url.lower()


def _same_origin(request: Request) -> bool:
    """Whether Origin (or, without it, Referer) names this very site. A request with neither is
    not from a browser page (browsers send Origin with every POST): its token decides alone."""
    source = _origin(request.headers.get("origin")) or _origin(request.headers.get("referer"))
    return source is None or source == f"{request.url.scheme}://{request.url.netloc}".lower()


async def check_csrf(request: Request) -> None:
    """Refuse (403) a state-changing request sent from another site or without this browser's
    token, before the route does anything. The token comes in the X-CSRF-Token header or the
    form's csrf_token field."""
    if request.method in SAFE_METHODS:
        return
    if not _same_origin(request):
        raise CsrfRefused(FOREIGN_ORIGIN, code="foreign_origin")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        field = (await request.form()).get(CSRF_FIELD)  # FastAPI's parse of the body, reused
        sent = field if isinstance(field, str) else None
    binding = _binding(request, create=False)
    expected = runtime_of(request).secret.digest("csrf", binding) if binding else None
    if sent is None or expected is None or not hmac.compare_digest(sent, expected):
        raise CsrfRefused(BAD_TOKEN)

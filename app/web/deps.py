"""Who is signed in to the web form, and a route class that checks CSRF on every state-changing
route and answers every failure in HTML."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from app.api.deps import SessionDep
from app.db.tables import Account
from app.errors import NanoNetError, Unauthorized
from app.services.accounts import web_session_account
from app.web.csrf import check_csrf, keep_csrf_cookie
from app.web.sessions import OLD_KEY_COOKIE, SESSION_COOKIE, clear_cookie, session_token
from app.web.templating import error_page

log = logging.getLogger("nanonet.web")

SIGN_IN_PATH = "/web/sign-in"


class SignInRequired(Exception):
    """Raised by web_account; WebRoute turns it into a redirect to the sign-in page."""


def signed_in_account(request: Request, session: SessionDep) -> Account | None:
    token = session_token(request)
    return web_session_account(session, token=token) if token else None


def web_account(request: Request, session: SessionDep) -> Account:
    account = signed_in_account(request, session)
    if account is None:
        raise SignInRequired
    return account


WebAccountDep = Annotated[Account, Depends(web_account)]


def script_account(request: Request, session: SessionDep) -> Account:
    """web_account for the routes app.js fetches: a 401 in JSON, not a redirect."""
    account = signed_in_account(request, session)
    if account is None:
        raise Unauthorized("You are signed out; sign in again.", code="signed_out")
    return account


ScriptAccountDep = Annotated[Account, Depends(script_account)]


def with_csrf(dependencies: Sequence[params.Depends] | None) -> list[params.Depends]:
    """`dependencies` with check_csrf first, once (older FastAPI builds a route again for
    each include_router, passing the dependencies it already has)."""
    rest = [d for d in dependencies or () if d.dependency is not check_csrf]
    return [Depends(check_csrf), *rest]


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The form was not filled in correctly."
    first = errors[0]
    field = str(first.get("loc", ("", "form"))[-1])
    return f"The field “{field}”: {first.get('msg', 'is not valid')}."


class WebRoute(APIRoute):
    """Check CSRF before anything else on a state-changing route; render domain errors, bad
    forms and crashes as HTML pages; send strangers to sign in."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["dependencies"] = with_csrf(kwargs.get("dependencies"))
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def html_errors(request: Request) -> Response:
            response = await answer(request)
            keep_csrf_cookie(request, response)
            if OLD_KEY_COOKIE in request.cookies:  # the raw key a browser kept before sessions
                clear_cookie(request, response, OLD_KEY_COOKIE)
            return response

        async def answer(request: Request) -> Response:
            signed_in = SESSION_COOKIE in request.cookies
            try:
                return await handler(request)
            except SignInRequired:
                return RedirectResponse(SIGN_IN_PATH, status_code=303)
            except NanoNetError as exc:
                return error_page(request, status=exc.status, message=exc.message,
                                  signed_in=signed_in)
            except RequestValidationError as exc:
                return error_page(request, status=422, message=validation_message(exc),
                                  signed_in=signed_in)
            except Exception:
                log.exception("web.unhandled path=%s", request.url.path)
                return error_page(request, status=500,
                                  message="Something went wrong on our side; the server log "
                                          "has the details.",
                                  signed_in=signed_in)

        return html_errors

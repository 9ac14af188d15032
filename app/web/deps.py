"""Who is signed in to the web form, and a route class that answers every failure in HTML."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from app.api.deps import SESSION_COOKIE, SessionDep, api_key_from
from app.db.tables import Account
from app.errors import NanoNetError
from app.services.accounts import authenticate
from app.web.templating import error_page

log = logging.getLogger("nanonet.web")

SIGN_IN_PATH = "/web/sign-in"


class SignInRequired(Exception):
    """Raised by web_account; WebRoute turns it into a redirect to the sign-in page."""


def signed_in_account(request: Request, session: SessionDep) -> Account | None:
    key = api_key_from(request)
    return authenticate(session, key=key) if key else None


def web_account(request: Request, session: SessionDep) -> Account:
    account = signed_in_account(request, session)
    if account is None:
        raise SignInRequired
    return account


WebAccountDep = Annotated[Account, Depends(web_account)]


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The form was not filled in correctly."
    first = errors[0]
    field = str(first.get("loc", ("", "form"))[-1])
    return f"The field “{field}”: {first.get('msg', 'is not valid')}."


class WebRoute(APIRoute):
    """Render domain errors, bad forms and crashes as HTML pages; send strangers to sign in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def html_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return RedirectResponse(SIGN_IN_PATH, status_code=303)
            except NanoNetError as exc:
                return error_page(request, status=exc.status, message=exc.message,
                                  signed_in=SESSION_COOKIE in request.cookies)
            except RequestValidationError as exc:
                return error_page(request, status=422, message=validation_message(exc),
                                  signed_in=SESSION_COOKIE in request.cookies)
            except Exception:
                log.exception("web.unhandled path=%s", request.url.path)
                return error_page(request, status=500,
                                  message="Something went wrong on our side; the server log "
                                          "has the details.",
                                  signed_in=SESSION_COOKIE in request.cookies)

        return html_errors

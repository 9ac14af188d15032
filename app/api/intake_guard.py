"""Bounds every request body as it arrives, and asks /api requests for their key before a byte
of their body is read.

FastAPI reads (and spools) a whole form or JSON body before any dependency runs, so a size check
or a key check written as a dependency comes after the damage. This pure ASGI middleware sits in
front: a declared Content-Length over the limit is refused outright, a chunked body is counted
chunk by chunk and the request is stopped at the first byte past the limit, and an /api request
with a body and no valid key is answered 401 without reading it. Web routes (/web/...) get the
byte limits but not the key check: they sign in with a session of their own.

A body that declares at most `key_check_unread_above` bytes (256 KiB) is let through to its
route, which checks the key itself before it uses anything of the body: receiving and parsing
that little costs less than the key lookup's hand-off to a worker thread, which was 0.8 ms of
a 9 ms MobileNetV2 predict (docs/EXPERIMENTS.md, "Serving overhead"). Larger and chunked bodies,
where reading would be the cost, still need a valid key first.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import api_key_from, vouch
from app.api.v2.common import domain_error_body, is_v2
from app.config import Settings
from app.errors import NanoNetError, PayloadTooLarge, Unauthorized
from app.runtime import Runtime
from app.services.accounts import authenticate

API_PREFIX = "/api/"


class IntakeGuard:
    """ASGI middleware: 413 `request_too_large` past max_json_bytes (max_request_bytes for
    multipart), 401 for an /api body past key_check_unread_above without a valid key; both
    before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not _carries_body(headers):
            await self.app(scope, receive, send)
            return
        runtime: Runtime = scope["app"].state.runtime
        limit, hint = _limit(headers, runtime.settings)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, send, _too_large(limit, hint))
            return
        # Framed by its Content-Length alone (a Transfer-Encoding would override it), so the
        # server reads no more than declared.
        small = ("transfer-encoding" not in headers and declared is not None
                 and declared.isdigit()
                 and int(declared) <= runtime.settings.key_check_unread_above)
        if scope["path"].startswith(API_PREFIX) and not small:
            refusal = await anyio.to_thread.run_sync(_key_refusal, runtime, scope)
            if refusal is not None:
                await _refuse(scope, send, refusal)
                return
        await _run_bounded(self.app, scope, receive, send, limit=limit, hint=hint)


def _carries_body(headers: Headers) -> bool:
    """Whether the request has a body to read: HTTP/1.1 frames one only by these two headers."""
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


def _limit(headers: Headers, settings: Settings) -> tuple[int, str]:
    """Return (byte limit, what a 413 says about it) for the request's Content-Type."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return settings.max_request_bytes, "the limit for uploads: send fewer files per request"
    return settings.max_json_bytes, "the limit for a body that is not multipart (JSON, forms)"


def _too_large(limit: int, hint: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is over {limit} bytes, {hint}.",
                           code="request_too_large")


def _key_refusal(runtime: Runtime, scope: Scope) -> Unauthorized | None:
    """Return why the request's key is refused (the codes get_account uses), or None for a
    valid one, whose account the route's own dependency then takes from the scope."""
    key = api_key_from(Request(scope))
    if key is None:
        return Unauthorized("Send your API key as `Authorization: Bearer KEY` (or as the HTTP "
                            "Basic username with an empty password).", code="missing_api_key")
    with runtime.session_factory() as session:
        account = authenticate(session, key=key)
        if account is None:
            return Unauthorized("This API key is not valid (or was revoked).",
                                code="invalid_api_key")
        vouch(scope, key=key, account_id=account.id)
    return None


async def _refuse(scope: Scope, send: Send, error: NanoNetError) -> None:
    """Answer `error` without reading the body; `Connection: close` makes the server drop the
    connection afterwards instead of draining a body it will never use. /api/v2/ paths are
    answered in NanoNets' error envelope, as their routes' errors are."""
    body = domain_error_body(error) if is_v2(scope["path"]) else error.to_body()
    response = JSONResponse(body, status_code=error.status, headers={"Connection": "close"})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    raise RuntimeError("a refused request's body is never read")


async def _run_bounded(app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, limit: int,
                       hint: str) -> None:
    """Run the app with a receive that counts body bytes; past `limit` the app is cancelled,
    as if the client had gone, and the request is answered 413.

    Cancelling rather than raising keeps the app's error handlers out of it (they would
    answer 400 for a body that failed to parse); the multipart parser still closes, and so
    deletes, the files it spooled.
    """
    received = 0
    exceeded = False
    started = False

    async def counted() -> Message:
        nonlocal received, exceeded
        if exceeded:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                exceeded = True
                stop.cancel()
                await anyio.lowlevel.checkpoint()  # delivers the cancellation here
        return message

    async def watched(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    with anyio.CancelScope() as stop:
        await app(scope, counted, watched)
    if exceeded and not started:
        await _refuse(scope, send, _too_large(limit, hint))

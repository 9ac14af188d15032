"""Dependencies shared by routes: the runtime, a DB session, the caller's account."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as StarletteUploadFile

from app.db.tables import Account
from app.errors import PayloadTooLarge, Unauthorized
from app.runtime import Runtime
from app.schemas.bounds import MAX_INT64
from app.services.accounts import authenticate
from app.services.images import Upload


async def get_runtime(request: Request) -> Runtime:
    # async: an attribute read, not worth the thread-pool hand-off a sync dependency costs
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def api_key_from(request: Request) -> str | None:
    """Return the key from `Authorization: Bearer KEY` or HTTP Basic `KEY:`. Never a cookie:
    a browser sends cookies on its own, so a cookie here would let any page that can make the
    browser send a request act as its user (the web form has its own routes, with CSRF tokens)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, _, _password = decoded.partition(":")
        return username or None
    return None


# Where the intake guard leaves the account of the key it checked, in the request's scope.
_VOUCHED = "nanonet.vouched_account"


def vouch(scope: MutableMapping[str, Any], *, key: str, account_id: str) -> None:
    """Record in the request's own scope that `key` was just checked and is `account_id`'s, so
    get_account does not look the key up again: that was a second join and HMAC per predict."""
    scope.setdefault("state", {})[_VOUCHED] = (key, account_id)


def get_account(request: Request, session: SessionDep) -> Account:
    return account_for(request, session)


def account_for(request: Request, session: Session) -> Account:
    """The account of the request's key (taken from the intake guard's check when it made one);
    raises Unauthorized."""
    key = api_key_from(request)
    if key is None:
        raise Unauthorized("Send your API key as `Authorization: Bearer KEY` "
                           "(or as the HTTP Basic username with an empty password).",
                           code="missing_api_key")
    vouched = request.scope.get("state", {}).get(_VOUCHED)
    if vouched is not None and vouched[0] == key:
        account = session.get(Account, vouched[1])
        if account is not None:
            return account
    account = authenticate(session, key=key)
    if account is None:
        raise Unauthorized("This API key is not valid (or was revoked).", code="invalid_api_key")
    return account


AccountDep = Annotated[Account, Depends(get_account)]


def read_uploads(files: Sequence[StarletteUploadFile] | None, runtime: Runtime) -> list[Upload]:
    """Return each part as an Upload of the file the multipart parser spooled it to (on disk
    past 1 MiB); nothing is read into memory here. The body's size was bounded as it arrived
    (app.api.intake_guard)."""
    files = files or []
    if len(files) > runtime.settings.max_files_per_request:
        raise PayloadTooLarge(f"At most {runtime.settings.max_files_per_request} files per "
                              f"request; this one has {len(files)}.", code="too_many_files")
    return [Upload(filename=part.filename or f"file{index}", file=part.file)
            for index, part in enumerate(files)]


# `?version=n`: which version answers (default: the active one). Bounded to 64 bits, past which
# the database driver overflows: a 500 where a 422 is due (schemathesis found one).
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_INT64)]

"""Accounts, their API keys and their web sessions: who a caller is, and how that ends.

Revoking a key ends it everywhere at once: the API looks the key up on every request, and its
web sessions are revoked in the same transaction.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.tables import Account, ApiKey, KeyHash, WebSession
from app.errors import Conflict, InvalidInput, NotFound
from app.security import SECRET_INFO, ServerSecret, generate_api_key, key_prefix, sha256_digest
from app.storage import atomic_write

BOOTSTRAP_NAME = "bootstrap"


def server_secret(session: Session) -> ServerSecret:
    """The secret a runtime's sessions carry (app.runtime.build_runtime puts it there)."""
    secret = session.info.get(SECRET_INFO)
    if not isinstance(secret, ServerSecret):
        raise RuntimeError("this DB session has no server secret: make it from a Runtime")
    return secret


def _digest(session: Session, key: str) -> str:
    return server_secret(session).digest("api-key", key)


def _add_key(session: Session, *, account_id: str, name: str, key: str) -> ApiKey:
    row = ApiKey(account_id=account_id, key_hash=_digest(session, key),
                 hash_scheme=KeyHash.HMAC_SHA256, prefix=key_prefix(key), name=name)
    session.add(row)
    return row


def create_account(session: Session, *, name: str, key: str | None = None,
                   is_bootstrap: bool = False) -> tuple[Account, str]:
    """Create an account with one API key; return it and the plain key (shown only now)."""
    name = name.strip()
    if not name:
        raise InvalidInput("An account needs a name.", code="invalid_name")
    key = key or generate_api_key()
    account = Account(name=name, is_bootstrap=is_bootstrap)
    session.add(account)
    session.flush()
    _add_key(session, account_id=account.id, name=BOOTSTRAP_NAME if is_bootstrap else "default",
             key=key)
    session.commit()
    return account, key


@cache
def _key_rows_query() -> Select[ApiKey, Account]:
    """The key lookup, built once with its digests as parameters. Every API request runs it,
    and composing the statement anew each time (the enum comparisons, the OR) made it take
    0.29 ms on SQLite instead of 0.13 (docs/EXPERIMENTS.md, "Serving overhead")."""
    return select(ApiKey, Account).join(Account, ApiKey.account_id == Account.id).where(or_(
        and_(ApiKey.hash_scheme == KeyHash.HMAC_SHA256, ApiKey.key_hash == bindparam("hmac")),
        and_(ApiKey.hash_scheme == KeyHash.SHA256, ApiKey.key_hash == bindparam("sha256"))))


def _rows_for(session: Session, key: str) -> list[tuple[ApiKey, Account]]:
    """Every key row, revoked or not, whose digest is `key`'s, in either scheme."""
    rows = session.execute(_key_rows_query(),
                           {"hmac": _digest(session, key), "sha256": sha256_digest(key)})
    return [(api_key, account) for api_key, account in rows]


def find_key(session: Session, *, key: str) -> tuple[ApiKey, Account] | None:
    """The active key row for `key` and its account, or None. A row from before migration 0008
    (plain SHA-256) is rehashed under the server secret now, and committed."""
    if not key:
        return None
    for api_key, account in _rows_for(session, key):
        if api_key.revoked_at is None:
            _rehash(session, api_key, key)
            return api_key, account
    return None


def _rehash(session: Session, api_key: ApiKey, key: str) -> None:
    if api_key.hash_scheme == KeyHash.SHA256:
        api_key.key_hash = _digest(session, key)
        api_key.hash_scheme = KeyHash.HMAC_SHA256
        session.commit()


def authenticate(session: Session, *, key: str) -> Account | None:
    """Return the account that owns `key` while the key is not revoked, or None."""
    found = find_key(session, key=key)
    return found[1] if found is not None else None


def _revoke(session: Session, api_key: ApiKey) -> int:
    """Revoke `api_key` and end its web sessions (not committed); return how many ended."""
    now = utcnow()
    api_key.revoked_at = now
    ended = session.execute(
        update(WebSession)
        .where(WebSession.api_key_id == api_key.id, WebSession.revoked_at.is_(None),
               WebSession.expires_at > now)
        .values(revoked_at=now))
    return int(ended.rowcount or 0)  # type: ignore[attr-defined]


def ensure_bootstrap_key(session: Session, *, key: str) -> Account:
    """The bootstrap account, holding `key` (NANONET_BOOTSTRAP_API_KEY): made on the first
    start; when the variable changed, its keys are revoked and `key` is its key from now on.

    Raises Conflict when `key` was revoked, or is another account's key.
    """
    account = session.scalar(select(Account).where(Account.is_bootstrap))
    rows = _rows_for(session, key)
    if any(api_key.revoked_at is not None for api_key, _ in rows):
        raise Conflict("NANONET_BOOTSTRAP_API_KEY holds a revoked key; set a new value.",
                       code="bootstrap_key_revoked")
    if rows:
        api_key, owner = rows[0]
        if account is not None and owner.id != account.id:
            raise Conflict(f"NANONET_BOOTSTRAP_API_KEY is a key of the account {owner.name!r}, "
                           f"not of the bootstrap account {account.name!r}.",
                           code="bootstrap_key_elsewhere")
        _rehash(session, api_key, key)
        if not owner.is_bootstrap:  # a key made by `keys create`, now also the bootstrap one
            owner.is_bootstrap = True
            session.commit()
        return owner
    if account is None:
        account, _ = create_account(session, name=BOOTSTRAP_NAME, key=key, is_bootstrap=True)
        return account
    for old in session.scalars(select(ApiKey).where(ApiKey.account_id == account.id,
                                                    ApiKey.revoked_at.is_(None))):
        _revoke(session, old)
    _add_key(session, account_id=account.id, name=BOOTSTRAP_NAME, key=key)
    session.commit()
    return account


def ensure_first_account(session: Session, *, data_dir: Path) -> tuple[str, Path] | None:
    """On a first start with no account at all, create one; return its key and where it is kept."""
    if session.scalar(select(func.count()).select_from(Account)):
        return None
    _, key = create_account(session, name="admin")
    path = data_dir / "initial_api_key.txt"
    atomic_write(path, (key + "\n").encode())
    os.chmod(path, 0o600)
    return key, path


@dataclass(frozen=True)
class KeyListing:
    key: ApiKey
    account: Account
    live_sessions: int


def list_keys(session: Session, *, account_name: str | None = None) -> list[KeyListing]:
    """Every key (revoked ones too), by account and age, with its live web sessions."""
    now = utcnow()
    live = (select(WebSession.api_key_id, func.count().label("n"))
            .where(WebSession.revoked_at.is_(None), WebSession.expires_at > now)
            .group_by(WebSession.api_key_id).subquery())
    query = (select(ApiKey, Account, func.coalesce(live.c.n, 0))
             .join(Account, ApiKey.account_id == Account.id)
             .outerjoin(live, live.c.api_key_id == ApiKey.id)
             .order_by(Account.created_at, Account.id, ApiKey.created_at, ApiKey.id))
    if account_name is not None:
        query = query.where(Account.name == account_name)
    return [KeyListing(key, account, int(count))
            for key, account, count in session.execute(query)]


def _active_key(session: Session, key_id: str) -> tuple[ApiKey, Account]:
    row = session.execute(select(ApiKey, Account).join(Account, ApiKey.account_id == Account.id)
                          .where(ApiKey.id == key_id)).first()
    if row is None:
        raise NotFound(f"No API key has the id {key_id!r}; `nanonet keys list` shows them.",
                       code="key_not_found")
    if row[0].revoked_at is not None:
        raise Conflict(f"The key {key_id} was already revoked.", code="key_revoked")
    return row


def revoke_key(session: Session, *, key_id: str) -> tuple[ApiKey, Account, int]:
    """Revoke a key at once, everywhere; return it, its account and how many web sessions ended.

    Raises NotFound, or Conflict for a key already revoked.
    """
    api_key, account = _active_key(session, key_id)
    ended = _revoke(session, api_key)
    session.commit()
    return api_key, account, ended


def rotate_key(session: Session, *, key_id: str) -> tuple[ApiKey, Account, str]:
    """Give the key's account a new key (same name) and revoke the old one, in one transaction;
    return the new row, the account and the plain new key (shown only now).

    Raises NotFound, or Conflict for a key already revoked.
    """
    old, account = _active_key(session, key_id)
    _revoke(session, old)
    key = generate_api_key()
    new = _add_key(session, account_id=account.id, name=old.name, key=key)
    session.commit()
    return new, account, key


def start_web_session(session: Session, *, key: str, max_age: int) -> str | None:
    """Sign in to the web form with `key`: return the new session's token (for the signed
    cookie; the row keeps only its digest), or None for a key that is not valid."""
    found = find_key(session, key=key)
    if found is None:
        return None
    api_key, account = found
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(WebSession(id=server_secret(session).digest("web-session", token),
                           account_id=account.id, api_key_id=api_key.id, created_at=now,
                           expires_at=now + timedelta(seconds=max_age)))
    session.commit()
    return token


def web_session_account(session: Session, *, token: str) -> Account | None:
    """The account of a live session (not expired, not ended; revoking its key ends it), or
    None."""
    return session.scalar(
        select(Account).join(WebSession, WebSession.account_id == Account.id).where(
            WebSession.id == server_secret(session).digest("web-session", token),
            WebSession.revoked_at.is_(None), WebSession.expires_at > utcnow()))


def end_web_session(session: Session, *, token: str) -> None:
    """Sign out: the session cannot be used again, even with a copy of the cookie."""
    session.execute(update(WebSession)
                    .where(WebSession.id == server_secret(session).digest("web-session", token),
                           WebSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
    session.commit()

"""Accounts and their API keys."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import Account, ApiKey
from app.security import generate_api_key, hash_api_key, key_prefix
from app.storage import atomic_write


def create_account(session: Session, *, name: str, key: str | None = None) -> tuple[Account, str]:
    """Create an account with one API key; return it and the plain key (shown only now)."""
    name = name.strip()
    if not name:
        raise ValueError("an account needs a name")
    key = key or generate_api_key()
    account = Account(name=name)
    session.add(account)
    session.flush()
    session.add(ApiKey(account_id=account.id, key_hash=hash_api_key(key), prefix=key_prefix(key),
                       name="default"))
    session.commit()
    return account, key


def authenticate(session: Session, *, key: str) -> Account | None:
    """Return the account that owns `key`, or None."""
    if not key:
        return None
    return session.scalar(
        select(Account).join(ApiKey, ApiKey.account_id == Account.id)
        .where(ApiKey.key_hash == hash_api_key(key))
    )


def ensure_key(session: Session, *, key: str, name: str = "bootstrap") -> Account:
    """Make sure an account holding `key` exists (NANONET_BOOTSTRAP_API_KEY)."""
    account = authenticate(session, key=key)
    if account is not None:
        return account
    account, _ = create_account(session, name=name, key=key)
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

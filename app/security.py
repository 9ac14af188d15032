"""Secrets: API keys shown once, the server secret that keys their digests, and signed values.

A key is stored as HMAC-SHA256 under the server secret, so a copy of the database alone cannot
check a guessed key (what a short or reused bootstrap key would otherwise be open to). Keys carry
256 random bits, so a slow hash would add nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from pathlib import Path

from itsdangerous import BadSignature, Signer, TimestampSigner

KEY_PREFIX = "nn_"
MIN_SECRET_CHARS = 32
SECRET_FILE = "secret_key"
# What sessions created by a runtime carry in `Session.info`, for services given only a session.
SECRET_INFO = "nanonet.server_secret"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    return key[:10]


def sha256_digest(key: str) -> str:
    """The digest keys had before migration 0008; such rows are rehashed when next used."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ServerSecret:
    """The server secret: NANONET_SECRET_KEY, else the data dir's `secret_key` file, made with
    0600 permissions on first use (atomically: processes starting together agree on one)."""

    def __init__(self, *, configured: str | None, path: Path) -> None:
        self._configured = configured
        self.path = path
        self._value: bytes | None = None
        self._lock = threading.Lock()

    @property
    def value(self) -> bytes:
        with self._lock:
            if self._value is None:
                text = self._configured if self._configured is not None else self._file()
                self._value = text.encode("utf-8")
            return self._value

    def _file(self) -> str:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:  # mkstemp makes the file 0600; a link never replaces one that appeared meanwhile
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            finally:
                Path(tmp).unlink(missing_ok=True)
        text = self.path.read_text().strip()
        if len(text) < MIN_SECRET_CHARS:
            raise RuntimeError(f"{self.path} holds no usable secret ({len(text)} characters); "
                               "restore it from a backup, or set NANONET_SECRET_KEY")
        return text

    def digest(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of `value`, hex; `purpose` keeps the uses apart (keys, sessions, CSRF)."""
        message = purpose.encode() + b"\0" + value.encode("utf-8")
        return hmac.new(self.value, message, hashlib.sha256).hexdigest()

    def signer(self, salt: str) -> Signer:
        return Signer(self.value, salt=salt, digest_method=hashlib.sha256)

    def timestamp_signer(self, salt: str) -> TimestampSigner:
        return TimestampSigner(self.value, salt=salt, digest_method=hashlib.sha256)


def unsign(signer: Signer, value: str | None, *, max_age: int | None = None) -> str | None:
    """The value `signer` signed, or None for a missing, forged or (with max_age) expired one."""
    if not value:
        return None
    try:
        if isinstance(signer, TimestampSigner):
            return signer.unsign(value, max_age=max_age).decode()
        return signer.unsign(value).decode()
    except BadSignature:  # SignatureExpired is one
        return None

"""API keys: random tokens shown once, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "nn_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    return key[:10]

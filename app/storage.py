"""Content-addressed file store with atomic writes.

Blobs are written before the rows that name them commit, so a crash leaves at most a file no
row refers to (removed later by the sweep in app.services.images), never a row without its file.
An upload holds a shared lock on each blob's stripe from the moment it knows the digest until its
rows have committed; a delete takes the exclusive lock and asks again whether a row needs the
blob, so it never removes bytes another upload is about to refer to.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from app.errors import InsufficientStorage

_CHUNK = 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_INCOMING = ".incoming-"  # temp files of blobs being written, in the store's root


_SQLITE_FULL = 13  # sqlite3's "database or disk is full"
_PG_DISK_FULL = "53100"


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or quota) is full: ENOSPC or EDQUOT from a file write, or
    the database refusing a write for want of space (SQLite's SQLITE_FULL, PostgreSQL's
    disk_full), also when wrapped by SQLAlchemy (its `orig`)."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError):
        return cause.errno in (errno.ENOSPC, errno.EDQUOT)
    return (getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL
            or getattr(cause, "pgcode", None) == _PG_DISK_FULL
            or "database or disk is full" in str(cause))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable: without it a power cut may forget the new name."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file whose content replaces `path` in one step when the block ends without error.

    Readers (the predictor, other workers) see the old file or the new one, never a partial one:
    the content goes to a temp file in the same directory, is made durable, then renamed.
    `durable=False` skips the fsync: still atomic for every reader and across a process crash,
    but a power loss may leave the file empty or partial, so only for content that checks
    itself on read and can be made again (the feature cache's checksummed vectors).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either nothing or the whole file."""
    with atomic_writer(path) as handle:
        handle.write(data)


def is_digest(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


def full_disk_error() -> InsufficientStorage:
    """The 507 for a write the disk had no room for."""
    return InsufficientStorage(
        "The server's disk is full: this request could not be stored, and nothing of it was "
        "kept. Ask the operator to free space, then send it again.")


class BlobStore:
    """Immutable blobs named by their SHA-256, fanned out as root/ab/abcdef..."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # One lock file per fan-out folder (a "stripe"): 256 files, never removed, kept beside
        # the store so that the store holds blobs only.
        self.locks = root.parent / f".{root.name}-locks"

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    @contextmanager
    def holding(self) -> Iterator[BlobHold]:
        """Yield a hold to store blobs through; none of them can be deleted until the block
        ends, so end it only after the rows that refer to them have committed."""
        with ExitStack() as locks:
            yield BlobHold(self, locks)

    def delete(self, digest: str, *, in_use: Callable[[], bool]) -> bool:
        """Delete the blob unless `in_use()`, asked under the stripe's exclusive lock, says a
        row refers to it; return whether it went. Waits for uploads holding the stripe."""
        path = self.path(digest)
        with self._stripe(digest, exclusive=True):
            if in_use():
                return False
            path.unlink(missing_ok=True)
            return True

    def stored(self) -> Iterator[tuple[str, float]]:
        """Yield (digest, modification time) of every blob."""
        for folder in self.root.glob("??"):
            for path in folder.iterdir():
                if is_digest(path.name):
                    try:
                        yield path.name, path.stat().st_mtime
                    except FileNotFoundError:  # deleted while we listed
                        continue

    def remove_stale_incoming(self, *, older_than: float) -> int:
        """Delete temp files of blob writes that a crash interrupted, untouched since
        `older_than` (a Unix time); return how many."""
        removed = 0
        for path in self.root.glob(f"{_INCOMING}*"):
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    @contextmanager
    def _stripe(self, digest: str, *, exclusive: bool) -> Iterator[None]:
        """Hold the lock of the digest's fan-out folder: shared for uploads, exclusive for
        deletes. flock is released by the kernel if the process dies, so no lock outlives it."""
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks / digest[:2], os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock


class BlobHold:
    """The blobs one upload stores: each stripe it touched stays share-locked until the
    hold ends (BlobStore.holding)."""

    def __init__(self, store: BlobStore, locks: ExitStack) -> None:
        self._store = store
        self._locks = locks
        self._stripes: set[str] = set()

    def store(self, source: BinaryIO) -> tuple[str, int]:
        """Copy `source` (from its start) into the store, hashing as it streams; return
        (digest, size in bytes). Bytes already stored are not written again. A full disk
        raises InsufficientStorage (507), leaving no partial file."""
        try:
            return self._write(source)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise full_disk_error() from exc

    def _write(self, source: BinaryIO) -> tuple[str, int]:
        root = self._store.root
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=_INCOMING, suffix=".tmp")
        try:
            hasher, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                source.seek(0)
                while chunk := source.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                digest = hasher.hexdigest()
                target = self._store.path(digest)
                # Locked before looking: a delete that took the stripe first has finished (the
                # file is gone, so it is written again); one that comes later waits for us.
                self._hold(digest)
                if target.exists():
                    return digest, size
                out.flush()
                os.fsync(out.fileno())
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
            _sync_dir(target.parent)
            return digest, size
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _hold(self, digest: str) -> None:
        stripe = digest[:2]
        if stripe not in self._stripes:
            self._locks.enter_context(self._store._stripe(digest, exclusive=False))
            self._stripes.add(stripe)

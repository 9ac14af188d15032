"""Images by URL: fetch each URL through the outbound guard, a few at once, then hand the
bodies to the paths uploaded files take (add_images, predict), so a fetched file is decoded,
stored and classified exactly as an uploaded one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.tables import Account
from app.errors import InvalidInput, NanoNetError
from app.runtime import Runtime
from app.services import outbound
from app.services.images import (
    Upload,
    add_images,
    find_category,
    label_sets_of,
    raise_if_nothing_accepted,
)
from app.services.models import get_model
from app.services.predictions import predict, usable_head
from app.services.versions import serving_version

log = logging.getLogger("nanonet.url_images")

# URLs of one request fetched at once: a slow server costs its own URL's time, not the
# others', while one request cannot open more than a few connections.
FETCH_THREADS = 4


@dataclass(frozen=True)
class _Fetched:
    """One URL of a request: its body as an Upload, or the result that refuses it."""

    url: str
    upload: Upload | None
    refusal: dict[str, Any] | None


def add_images_from_urls(session: Session, runtime: Runtime, *, account: Account,
                         model_id: str, category: str | None,
                         urls: list[str],
                         labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Fetch each URL and store its image as add_images stores an uploaded file; return one
    result per URL, in order, `file` being the URL. `labels` is add_images' (a multi-label
    model's comma-separated categories, one entry per URL in order or one for all).

    A URL that cannot be fetched gets its rejection (url_not_allowed, url_unresolvable,
    fetch_failed, fetch_timeout, url_http_error, too_many_redirects, file_too_large), as a
    file that does not decode does; the others are kept. Raises NotFound, InvalidInput before
    fetching anything, and the URLs' own 4xx when none of them is usable.
    """
    model = get_model(session, account=account, model_id=model_id)
    # an unknown category, or labels that do not fit, are refused before any fetch
    if label_sets_of(model, category=category, labels=labels, n_files=len(urls)) is None:
        find_category(model, category)  # a single-label model's
    session.commit()  # ends the read: no connection or lock is held while the URLs are fetched
    with _fetched(runtime.settings, urls) as fetched:
        uploads = [item.upload for item in fetched if item.upload is not None]
        kept = labels
        if labels is not None and len(labels) == len(urls) and len(urls) > 1:
            kept = [entry for entry, item in zip(labels, fetched, strict=True)
                    if item.upload is not None]  # the fetched URLs' own entries
        stored = _all_rejected_too(lambda: add_images(
            session, runtime, account=account, model_id=model_id, category=category,
            uploads=uploads, labels=kept), uploads)
    results = _merged(fetched, stored)
    log.info("url_images.added model=%s urls=%d fetched=%d", model_id, len(urls), len(uploads))
    raise_if_nothing_accepted(results)
    return results


def predict_urls(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                 urls: list[str], reject_unknown: bool = False,
                 number: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Fetch each URL and classify its image as predict classifies an uploaded file; return the
    number of the version that answered and one result per URL, in order.

    The model and version are checked (NotFound, Conflict) before anything is fetched; a URL
    that cannot be fetched gets its rejection as in add_images_from_urls.
    """
    model = get_model(session, account=account, model_id=model_id)
    version = serving_version(session, model=model, number=number)
    usable_head(runtime, version, reject_unknown=reject_unknown)
    answered_by = version.number
    session.commit()  # ends the read before the fetches, as predict does before decoding
    with _fetched(runtime.settings, urls) as fetched:
        uploads = [item.upload for item in fetched if item.upload is not None]

        def classify() -> list[dict[str, Any]]:
            nonlocal answered_by
            answered_by, results = predict(session, runtime, account=account,
                                           model_id=model_id, uploads=uploads,
                                           reject_unknown=reject_unknown, number=number)
            return results

        labelled = _all_rejected_too(classify, uploads)
    results = _merged(fetched, labelled)
    raise_if_nothing_accepted(results)
    return answered_by, results


def file_name(url: str) -> str:
    """The name a fetched image is stored under: the URL's last path segment, or the URL."""
    segment = unquote(urlsplit(url.strip()).path.rsplit("/", 1)[-1]).strip()
    return segment or url.strip()


@contextmanager
def _fetched(settings: Settings, urls: list[str]) -> Iterator[list[_Fetched]]:
    """Fetch the URLs, FETCH_THREADS at once, and yield them in order; every fetched file is
    closed (its temp file deleted) when the block ends."""
    if not urls:
        raise InvalidInput("Send at least one URL in `urls`.", code="no_urls", status=400)
    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(urls)),
                            thread_name_prefix="url-fetch") as pool:
        fetched = list(pool.map(partial(_fetch, settings), urls))
    try:
        yield fetched
    finally:
        for item in fetched:
            if item.upload is not None:
                item.upload.file.close()


def _fetch(settings: Settings, url: str) -> _Fetched:
    try:
        download = outbound.fetch(url, allow_private=settings.url_allow_private,
                                  timeout=settings.url_fetch_timeout,
                                  connect_timeout=settings.url_connect_timeout,
                                  max_bytes=settings.max_file_bytes,
                                  max_redirects=settings.url_max_redirects)
    except NanoNetError as exc:
        # The code only: a URL's path and query can carry a token of its owner.
        log.info("url_images.refused code=%s", exc.code)
        return _Fetched(url, None, {"file": url, "status": "rejected",
                                    "error": {"code": exc.code, "message": exc.message,
                                              "http_status": exc.status}})
    return _Fetched(url, Upload(filename=file_name(url), file=download.file), None)


def _all_rejected_too(run: Callable[[], list[dict[str, Any]]],
                      uploads: list[Upload]) -> list[dict[str, Any]]:
    """Return run()'s results for the fetched uploads, also when it raised because none of
    them decoded (the results are in the error): the URLs that failed earlier must be judged
    with them, so the error the request gets names every URL."""
    if not uploads:
        return []
    try:
        return run()
    except NanoNetError as exc:
        results = exc.details.get("results") if isinstance(exc.details, dict) else None
        if not isinstance(results, list) or len(results) != len(uploads):
            raise
        return results


def _merged(fetched: list[_Fetched], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per URL in order: a refusal where the fetch failed, the next of `results`
    (those of the fetched files, in order) with the URL as its file otherwise."""
    answers = iter(results)
    merged = []
    for item in fetched:
        result = item.refusal if item.refusal is not None else {**next(answers),
                                                                 "file": item.url}
        merged.append(result)
    return merged

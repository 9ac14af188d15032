"""A small REST client of the NanoNet API, and folder import/export on top of it.

It talks HTTP only and imports nothing of the server, so `nanonet import` and `export-images`
work against a remote server as well as a local one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import httpx2 as httpx

UNLABELLED_FOLDER = "_unlabelled"
DEFAULT_URL = "http://127.0.0.1:8000"
IMAGES_PER_PAGE = 200


class ApiError(Exception):
    """An answer other than success, or no answer at all (status 0), with a readable message."""

    def __init__(self, message: str, *, status: int = 0, code: str = "unreachable",
                 details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details


class CategoryInfo(TypedDict):
    name: str
    count: int


class ModelInfo(TypedDict):
    id: str
    name: str
    categories: list[CategoryInfo]


class ImageInfo(TypedDict):
    id: int
    category: str | None
    file_name: str
    sha256: str


class FileResult(TypedDict, total=False):
    file: str
    status: str  # accepted | duplicate | rejected
    image_id: int
    sha256: str
    error: dict[str, Any]


class Client:
    """The calls `nanonet import` and `export-images` make; raises ApiError."""

    def __init__(self, url: str, key: str, *, timeout: float = 300.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {key}"},
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def get_model(self, model_id: str) -> ModelInfo:
        model: ModelInfo = self._request("GET", f"/models/{model_id}").json()
        return model

    def add_category(self, model_id: str, name: str) -> CategoryInfo:
        category: CategoryInfo = self._request("POST", f"/models/{model_id}/categories",
                                               json={"name": name}).json()
        return category

    def images(self, model_id: str) -> Iterator[ImageInfo]:
        """Every image of the model, labelled or not, a page at a time."""
        page = 1
        while True:
            body = self._request("GET", f"/models/{model_id}/images",
                                 params={"page": page, "per_page": IMAGES_PER_PAGE}).json()
            yield from body["items"]
            if not body["items"] or page * body["per_page"] >= body["total"]:
                return
            page += 1

    def upload(self, model_id: str, category: str | None,
               files: list[tuple[str, bytes]]) -> list[FileResult]:
        """One result per file, in order; a batch the server refuses as a whole still yields
        one per file when the server lists them, else raises ApiError."""
        data = {} if category is None else {"category": category}
        parts = [("files", (name, content, "application/octet-stream"))
                 for name, content in files]
        try:
            response = self._request("POST", f"/models/{model_id}/images", data=data,
                                     files=parts)
        except ApiError as exc:
            listed = exc.details.get("results") if isinstance(exc.details, dict) else None
            if exc.status not in (401, 404) and isinstance(listed, list) \
                    and len(listed) == len(files):
                return listed
            raise
        results: list[FileResult] = response.json()["results"]
        return results

    def original(self, model_id: str, image_id: int) -> bytes:
        return self._request("GET", f"/models/{model_id}/images/{image_id}/original").content

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"Cannot reach the NanoNet server at {self.url} "
                           f"({type(exc).__name__}: {exc}).") from exc
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
            code, message, details = error["code"], error["message"], error.get("details")
        except (ValueError, KeyError, TypeError):
            code, message, details = "http_error", response.text[:300], None
        if response.status_code == 401:
            message = f"The server refused the API key: {message}"
        raise ApiError(message, status=response.status_code, code=code, details=details)


@dataclass
class Report:
    """What an import or export did: files done, skipped as already there, and failures."""

    done: int = 0
    skipped: int = 0
    created_categories: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


Progress = Callable[[int], None]  # called with how many more files were handled


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_files(folder: Path) -> dict[str, list[Path]]:
    """{subfolder name: its files (nested ones included), sorted}; hidden entries are skipped."""
    if not folder.is_dir():
        raise ApiError(f"{folder} is not a folder.", code="not_a_folder")
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[sub.name] = sorted(
            p for p in sub.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(sub).parts))
    return found


def plan_import(client: Client, model_id: str, folder: Path,
                report: Report) -> list[tuple[str | None, list[Path]]]:
    """[(category or None for the pool, files still to upload)], creating missing categories.

    A folder matches a category of the same name, or else one differing only in case; a file
    whose content (by SHA-256) the model already holds in that category, or anywhere for the
    pool, is counted as skipped, as the server would call it a duplicate.
    """
    by_folder = folder_files(folder)
    model = client.get_model(model_id)
    existing = {c["name"] for c in model["categories"]}
    by_lower = {name.lower(): name for name in existing}
    present: dict[str, set[str | None]] = {}
    for image in client.images(model_id):
        present.setdefault(image["sha256"], set()).add(image["category"])
    plan: list[tuple[str | None, list[Path]]] = []
    for name, paths in by_folder.items():  # an empty folder still makes its category
        category: str | None = None
        if name != UNLABELLED_FOLDER:
            category = name if name in existing else by_lower.get(name.lower())
            if category is None:
                try:
                    category = client.add_category(model_id, name)["name"]
                except ApiError as exc:
                    if exc.status in (0, 401, 404):
                        raise
                    report.failures.extend((str(p), f"category {name!r}: {exc.message}")
                                           for p in paths)
                    continue
                report.created_categories.append(category)
        todo = []
        for path in paths:
            try:
                with path.open("rb") as file:
                    digest = hashlib.file_digest(file, "sha256").hexdigest()
            except OSError as exc:
                report.failures.append((str(path), f"cannot read it: {exc.strerror}"))
                continue
            if digest in present and (category is None or category in present[digest]):
                report.skipped += 1
            else:
                todo.append(path)
        plan.append((category, todo))
    return plan


def import_folder(client: Client, model_id: str, folder: Path, *, batch_size: int = 16,
                  limit: int | None = None,
                  on_plan: Callable[[int, int], Progress] | None = None) -> Report:
    """Upload a folder with one subfolder per category (`_unlabelled` for the pool).

    Uploads `batch_size` files per request; stops after `limit` files (a test's interruption).
    `on_plan(to upload, skipped)` returns the progress callback. Raises ApiError for what stops
    the whole import (key refused, unknown model, server gone); a rerun resumes.
    """
    report = Report()
    plan = plan_import(client, model_id, folder, report)
    total = sum(len(paths) for _, paths in plan)
    if limit is not None:
        total = min(total, limit)
    progress = on_plan(total, report.skipped) if on_plan else None
    budget = total
    for category, paths in plan:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + min(batch_size, budget)]
            if not batch:
                return report
            budget -= len(batch)
            _upload_batch(client, model_id, category, batch, report)
            if progress:
                progress(len(batch))
    return report


def _upload_batch(client: Client, model_id: str, category: str | None, batch: list[Path],
                  report: Report) -> None:
    files = []
    for path in batch:
        try:
            files.append((path, path.read_bytes()))
        except OSError as exc:
            report.failures.append((str(path), f"cannot read it: {exc.strerror}"))
    if not files:
        return
    try:
        results = client.upload(model_id, category, [(p.name, data) for p, data in files])
    except ApiError as exc:
        if exc.status in (0, 401, 404):
            raise
        report.failures.extend((str(p), exc.message) for p, _ in files)
        return
    for (path, _), result in zip(files, results, strict=True):
        if result.get("status") in ("accepted", "duplicate"):
            report.done += 1
        else:
            error = result.get("error") or {}
            report.failures.append((str(path), str(error.get("message", "rejected"))))


def safe_component(name: str) -> bool:
    """Whether a name from the server can be one folder or file name, and nothing more."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def export_images(client: Client, model_id: str, folder: Path,
                  on_plan: Callable[[int, int], Progress] | None = None) -> Report:
    """Write every image into `folder`/<category>/ (`_unlabelled`/ for the pool), originals
    byte for byte; a file already there with the same content is skipped, so a rerun resumes.
    Raises ApiError for what stops the whole export."""
    report = Report()
    model = client.get_model(model_id)
    images = list(client.images(model_id))
    folder.mkdir(parents=True, exist_ok=True)
    for category in model["categories"]:
        if safe_component(category["name"]):
            (folder / category["name"]).mkdir(exist_ok=True)
    progress = on_plan(len(images), 0) if on_plan else None
    taken: set[Path] = set()
    for image in images:
        sub = image["category"] if image["category"] is not None else UNLABELLED_FOLDER
        base = Path(image["file_name"].replace("\\", "/")).name
        if not safe_component(sub):
            report.failures.append((f"image {image['id']}", f"category {sub!r} cannot be a "
                                                            "folder name"))
        else:
            target = _target(folder / sub, base, image, taken)
            try:
                _export_one(client, model_id, image, target, report)
            except OSError as exc:
                report.failures.append((str(target), f"cannot write it: {exc.strerror}"))
        if progress:
            progress(1)
    return report


def _target(sub: Path, base: str, image: ImageInfo, taken: set[Path]) -> Path:
    """The file's own name, or, when another image of this export has it, one with the id."""
    if not safe_component(base):
        base = f"image-{image['id']}"
    target = sub / base
    if target in taken:
        target = sub / f"{target.stem}-{image['id']}{target.suffix}"
    taken.add(target)
    return target


def _export_one(client: Client, model_id: str, image: ImageInfo, target: Path,
                report: Report) -> None:
    if target.is_file() and sha256_of(target.read_bytes()) == image["sha256"]:
        report.skipped += 1
        return
    try:
        data = client.original(model_id, image["id"])
    except ApiError as exc:
        if exc.status in (0, 401):
            raise
        report.failures.append((str(target), exc.message))
        return
    if sha256_of(data) != image["sha256"]:
        report.failures.append((str(target), "the download does not match the image's SHA-256"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    report.done += 1

"""Training images: decode-check each upload, store it content-addressed, label it; list,
move (relabel, or back to the unlabelled pool) and delete them; sweep away the files a crash
left without rows."""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.tables import Account, Category, Image, ImageLabel, Model
from app.errors import Conflict, InvalidInput, NanoNetError, NotFound
from app.ml.imaging import DecodedImage, ImageRejected, PixelBudget, decode_image
from app.runtime import Runtime
from app.services import jobs as job_service
from app.services.features import request_extraction
from app.services.models import MULTI_LABEL, get_model, remove_unused_images
from app.services.quotas import check_disk, check_new_images, size_of
from app.services.thumbnails import thumbnail_of
from app.storage import atomic_writer

log = logging.getLogger("nanonet.images")


@dataclass(frozen=True)
class Upload:
    """One file of a request as a seekable binary file: a multipart part stays where the parser
    spooled it (on disk past 1 MiB), so no upload is ever held whole in memory."""

    filename: str
    file: BinaryIO

    @classmethod
    def of_bytes(cls, filename: str, data: bytes) -> Upload:
        """An upload of bytes already in memory (a batch job's kept input)."""
        return cls(filename=filename, file=io.BytesIO(data))

    def save(self, path: Path) -> None:
        """Copy the file to `path` atomically, a chunk at a time."""
        self.file.seek(0)
        with atomic_writer(path) as out:
            shutil.copyfileobj(self.file, out)


def rejection(filename: str, exc: ImageRejected) -> dict[str, Any]:
    return {"file": filename, "status": "rejected",
            "error": {"code": exc.code, "message": exc.message, "http_status": exc.status}}


def raise_if_nothing_accepted(results: list[dict[str, Any]]) -> None:
    """A batch where every file was refused is a 4xx, with each file's reason in details."""
    errors = [result["error"] for result in results if result.get("status") == "rejected"]
    if not results or len(errors) < len(results):
        return
    statuses = {error["http_status"] for error in errors}
    codes = {error["code"] for error in errors}
    if len(errors) == 1:
        raise NanoNetError(errors[0]["message"], code=errors[0]["code"],
                           status=errors[0]["http_status"], details={"results": results})
    raise NanoNetError(
        f"None of the {len(errors)} files could be used as an image.",
        code=codes.pop() if len(codes) == 1 else "no_acceptable_file",
        status=statuses.pop() if len(statuses) == 1 else 422,
        details={"results": results},
    )


def decode_uploads(uploads: list[Upload], settings: Settings,
                   results: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Upload,
                                                                   DecodedImage]]:
    """Decode each upload through the one decode path, appending one result per file to `results`.

    Yields (its result, to be completed by the caller; the upload; the decoded image) for each
    file that decodes; a file that does not gets its rejection, and so does every file once the
    call's pixel budget (max_request_pixels, from the headers) is spent. Raises InvalidInput for
    none.
    """
    if not uploads:
        raise InvalidInput("Send at least one image as a `files` part.", code="no_files",
                           status=400)
    budget = PixelBudget(settings.max_request_pixels)
    for upload in uploads:
        try:
            decoded = decode_image(upload.file, max_bytes=settings.max_file_bytes,
                                   max_pixels=settings.max_image_pixels, budget=budget)
        except ImageRejected as exc:
            results.append(rejection(upload.filename, exc))
            continue
        result: dict[str, Any] = {"file": upload.filename}
        results.append(result)
        yield result, upload, decoded


@dataclass(frozen=True)
class _Checked:
    """An upload that decoded, with what its row needs besides the digest."""

    result: dict[str, Any]
    upload: Upload
    width: int
    height: int
    format: str


_InStore = tuple[_Checked, str, int]  # a decoded upload, its digest, its size in bytes


def add_images(session: Session, runtime: Runtime, *, account: Account, model_id: str,
               category: str | None, uploads: list[Upload],
               labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Store each acceptable upload, labelled `category` or, for None, in the unlabelled pool;
    return one result per file, in order.

    Bytes already in the target (the category, or anywhere for the pool) are a duplicate; bytes
    waiting in the pool get the label; bytes in another category are stored again as a copy in
    this one (accepted, `also_in` naming the others), for the review to list as a conflict.
    Every file is decoded, then written to the blob store, and only then are the rows inserted
    in one short transaction: a crash leaves at most blobs no row names (for the sweep), and
    no database lock is held while files decode. Raises NotFound, InvalidInput, and the files'
    own 4xx when none of them is usable.
    """
    model = get_model(session, account=account, model_id=model_id)
    label_sets = label_sets_of(model, category=category, labels=labels, n_files=len(uploads))
    target = find_category(model, category) if label_sets is None else None
    names = {c.id: c.name for c in model.categories}
    check_new_images(session, runtime.settings, model, len(uploads))
    session.commit()  # ends the read: no connection or lock is held while the files decode
    results: list[dict[str, Any]] = []
    checked = [_Checked(result, upload, decoded.width, decoded.height, decoded.format)
               for result, upload, decoded in decode_uploads(uploads, runtime.settings, results)]
    raise_if_nothing_accepted(results)
    check_disk(runtime.settings, size_of(item.upload.file for item in checked))
    with runtime.blobs.holding() as hold:  # until the rows commit: no delete takes these blobs
        stored = [(item, *hold.store(item.upload.file)) for item in checked]
        if label_sets is not None:
            by_upload = {id(upload): sets for upload, sets in zip(uploads, label_sets,
                                                                  strict=True)}
            sets = [by_upload[id(item.upload)] for item in checked]

            def insert() -> int:
                return _insert_labelled_rows(session, model_id=model.id, label_sets=sets,
                                             stored=stored)
        else:
            def insert() -> int:
                return _insert_rows(session, model_id=model.id, target=target, names=names,
                                    stored=stored)
        try:
            accepted = insert()
        except IntegrityError:
            # Another request committed a conflicting row (or dropped the category) between
            # this one's read and its insert; reading again answers from what is there now:
            # a duplicate, another copy, or a 404.
            session.rollback()
            accepted = insert()
    if accepted:
        request_extraction(session, runtime, account=account, model=model)
    log.info("images.added model=%s category=%s accepted=%d of %d", model.id,
             target.name if target is not None else "(unlabelled)", accepted, len(results))
    return results


@dataclass
class _Stored:
    """One row of some bytes in the model: its id (None until flushed), category, copy."""

    image_id: int | None
    category_id: int | None
    copy: int


def _insert_rows(session: Session, *, model_id: str, target: Category | None,
                 names: dict[int, str], stored: list[_InStore]) -> int:
    """Insert the rows of the stored files and commit; complete each file's result; return how
    many were accepted. Raises NotFound for a model or category deleted meanwhile.

    The transaction starts by writing the model's row, which takes SQLite's write lock (and the
    row's lock on PostgreSQL): uploads to one model take turns here, each reading what the one
    before committed, so the same bytes sent twice at once are one row and one duplicate.
    """
    locked = session.execute(update(Model).where(Model.id == model_id)
                             .values(updated_at=utcnow()))
    if not locked.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"No model with id {model_id!r}.", code="model_not_found")
    target_id = target.id if target is not None else None
    if target is not None and session.scalar(
            select(Category.id).where(Category.id == target.id)) is None:
        raise NotFound(f"The category {target.name!r} was deleted; nothing was stored.",
                       code="unknown_category")
    existing = _rows_by_digest(session, model_id)
    answers: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (result, its fields)
    added: list[tuple[dict[str, Any], Image]] = []
    labelled: list[int] = []  # pool images this upload labels
    for item, digest, size in stored:
        rows = existing.setdefault(digest, [])
        same = next((r for r in rows if target is None or r.category_id == target_id), None)
        pooled = next((r for r in rows if r.category_id is None and r.image_id is not None),
                      None)
        shape = {"sha256": digest, "width": item.width, "height": item.height}
        if same is not None:
            fields: dict[str, Any] = {"status": "duplicate", "image_id": same.image_id,
                                      "sha256": digest}
        elif pooled is not None:
            fields = {"status": "accepted", "image_id": pooled.image_id, **shape}
            labelled.append(pooled.image_id)  # type: ignore[arg-type]
            pooled.category_id = target_id
        else:
            copy = max((r.copy for r in rows), default=-1) + 1
            image = Image(model_id=model_id, sha256=digest, copy=copy,
                          filename=item.upload.filename[:500], format=item.format,
                          width=item.width, height=item.height, size_bytes=size)
            rows.append(_Stored(None, target_id, copy))  # a repeat later in this batch: duplicate
            fields = {"status": "accepted", **shape}
            also_in = sorted({names[r.category_id] for r in rows if r.category_id is not None}
                             - {names.get(target_id)})  # type: ignore[arg-type]
            if also_in:
                fields["also_in"] = also_in
            added.append((fields, image))
        answers.append((item.result, fields))
    session.add_all([image for _, image in added])
    session.flush()
    if target is not None:
        session.add_all([ImageLabel(image_id=image_id, category_id=target.id)
                         for image_id in [image.id for _, image in added] + labelled])
    session.commit()
    for fields, image in added:
        fields["image_id"] = image.id
    ids = {image.sha256: image.id for _, image in added}
    for result, fields in answers:
        if fields["status"] == "duplicate" and fields["image_id"] is None:  # a repeat in this batch
            fields["image_id"] = ids[fields["sha256"]]
        result.update(fields)
    return len(added) + len(labelled)


def sweep_unused_blobs(runtime: Runtime) -> int:
    """Delete stored images no row refers to once they are orphan_grace_seconds old (what a
    crash between a blob write and its rows' commit leaves), with their cached features and
    thumbnails, and interrupted blob writes; return how many images went.

    Younger files are kept: they may belong to an upload that has not committed yet.
    """
    cutoff = time.time() - runtime.settings.orphan_grace_seconds
    runtime.blobs.remove_stale_incoming(older_than=cutoff)
    with runtime.session_factory() as session:
        referenced = set(session.scalars(select(Image.sha256).distinct()))
        old = {digest for digest, mtime in runtime.blobs.stored() if mtime < cutoff}
        removed = remove_unused_images(session, runtime, digests=old - referenced)
    if removed:
        log.info("images.swept removed=%d", removed)
    return removed


def label_sets_of(model: Model, *, category: str | None, labels: list[str] | None,
                  n_files: int) -> list[list[Category]] | None:
    """The categories of each file of an upload to a multi-label model (None for a single-label
    one, whose files all go to `category`); raises InvalidInput.

    `labels` holds comma-separated category names, one entry per file in order or one for all
    the files; `category` alone gives every file that one label. An empty entry puts that file
    in the unlabelled pool.
    """
    if model.kind != MULTI_LABEL:
        if labels:
            raise InvalidInput("`labels` is for multi-label models; send one `category` for "
                               "the files of a single-label model.", code="labels_not_allowed")
        return None
    if labels and category and category.strip():
        raise InvalidInput("Send either `category` (one label for every file) or `labels` "
                           "(each file's labels), not both.", code="labels_and_category")
    if not labels:
        found = find_category(model, category)
        return [[found] if found is not None else []] * n_files
    if len(labels) not in (1, n_files):
        raise InvalidInput(f"Send one `labels` entry per file ({n_files}) or one for all of "
                           f"them; got {len(labels)}.", code="labels_count")
    parsed = []
    for entry in labels:
        names = list(dict.fromkeys(n.strip() for n in entry.split(",") if n.strip()))
        parsed.append([found for name in names
                       if (found := find_category(model, name)) is not None])
    return parsed * n_files if len(parsed) == 1 else parsed


def _insert_labelled_rows(session: Session, *, model_id: str,
                          label_sets: list[list[Category]], stored: list[_InStore]) -> int:
    """_insert_rows for a multi-label model: one row per distinct image, carrying each of its
    categories; bytes already in the model gain the labels they lacked (accepted) or are a
    duplicate. Commits; returns how many files were accepted."""
    locked = session.execute(update(Model).where(Model.id == model_id)
                             .values(updated_at=utcnow()))
    if not locked.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"No model with id {model_id!r}.", code="model_not_found")
    wanted = {c.id for cats in label_sets for c in cats}
    alive = set(session.scalars(select(Category.id).where(Category.id.in_(wanted)))) \
        if wanted else set()
    if wanted - alive:
        raise NotFound("A category of this upload was deleted; nothing was stored.",
                       code="unknown_category")
    images: dict[str, Image] = {}
    have: dict[int, set[int]] = {}
    for image, category_id in session.execute(
            select(Image, ImageLabel.category_id)
            .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
            .where(Image.model_id == model_id)):
        images.setdefault(image.sha256, image)
        if category_id is not None:
            have.setdefault(image.id, set()).add(category_id)
    pending: list[tuple[dict[str, Any], Image, list[Category]]] = []
    accepted = 0
    for (item, digest, size), cats in zip(stored, label_sets, strict=True):
        shape = {"sha256": digest, "width": item.width, "height": item.height,
                 "labels": [c.name for c in cats]}
        found = images.get(digest)
        if found is None:
            image = Image(model_id=model_id, sha256=digest, copy=0,
                          filename=item.upload.filename[:500], format=item.format,
                          width=item.width, height=item.height, size_bytes=size)
            session.add(image)
            images[digest] = image
            item.result.update(status="accepted", **shape)
            pending.append((item.result, image, cats))
            accepted += 1
            continue
        if found.id is None:  # the same bytes twice in this upload
            item.result.update(status="duplicate", sha256=digest)
            pending.append((item.result, found, []))
            continue
        new = [c for c in cats if c.id not in have.setdefault(found.id, set())]
        session.add_all([ImageLabel(image_id=found.id, category_id=c.id) for c in new])
        have[found.id].update(c.id for c in new)
        item.result.update(status="accepted" if new else "duplicate", image_id=found.id,
                           **(shape if new else {"sha256": digest}))
        accepted += bool(new)
    session.flush()
    for result, image, cats in pending:
        session.add_all([ImageLabel(image_id=image.id, category_id=c.id) for c in cats])
        result["image_id"] = image.id
    session.commit()
    return accepted


def _rows_by_digest(session: Session, model_id: str) -> dict[str, list[_Stored]]:
    """Return {sha256: its rows} of the model's images."""
    rows = session.execute(
        select(Image.sha256, Image.id, ImageLabel.category_id, Image.copy)
        .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id == model_id)
    )
    found: dict[str, list[_Stored]] = {}
    for digest, image_id, category_id, copy in rows:
        found.setdefault(digest, []).append(_Stored(image_id, category_id, copy))
    return found


def find_category(model: Model, name: str | None) -> Category | None:
    """Return the model's category called `name` (None, or blank: the unlabelled pool);
    raises InvalidInput naming the model's categories."""
    if name is None or not name.strip():
        return None
    found = next((c for c in model.categories if c.name == name.strip()), None)
    if found is None:
        names = ", ".join(repr(c.name) for c in model.categories)
        raise InvalidInput(f"No category {name!r} in this model; it has {names}.",
                           code="unknown_category",
                           details={"categories": [c.name for c in model.categories]})
    return found


LabelledImage = tuple[Image, str | None]  # an image row and its category name (None: the pool)


def _labelled_images(model_id: str):  # type: ignore[no-untyped-def]
    return (select(Image, Category.name)
            .outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
            .outerjoin(Category, Category.id == ImageLabel.category_id)
            .where(Image.model_id == model_id))


def list_images(session: Session, *, account: Account, model_id: str, category: str | None,
                labelled: bool | None, page: int,
                per_page: int) -> tuple[list[LabelledImage], int]:
    """Return (one page of the model's images in upload order, how many match in all).

    `category` keeps that category's images, `labelled` the labelled (True) or pool (False)
    ones; both together keep what both keep. Raises NotFound, InvalidInput for a category the
    model does not have.
    """
    model = get_model(session, account=account, model_id=model_id)
    target = find_category(model, category) if category is not None else None
    if model.kind == MULTI_LABEL:
        return _list_multi_labelled(session, model, target=target, labelled=labelled,
                                    page=page, per_page=per_page)
    conditions = [Image.model_id == model.id]
    if target is not None:
        conditions.append(ImageLabel.category_id == target.id)
    if labelled is True:
        conditions.append(ImageLabel.category_id.is_not(None))
    elif labelled is False:
        conditions.append(ImageLabel.category_id.is_(None))
    query = _labelled_images(model.id).where(*conditions)
    total = session.scalar(
        select(func.count()).select_from(Image)
        .outerjoin(ImageLabel, ImageLabel.image_id == Image.id).where(*conditions)) or 0
    rows = session.execute(query.order_by(Image.id).offset((page - 1) * per_page)
                           .limit(per_page))
    return [(image, name) for image, name in rows], total


def _list_multi_labelled(session: Session, model: Model, *, target: Category | None,
                         labelled: bool | None, page: int,
                         per_page: int) -> tuple[list[LabelledImage], int]:
    """list_images for a multi-label model: each image once (not once per label), with its
    first category by position as the `category`; labels_of has all of them."""
    any_label = select(ImageLabel.image_id).where(ImageLabel.image_id == Image.id).exists()
    conditions = [Image.model_id == model.id]
    if target is not None:
        conditions.append(select(ImageLabel.image_id).where(
            ImageLabel.image_id == Image.id, ImageLabel.category_id == target.id).exists())
    if labelled is True:
        conditions.append(any_label)
    elif labelled is False:
        conditions.append(~any_label)
    total = session.scalar(select(func.count()).select_from(Image).where(*conditions)) or 0
    images = list(session.scalars(select(Image).where(*conditions).order_by(Image.id)
                                  .offset((page - 1) * per_page).limit(per_page)))
    names = labels_of(session, [image.id for image in images])
    return [(image, names[image.id][0] if image.id in names else None) for image in images], total


def page_labels(session: Session, *, model_id: str,
                rows: list[LabelledImage]) -> dict[int, list[str]] | None:
    """Every category of each listed image of a multi-label model; None for a single-label
    one, whose `category` says it all. Call after list_images, which checked the model."""
    model = session.get(Model, model_id)
    if model is None or model.kind != MULTI_LABEL:
        return None
    return labels_of(session, [image.id for image, _ in rows])


def labels_of(session: Session, image_ids: list[int]) -> dict[int, list[str]]:
    """Every category of each image (by category position); an image without one is absent."""
    found: dict[int, list[str]] = {}
    if not image_ids:
        return found
    for image_id, name in session.execute(
            select(ImageLabel.image_id, Category.name)
            .join(Category, Category.id == ImageLabel.category_id)
            .where(ImageLabel.image_id.in_(image_ids)).order_by(Category.position)):
        found.setdefault(image_id, []).append(name)
    return found


def get_image(session: Session, *, account: Account, model_id: str,
              image_id: int) -> LabelledImage:
    """Return one image of the account's model with its category; raises NotFound."""
    model = get_model(session, account=account, model_id=model_id)
    row = session.execute(_labelled_images(model.id).where(Image.id == image_id)).first()
    if row is None:
        raise NotFound(f"No image {image_id} in this model.", code="image_not_found")
    return row[0], row[1]


def image_thumbnail(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                    image_id: int) -> tuple[Image, bytes]:
    """Return the image and its JPEG thumbnail (made once, then cached); raises NotFound."""
    image, _ = get_image(session, account=account, model_id=model_id, image_id=image_id)
    return image, thumbnail_of(runtime, image.sha256)


def image_original(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                   image_id: int) -> tuple[Image, bytes]:
    """Return the image and the bytes exactly as uploaded; raises NotFound."""
    image, _ = get_image(session, account=account, model_id=model_id, image_id=image_id)
    try:
        return image, runtime.blobs.read(image.sha256)
    except FileNotFoundError as exc:  # deleted between the row read and the file read
        raise NotFound(f"No image {image_id} in this model.", code="image_not_found") from exc


def _own_images(session: Session, model: Model, image_ids: list[int]) -> list[Image]:
    """Return the model's images with these ids; raises NotFound naming every missing one."""
    wanted = set(image_ids)
    images = list(session.scalars(select(Image).where(Image.model_id == model.id,
                                                      Image.id.in_(wanted))
                                  .order_by(Image.id)))
    missing = sorted(wanted - {image.id for image in images})
    if missing:
        listed = ", ".join(str(image_id) for image_id in missing)
        raise NotFound(f"No image {listed} in this model; nothing was changed.",
                       code="image_not_found", details={"missing": missing})
    return images


def move_images(session: Session, *, account: Account, model_id: str, image_ids: list[int],
                category: str | None) -> list[LabelledImage]:
    """Label the images `category` (None: back to the unlabelled pool), all or none; return
    them. Raises NotFound (naming missing ids), InvalidInput for an unknown category.

    Allowed while the model trains: the job read its labels when it started.
    """
    model = get_model(session, account=account, model_id=model_id)
    target = find_category(model, category)
    images = _own_images(session, model, image_ids)
    ids = [image.id for image in images]
    _refuse_two_copies_in(session, model, images, target)
    session.execute(delete(ImageLabel).where(ImageLabel.image_id.in_(ids)))
    if target is not None:
        session.add_all([ImageLabel(image_id=image_id, category_id=target.id)
                         for image_id in ids])
    session.commit()
    name = target.name if target is not None else None
    log.info("images.moved model=%s category=%s images=%d", model.id, name or "(unlabelled)",
             len(ids))
    return [(image, name) for image in images]


def _refuse_two_copies_in(session: Session, model: Model, moving: list[Image],
                         target: Category | None) -> None:
    """Raise Conflict when the move would put two copies of the same bytes in `target` (a
    category, or the pool): one of them is better deleted."""
    moving_ids = {image.id for image in moving}
    digests = {image.sha256 for image in moving}
    staying = session.execute(
        select(Image.id, Image.sha256).outerjoin(ImageLabel, ImageLabel.image_id == Image.id)
        .where(Image.model_id == model.id, Image.sha256.in_(digests),
               ImageLabel.category_id == target.id if target is not None
               else ImageLabel.category_id.is_(None)))
    twins = {digest: image_id for image_id, digest in staying if image_id not in moving_ids}
    seen: dict[str, int] = {}
    for image in moving:
        twin = twins.get(image.sha256, seen.get(image.sha256))
        if twin is not None:
            where = f"category {target.name!r}" if target is not None else "the unlabelled pool"
            raise Conflict(f"Image {image.id} has the same content as image {twin}, already in "
                           f"{where}; delete one of the two instead. Nothing was changed.",
                           code="already_in_category",
                           details={"image_id": image.id, "same_as": twin})
        seen[image.sha256] = image.id


def delete_images(session: Session, runtime: Runtime, *, account: Account, model_id: str,
                  image_ids: list[int]) -> list[int]:
    """Delete the images, all or none, then the bytes, features and thumbnails no row needs
    any more; return the deleted ids.

    Raises NotFound (naming missing ids), Conflict while the model trains: the running job may
    still have to read their bytes.
    """
    model = get_model(session, account=account, model_id=model_id)
    if job_service.active_job(session, model_id=model.id, kind="train") is not None:
        raise Conflict("This model is training; delete images once it has finished "
                       "(moving them is allowed now).", code="model_training")
    images = _own_images(session, model, image_ids)
    ids = [image.id for image in images]
    digests = {image.sha256 for image in images}
    session.execute(delete(ImageLabel).where(ImageLabel.image_id.in_(ids)))
    session.execute(delete(Image).where(Image.id.in_(ids)))
    session.commit()
    # Files go only after the commit, and only those no other row (of any model) refers to.
    removed = remove_unused_images(session, runtime, digests=digests)
    log.info("images.deleted model=%s images=%d blobs_removed=%d", model.id, len(ids), removed)
    return ids


def categories_of(session: Session, *, model_id: str,
                  image_ids: list[int]) -> dict[int, str | None]:
    """Return {image id: its category now, None in the pool} for the model's images among
    `image_ids`; ids of other models or deleted images are left out."""
    if not image_ids:
        return {}
    rows = session.execute(_labelled_images(model_id).where(Image.id.in_(set(image_ids))))
    return {image.id: name for image, name in rows}

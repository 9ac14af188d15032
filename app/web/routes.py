"""The web form: server-rendered pages over the same services as the REST API."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from app.api.deps import RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import PREDICTIONS, UPLOADS, count
from app.db.tables import ACTIVE_JOB_STATUSES, Account, Model
from app.errors import Conflict, InvalidInput, NanoNetError, NotFound
from app.runtime import Runtime
from app.schemas.batches import BatchOut
from app.schemas.jobs import JobOut
from app.schemas.models import ModelOut, VersionDetail
from app.schemas.url_images import MAX_URLS_PER_REQUEST
from app.services import batches as batch_service
from app.services import categories as category_service
from app.services import images as image_service
from app.services import models as model_service
from app.services import url_images as url_service
from app.services import versions as version_service
from app.services.accounts import end_web_session, start_web_session
from app.services.images import add_images
from app.services.jobs import active_job, get_job
from app.services.models import MULTI_LABEL
from app.services.predictions import predict
from app.services.review import keep_images, version_review
from app.services.suggestions import suggest
from app.services.training import request_training
from app.web import scripts, webhooks
from app.web.csrf import forget_visitor
from app.web.deps import SIGN_IN_PATH, WebAccountDep, WebRoute, signed_in_account
from app.web.scripts import ticked_labels
from app.web.sessions import SESSION_COOKIE, clear_cookie, keep_session, session_token
from app.web.summary import version_summary
from app.web.templating import STATIC_DIR, error_page, render

MODELS_PATH = "/web/models"
PER_PAGE = 24
RECENT_BATCHES = 5
VIEWS = ("images", "pool", "review")

router = APIRouter(route_class=WebRoute, include_in_schema=False)

FilesForm = Annotated[list[UploadFile] | None, File()]
ImageIdsForm = Annotated[list[int] | None, Form()]
# The ticked categories of a multi-label model's upload form, repeated once per box.
TickedForm = Annotated[list[str] | None, Form()]


def mount_web(app: FastAPI) -> None:
    """Add the web pages and their static files to `app`: the scripts' JSON routes and the
    webhook pages first, before this router's catch-all 404. (The batch pages build on this
    module: app.main includes them before calling this.)"""
    app.include_router(scripts.router)
    app.include_router(webhooks.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def model_path(model_id: str) -> str:
    return f"{MODELS_PATH}/{model_id}"


def split_categories(text: str) -> list[str]:
    """Categories typed one per line or separated by commas; blank entries are dropped."""
    return [name.strip() for name in re.split(r"[,\n\r]+", text) if name.strip()]


def entered_urls(text: str) -> list[str]:
    """URLs typed one per line; blank lines are dropped. Raises InvalidInput for none or more
    than a request takes (as the API's schema does)."""
    urls = [line.strip() for line in text.splitlines() if line.strip()]
    if not urls:
        raise InvalidInput("Enter at least one image URL, one per line.", code="no_urls",
                           status=400)
    if len(urls) > MAX_URLS_PER_REQUEST:
        raise InvalidInput(f"Enter at most {MAX_URLS_PER_REQUEST} URLs at once; this has "
                           f"{len(urls)}.", code="too_many_urls", status=400)
    return urls


def chosen_files(files: list[UploadFile] | None) -> list[UploadFile]:
    """A file input left empty still sends one nameless, empty part; that is no file at all."""
    chosen = [part for part in files or [] if part.filename]
    if not chosen:
        raise InvalidInput("Choose at least one image file first.", code="no_files", status=400)
    return chosen


def job_to_show(session: Session, *, account: Account, model_id: str,
                job_id: str | None) -> JobOut | None:
    """The job named in the URL if it is this model's, else the model's running training job."""
    job = None
    if job_id:
        try:
            job = get_job(session, account=account, job_id=job_id)
        except NotFound:
            job = None
        if job is not None and job.model_id != model_id:
            job = None
    if job is None:
        job = active_job(session, model_id=model_id, kind="train")
    return JobOut.build(job) if job is not None else None


def counted(session: Session, row: Model) -> ModelOut:
    """The model as the API shows it: image counts per category and in the pool."""
    return ModelOut.build(row, model_service.category_counts(session, model_ids=[row.id]),
                          model_service.unlabelled_counts(session, model_ids=[row.id]))


def model_page(request: Request, session: Session, *, account: Account, model_id: str,
               job_id: str | None = None, status: int = 200, **extra: Any) -> Response:
    row = model_service.get_model(session, account=account, model_id=model_id)
    model = counted(session, row)
    job = job_to_show(session, account=account, model_id=row.id, job_id=job_id)
    version = row.active_version
    versions = [VersionDetail.detail(v, active_id=row.active_version_id)
                for v in version_service.versions_of(session, account=account,
                                                     model_id=row.id)]
    batches, _ = batch_service.list_batches(session, account=account, model_id=row.id, page=1,
                                            per_page=RECENT_BATCHES)
    return render(request, "model.html", {
        "signed_in": True, "model": model, "job": job, "pool_count": model.unlabelled,
        "multi_label": row.kind == MULTI_LABEL,
        "batches": [BatchOut.build(batch) for batch in batches],
        "details": version_summary(version) if version is not None else None,
        "versions": versions,
        "job_is_active": job is not None and job.status in ACTIVE_JOB_STATUSES, **extra,
    }, status=status)


def refused_page(request: Request, session: Session, exc: NanoNetError, *, account: Account,
                 model_id: str, page: Callable[..., Response] = model_page,
                 **extra: Any) -> Response:
    """The page again (the model page unless `page` says which) with the service's refusal
    and its status; NotFound stays a 404."""
    if isinstance(exc, NotFound):
        raise exc
    session.rollback()
    return page(request, session, account=account, model_id=model_id, status=exc.status,
                **extra)


@dataclass(frozen=True)
class Shown:
    """Which part of a model's data page a form was sent from, to return to it."""

    view: str = "images"
    category: str = ""
    page: int = 1

    def url(self, model_id: str) -> str:
        query: dict[str, str | int] = {}
        if self.view == "images" and self.category:
            query["category"] = self.category
        if self.page > 1:
            query["page"] = self.page
        suffix = f"?{urlencode(query)}" if query else ""
        return f"{model_path(model_id)}/{self.view}{suffix}"


def shown_from(view: str, category: str, page: int) -> Shown:
    return Shown(view=view if view in VIEWS else "images", category=category.strip(),
                 page=max(page, 1))


def review_of(session: Session, runtime: Runtime, *, account: Account,
              model_id: str) -> dict[str, Any]:
    """The active version's review as the page shows it; a model without one says why.

    """
    try:
        review = version_review(session, runtime, account=account, model_id=model_id)
    except Conflict as exc:
        return {"unavailable": exc.message}
    ids = [image.image_id for group in review.duplicates for image in group.images]
    ids += [image_id for confusion in review.confusions for image_id in confusion.image_ids]
    now = image_service.categories_of(session, model_id=model_id, image_ids=ids)
    # A duplicate can move to the category another member of its group is in now.
    move_to = {image.image_id: sorted({name for other in group.images
                                       if (name := now.get(other.image_id)) is not None
                                       and name != now.get(image.image_id)})
               for group in review.duplicates for image in group.images}
    return {"review": review, "now": now, "move_to": move_to}


def suggestions_of(session: Session, runtime: Runtime, *, account: Account,
                   model_id: str) -> dict[str, Any]:
    """The pool images to label first, or why there are none (no trained version yet)."""
    try:
        found = suggest(session, runtime, account=account, model_id=model_id, limit=PER_PAGE)
    except Conflict as exc:
        return {"suggestions_note": f"No suggestions of what to label first: {exc.message}"}
    return {"suggestions": found.items, "suggested_ids": {s.image_id for s in found.items}}


def data_page(request: Request, session: Session, *, account: Account, model_id: str,
              shown: Shown, runtime: Runtime, status: int = 200, **extra: Any) -> Response:
    """A model's images: one category's gallery, the unlabelled pool, or the review."""
    row = model_service.get_model(session, account=account, model_id=model_id)
    model = counted(session, row)
    names = [c.name for c in model.categories]
    multi_label = row.kind == MULTI_LABEL
    context: dict[str, Any] = {"signed_in": True, "model": model, "shown": shown,
                               "pool_count": model.unlabelled, "per_page": PER_PAGE,
                               "multi_label": multi_label}
    if shown.view == "review":
        context.update(review_of(session, runtime, account=account, model_id=row.id))
    else:
        category: str | None = None
        if shown.view == "images":
            category = shown.category if shown.category in names else names[0]
            shown = Shown(view="images", category=category or "", page=shown.page)
        images, total = image_service.list_images(
            session, account=account, model_id=row.id, category=category,
            labelled=False if shown.view == "pool" else None, page=shown.page,
            per_page=PER_PAGE)
        context.update(shown=shown, images=images, total=total,
                       pages=max(1, -(-total // PER_PAGE)))
        # Multi-label models have no suggestions (409 not_for_multi_label): none are asked for.
        if shown.view == "pool" and shown.page == 1 and total and not multi_label:
            context.update(suggestions_of(session, runtime, account=account, model_id=row.id))
    return render(request, "data.html", {**context, **extra}, status=status)


def models_page(request: Request, session: Session, *, account: Account, status: int = 200,
                **extra: Any) -> Response:
    items = model_service.list_models(session, account=account)
    counts = model_service.category_counts(session, model_ids=[n.id for n in items])
    return render(request, "models.html", {
        "signed_in": True, "models": [ModelOut.build(n, counts) for n in items], **extra,
    }, status=status)


def results_of(exc: NanoNetError) -> list[dict[str, Any]]:
    """Per-file results a refused batch carries in its details (every file was rejected)."""
    if isinstance(exc.details, dict):
        return list(exc.details.get("results", []))
    return []


@router.get("/")
def home(request: Request, session: SessionDep) -> Response:
    return see_other(MODELS_PATH if signed_in_account(request, session) else SIGN_IN_PATH)


@router.get("/web")
def web_home(request: Request, session: SessionDep) -> Response:
    return home(request, session)


@router.get(SIGN_IN_PATH)
def sign_in_form(request: Request, session: SessionDep) -> Response:
    if signed_in_account(request, session) is not None:
        return see_other(MODELS_PATH)
    return render(request, "sign_in.html")


@router.post(SIGN_IN_PATH)
def sign_in(request: Request, session: SessionDep, runtime: RuntimeDep,
            api_key: Annotated[str, Form()] = "") -> Response:
    """Start a server-side session; the cookie carries its signed token, never the key."""
    key = api_key.strip()
    if not key:
        return render(request, "sign_in.html", {"error": "Enter your API key."}, status=401)
    token = start_web_session(session, key=key, max_age=runtime.settings.session_max_age)
    if token is None:
        return render(request, "sign_in.html",
                      {"error": "This API key is not valid. Check it and try again."},
                      status=401)
    response = see_other(MODELS_PATH)
    keep_session(request, response, token)
    forget_visitor(request, response)
    return response


@router.post("/web/sign-out")
def sign_out(request: Request, session: SessionDep) -> Response:
    """End the session in the database (a copy of the cookie opens nothing), then the cookie."""
    token = session_token(request)
    if token is not None:
        end_web_session(session, token=token)
    response = see_other(SIGN_IN_PATH)
    clear_cookie(request, response, SESSION_COOKIE)
    return response


@router.get(MODELS_PATH)
def list_models(request: Request, session: SessionDep, account: WebAccountDep) -> Response:
    return models_page(request, session, account=account)


@router.post(MODELS_PATH)
def create_model(request: Request, session: SessionDep, runtime: RuntimeDep,
                 account: WebAccountDep, name: Annotated[str, Form()] = "",
                 categories: Annotated[str, Form()] = "",
                 kind: Annotated[str, Form()] = "single_label") -> Response:
    try:
        model = model_service.create_model(session, settings=runtime.settings, account=account,
                                          name=name, categories=split_categories(categories),
                                          kind=kind)
    except NanoNetError as exc:
        session.rollback()
        return models_page(request, session, account=account, status=exc.status,
                           error=exc.message,
                           form={"name": name, "categories": categories, "kind": kind})
    return see_other(model_path(model.id))


@router.get(MODELS_PATH + "/{model_id}")
def show_model(model_id: str, request: Request, session: SessionDep, account: WebAccountDep,
               job: str | None = None) -> Response:
    return model_page(request, session, account=account, model_id=model_id, job_id=job)


@router.post(MODELS_PATH + "/{model_id}/images")
def upload_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  account: WebAccountDep, category: Annotated[str, Form()] = "",
                  files: FilesForm = None, label: TickedForm = None) -> Response:
    """Files to one category ("" for the pool); a multi-label model's form ticks `label`
    boxes instead, every ticked category going to every file."""
    ticked = [name.strip() for name in label or [] if name.strip()]
    try:
        count(request, UPLOADS, account.id)
        results = add_images(session, runtime, account=account, model_id=model_id,
                             category=category,
                             uploads=read_uploads(chosen_files(files), runtime),
                             labels=ticked_labels(label))
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id, upload={
            "category": category.strip(), "ticked": ticked, "results": results_of(exc),
            "error": exc.message})
    return model_page(request, session, account=account, model_id=model_id, upload={
        "category": category.strip(), "ticked": ticked, "results": results,
        "accepted": sum(result["status"] == "accepted" for result in results)})


@router.post(MODELS_PATH + "/{model_id}/images/urls")
def import_urls(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep, urls: Annotated[str, Form()] = "",
                category: Annotated[str, Form()] = "") -> Response:
    """The images at the URLs typed one per line, to one category ("" for the pool)."""
    shown = {"category": category.strip()}
    try:
        wanted = entered_urls(urls)
        count(request, UPLOADS, account.id)
        results = url_service.add_images_from_urls(
            session, runtime, account=account, model_id=model_id,
            category=category.strip() or None, urls=wanted)
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            url_import={**shown, "urls": urls, "results": results_of(exc),
                                        "error": exc.message})
    return model_page(request, session, account=account, model_id=model_id, url_import={
        **shown, "results": results,
        "accepted": sum(result["status"] == "accepted" for result in results)})


@router.post(MODELS_PATH + "/{model_id}/train")
def train_model(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep,
                activate: Annotated[str, Form()] = "always") -> Response:
    try:
        job = request_training(session, runtime, account=account, model_id=model_id,
                               activate=activate)
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            train_error=exc.message)
    return see_other(f"{model_path(model_id)}?job={job.id}#training")


@router.post(MODELS_PATH + "/{model_id}/predict")
def predict_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                   account: WebAccountDep, files: FilesForm = None,
                   reject_unknown: Annotated[bool, Form()] = False) -> Response:
    try:
        count(request, PREDICTIONS, account.id)
        version, results = predict(session, runtime, account=account, model_id=model_id,
                                   uploads=read_uploads(chosen_files(files), runtime),
                                   reject_unknown=reject_unknown)
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            prediction={"results": results_of(exc), "error": exc.message,
                                        "reject_unknown": reject_unknown})
    return model_page(request, session, account=account, model_id=model_id,
                      prediction={"version": version, "results": results,
                                  "reject_unknown": reject_unknown})


def version_action(request: Request, session: Session, *, account: Account, model_id: str,
                   action: Callable[[], object]) -> Response:
    """Run one version service call: back to the versions table, or the page with the
    refusal."""
    try:
        action()
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            versions_error=exc.message)
    return see_other(f"{model_path(model_id)}#versions")


@router.post(MODELS_PATH + "/{model_id}/versions/{number}/activate")
def activate_version(model_id: str, number: int, request: Request, session: SessionDep,
                     runtime: RuntimeDep, account: WebAccountDep) -> Response:
    return version_action(request, session, account=account, model_id=model_id, action=partial(
        version_service.activate_version, session, runtime, account=account,
        model_id=model_id, number=number))


@router.post(MODELS_PATH + "/{model_id}/versions/{number}/delete")
def delete_version(model_id: str, number: int, request: Request, session: SessionDep,
                   runtime: RuntimeDep, account: WebAccountDep) -> Response:
    return version_action(request, session, account=account, model_id=model_id, action=partial(
        version_service.delete_version, session, runtime, account=account,
        model_id=model_id, number=number))


@router.post(MODELS_PATH + "/{model_id}/delete")
def delete_model(model_id: str, session: SessionDep, runtime: RuntimeDep,
                 account: WebAccountDep) -> Response:
    model_service.delete_model(session, runtime, account=account, model_id=model_id)
    return see_other(MODELS_PATH)


ViewForm = Annotated[str, Form()]
ShownCategoryForm = Annotated[str, Form()]
PageForm = Annotated[int, Form()]


def data_action(request: Request, session: Session, runtime: Runtime, *, account: Account,
                model_id: str, shown: Shown, action: Callable[[], object]) -> Response:
    """Run one service call for a form of the data page: back to where it was sent from, or
    that page again with the refusal."""
    try:
        action()
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            page=partial(data_page, shown=shown, runtime=runtime),
                            error=exc.message)
    return see_other(shown.url(model_id))


@router.get(MODELS_PATH + "/{model_id}/images")
def show_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep, category: str = "", page: int = 1) -> Response:
    return data_page(request, session, account=account, model_id=model_id, runtime=runtime,
                     shown=shown_from("images", category, page))


@router.get(MODELS_PATH + "/{model_id}/pool")
def show_pool(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
              account: WebAccountDep, page: int = 1) -> Response:
    return data_page(request, session, account=account, model_id=model_id, runtime=runtime,
                     shown=shown_from("pool", "", page))


@router.get(MODELS_PATH + "/{model_id}/review")
def show_review(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep, true: str = "", predicted: str = "") -> Response:
    """The review; `true` and `predicted` pick out one cell of the confusion matrix."""
    return data_page(request, session, account=account, model_id=model_id, runtime=runtime,
                     shown=shown_from("review", "", 1),
                     cell={"true": true, "predicted": predicted} if true and predicted else None)


@router.post(MODELS_PATH + "/{model_id}/images/bulk")
def bulk_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep, action: Annotated[str, Form()] = "",
                category: Annotated[str, Form()] = "", image_ids: ImageIdsForm = None,
                view: ViewForm = "images", shown_category: ShownCategoryForm = "",
                page: PageForm = 1) -> Response:
    """Delete the ticked images, or move them to `category` ("" for the pool)."""
    shown = shown_from(view, shown_category, page)

    def act() -> object:
        if not image_ids:
            raise InvalidInput("Tick at least one image first.", code="no_images", status=400)
        if action == "delete":
            return image_service.delete_images(session, runtime, account=account,
                                               model_id=model_id, image_ids=image_ids)
        if action == "move":
            return image_service.move_images(session, account=account, model_id=model_id,
                                             image_ids=image_ids, category=category or None)
        raise InvalidInput("Choose Delete or Move.", code="unknown_action", status=400)

    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown, action=act)


@router.post(MODELS_PATH + "/{model_id}/images/{image_id}/delete")
def delete_image(model_id: str, image_id: int, request: Request, session: SessionDep,
                 runtime: RuntimeDep, account: WebAccountDep, view: ViewForm = "images",
                 shown_category: ShownCategoryForm = "", page: PageForm = 1) -> Response:
    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from(view, shown_category, page),
                       action=partial(image_service.delete_images, session, runtime,
                                      account=account, model_id=model_id,
                                      image_ids=[image_id]))


@router.post(MODELS_PATH + "/{model_id}/images/{image_id}/label")
def label_image(model_id: str, image_id: int, request: Request, session: SessionDep,
                runtime: RuntimeDep, account: WebAccountDep,
                category: Annotated[str, Form()] = "", view: ViewForm = "images",
                shown_category: ShownCategoryForm = "", page: PageForm = 1) -> Response:
    """Give one image a category ("" sends it back to the pool)."""
    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from(view, shown_category, page),
                       action=partial(image_service.move_images, session, account=account,
                                      model_id=model_id, image_ids=[image_id],
                                      category=category or None))


@router.post(MODELS_PATH + "/{model_id}/review/keep")
def keep_reviewed(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  account: WebAccountDep, image_ids: ImageIdsForm = None) -> Response:
    def act() -> object:
        if not image_ids:
            raise InvalidInput("Choose an image to keep.", code="no_images", status=400)
        return keep_images(session, account=account, model_id=model_id, image_ids=image_ids)

    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from("review", "", 1), action=act)


@router.post(MODELS_PATH + "/{model_id}/categories")
def add_category(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                 account: WebAccountDep, name: Annotated[str, Form()] = "") -> Response:
    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from("images", name, 1),
                       action=partial(category_service.add_category, session, account=account,
                                      model_id=model_id, name=name))


@router.post(MODELS_PATH + "/{model_id}/categories/rename")
def rename_category(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                    account: WebAccountDep, name: Annotated[str, Form()] = "",
                    new_name: Annotated[str, Form()] = "") -> Response:
    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from("images", new_name, 1),
                       action=partial(category_service.rename_category, session,
                                      account=account, model_id=model_id, name=name,
                                      new_name=new_name))


@router.post(MODELS_PATH + "/{model_id}/categories/delete")
def delete_category(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                    account: WebAccountDep, name: Annotated[str, Form()] = "") -> Response:
    return data_action(request, session, runtime, account=account, model_id=model_id,
                       shown=shown_from("images", "", 1),
                       action=partial(category_service.delete_category, session, runtime,
                                      account=account, model_id=model_id, name=name))


@router.get(MODELS_PATH + "/{model_id}/images/{image_id}/thumbnail")
def thumbnail(model_id: str, image_id: int, request: Request, session: SessionDep,
              runtime: RuntimeDep, account: WebAccountDep) -> Response:
    """The pages' thumbnails (the API's, under the web session); the ETag spares a resend."""
    image, data = image_service.image_thumbnail(session, runtime, account=account,
                                                model_id=model_id, image_id=image_id)
    headers = {"ETag": f'"{image.sha256[:32]}"', "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/web/{rest:path}")
def not_found(rest: str, request: Request, account: WebAccountDep) -> Response:
    return error_page(request, status=404, message="There is no page here.")

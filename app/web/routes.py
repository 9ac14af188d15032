"""The web form: server-rendered pages over the same services as the REST API."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from app.api.deps import (
    SESSION_COOKIE,
    RuntimeDep,
    SessionDep,
    check_request_size,
    read_uploads,
)
from app.db.tables import ACTIVE_JOB_STATUSES, Account
from app.errors import InvalidInput, NanoNetError, NotFound
from app.schemas.jobs import JobOut
from app.schemas.models import ModelOut
from app.services import models as model_service
from app.services.accounts import authenticate
from app.services.images import add_images
from app.services.jobs import active_job, get_job
from app.services.predictions import predict
from app.services.training import request_training
from app.web.deps import SIGN_IN_PATH, WebAccountDep, WebRoute, signed_in_account
from app.web.summary import version_summary
from app.web.templating import STATIC_DIR, error_page, render

MODELS_PATH = "/web/models"

router = APIRouter(route_class=WebRoute, include_in_schema=False)

FilesForm = Annotated[list[UploadFile] | None, File()]


def mount_web(app: FastAPI) -> None:
    """Add the web pages and their static files to `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def model_path(model_id: str) -> str:
    return f"{MODELS_PATH}/{model_id}"


def split_categories(text: str) -> list[str]:
    """Categories typed one per line or separated by commas; blank entries are dropped."""
    return [name.strip() for name in re.split(r"[,\n\r]+", text) if name.strip()]


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


def model_page(request: Request, session: Session, *, account: Account, model_id: str,
               job_id: str | None = None, status: int = 200, **extra: Any) -> Response:
    row = model_service.get_model(session, account=account, model_id=model_id)
    model = ModelOut.build(row, model_service.category_counts(session, model_ids=[row.id]))
    job = job_to_show(session, account=account, model_id=row.id, job_id=job_id)
    version = row.active_version
    return render(request, "model.html", {
        "signed_in": True, "model": model, "job": job,
        "details": version_summary(version) if version is not None else None,
        "job_is_active": job is not None and job.status in ACTIVE_JOB_STATUSES, **extra,
    }, status=status)


def refused_page(request: Request, session: Session, exc: NanoNetError, *, account: Account,
                 model_id: str, **extra: Any) -> Response:
    """The model page again with the service's refusal and its status; NotFound stays a 404."""
    if isinstance(exc, NotFound):
        raise exc
    session.rollback()
    return model_page(request, session, account=account, model_id=model_id, status=exc.status,
                      **extra)


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
def sign_in(request: Request, session: SessionDep,
            api_key: Annotated[str, Form()] = "") -> Response:
    key = api_key.strip()
    if not key:
        return render(request, "sign_in.html", {"error": "Enter your API key."}, status=401)
    if authenticate(session, key=key) is None:
        return render(request, "sign_in.html",
                      {"error": "This API key is not valid. Check it and try again."},
                      status=401)
    response = see_other(MODELS_PATH)
    response.set_cookie(SESSION_COOKIE, key, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/web/sign-out")
def sign_out(request: Request) -> Response:
    response = see_other(SIGN_IN_PATH)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get(MODELS_PATH)
def list_models(request: Request, session: SessionDep, account: WebAccountDep) -> Response:
    return models_page(request, session, account=account)


@router.post(MODELS_PATH)
def create_model(request: Request, session: SessionDep, account: WebAccountDep,
                 name: Annotated[str, Form()] = "",
                 categories: Annotated[str, Form()] = "") -> Response:
    try:
        model = model_service.create_model(session, account=account, name=name,
                                          categories=split_categories(categories))
    except NanoNetError as exc:
        session.rollback()
        return models_page(request, session, account=account, status=exc.status,
                           error=exc.message, form={"name": name, "categories": categories})
    return see_other(model_path(model.id))


@router.get(MODELS_PATH + "/{model_id}")
def show_model(model_id: str, request: Request, session: SessionDep, account: WebAccountDep,
               job: str | None = None) -> Response:
    return model_page(request, session, account=account, model_id=model_id, job_id=job)


@router.post(MODELS_PATH + "/{model_id}/images", dependencies=[Depends(check_request_size)])
def upload_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  account: WebAccountDep, category: Annotated[str, Form()] = "",
                  files: FilesForm = None) -> Response:
    try:
        results = add_images(session, runtime, account=account, model_id=model_id,
                             category=category,
                             uploads=read_uploads(chosen_files(files), runtime))
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id, upload={
            "category": category.strip(), "results": results_of(exc), "error": exc.message})
    return model_page(request, session, account=account, model_id=model_id, upload={
        "category": category.strip(), "results": results,
        "accepted": sum(result["status"] == "accepted" for result in results)})


@router.post(MODELS_PATH + "/{model_id}/train")
def train_model(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                account: WebAccountDep) -> Response:
    try:
        job = request_training(session, runtime, account=account, model_id=model_id)
    except NanoNetError as exc:
        return refused_page(request, session, exc, account=account, model_id=model_id,
                            train_error=exc.message)
    return see_other(f"{model_path(model_id)}?job={job.id}#training")


@router.post(MODELS_PATH + "/{model_id}/predict", dependencies=[Depends(check_request_size)])
def predict_images(model_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                   account: WebAccountDep, files: FilesForm = None,
                   reject_unknown: Annotated[bool, Form()] = False) -> Response:
    try:
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


@router.post(MODELS_PATH + "/{model_id}/delete")
def delete_model(model_id: str, session: SessionDep, runtime: RuntimeDep,
                 account: WebAccountDep) -> Response:
    model_service.delete_model(session, runtime, account=account, model_id=model_id)
    return see_other(MODELS_PATH)


@router.get("/web/{rest:path}")
def not_found(rest: str, request: Request, account: WebAccountDep) -> Response:
    return error_page(request, status=404, message="There is no page here.")

"""NanoNets v2 `ImageCategorization` (single-label) routes, as the official client sends them.

Every path is served with and without its trailing slash (the client always sends one; a
redirect would make it send a POST twice). The model id may come in the path
(`Model/{model_id}/...`), the query (`modelId`, or `id` as NanoNets' docs have it) or the form,
including as a `filename=""` multipart part; see common.model_id_of.

The routes translate only: models, images, url_images, training and predictions services do
the work, exactly as for /api/v1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.api.deps import AccountDep, RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import limit_predictions, limit_uploads
from app.api.v2.common import (
    FormDep,
    ModelKind,
    V2Form,
    model_id_of,
    model_object,
    prediction_response,
    route_adder,
    upload_response,
    urls_of,
)
from app.services import images as image_service
from app.services import models as model_service
from app.services import url_images as url_service
from app.services.predictions import predict
from app.services.training import request_training

router = APIRouter(prefix="/ImageCategorization")

KIND = ModelKind("ImageCategorization", "classification", multi_label=False)
UPLOADS = [Depends(limit_uploads)]
PREDICTIONS = [Depends(limit_predictions)]

Endpoint = Callable[..., Any]


_route = route_adder(router)


def _category(request: Request, form: V2Form) -> str | None:
    return request.query_params.get("category") or form.first("category")


def _default_name(categories: list[str]) -> str:
    names = ", ".join(name.strip() for name in categories if name.strip())
    return names[:model_service.MAX_NAME_LENGTH] or "ImageCategorization model"


@_route("POST", "/Model/")
def create_model(session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                 form: FormDep) -> JSONResponse:
    """Create a model: form `categories` (repeated); optional `name`."""
    categories = form.all("categories")
    model = model_service.create_model(session, settings=runtime.settings, account=account,
                                       name=form.first("name") or _default_name(categories),
                                       categories=categories)
    return JSONResponse(model_object(session, model, KIND.model_type))


@_route("GET", "/Model/", "/Model/{model_id}/")
def get_model(request: Request, session: SessionDep, account: AccountDep) -> JSONResponse:
    """The model object: `?modelId=` (the client), `?id=` (NanoNets' docs) or the path."""
    model_id = model_id_of(request)
    return JSONResponse(KIND.answer(session, account, model_id))


@_route("GET", "/Models/")
def list_models(session: SessionDep, account: AccountDep) -> JSONResponse:
    """The account's single-label models, newest first."""
    return JSONResponse(KIND.listed(session, account))


@_route("POST", "/UploadFile/", "/Model/{model_id}/UploadFile/", dependencies=UPLOADS)
def upload_files(request: Request, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep, form: FormDep) -> JSONResponse:
    """Add the `file` parts to `category` (query or form; none: the unlabelled pool). 200 with
    the model object, 202 when some files could not be used (listed under `errors`)."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    results = image_service.add_images(session, runtime, account=account, model_id=model_id,
                                       category=_category(request, form),
                                       uploads=read_uploads(form.files, runtime))
    return upload_response(KIND.answer(session, account, model_id), results)


@_route("POST", "/UploadUrls/", "/Model/{model_id}/UploadUrls/", dependencies=UPLOADS)
def upload_urls(request: Request, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep, form: FormDep) -> JSONResponse:
    """Add the images at the form's `urls` (repeated) to `category`; 202 when some URLs could
    not be fetched or used, 400 for no URL."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    results = url_service.add_images_from_urls(session, runtime, account=account,
                                               model_id=model_id,
                                               category=_category(request, form),
                                               urls=urls_of(form))
    return upload_response(KIND.answer(session, account, model_id), results)


@_route("POST", "/Train/", "/Model/{model_id}/Train/")
def train(request: Request, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
          form: FormDep) -> JSONResponse:
    """Queue training (a second call while it trains changes nothing); the model object, in
    state 3 (queued) or 4 (training). Poll `GET Model/?modelId=` until state 5."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    request_training(session, runtime, account=account, model_id=model_id)
    return JSONResponse(KIND.answer(session, account, model_id))


@_route("POST", "/LabelFile/", "/Model/{model_id}/LabelFile/", dependencies=PREDICTIONS)
def label_files(request: Request, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep, form: FormDep) -> JSONResponse:
    """Classify each `file` part: one result per part, in order, `file` its file name; 409
    before the model is ready."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    _, results = predict(session, runtime, account=account, model_id=model_id,
                         uploads=read_uploads(form.files, runtime))
    return prediction_response(results)


@_route("POST", "/LabelUrls/", "/Model/{model_id}/LabelUrls/", dependencies=PREDICTIONS)
def label_urls(request: Request, session: SessionDep, runtime: RuntimeDep,
               account: AccountDep, form: FormDep) -> JSONResponse:
    """Classify the image at each of the form's `urls`: `file` is the URL as sent; a URL that
    could not be fetched or used has `"prediction": []` and the answer is 202."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    _, results = url_service.predict_urls(session, runtime, account=account, model_id=model_id,
                                          urls=urls_of(form))
    return prediction_response(results)

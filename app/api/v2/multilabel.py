"""NanoNets v2 `MultiLabelClassification` routes, as the official client (`nanonets` 2.0.5) and
NanoNets' multi-label samples send them. They are NanoNet's multi-label models
(`kind="multi_label"`; `model_type` "multilabelclassification" in the model object), and the
images, url_images, training and predictions services do the work, as for /api/v1.

Every path is served with and without its trailing slash. The model id is in the path
(`Model/{model_id}/...`), except for the client's `UploadUrls/` (form `modelId`); the query's
`modelId` and a `filename=""` part are read too (common.model_id_of).

Wire shapes:

* `POST Model/`: a JSON body `{"categories": [...], "name"?}`, read whatever the Content-Type
  (NanoNets' sample sends none); a urlencoded form of repeated `categories` works too.
* `POST Model/{id}/UploadFiles/`: `files` parts and one `data` part, a JSON list of
  `{"filename", "categories": [...]}` (a comma-separated string is taken too). When the list
  has one entry per part they pair by position (basenames may repeat), else by file name; a
  part with no entry, or an empty `categories`, goes to the unlabelled pool (state 1). Without
  `data`, form `categories` (repeated) label every part.
* `POST Model/{id}/UploadUrls/` and the client's `UploadUrls/`: `urls` with `data`
  (`[{"filename": <url>, "categories"}]`), or flat `categories`: the client flattens its
  per-URL lists, so flat `categories` with more than one URL is ambiguous and refused (400).
* `GET Model/{id}/Annotations` (no slash; the client's state check):
  `{"Meta": {"model_id", "model_type", "categories": [{"name", "count"}], "state", "status"},
  "Data": [{"id", "filename", "categories"}]}`, one `Data` entry per uploaded image (pool ones
  with no categories). The client asserts `len(Data) > 50` and every count > 50.
* Predictions (`LabelFiles/`, `LabelUrls/`): NanoNets' envelope
  `{"message", "result": [{"message", "file", "prediction": [...], "labels"}]}`.
  The choice: `prediction` lists **every** category, most probable first, each
  `{"label", "probability", "selected", "threshold"}`, not only those above their threshold.
  The client hands `prediction` over untouched (`{file: prediction}`), and NanoNets' documented
  items are `{label, probability}` over all categories, so code written for NanoNets (a top
  label, a cut-off of its own) keeps working; `selected` (probability at or above the
  category's calibrated `threshold`) says which categories NanoNet predicts, and the item's
  `labels` lists those. A file or URL that could not be used has `"prediction": []` (202).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.api.deps import AccountDep, RuntimeDep, SessionDep, read_uploads
from app.api.rate_limits import limit_predictions, limit_uploads
from app.api.v2.common import (
    FormDep,
    ModelKind,
    V2Form,
    json_text,
    model_id_of,
    model_object,
    prediction_response,
    route_adder,
    upload_response,
    urls_of,
)
from app.errors import InvalidInput
from app.services import images as image_service
from app.services import models as model_service
from app.services import url_images as url_service
from app.services.predictions import predict
from app.services.training import request_training

router = APIRouter(prefix="/MultiLabelClassification")
route = route_adder(router)

KIND = ModelKind("MultiLabelClassification", "multilabelclassification", multi_label=True)
UPLOADS = [Depends(limit_uploads)]
PREDICTIONS = [Depends(limit_predictions)]
MAX_CREATE_BODY = 1024 * 1024
IMAGES_PAGE = 1000  # rows read per query when listing a model's images for Annotations


def _names(value: Any, where: str) -> list[str]:
    """Category names from a list of strings or one comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return [name.strip() for name in value if name.strip()]
    raise InvalidInput(f"{where}: `categories` must be a list of category names.",
                       code="invalid_data", status=400)


def _entries(form: V2Form) -> list[tuple[str | None, list[str]]] | None:
    """The `data` part as (filename, categories) pairs, or None when there is none."""
    text = form.first("data")
    if text is None:
        return None
    data = json_text("data", text)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise InvalidInput("`data` must be a JSON list of {\"filename\", \"categories\"}.",
                           code="invalid_data", status=400)
    return [(entry.get("filename") if isinstance(entry.get("filename"), str) else None,
             _names(entry.get("categories"), f"data[{index}]"))
            for index, entry in enumerate(data)]


def _labels_for(names: list[str], form: V2Form) -> list[str] | None:
    """add_images' `labels` for files or URLs called `names`, in order: from `data` (by
    position when it has one entry each, else by name), else from flat form `categories` for
    all of them; None when neither is sent (the unlabelled pool)."""
    entries = _entries(form)
    if entries is None:
        flat = [name for value in form.all("categories") for name in _names(value, "categories")]
        return [",".join(flat)] if flat else None
    if len(entries) == len(names):
        return [",".join(categories) for _, categories in entries]
    by_name = {name: categories for name, categories in entries if name is not None}
    return [",".join(by_name.get(name, [])) for name in names]


@route("POST", "/Model/")
async def create_model(request: Request, session: SessionDep, runtime: RuntimeDep,
                       account: AccountDep) -> JSONResponse:
    """Create a multi-label model from a JSON `{"categories": [...]}` (any Content-Type)."""
    body = (await request.body())[:MAX_CREATE_BODY + 1]
    if len(body) > MAX_CREATE_BODY:
        raise InvalidInput("The body is too large.", code="body_too_large", status=413)
    text = body.decode("utf-8", errors="replace")
    if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
        parsed = parse_qs(text)
        payload: Any = {"categories": parsed.get("categories", []),
                        "name": next(iter(parsed.get("name", [])), None)}
    else:
        payload = json_text("body", text)
    if not isinstance(payload, dict):
        raise InvalidInput("Send a JSON object {\"categories\": [...]}.", code="invalid_json",
                           status=400)
    categories = _names(payload.get("categories"), "body")
    name = payload.get("name") if isinstance(payload.get("name"), str) else None
    default = ", ".join(categories)[:model_service.MAX_NAME_LENGTH]
    model = model_service.create_model(session, settings=runtime.settings, account=account,
                                       name=name or default or "MultiLabelClassification model",
                                       categories=categories, kind=model_service.MULTI_LABEL)
    return JSONResponse(model_object(session, model, KIND.model_type))


@route("GET", "/Model/{model_id}/", "/Model/")
def get_model(request: Request, session: SessionDep, account: AccountDep) -> JSONResponse:
    """The model object (NanoNets' sample reads `state` and `status` from it)."""
    model_id = model_id_of(request)
    return JSONResponse(KIND.answer(session, account, model_id))


@route("GET", "/Models/")
def list_models(session: SessionDep, account: AccountDep) -> JSONResponse:
    """The account's multi-label models, newest first."""
    return JSONResponse(KIND.listed(session, account))


@route("GET", "/Model/{model_id}/Annotations")
def model_annotations(request: Request, session: SessionDep, account: AccountDep) -> JSONResponse:
    """What the client's state check reads: `Meta` (the model object's fields, lower case)
    and `Data`, one entry per uploaded image with its categories, in upload order."""
    model_id = model_id_of(request)
    meta = KIND.answer(session, account, model_id)
    data: dict[int, dict[str, Any]] = {}
    page = 1
    while True:
        rows, _ = image_service.list_images(session, account=account, model_id=model_id,
                                            category=None, labelled=None, page=page,
                                            per_page=IMAGES_PAGE)
        labels = image_service.page_labels(session, model_id=model_id, rows=rows) or {}
        for image, _ in rows:
            data[image.id] = {"id": str(image.id), "filename": image.filename,
                              "categories": labels.get(image.id, [])}
        if len(rows) < IMAGES_PAGE:
            break
        page += 1
    return JSONResponse({"Meta": meta, "Data": list(data.values())})


@route("POST", "/Model/{model_id}/UploadFiles/", dependencies=UPLOADS)
def upload_files(request: Request, session: SessionDep, runtime: RuntimeDep,
                 account: AccountDep, form: FormDep) -> JSONResponse:
    """Add the `files` parts with the categories `data` gives each; 200 with the model
    object, 202 when some files could not be used (listed under `errors`)."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    uploads = read_uploads(form.files, runtime)
    labels = _labels_for([upload.filename for upload in uploads], form)
    results = image_service.add_images(session, runtime, account=account, model_id=model_id,
                                       category=None, uploads=uploads, labels=labels)
    return upload_response(KIND.answer(session, account, model_id), results)


@route("POST", "/UploadUrls/", "/Model/{model_id}/UploadUrls/", dependencies=UPLOADS)
def upload_urls(request: Request, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep, form: FormDep) -> JSONResponse:
    """Add the images at the form's `urls` with their categories (`data`, or flat
    `categories` for a single URL); 202 when some URLs could not be used, 400 for none."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    urls = urls_of(form)
    if form.first("data") is None and len(urls) > 1 and form.all("categories"):
        raise InvalidInput("Flat `categories` cannot say which URL has which: send `data`, a "
                           "JSON list of {\"filename\": <url>, \"categories\"}, or one URL "
                           "per request.", code="ambiguous_categories", status=400)
    results = url_service.add_images_from_urls(session, runtime, account=account,
                                               model_id=model_id, category=None, urls=urls,
                                               labels=_labels_for(urls, form))
    return upload_response(KIND.answer(session, account, model_id), results)


@route("POST", "/Model/{model_id}/Train/", "/Train/")
def train(request: Request, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
          form: FormDep) -> JSONResponse:
    """Queue training; the model object in state 3 or 4. Poll `Model/{id}/Annotations` (the
    client) or `Model/{id}` until state 5."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    request_training(session, runtime, account=account, model_id=model_id)
    return JSONResponse(KIND.answer(session, account, model_id))


@route("POST", "/Model/{model_id}/LabelFiles/", dependencies=PREDICTIONS)
def label_files(request: Request, session: SessionDep, runtime: RuntimeDep,
                account: AccountDep, form: FormDep) -> JSONResponse:
    """Predict each `files` part (the client's `data` part only repeats the names); 409
    before the model is ready."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    _, results = predict(session, runtime, account=account, model_id=model_id,
                         uploads=read_uploads(form.files, runtime))
    return prediction_response(results, multi_label=True)


@route("POST", "/Model/{model_id}/LabelUrls/", dependencies=PREDICTIONS)
def label_urls(request: Request, session: SessionDep, runtime: RuntimeDep,
               account: AccountDep, form: FormDep) -> JSONResponse:
    """Predict the image at each of the form's `urls`; `file` is the URL as sent, a URL that
    could not be used has `"prediction": []` and the answer is 202."""
    model_id = model_id_of(request, form)
    KIND.get(session, account, model_id)
    _, results = url_service.predict_urls(session, runtime, account=account, model_id=model_id,
                                          urls=urls_of(form))
    return prediction_response(results, multi_label=True)

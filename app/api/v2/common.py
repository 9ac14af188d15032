"""What every NanoNets v2 route shares: reading the forms the official client sends, finding
the model id wherever it travels, the model object with NanoNets' integer states, and the
prediction and error envelopes.

The client (`nanonets` 2.0.5) never checks a status code: it reads the JSON and indexes into it.
So the shapes here are what it reads, key for key; the codes are NanoNets' documented ones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from app.db.tables import Account, JobStatus, Model, ModelState
from app.errors import InvalidInput, NanoNetError, NotFound
from app.schemas.url_images import MAX_URLS_PER_REQUEST
from app.services import jobs as job_service
from app.services import models as model_service

V2_PREFIX = "/api/v2/"
FILE_FIELDS = ("file", "files")  # ImageCategorization's parts, MultiLabelClassification's
MAX_TEXT_PART = 1024 * 1024  # a `filename=""` part read as text (modelId, category, data)
# Parts a form may have past max_files_per_request: the `filename=""` ones count as files to
# the multipart parser; a form with more files than allowed is refused by read_uploads (413).
EXTRA_PARTS = 64

# NanoNets' model states (the "Model Object" of their v2 API) and the status text of each.
STATE_FAILED, STATE_CREATED, STATE_UPLOADED, STATE_ANNOTATED = -1, 0, 1, 2
STATE_QUEUED, STATE_TRAINING, STATE_HOSTED = 3, 4, 5
STATUSES = {
    STATE_FAILED: "Error in model training",
    STATE_CREATED: "Model created. No training data uploaded yet",
    STATE_UPLOADED: "Training data uploaded. Need to annotate data",
    STATE_ANNOTATED: "Training data annotated. Need to start training",
    STATE_QUEUED: "Model in training queue",
    STATE_TRAINING: "Model currently training",
    STATE_HOSTED: "Model hosted. Can be used for prediction",
}

# The `reason` of an error, as NanoNets words it, for the codes NanoNets has an answer for;
# every other error gives its own code as the reason.
NOT_READY = "Model is not ready"
REASONS = {
    "model_not_trained": NOT_READY,
    "no_active_version": NOT_READY,
    "version_not_ready": NOT_READY,
    "version_unusable": NOT_READY,
    "backbone_unavailable": NOT_READY,
    "model_not_found": "Model does not exist",
    "missing_api_key": "Unauthorized",
    "invalid_api_key": "Unauthorized",
}


def is_v2(path: str) -> bool:
    """Whether a request path is one of the v2 routes', whose errors use the v2 envelope."""
    return path.startswith(V2_PREFIX)


# --- errors ------------------------------------------------------------------------------------

def error_body(status: int, errors: list[dict[str, str]]) -> dict[str, Any]:
    """NanoNets' errors object: `{"message", "code", "errors": [{"reason", "message"}]}`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"message": phrase, "code": status, "errors": errors}


def error_response(status: int, errors: list[dict[str, str]],
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, errors), status_code=status, headers=headers)


def domain_errors(exc: NanoNetError) -> list[dict[str, str]]:
    """The `errors` list of a domain error: one entry per refused file when it carries the files'
    results (a batch where none could be used), else one for the error itself."""
    results = exc.details.get("results") if isinstance(exc.details, dict) else None
    if isinstance(results, list):
        refused = [rejected(result) for result in results
                   if isinstance(result, dict) and result.get("status") == "rejected"]
        if refused:
            return refused
    return [{"reason": REASONS.get(exc.code, exc.code), "message": exc.message}]


def domain_error_body(exc: NanoNetError) -> dict[str, Any]:
    return error_body(exc.status, domain_errors(exc))


def domain_error_response(exc: NanoNetError) -> JSONResponse:
    return JSONResponse(domain_error_body(exc), status_code=exc.status, headers=exc.headers)


def validation_error_response(details: Sequence[dict[str, Any]]) -> JSONResponse:
    errors = [{"reason": "invalid_request",
               "message": f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('message', '')}"}
              for d in details] or [{"reason": "invalid_request", "message": "invalid request"}]
    return error_response(422, errors)


def http_error_response(status: int, detail: str,
                        headers: dict[str, str] | None = None) -> JSONResponse:
    reason = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, "http_error")
    return error_response(status, [{"reason": reason, "message": detail}], headers)


def internal_error_response() -> JSONResponse:
    return error_response(500, [{"reason": "internal_error",
                                 "message": "Something went wrong on our side; the server log "
                                            "has the details."}])


def rejected(result: dict[str, Any]) -> dict[str, str]:
    """One refused file or URL of a batch as an `errors` entry."""
    error = result.get("error") or {}
    return {"reason": str(error.get("code", "rejected")),
            "message": f"{result.get('file', '')}: {error.get('message', '')}"}


# --- forms -------------------------------------------------------------------------------------

@dataclass
class V2Form:
    """A request's form, urlencoded or multipart, as the v2 routes read it.

    The client sends `modelId`, `category` and `data` as multipart parts with `filename=""`
    (`files={'modelId': ('', id)}`), which Starlette hands over as files, not strings: those
    parts are text here. Only parts named `file` or `files` with a file name are images;
    other named files are left out.
    """

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadFile] = field(default_factory=list)

    def first(self, *names: str) -> str | None:
        """The first non-blank value of the first of `names` that has one."""
        for name in names:
            for value in self.fields.get(name, []):
                if value.strip():
                    return value
        return None

    def all(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))


async def read_form(request: Request) -> AsyncIterator[V2Form]:
    """Route dependency: the request's form, its spooled files closed after the route."""
    settings = request.app.state.runtime.settings
    async with request.form(max_files=settings.max_files_per_request + EXTRA_PARTS) as form:
        parsed = V2Form()
        for name, value in form.multi_items():
            if isinstance(value, str):
                parsed.fields.setdefault(name, []).append(value)
            elif not value.filename:  # ('', value): a field sent as a part
                parsed.fields.setdefault(name, []).append(await _text_of(name, value))
            elif name in FILE_FIELDS:
                parsed.files.append(value)  # a file under another name is no image of ours
        yield parsed


FormDep = Annotated[V2Form, Depends(read_form)]


async def _text_of(name: str, part: UploadFile) -> str:
    data = await part.read(MAX_TEXT_PART + 1)
    if len(data) > MAX_TEXT_PART:
        raise InvalidInput(f"The form field {name!r} is over {MAX_TEXT_PART} bytes.",
                           code="field_too_large")
    return data.decode("utf-8", errors="replace")


def model_id_of(request: Request, form: V2Form | None = None) -> str:
    """The model id, wherever the caller put it: the path (`{model_id}`), then the query's
    `modelId` or `id`, then the form's. Raises InvalidInput (400) when none has one."""
    query = request.query_params
    candidates = [request.path_params.get("model_id"), query.get("modelId"), query.get("id")]
    if form is not None:
        candidates += [form.first("modelId"), form.first("id")]
    for candidate in candidates:
        if candidate is not None and candidate.strip():
            return candidate.strip()
    raise InvalidInput("Send the model's id as `modelId` (in the query or the form).",
                       code="missing_model_id", status=400)


# --- the model object --------------------------------------------------------------------------

def v2_state(*, model_state: str, serving: bool, job_status: str | None, labelled: int,
             unlabelled: int) -> int:
    """NanoNets' state of a model from NanoNet's: a training job queued (3) or running (4)
    first, so a retraining shows as such; then an active version (5, hosted); then a failed
    first training (-1); else what its images say: labelled ones (2, annotated), only
    unlabelled ones (1, uploaded), none (0, created)."""
    if job_status == JobStatus.QUEUED:
        return STATE_QUEUED
    if job_status == JobStatus.RUNNING:
        return STATE_TRAINING
    if serving:
        return STATE_HOSTED
    if model_state == ModelState.TRAINING:  # between the job's end and the model's update
        return STATE_QUEUED
    if model_state == ModelState.FAILED:
        return STATE_FAILED
    if labelled:
        return STATE_ANNOTATED
    return STATE_UPLOADED if unlabelled else STATE_CREATED


def model_objects(session: Session, models: Iterable[Model],
                  model_type: str) -> list[dict[str, Any]]:
    """NanoNets' model object of each model: `{"model_id", "model_type", "state", "status",
    "categories": [{"name", "count"}]}`, `model_id` a string, `state` an int from -1 to 5."""
    models = list(models)
    ids = [model.id for model in models]
    counts = model_service.category_counts(session, model_ids=ids)
    unlabelled = model_service.unlabelled_counts(session, model_ids=ids)
    objects = []
    for model in models:
        job = job_service.active_job(session, model_id=model.id, kind="train")
        categories = [{"name": c.name, "count": counts.get(c.id, 0)} for c in model.categories]
        state = v2_state(model_state=model.state, serving=model.active_version_id is not None,
                         job_status=job.status if job is not None else None,
                         labelled=sum(counts.get(c.id, 0) for c in model.categories),
                         unlabelled=unlabelled.get(model.id, 0))
        objects.append({"model_id": str(model.id), "model_type": model_type, "state": state,
                        "status": STATUSES[state], "categories": categories})
    return objects


def model_object(session: Session, model: Model, model_type: str) -> dict[str, Any]:
    [answer] = model_objects(session, [model], model_type)
    return answer


@dataclass(frozen=True)
class ModelKind:
    """One of NanoNets' model types as NanoNet serves it: its routes see only its own models
    (a single-label NanoNet is an ImageCategorization model, a multi-label one a
    MultiLabelClassification model)."""

    name: str  # NanoNets' name, as in the paths
    model_type: str  # the model object's `model_type`
    multi_label: bool

    def owns(self, model: Model) -> bool:
        return (model.kind == model_service.MULTI_LABEL) == self.multi_label

    def get(self, session: Session, account: Account, model_id: str) -> Model:
        """The account's model of this kind; raises NotFound, also for one of the other kind."""
        model = model_service.get_model(session, account=account, model_id=model_id)
        if not self.owns(model):
            other = "an ImageCategorization" if self.multi_label else "a MultiLabelClassification"
            raise NotFound(f"No {self.name} model with id {model_id!r}: it is {other} model.",
                           code="model_not_found")
        return model

    def answer(self, session: Session, account: Account, model_id: str) -> dict[str, Any]:
        """The model object as it is now (after a service committed changes to it)."""
        session.expire_all()
        return model_object(session, self.get(session, account, model_id), self.model_type)

    def listed(self, session: Session, account: Account) -> list[dict[str, Any]]:
        """The account's models of this kind, newest first, as model objects."""
        return model_objects(session, [model for model in model_service.list_models(
            session, account=account) if self.owns(model)], self.model_type)


# --- answers to uploads and predictions --------------------------------------------------------

def partial(results: list[dict[str, Any]]) -> bool:
    return any(result.get("status") == "rejected" for result in results)


def upload_response(model: dict[str, Any], results: list[dict[str, Any]]) -> JSONResponse:
    """The model object after an upload: 200, or 202 with the refused files or URLs listed
    under `errors` when some of them could not be used (the others were kept)."""
    if not partial(results):
        return JSONResponse(model)
    refused = [rejected(result) for result in results if result.get("status") == "rejected"]
    return JSONResponse({**model, "message": "Partially successful", "errors": refused},
                        status_code=202)


def prediction_item(result: dict[str, Any], *, multi_label: bool = False) -> dict[str, Any]:
    """One file's or URL's answer: `{"message", "file", "prediction": [{"label",
    "probability"}]}`, `file` as sent; a refused one has `"prediction": []` and its reason.

    With `multi_label`, every category is listed (most probable first) with also `selected`
    (at or above its threshold) and that `threshold`, and the item has `labels`, the selected
    categories: NanoNet's own multi-label answer, in NanoNets' envelope."""
    if result.get("status") == "rejected":
        error = result.get("error") or {}
        item: dict[str, Any] = {"message": error.get("message", "rejected"),
                                "file": result["file"], "prediction": [],
                                "reason": error.get("code", "rejected")}
        if multi_label:
            item["labels"] = []
        return item
    predictions = result.get("predictions") or []
    if not multi_label:
        return {"message": "Success", "file": result["file"],
                "prediction": [{"label": p["label"], "probability": p["probability"]}
                               for p in predictions]}
    return {"message": "Success", "file": result["file"],
            "prediction": [{"label": p["label"], "probability": p["probability"],
                            "selected": bool(p.get("selected")), "threshold": p.get("threshold")}
                           for p in predictions],
            "labels": list(result.get("labels") or [])}


def prediction_response(results: list[dict[str, Any]], *,
                        multi_label: bool = False) -> JSONResponse:
    """NanoNets' prediction envelope, one item per file or URL in order: 200, or 202 when
    some of them could not be used."""
    body = {"message": "Partially successful" if partial(results) else "Success",
            "result": [prediction_item(result, multi_label=multi_label) for result in results]}
    return JSONResponse(body, status_code=202 if partial(results) else 200)


# --- routing -----------------------------------------------------------------------------------

Endpoint = Callable[..., Any]


def route_adder(router: APIRouter) -> Callable[..., Callable[[Endpoint], Endpoint]]:
    """A decorator factory registering an endpoint on `router` at each of its paths, with the
    trailing slash and without (the client sends one or none; a redirect would make it send a
    POST twice)."""
    def route(method: str, *paths: str, dependencies: list[Any] | None = None
              ) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            for path in paths:
                for variant in dict.fromkeys((path, path.rstrip("/"))):
                    router.add_api_route(variant, endpoint, methods=[method],
                                         dependencies=dependencies,
                                         response_class=JSONResponse)
            return endpoint
        return register
    return route


def urls_of(form: V2Form) -> list[str]:
    """The form's `urls`, at most as many as /api/v1 takes in one request; raises InvalidInput."""
    urls = [url for url in form.all("urls") if url.strip()]
    if len(urls) > MAX_URLS_PER_REQUEST:
        raise InvalidInput(f"Send at most {MAX_URLS_PER_REQUEST} URLs in one request; this one "
                           f"has {len(urls)}.", code="too_many_urls")
    return urls


def json_text(name: str, text: str) -> Any:
    """A JSON form field (the client's `data`) or body; raises InvalidInput (400)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"`{name}` is not valid JSON: {exc}.", code="invalid_json",
                           status=400) from exc

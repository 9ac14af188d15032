from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import FileResponse

from app.api.deps import AccountDep, RuntimeDep, SessionDep, VersionQuery
from app.schemas.bounds import MAX_INT64, MAX_PAGE, MIN_INT64
from app.schemas.images import MAX_PER_PAGE
from app.schemas.models import ActivateOut, VersionDetail, VersionList, VersionOut
from app.services import exports as export_service
from app.services import versions as version_service
from app.services.models import get_model

VersionNumber = Annotated[int, Path(ge=MIN_INT64, le=MAX_INT64)]

router = APIRouter(prefix="/models", tags=["versions"])


@router.get("/{model_id}/versions", response_model=VersionList)
def list_versions(model_id: str, session: SessionDep, account: AccountDep,
                  page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
                  per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50) -> VersionList:
    """Every training run of the model, newest first: status, metrics, activation."""
    model = get_model(session, account=account, model_id=model_id)
    versions = version_service.versions_of(session, account=account, model_id=model_id)
    shown = versions[(page - 1) * per_page:page * per_page]
    active = model.active_version
    return VersionList(model_id=model.id, active_version=active.number if active else None,
                       items=[VersionOut.build(v, active_id=model.active_version_id)
                              for v in shown],
                       total=len(versions), page=page, per_page=per_page)


@router.get("/{model_id}/versions/{number}", response_model=VersionDetail)
def read_version(model_id: str, number: VersionNumber, session: SessionDep,
                 account: AccountDep) -> VersionDetail:
    """One version: settings, metrics, the images (ids, hashes, labels) it was trained on, and
    what changed since the version before."""
    model, version = version_service.get_version(session, account=account, model_id=model_id,
                                                 number=number)
    return VersionDetail.detail(version, active_id=model.active_version_id)


@router.post("/{model_id}/versions/{number}/activate", response_model=ActivateOut)
def activate(model_id: str, number: VersionNumber, session: SessionDep, runtime: RuntimeDep,
             account: AccountDep) -> ActivateOut:
    """Make this version the one that answers, at once: rollback needs no retraining."""
    model, version, changed = version_service.activate_version(
        session, runtime, account=account, model_id=model_id, number=number)
    return ActivateOut(model_id=model.id, changed=changed,
                       active_version=VersionOut.build(version, active_id=version.id))


@router.delete("/{model_id}/versions/{number}", status_code=status.HTTP_204_NO_CONTENT)
def delete(model_id: str, number: VersionNumber, session: SessionDep, runtime: RuntimeDep,
           account: AccountDep) -> Response:
    """Delete an inactive version and its files."""
    version_service.delete_version(session, runtime, account=account, model_id=model_id,
                                   number=number)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{model_id}/export", response_class=FileResponse, responses={200: {
    "content": {"application/octet-stream": {}},
    "description": "One self-contained ONNX file: preprocessed photos in, probabilities out; "
                   "labels and the preprocessing recipe in its metadata_props."}})
def export_model(model_id: str, session: SessionDep, runtime: RuntimeDep, account: AccountDep,
                 format: Annotated[Literal["onnx"], Query(
                     description="the file format; only `onnx`")] = "onnx",
                 version: VersionQuery = None
                 ) -> FileResponse:
    """The active version (or `?version=n`) as one ONNX file: the backbone network(s) and the
    head in one graph, float32 N x 3 x S x S in (exactly what NanoNet's preprocessing gives;
    the recipe is in the metadata), N x classes probabilities out. Built on first download
    (seconds), then served from disk."""
    built = export_service.export_version(session, runtime, account=account, model_id=model_id,
                                          number=version, fmt=format)
    return FileResponse(built.path, media_type="application/octet-stream",
                        filename=built.filename)

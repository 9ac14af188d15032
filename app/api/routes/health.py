from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RuntimeDep
from app.services.health import check_health

router = APIRouter(tags=["health"])


@router.get("/health")
def health(runtime: RuntimeDep) -> JSONResponse:
    """200 when the database answers and the data dir is writable; 503 with the reason if not."""
    report = check_health(runtime)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

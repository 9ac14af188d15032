"""The FastAPI application: create_app() wires settings, runtime, routes and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.api.docs import mount_docs
from app.api.intake_guard import IntakeGuard
from app.api.rate_limits import build_rate_limiter
from app.api.router import api_router
from app.api.routes import health
from app.api.security_headers import SecurityHeaders
from app.api.v2 import common as v2
from app.api.v2 import v2_router
from app.config import Settings
from app.db.engine import upgrade_database
from app.errors import NanoNetError
from app.jobs.celery_queue import CeleryQueue
from app.jobs.inprocess import embedded_queue
from app.runtime import JobQueue, Runtime, build_runtime
from app.services.accounts import ensure_bootstrap_key, ensure_first_account
from app.services.images import sweep_unused_blobs
from app.storage import disk_full, full_disk_error
from app.web import batches as web_batches
from app.web.routes import mount_web

log = logging.getLogger("nanonet")


def make_queue(runtime: Runtime, *, resume: bool = True) -> JobQueue:
    """Return the job backend settings.job_backend names, running jobs with the shared handler.

    `resume`: the embedded runner picks up what a previous process left queued or running;
    a command-line tool beside a live server must not (the server's running jobs are alive).
    """
    if runtime.settings.job_backend == "celery":
        return CeleryQueue(runtime.settings)
    return embedded_queue(runtime, resume=resume)


def start_runtime(runtime: Runtime) -> None:
    """Prepare storage and DB, make sure someone can sign in, start the job queue."""
    settings = runtime.settings
    for directory in (settings.data_dir, settings.images_dir, settings.models_dir):
        directory.mkdir(parents=True, exist_ok=True)
    if settings.migrate_on_start:
        upgrade_database(settings.resolved_database_url)
    with runtime.session_factory() as session:
        if settings.bootstrap_api_key is not None:
            ensure_bootstrap_key(session, key=settings.bootstrap_api_key.get_secret_value())
        if settings.create_first_account:
            created = ensure_first_account(session, data_dir=settings.data_dir)
            if created is not None:
                key, path = created
                message = (f"NanoNet: created the first account. Its API key (also kept in "
                           f"{path}):\n  {key}")
                print(message, flush=True)  # noqa: T201  (the operator's console, not a log)
    sweep_unused_blobs(runtime)
    if runtime.queue is None:
        runtime.queue = make_queue(runtime)
    runtime.queue.start()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the app; the runtime is built and started in the lifespan, not at import."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings)
        start_runtime(runtime)
        app.state.runtime = runtime
        app.state.rate_limiter = build_rate_limiter(settings)
        try:
            yield
        finally:
            app.state.rate_limiter.close()
            runtime.close()

    app = FastAPI(title="NanoNet", version="0.1.0", lifespan=lifespan,
                  description="Transfer learning from a handful of labelled images.",
                  docs_url=None, redoc_url=None)  # /docs from our own files: mount_docs
    app.include_router(api_router)
    app.include_router(v2_router)  # NanoNets' v2 API, for its official client
    app.include_router(health.router)
    app.include_router(web_batches.router)  # before mount_web's catch-all /web/{rest:path}
    mount_web(app)
    if settings.docs:
        mount_docs(app)
    _install_error_handlers(app)
    app.add_middleware(IntakeGuard)
    app.add_middleware(SecurityHeaders)
    if settings.forwarded_allow_ips:  # outermost: every layer sees the client's scheme
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Errors in NanoNet's `{"error": {...}}` shape; under /api/v2/ in NanoNets' envelope
    (app.api.v2.common), which its client and scripts expect."""

    @app.exception_handler(NanoNetError)
    async def domain_error(request: Request, exc: NanoNetError) -> JSONResponse:
        if v2.is_v2(request.url.path):
            return v2.domain_error_response(exc)
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(error.get("loc", ())), "message": error.get("msg", "")}
                   for error in exc.errors()]
        if v2.is_v2(request.url.path):
            return v2.validation_error_response(details)
        first = details[0] if details else {"loc": [], "message": "invalid request"}
        message = f"{'.'.join(str(p) for p in first['loc'])}: {first['message']}"
        return JSONResponse({"error": {"code": "invalid_request", "message": message,
                                       "details": details}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if v2.is_v2(request.url.path):
            return v2.http_error_response(exc.status_code, str(exc.detail),
                                          getattr(exc, "headers", None))
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        if disk_full(exc):  # e.g. the database's commit of rows whose files were written
            log.warning("http.disk_full path=%s: %s", request.url.path, exc)
            full = full_disk_error()
            if v2.is_v2(request.url.path):
                return v2.domain_error_response(full)
            return JSONResponse(full.to_body(), status_code=full.status)
        log.exception("http.unhandled path=%s", request.url.path)
        if v2.is_v2(request.url.path):
            return v2.internal_error_response()
        return JSONResponse({"error": {"code": "internal_error",
                                       "message": "Something went wrong on our side; the "
                                                  "server log has the details."}},
                            status_code=500)

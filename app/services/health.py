"""Can this process serve? Database reachable, data dir writable."""

from __future__ import annotations

import tempfile
from typing import Any

from sqlalchemy import text

from app.runtime import Runtime


def check_health(runtime: Runtime) -> dict[str, Any]:
    """Return {"status": "ok"|"unavailable", "checks": {...}}; never raises."""
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001  (health must report, not crash)
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        runtime.settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=runtime.settings.data_dir):
            pass
        checks["storage"] = "ok"
    except OSError as exc:
        checks["storage"] = f"error: {exc.strerror}"
    status = "ok" if all(value == "ok" for value in checks.values()) else "unavailable"
    return {"status": status, "checks": checks, "job_backend": runtime.settings.job_backend}

"""The Jinja environment of the web form and the two ways a page is answered: a page or an error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup, escape

from app.ml.registry import display_name
from app.web.charts import confusion_matrix_svg, learning_curve_svg
from app.web.csrf import CSRF_FIELD, csrf_token
from app.web.summary import head_name

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"

templates = Jinja2Templates(directory=WEB_DIR / "templates")

ERROR_TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Refused",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "Unsupported file",
    422: "Please check the form",
    500: "Something went wrong",
    503: "Unavailable",
}


def percent(value: Any, digits: int = 1) -> str:
    """0.873 -> '87.3%'; anything that is not a finite number (a missing metric) -> '–'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


@pass_context
def page_csrf_token(context: Context) -> str:
    """This page's CSRF token, for the scripts (a meta tag in base.html)."""
    return csrf_token(context["request"])


@pass_context
def csrf_field(context: Context) -> Markup:
    """The hidden CSRF input every `<form method="post">` carries."""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" '
                  f'value="{escape(csrf_token(context["request"]))}">')


def bar_fill(fraction: float) -> Markup:
    """The filled part of a bar as SVG, drawn by its width attribute: the CSP allows no inline
    style, and the bar must show without JavaScript (app.js moves it as a job runs)."""
    width = f"{min(max(fraction, 0.0), 1.0) * 100:.1f}"
    return Markup('<svg class="fill" viewBox="0 0 100 1" preserveAspectRatio="none" '
                  f'aria-hidden="true" focusable="false"><rect height="1" width="{width}"/></svg>')


templates.env.filters["percent"] = percent
templates.env.filters["backbone_name"] = display_name
templates.env.filters["head_name"] = head_name
templates.env.globals["confusion_matrix_svg"] = confusion_matrix_svg
templates.env.globals["learning_curve_svg"] = learning_curve_svg
templates.env.globals["csrf_token"] = page_csrf_token
templates.env.globals["csrf_field"] = csrf_field
templates.env.globals["bar_fill"] = bar_fill


def render(request: Request, name: str, context: dict[str, Any] | None = None, *,
           status: int = 200) -> HTMLResponse:
    """Render a page; pages hold one account's data, so no shared cache may keep them."""
    response = templates.TemplateResponse(request, name, context or {}, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, *, status: int, message: str,
               signed_in: bool = True) -> HTMLResponse:
    return render(request, "error.html", {
        "status": status, "title": ERROR_TITLES.get(status, "Error"), "message": message,
        "signed_in": signed_in,
    }, status=status)

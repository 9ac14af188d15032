"""NanoNets v2 compatibility: the routes the official `nanonets` client (2.0.5) and NanoNets'
samples call, under /api/v2/, answering in NanoNets' shapes. They translate requests and answers
only: the work is done by the same services as /api/v1.

`common` holds what every model type shares (form reading, the model object and its states, the
prediction and error envelopes); each model type has its own module of routes beside it.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.v2 import image_categorization, multilabel
from app.api.v2.common import V2_PREFIX

v2_router = APIRouter(prefix=V2_PREFIX.rstrip("/"), include_in_schema=False)
v2_router.include_router(image_categorization.router)
v2_router.include_router(multilabel.router)

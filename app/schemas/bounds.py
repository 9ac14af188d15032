"""Bounds on integers that reach the database: past a 64-bit integer the driver overflows (a 500
instead of the 404 or 422 the caller should get)."""

from typing import Annotated

from pydantic import Field

MIN_INT64 = -(2**63)
MAX_INT64 = 2**63 - 1
MAX_PAGE = 1_000_000_000  # times any per_page, the OFFSET still fits 64 bits

Int64 = Annotated[int, Field(ge=MIN_INT64, le=MAX_INT64)]

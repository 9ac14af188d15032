from fastapi import APIRouter

from app.api.routes import (
    categories,
    images,
    jobs,
    metrics,
    models,
    predictions,
    review,
    suggestions,
    training,
)

api_router = APIRouter(prefix="/api/v1")
for module in (models, categories, images, training, jobs, predictions, metrics, review,
               suggestions):
    api_router.include_router(module.router)

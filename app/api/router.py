from fastapi import APIRouter

from app.api.routes import (
    batches,
    categories,
    images,
    jobs,
    metrics,
    models,
    predictions,
    review,
    suggestions,
    training,
    url_images,
    versions,
    webhooks,
)

api_router = APIRouter(prefix="/api/v1")
for module in (models, categories, images, url_images, training, versions, jobs, predictions,
               metrics, review, suggestions, batches, webhooks):
    api_router.include_router(module.router)

from fastapi import APIRouter

from app.api.routes import categories, images, jobs, metrics, models, predictions, review, training

api_router = APIRouter(prefix="/api/v1")
for module in (models, categories, images, training, jobs, predictions, metrics, review):
    api_router.include_router(module.router)

from fastapi import APIRouter

from app.api.routes import images, jobs, metrics, models, predictions, training

api_router = APIRouter(prefix="/api/v1")
for module in (models, images, training, jobs, predictions, metrics):
    api_router.include_router(module.router)

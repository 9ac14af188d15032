from fastapi import APIRouter

from app.api.routes import images, jobs, metrics, models, predict, training

api_router = APIRouter(prefix="/api/v1")
for module in (models, images, training, jobs, predict, metrics):
    api_router.include_router(module.router)

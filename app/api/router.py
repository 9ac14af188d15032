from fastapi import APIRouter

from app.api.routes import images, jobs, models, predict, training

api_router = APIRouter(prefix="/api/v1")
for module in (models, images, training, jobs, predict):
    api_router.include_router(module.router)

"""``GET /v1/models`` and ``GET /v1/models/{id}``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from adapterhub.serving.auth import require_api_key
from adapterhub.serving.endpoints.http import ERRORS, service
from adapterhub.serving.endpoints.models.protocol import ModelCard, ModelList
from adapterhub.serving.endpoints.models.serving import ModelsService

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@router.get("/models", response_model=ModelList)
async def models(svc: ModelsService = Depends(service(ModelsService))) -> ModelList:
    return await svc.stack.manager.registry_call(svc.list)  # registry I/O: off the event loop, time-limited


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def model(model_id: str, svc: ModelsService = Depends(service(ModelsService))) -> ModelCard:
    return await svc.stack.manager.registry_call(svc.card, model_id)

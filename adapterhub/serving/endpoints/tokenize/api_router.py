"""vLLM-compatible extras: ``/tokenize``, ``/detokenize``, ``/version``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from adapterhub import __version__
from adapterhub.serving.auth import require_api_key
from adapterhub.serving.endpoints.http import ERRORS, service
from adapterhub.serving.endpoints.tokenize.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from adapterhub.serving.endpoints.tokenize.serving import TokenizeService

router = APIRouter(responses=ERRORS)


@router.post("/tokenize", response_model=TokenizeResponse, dependencies=[Depends(require_api_key)])
async def tokenize(req: TokenizeRequest, svc: TokenizeService = Depends(service(TokenizeService))) -> TokenizeResponse:
    return await svc.tokenize(req)


@router.post("/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(require_api_key)])
async def detokenize(req: DetokenizeRequest,
                     svc: TokenizeService = Depends(service(TokenizeService))) -> DetokenizeResponse:
    return await svc.detokenize(req)


@router.get("/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)

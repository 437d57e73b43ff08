"""vLLM-compatible extras: ``/tokenize``, ``/detokenize``, ``/version``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from adapterhub import __version__
from adapterhub.serving.auth import require_api_key
from adapterhub.serving.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from adapterhub.serving.routes.openai import ERRORS

router = APIRouter(responses=ERRORS)


@router.post("/tokenize", response_model=TokenizeResponse, dependencies=[Depends(require_api_key)])
async def tokenize(req: TokenizeRequest, request: Request) -> TokenizeResponse:
    return await request.app.state.service.tokenize(req)


@router.post("/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(require_api_key)])
async def detokenize(req: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    return await request.app.state.service.detokenize(req)


@router.get("/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return VersionResponse(version=__version__)

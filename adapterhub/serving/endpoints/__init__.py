"""One package per endpoint, as vLLM's ``entrypoints/openai/<endpoint>/``: ``api_router.py`` (the FastAPI
routes: parse, call the service, send), ``protocol.py`` (the request and response bodies) and
``serving.py`` (the service: no FastAPI). Shared: :mod:`.generation` (a request fanned out into engine
requests on a leased model, and the end of a stream) and :mod:`.http` (typed access to the stack, error
responses, server-sent events). A new endpoint is a new folder plus one line in :func:`routers`.
"""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """Every endpoint's router, in the order the OpenAPI document lists them."""
    from adapterhub.serving.endpoints.admin.api_router import router as admin
    from adapterhub.serving.endpoints.chat.api_router import router as chat
    from adapterhub.serving.endpoints.completions.api_router import router as completions
    from adapterhub.serving.endpoints.health.api_router import router as health
    from adapterhub.serving.endpoints.models.api_router import router as models
    from adapterhub.serving.endpoints.responses.api_router import router as responses
    from adapterhub.serving.endpoints.tokenize.api_router import router as tokenize

    return [chat, completions, responses, models, tokenize, admin, health]

"""``/ui``: the console's page and assets (no key: they hold no data) and its JSON API under ``/ui/api``
(the API's keys; rollout moves need the admin key). Left out of the OpenAPI document: it is the console's
own interface, not part of the OpenAI-compatible API."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from adapterhub.errors import AdapterHubError, NotFoundError
from adapterhub.serving.auth import require_admin_key, require_api_key
from adapterhub.serving.endpoints.console.protocol import PromoteRequest, RollbackRequest, SplitRequest
from adapterhub.serving.endpoints.console.serving import ConsoleService
from adapterhub.serving.endpoints.generation import refuse_unsupported
from adapterhub.serving.endpoints.http import service
from adapterhub.serving.tenants import current_caller

router = APIRouter(prefix="/ui", include_in_schema=False)
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# The page may run only its own script and style and talk only to this server.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _asset(name: str) -> bytes:
    return resources.files("adapterhub.serving.endpoints.console").joinpath("static", name).read_bytes()


@router.get("")
async def page_redirect() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"), headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise NotFoundError(f"no console asset {name!r}")
    return Response(_asset(name), media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})


async def _is_admin(request: Request) -> bool:
    try:
        await require_admin_key(request)
    except AdapterHubError:
        return False
    return True


def _who() -> str:
    caller = current_caller.get()
    return caller.name if caller is not None else "-"


api = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])
Console = Depends(service(ConsoleService))


@api.get("/session")
async def session(request: Request, svc: ConsoleService = Console) -> dict[str, Any]:
    return svc.session(await _is_admin(request))


@api.get("/adapters")
async def adapters(svc: ConsoleService = Console) -> dict[str, Any]:
    return await svc.stack.manager.registry_call(svc.adapters)


@api.get("/adapters/{name}/versions/{version}")
async def version(version: int, name: str, svc: ConsoleService = Console
                  ) -> dict[str, Any]:
    return await svc.stack.manager.registry_call(svc.version, name, version)


@api.get("/adapters/{name}/history")
async def history(name: str, svc: ConsoleService = Console) -> dict[str, Any]:
    return await svc.stack.manager.registry_call(svc.history, name)


@api.get("/live")
async def live(window: float = Query(300, ge=10, le=900), bucket: float = Query(10, ge=1, le=300),
               svc: ConsoleService = Console) -> dict[str, Any]:
    return svc.live(window, bucket)


@api.post("/adapters/{name}/aliases/{alias}/promote", dependencies=[Depends(require_admin_key)])
async def promote(body: PromoteRequest, alias: str, name: str,
                  svc: ConsoleService = Console) -> dict[str, Any]:
    refuse_unsupported(body)
    return await svc.stack.manager.registry_call(
        svc.promote, name, alias, body.version, body.force, _who())


@api.post("/adapters/{name}/aliases/{alias}/rollback", dependencies=[Depends(require_admin_key)])
async def rollback(body: RollbackRequest, alias: str, name: str,
                   svc: ConsoleService = Console) -> dict[str, Any]:
    refuse_unsupported(body)
    return await svc.stack.manager.registry_call(svc.rollback, name, alias, _who())


@api.post("/adapters/{name}/aliases/{alias}/split", dependencies=[Depends(require_admin_key)])
async def split(body: SplitRequest, alias: str, name: str,
                svc: ConsoleService = Console) -> dict[str, Any]:
    refuse_unsupported(body)
    return await svc.stack.manager.registry_call(
        svc.split, name, alias, body.split, body.force, _who())


router.include_router(api)

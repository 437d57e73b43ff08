"""Many replicas behind one OpenAI endpoint, with adapter-affinity routing by Ray Serve.

Ray Serve's model multiplexing routes a request tagged with a model id to a replica that already has
that id loaded (and only loads it elsewhere when those replicas are busy), so each adapter is loaded on
few replicas instead of all of them. The ingress resolves ``model`` in the registry first and tags the
call with the resolved version (``name@version#hash``), not the raw string: ``lumen``, ``lumen@3`` and
``lumen@production`` pointing at version 3 share one replica's copy, and moving an alias routes the next
request by the new version. The replica is told the pinned version, so it serves exactly what was routed.
Each replica runs the normal adapter manager + engine (hf here, vLLM on GPUs) over the shared registry
(a PostgreSQL + S3 registry for replicas on several machines, see docs/registry.md).

Run (``pip install 'ray[serve]'``)::

    python -m adapterhub.deploy.ray.ray_serve --base smollm2-135m-instruct --replicas 2
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapterhub.models import DEMO_MODEL


@serve.deployment(num_replicas=2, max_ongoing_requests=32)
class AdapterReplica:
    def __init__(self, base: str, home: str | None = None, max_loaded: int = 8, engine: str = "hf") -> None:
        from adapterhub.serving.api import build_service
        from adapterhub.serving.config import ServeConfig
        from adapterhub.settings import Settings

        settings = Settings(home=home) if home else Settings()
        config = ServeConfig(base=base, max_loaded=max_loaded, engine=engine)  # type: ignore[arg-type]
        stack = build_service(config, settings)
        from adapterhub.serving.endpoints.chat.serving import ChatService

        self.engine, self.manager, self.chat_service = stack.engine, stack.manager, stack.endpoint(ChatService)
        self.engine.start()
        self.replica = f"{os.getpid()}"
        self.served: Counter[str] = Counter()
        self.loads: Counter[str] = Counter()

    @serve.multiplexed(max_num_models_per_replica=8)
    async def adapter(self, model_id: str) -> str:
        """Called by Ray once per model id per replica (its LRU): warm the adapter here."""
        ref = model_id.split("#", 1)[0]
        if self.manager.resolve(ref) is not None:
            lease = await self.manager.acquire(ref)
            self.manager.release(lease)
        self.loads[model_id] += 1
        return model_id

    async def chat(self, body: dict[str, Any], pinned: str | None = None) -> dict[str, Any]:
        from adapterhub.serving.endpoints.chat.protocol import ChatCompletionRequest

        key = await self.adapter(serve.get_multiplexed_model_id())
        self.served[key] += 1
        asked = body.get("model")
        req = ChatCompletionRequest.model_validate({**body, "model": pinned} if pinned else body)
        result = (await self.chat_service.create(req)).model_dump(mode="json")
        result["model"], result["replica"] = asked, self.replica
        return result

    def stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "served": dict(self.served), "loads": dict(self.loads),
                "loaded_adapters": [a["id"] for a in self.manager.loaded()]}


@serve.deployment
class Ingress:
    """OpenAI-shaped front: routes on the ``model`` field (chat completions; /stats for affinity metrics)."""

    def __init__(self, replicas: Any, home: str | None = None) -> None:
        from adapterhub.registry import Registry
        from adapterhub.settings import Settings

        self.replicas = replicas
        self.registry = Registry.open(Settings(home=home) if home else Settings())

    def route_key(self, model: str, caller: str | None) -> tuple[str, str | None]:
        """(multiplexing key, pinned ref): a registry version routes by ``name@version#hash``; anything
        else (the base model, an unknown name the replica will refuse) by the string itself."""
        from adapterhub.errors import AdapterHubError

        try:
            record = self.registry.resolve(model, caller=caller)
        except (AdapterHubError, ValueError):
            return model, None
        return f"{record.ref}#{record.content_hash[:12]}", record.ref

    async def __call__(self, request: Request) -> JSONResponse:
        if request.url.path.endswith("/stats"):
            # ask every replica: broadcast enough calls that each one answers at least once
            seen: dict[str, Any] = {}
            for _ in range(20):
                s = await self.replicas.stats.remote()
                seen[s["replica"]] = s
            return JSONResponse(list(seen.values()))
        body = await request.json()
        from adapterhub.errors import AdapterHubError
        from adapterhub.serving.protocol import error_body

        caller = body.get("user") or request.headers.get("x-session-id")
        key, pinned = self.route_key(str(body.get("model", "")), caller)
        try:
            result = await self.replicas.options(multiplexed_model_id=key).chat.remote(body, pinned)
        except AdapterHubError as e:  # pragma: no cover - exercised through Ray's error wrapping
            return JSONResponse(error_body(e.message, e.error_type, e.code, e.param), status_code=e.http_status)
        return JSONResponse(result)


def build(base: str, *, replicas: int = 2, home: str | None = None, max_loaded: int = 8, engine: str = "hf",
          replica_cpus: float = 1.0) -> Any:
    replica = AdapterReplica.options(num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus})
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(replica.bind(base, home, max_loaded, engine), home)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=DEMO_MODEL)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    serve.start(http_options={"host": "0.0.0.0", "port": args.port})
    serve.run(build(args.base, replicas=args.replicas, engine=args.engine), route_prefix="/v1/chat/completions",
              blocking=True)


if __name__ == "__main__":
    main()


# For `serve run adapterhub.deploy.ray.ray_serve:app` and KubeRay's import_path; bind() only builds the graph.
app = build(os.environ.get("ADAPTERHUB_RAY_BASE", DEMO_MODEL),
            replicas=int(os.environ.get("ADAPTERHUB_RAY_REPLICAS", "2")),
            engine=os.environ.get("ADAPTERHUB_RAY_ENGINE", "hf"))

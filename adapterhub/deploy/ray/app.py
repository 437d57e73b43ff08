"""``adapterhub serve --ray``: the same server, scaled out on Ray Serve.

Every engine replica (a Ray Serve deployment) runs the very FastAPI app ``adapterhub serve`` runs — its adapter
manager, engine, auth, keys, metrics, error bodies, every route — over the shared registry, and answers the
HTTP requests the ingress hands it in-process (ASGI), streaming its response back chunk by chunk. The ingress
reads the body (refusing one over ``--max-request-bytes`` as the server does), resolves the request's ``model``
in the registry and routes it with Ray Serve's model multiplexing keyed by the resolved immutable version
(``name@version#hash``): ``lumen``, ``lumen@3`` and ``lumen@production`` on version 3 share one replica's
copy, a version is loaded on as few replicas as its traffic needs, and an alias move routes the next request
by the new version. The base model and requests without a model go to any replica.

Each response carries ``x-adapterhub-replica``. A replica that dies: a request in flight on it ends with a clean
error (503 before its first byte; a stream ends with an error event and ``[DONE]``), new requests go to the
other replicas, and Ray Serve starts a new one. ``/metrics`` on the ingress is checked by a replica (same keys)
and answers every live replica's metrics, each series labelled ``replica``: replicas publish theirs to a
named actor every second.

KubeRay (``deploy/k8s/rayservice.yaml``) uses :func:`app_builder` as the import path with the server's
options as ``args: {config: {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from adapterhub.serving.config import ServeConfig

log = logging.getLogger(__name__)
REPLICA_HEADER = "x-adapterhub-replica"
PUBLISH_S = 1.0  # how often a replica publishes its metrics
STALE_S = 10.0  # a replica silent this long is left out of /metrics
RETRIES = 3  # a request whose replica died before answering is sent again this many times
_HOP = {"content-length", "transfer-encoding", "connection"}


# ---------------------------------------------------------------------------------------------- one request
async def asgi_call(app: Any, meta: dict[str, Any], body: bytes, extra_headers: list[tuple[str, str]]
                    ) -> AsyncIterator[Any]:
    """Run one HTTP request through ``app`` in this process: yields ``{"status", "headers"}`` first, then the
    body's chunks as the app sends them. Closing the iterator early is the client going away: the app sees an
    ``http.disconnect`` (so its disconnect handling cancels the work)."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await queue.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": meta["method"], "scheme": meta.get("scheme", "http"), "path": meta["path"],
             "raw_path": meta["path"].encode(), "query_string": meta.get("query", "").encode(), "root_path": "",
             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]],
             "client": tuple(meta["client"]) if meta.get("client") else None, "server": ("ray-serve", 0)}
    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    finished = False
    try:
        while (message := await queue.get()) is not None:
            if message["type"] == "http.response.start":
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield {"status": message["status"], "headers": [*headers, *extra_headers]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    finished = True
                    break
        if not finished and task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    finally:
        disconnected.set()
        if finished:
            await task


# ---------------------------------------------------------------------------------------------- metrics
@ray.remote(num_cpus=0)
class MetricsBoard:
    """Where replicas publish their Prometheus text (one named actor per application)."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.time(), text)

    def get(self, max_age_s: float) -> dict[str, str]:
        now = time.time()
        return {r: text for r, (t, text) in self.texts.items() if now - t <= max_age_s}


def board(app_name: str) -> Any:
    return MetricsBoard.options(name=f"adapterhub-metrics-{app_name}", namespace="adapterhub", get_if_exists=True,
                                lifetime="detached").remote()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")


def merge_metrics(texts: dict[str, str]) -> str:
    """Several replicas' Prometheus text as one exposition: each family's HELP/TYPE once, then its samples
    from every replica with a ``replica`` label added."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for replica, text in sorted(texts.items()):
        family: str | None = None
        label = f'replica="{replica}"'
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                head, _ = families.setdefault(family, ([], []))
                if line not in head:
                    head.append(line)
            elif line and not line.startswith("#") and family is not None and (m := _SAMPLE.match(line)):
                name, labels, rest = m.groups()
                labels = "{" + label + ("," + labels[1:] if labels and labels != "{}" else "}")
                families[family][1].append(f"{name}{labels}{rest}")
    return "".join("\n".join(head + samples) + "\n" for head, samples in families.values())


# ---------------------------------------------------------------------------------------------- deployments
def replica_deployment(config: ServeConfig) -> Any:
    """The engine replica class, with Ray's per-replica model LRU the size of the adapter manager's."""

    class EngineReplica:
        async def __init__(self, config_json: str, home: str | None, app_name: str) -> None:
            from adapterhub.serving.api import build_service
            from adapterhub.serving.app import make_app
            from adapterhub.settings import Settings

            cfg = ServeConfig.model_validate_json(config_json)
            stack = build_service(cfg, Settings(home=home) if home else Settings())
            self.manager, self.metrics = stack.manager, stack.metrics
            self.app = make_app(stack)
            self.lifespan = self.app.router.lifespan_context(self.app)
            await self.lifespan.__aenter__()  # the engine starts, keys are read, --adapters are pinned
            self.replica = serve.get_replica_context().replica_id.unique_id
            self.board = board(app_name)
            self.publisher = asyncio.ensure_future(self._publish())

        async def _publish(self) -> None:
            while True:
                try:
                    await self.board.put.remote(self.replica, self.metrics.render().decode())
                except Exception as e:  # the board restarting: try again next round
                    log.warning("metrics publish failed: %s", e)
                await asyncio.sleep(PUBLISH_S)

        @serve.multiplexed(max_num_models_per_replica=config.loaded_limit)
        async def version(self, key: str) -> str:
            """Ray calls this once per routing key per replica (its LRU mirrors the manager's): the version
            is loaded here, so Ray routes its next requests to this replica."""
            from adapterhub.errors import AdapterHubError

            try:
                lease = await self.manager.acquire(key.split("#", 1)[0])
                self.manager.release(lease)
            except AdapterHubError:
                pass  # the request itself gets the server's error for it
            return key

        async def handle(self, meta: dict[str, Any], body: bytes) -> AsyncIterator[Any]:
            key = serve.get_multiplexed_model_id()
            if key:
                await self.version(key)
            async for item in asgi_call(self.app, meta, body, [(REPLICA_HEADER, self.replica)]):
                yield item

        def check_health(self) -> None:
            if self.publisher.done():
                raise RuntimeError("the metrics publisher stopped")

    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
                               "max_ongoing_requests": max(config.max_waiting, config.batch_limit),
                               "health_check_period_s": 2, "health_check_timeout_s": 30}
    if config.max_replicas and config.max_replicas > config.replicas:
        options["autoscaling_config"] = {"min_replicas": config.replicas, "max_replicas": config.max_replicas,
                                         "target_ongoing_requests": config.batch_limit}
    else:
        options["num_replicas"] = config.replicas
    return serve.deployment(name="EngineReplica", **options)(EngineReplica)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
class Ingress:
    def __init__(self, replicas: Any, config_json: str, home: str | None, app_name: str) -> None:
        from adapterhub.registry import Registry
        from adapterhub.settings import Settings

        cfg = ServeConfig.model_validate_json(config_json)
        self.replicas, self.max_bytes, self.app_name = replicas, cfg.max_request_bytes, app_name
        self.registry = Registry.open(Settings(home=home) if home else Settings())
        self.immutable: dict[str, str] = {}

    def route_key(self, body: bytes, headers: dict[str, str]) -> str | None:
        """``name@version#hash`` of the version the request's ``model`` resolves to; None for the base, a
        request without a model and anything the registry does not know (any replica answers those)."""
        from adapterhub.errors import AdapterHubError

        try:
            data = json.loads(body) if body else None
        except ValueError:
            return None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, str) or not model:
            return None
        if model in self.immutable:
            return self.immutable[model]
        user = data.get("user")
        caller = user if isinstance(user, str) else headers.get("x-session-id")
        try:
            record, _ = self.registry.resolve_routed(model, caller=caller)
        except (AdapterHubError, ValueError):
            return None
        key = f"{record.ref}#{record.content_hash[:12]}"
        if "@" in model and model.split("@", 1)[1].isdigit():
            self.immutable[model] = key
        return key

    async def _body(self, request: Request) -> bytes | None:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_bytes:
                return None
        return bytes(body)

    async def __call__(self, request: Request) -> Response:
        from adapterhub.serving.middleware import too_large
        from adapterhub.serving.protocol import error_body

        body = await self._body(request)
        if body is None:
            return Response(too_large(self.max_bytes), status_code=413, media_type="application/json")
        headers = list(request.headers.items())
        key = await asyncio.to_thread(self.route_key, body, dict(headers)) if request.method == "POST" else None
        meta = {"method": request.method, "path": request.url.path, "query": request.url.query,
                "headers": headers, "client": list(request.client) if request.client else None}
        handle = self.replicas.options(stream=True, multiplexed_model_id=key or "")
        for attempt in range(RETRIES + 1):
            stream = handle.handle.remote(meta, body)
            try:
                start = await stream.__anext__()
                break
            except (RayActorError, ActorUnavailableError) as e:
                # The replica died before its first byte (nothing was answered): another one takes it, once
                # Ray's router has seen the death (it may pick the dead one again for a moment).
                log.warning("replica gone before answering (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(0.5 * (attempt + 1))
            except Exception as e:
                log.exception("replica error before answering")
                return Response(json.dumps(error_body(f"internal error: {type(e).__name__}", "server_error",
                                                      "internal_error")), status_code=500,
                                media_type="application/json")
        else:
            return Response(json.dumps(error_body("the replica serving this request stopped before answering; "
                                                  "retry", "server_error", "replica_unavailable")),
                            status_code=503, media_type="application/json", headers={"Retry-After": "1"})
        headers_out = {k: v for k, v in start["headers"] if k.lower() not in _HOP}
        status = start["status"]
        if request.url.path == "/metrics" and status == 200:  # allowed by the replica's own check: all of them
            texts = await board(self.app_name).get.remote(STALE_S)
            stream.cancel()
            return Response(merge_metrics(texts), status_code=200, headers=headers_out)
        if "text/event-stream" not in headers_out.get("content-type", ""):
            chunks = []
            try:
                async for chunk in stream:
                    chunks.append(chunk)
            except Exception as e:
                log.warning("replica failed while answering: %s", e)
                return Response(json.dumps(error_body("the replica serving this request stopped while answering; "
                                                      "retry", "server_error", "replica_unavailable")),
                                status_code=503, media_type="application/json", headers={"Retry-After": "1"})
            return Response(b"".join(chunks), status_code=status, headers=headers_out)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            except Exception as e:  # the status line went out already: end the stream with why
                log.warning("replica failed mid-stream: %s", e)
                err = error_body("the replica serving this stream stopped; the answer is incomplete", "server_error",
                                 "replica_unavailable")
                yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
            finally:
                stream.cancel()

        return StreamingResponse(relay(), status_code=status, headers=headers_out)


def build_app(config: ServeConfig, *, home: str | None = None, app_name: str = "adapterhub") -> Any:
    """The Ray Serve application: the ingress bound to the engine replicas (``bind`` only builds the graph)."""
    config_json = config.model_dump_json()
    replicas = replica_deployment(config).bind(config_json, home, app_name)
    return Ingress.bind(replicas, config_json, home, app_name)


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run`` and KubeRay's ``import_path``: ``args: {config: {...serve options...}}``."""
    return build_app(ServeConfig.model_validate(args.get("config") or {}), home=os.environ.get("ADAPTERHUB_HOME"),
                     app_name=str(args.get("name", "adapterhub")))


def serve_on_ray(config: ServeConfig, home: str | None, announce: Any) -> None:
    """Start (or join, with ``RAY_ADDRESS``) a Ray cluster, run the application on ``--host``/``--port`` and
    block until interrupted."""
    # The replicas read the same registry, model store and hub settings as this command.
    # Serve gives its HTTP proxy 5 s to report ready and kills it after three misses: on a small machine busy
    # loading the replicas' models that failed the command. More time by default (the user's value wins).
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    env = {k: v for k, v in os.environ.items() if k.startswith(("ADAPTERHUB_", "AWS_", "HF_", "RAY_SERVE_"))}
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             runtime_env={"env_vars": env})
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, home=home), name="adapterhub", route_prefix="/")
    scale = (f"{config.replicas}–{config.max_replicas} replicas (autoscaling)"
             if config.max_replicas and config.max_replicas > config.replicas
             else f"{config.replicas} replica{'s' if config.replicas > 1 else ''}")
    announce(f"serving '{config.served_name or config.base}' on Ray Serve, {scale}, on "
             f"http://{config.host}:{config.port}/v1")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_ray()


SHUTDOWN_S = 45.0


def stop_ray(timeout_s: float = SHUTDOWN_S) -> None:
    """Ray Serve's graceful shutdown, bounded (a guard: a replica that does not stop must not keep Ctrl-C from
    ending the command); then ``ray.shutdown()`` disconnects and, for a cluster this command started, stops
    its processes (proxy included), so the port goes quiet."""
    stopping = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    if stopping.is_alive():
        log.warning("Ray Serve did not shut down within %.0f s; stopping Ray", timeout_s)
    ray.shutdown()

"""``adapterhub serve``: the OpenAI-compatible server."""

from __future__ import annotations

import typer


def serve_cmd(
    base: str = typer.Option("smollm2-135m-instruct", "--base", help="Base model: demo name, dir, .gguf, hub id."),
    engine: str = typer.Option("hf", "--engine", help="hf (transformers, CPU default) or vllm."),
    adapters: list[str] = typer.Option([], "--adapters", "-a", help="Adapter refs to load and pin at start."),
    merged: str = typer.Option(None, "--merged", help="Serve a merged model artifact (registry ref)."),
    served_name: str = typer.Option(None, "--served-name", help="Name of the base model in the API."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: str = typer.Option(None, "--api-key", envvar="ADAPTERHUB_API_KEY", help="Require this bearer key."),
    admin_key: str = typer.Option(None, "--admin-key", envvar="ADAPTERHUB_ADMIN_KEY", help="Key for admin routes."),
    max_loaded: int = typer.Option(8, "--max-loaded", help="Adapters kept loaded (LRU beyond)."),
    max_lora_rank: int = typer.Option(None, "--max-lora-rank",
                                      help="Largest adapter rank accepted (default: largest among --adapters, ≥ 16)."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Requests decoded together."),
    bits: int = typer.Option(None, "--bits", help="Load the base in 4 or 8 bit (bitsandbytes)."),
    dtype: str = typer.Option("auto", "--dtype", help="bf16, fp16, fp32 or auto."),
    gpu_memory_utilization: float = typer.Option(None, "--gpu-memory-utilization", help="vLLM only."),
    max_model_len: int = typer.Option(None, "--max-model-len", help="vLLM only."),
    tensor_parallel_size: int = typer.Option(None, "--tensor-parallel-size", help="vLLM only."),
) -> None:
    """Serve the base model and registry adapters behind an OpenAI-compatible API."""
    from adapterhub.errors import ConfigError
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings

    try:
        import uvicorn

        from serving.app import build_engine, create_app
        from serving.config import ServeConfig
    except ImportError as e:
        from adapterhub.errors import MissingDependencyError

        raise MissingDependencyError(e.name or "fastapi", "serve", "adapterhub serve") from e
    vllm_args = {k: str(v) for k, v in dict(gpu_memory_utilization=gpu_memory_utilization,
                                            max_model_len=max_model_len,
                                            tensor_parallel_size=tensor_parallel_size).items() if v is not None}
    try:
        config = ServeConfig(base=base, engine=engine, adapters=adapters, merged=merged, served_name=served_name,
                             host=host, port=port, api_key=api_key, admin_key=admin_key, max_loaded=max_loaded,
                             max_lora_rank=max_lora_rank, max_batch_size=max_batch_size, bits=bits, dtype=dtype,
                             vllm_args=vllm_args)
    except ValueError as e:
        raise ConfigError("invalid serve options", [str(x["loc"][0]) + ": " + x["msg"] for x in e.errors()]) from e  # type: ignore[attr-defined]
    settings = Settings()
    registry = Registry.open(settings)
    eng, name = build_engine(config, settings, registry)
    app = create_app(config, engine=eng, registry=registry, base_name=name)
    typer.echo(f"serving '{name}' with the {config.engine} engine on http://{host}:{port}/v1", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)

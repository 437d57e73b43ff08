"""Typed options of ``adapterhub serve`` (also used by tests and benchmarks to build an app)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field("smollm2-135m-instruct", description="Base model: demo name, local dir, .gguf or hub id.")
    engine: Literal["hf", "vllm"] = Field("hf", description="Inference engine.")
    adapters: list[str] = Field(default_factory=list, description="Adapter refs to load and pin at start.")
    merged: str | None = Field(None, description="Serve a merged model artifact from the registry instead.")
    served_name: str | None = Field(None, description="Name of the base in the API (default: its id).")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, description="Require 'Authorization: Bearer <key>' on /v1.")
    admin_key: str | None = Field(None, description="Key for /v1/adapters admin endpoints (default: api_key).")
    max_loaded: int = Field(8, ge=1, description="Adapters kept loaded at once (LRU beyond).")
    max_lora_rank: int | None = Field(None, ge=1, description="Largest adapter rank the engine accepts "
                                      "(default: the largest rank among `adapters`, at least 16).")
    max_batch_size: int = Field(8, ge=1, description="Requests decoded together per batch.")
    max_waiting: int = Field(256, ge=1, description="Queue size beyond which requests get 503.")
    bits: Literal[4, 8] | None = Field(None, description="Load the base in 4- or 8-bit (bitsandbytes).")
    dtype: str = Field("auto", description="bf16, fp16, fp32 or auto (from the model config).")
    default_max_tokens: int = Field(512, ge=1, description="Completion budget when the request sets none.")
    vllm_args: dict[str, str] = Field(default_factory=dict, description="Extra vLLM engine arguments.")

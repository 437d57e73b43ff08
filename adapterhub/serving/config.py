"""Typed options of ``adapterhub serve``: the one declaration of every serve flag (the CLI builds its
options from these fields and their descriptions; tests and benchmarks build configs directly)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapterhub.models import DEMO_MODEL

# Adapters resident at once by default. The hf engine's slot stacks grow as adapters load (8 at first, then
# doubling), so a high limit costs memory only when that many are used: with 8, a 64-adapter Zipf mix
# spent most of its time to first token waiting for a slot (issue 30). vLLM reserves max_loras + 1 slots
# at start-up, on the GPU.
HF_MAX_LOADED = 64
VLLM_MAX_LOADED = 8
# Rows the hf engine decodes together by default. On the 2-core CPU a decode step of the demo model costs only
# about a fifth more for 32 rows than for 8 (it reads the weights once either way: ~140-180 ms against ~120-150),
# so a cap of 8 set the server's capacity: under open-loop traffic the rate where p99 TTFT passes 5 s went from
# 1.90 to 3.11 requests/s base-only, and from 1.88 to 2.89 with 64 adapters (issue 30, benchmarks.load).
HF_MAX_BATCH = 32
# Padded KV-cache positions a batch may hold when a request joins it (rows × the longest row).
HF_MAX_BATCH_TOKENS = 16384
# Prompt tokens of the sequences waiting to start, beyond which a request gets 503: 256 waiting (--max-waiting)
# of 1,024 tokens each. Without it 256 prompts of a full context could queue minutes of prefill ahead of everyone.
MAX_WAITING_TOKENS = 262144


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(DEMO_MODEL, description="Base model: demo name, local dir, .gguf or hub id.")
    engine: Literal["hf", "vllm"] = Field("hf", description="Inference engine: hf (transformers, CPU default) "
                                          "or vllm.")
    adapters: list[str] = Field(default_factory=list, description="Adapter refs to load and pin at start.")
    merged: str | None = Field(None, description="Serve a merged model artifact from the registry instead.")
    served_name: str | None = Field(None, description="Name of the base in the API (default: its id).")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    auth: Literal["key", "keys"] = Field("key", description="key: one --api-key (open when unset); keys: the "
                                         "registry's tenant keys ('adapterhub keys create'), each scoped to "
                                         "adapter names with rate limits (--api-key stays an all-access key).")
    api_key: str | None = Field(None, description="Require 'Authorization: Bearer <key>' on /v1.")
    metrics_key: str | None = Field(None, description="Key for /metrics, /openapi.json, /docs and /redoc "
                                    "(default: api_key; open when neither is set).")
    admin_key: str | None = Field(None, description="Key for /v1/adapters admin endpoints (default: api_key).")
    max_loaded: int | None = Field(None, ge=1, description="Adapters kept loaded at once (LRU beyond). Default: "
                                   f"{HF_MAX_LOADED} on the hf engine, whose slot memory grows with the adapters "
                                   f"actually loaded; {VLLM_MAX_LOADED} on vllm, which reserves max_loras slots "
                                   "up front.")
    max_lora_rank: int | None = Field(None, ge=1, description="Largest adapter rank the engine accepts "
                                      "(default: the largest rank among --adapters, at least 16).")
    adapter_cache_mb: float | None = Field(None, ge=0, description="hf engine: host memory for adapters read and "
                                           "checked but not in a slot, in MiB (default 1024; 0: none): an adapter "
                                           "evicted from its slot comes back from here without reading its files "
                                           "again. The vllm engine keeps its own (max_cpu_loras).")
    max_batch_size: int | None = Field(None, ge=1, description="Requests decoded together per batch (default "
                                       f"{HF_MAX_BATCH} on the hf engine; on vllm: its max_num_seqs, vLLM's own "
                                       "default when unset).")
    max_batch_tokens: int | None = Field(None, ge=1, description="hf engine: padded KV-cache positions (rows × the "
                                         "longest row) a batch may hold when a request joins it; a longer prompt "
                                         f"waits for room and runs alone at worst (default {HF_MAX_BATCH_TOKENS}).")
    max_waiting: int = Field(256, ge=1, description="Sequences waiting to start (not yet in a batch) beyond which "
                             "requests get 503 with Retry-After; a request needing more alone is a 400.")
    max_waiting_tokens: int = Field(MAX_WAITING_TOKENS, ge=1, description="Prompt tokens of the sequences "
                                    "waiting to start beyond which requests get 503 with Retry-After; a request "
                                    "needing more alone is a 400.")
    deterministic: bool = Field(False, description="hf engine: decode one sequence at a time, so an answer never "
                                "depends on what else runs (greedy answers are the same sent alone or together); "
                                "costs throughput under concurrent load.")
    bits: Literal[4, 8] | None = Field(None, description="Load the base in 4- or 8-bit (bitsandbytes).")
    dtype: str = Field("auto", description="bf16, fp16, fp32 or auto (from the model config).")
    trust_remote_code: bool = Field(False, description="Allow a base that ships its own modeling code to run it "
                                    "(hf engine; the vLLM engine gets it as its own option).")
    tool_parser: str = Field("hermes", description="Tool-call format for adapters that record none: hermes, "
                             "llama3_json, mistral or internlm2.")
    tool_template: str | None = Field(None, description="Chat template for requests with tools when the model's "
                                      "own has no tool support: a named template (hermes) or a .jinja file.")
    allowed_media_domains: list[str] = Field(default_factory=list, description="Hosts image_url may fetch from "
                                             "over http(s) (subdomains included; never private addresses). Off: "
                                             "images only as data: URLs.")
    max_image_bytes: int = Field(10 * 2**20, ge=1, description="Largest image accepted, in bytes.")
    max_images: int = Field(8, ge=1, description="Most images in one request.")
    media_timeout_s: float = Field(5.0, gt=0, description="Time limit for fetching one image URL.")
    registry_timeout_s: float = Field(5.0, gt=0, description="Time limit of one registry lookup while serving; "
                                      "past it a request is answered from memory or gets 503.")
    registry_staleness_s: float = Field(300.0, ge=0, description="How long an alias's last known target is served "
                                        "while the registry cannot be reached.")
    responses_retention_days: float = Field(30.0, gt=0, description="How long /v1/responses keeps stored "
                                            "responses (for GET and previous_response_id), in days.")
    default_max_tokens: int = Field(512, ge=1, description="Completion budget when the request sets none.")
    allowed_origins: list[str] = Field(default_factory=list, description="Origins browsers may call the API from "
                                       "(CORS; '*' for any). Off by default.")
    ui: bool = Field(True, description="The web console at /ui (versions, lineage, rollouts, live metrics, a "
                     "playground); it signs in with the same keys as the API.")
    max_request_bytes: int = Field(16 * 2**20, ge=1024, description="Largest request body; larger ones get 413.")
    ray: bool = Field(False, description="Run on Ray Serve: --replicas engine replicas behind one ingress (the "
                      "same API), requests routed by the resolved adapter version (RAY_ADDRESS: an existing "
                      "cluster; else a local one).")
    replicas: int = Field(2, ge=1, description="--ray: engine replicas (the minimum with --max-replicas).")
    max_replicas: int | None = Field(None, ge=1, description="--ray: autoscale up to this many replicas on "
                                     "ongoing requests per replica (target: --max-batch-size).")
    replica_cpus: float = Field(1.0, ge=0, description="--ray: CPUs each engine replica reserves.")
    replica_gpus: float = Field(0.0, ge=0, description="--ray: GPUs each engine replica reserves (1 for vLLM on a "
                                "GPU).")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM only: share of GPU memory "
                                                 "for weights and KV cache.")
    max_model_len: int | None = Field(None, ge=1, description="vLLM only: context length.")
    tensor_parallel_size: int | None = Field(None, ge=1, description="vLLM only: GPUs per replica.")
    vllm_args: dict[str, str] = Field(default_factory=dict, description="Further vLLM engine arguments.")

    @model_validator(mode="after")
    def _replica_range(self) -> ServeConfig:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"--max-replicas ({self.max_replicas}) is below --replicas ({self.replicas})")
        if self.engine == "vllm" and self.max_batch_tokens is not None:
            raise ValueError("--max-batch-tokens is an hf engine option: vLLM pages its KV cache, so its rows "
                             "need no padding budget")
        if self.deterministic and self.max_batch_tokens is not None:
            raise ValueError("--deterministic decodes one request at a time: --max-batch-tokens has nothing to "
                             "limit")
        return self

    @property
    def batch_limit(self) -> int:
        """--max-batch-size, or the hf engine's default (vLLM's own is larger; this is what a replica is sized by)."""
        return self.max_batch_size if self.max_batch_size is not None else HF_MAX_BATCH

    @property
    def loaded_limit(self) -> int:
        """--max-loaded, or the engine's default."""
        if self.max_loaded is not None:
            return self.max_loaded
        return VLLM_MAX_LOADED if self.engine == "vllm" else HF_MAX_LOADED

    def engine_args(self) -> dict[str, str]:
        """The vLLM engine arguments: the named vLLM options plus ``vllm_args``."""
        named = {"gpu_memory_utilization": self.gpu_memory_utilization, "max_model_len": self.max_model_len,
                 "tensor_parallel_size": self.tensor_parallel_size, "max_num_seqs": self.max_batch_size,
                 "trust_remote_code": True if self.trust_remote_code else None}
        return {**{k: str(v) for k, v in named.items() if v is not None}, **self.vllm_args}

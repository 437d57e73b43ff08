"""The engine seam: generation with a per-request adapter, adapter load/unload, capabilities.

An engine knows tensors and tokens; it knows nothing about HTTP, refs or the registry. Adapters are
identified by an opaque ``key`` chosen by the adapter manager (one key per name+version+hash, so a
new version is never confused with an old one).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.errors import UserInputError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter_key: str | None = None  # None = the base model
    request_id: str = ""
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(frozen=True)
class Delta:
    """A piece of generated text; the last one carries ``finish_reason`` and token counts."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    completion_tokens: int = 0


@dataclass(frozen=True)
class EngineCapabilities:
    max_lora_rank: int
    max_loaded: int
    context_length: int
    target_modules: frozenset[str]
    module_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # suffix -> (in, out)


class Engine(abc.ABC):
    """What the service needs from an inference engine."""

    name: str = "engine"

    @property
    @abc.abstractmethod
    def capabilities(self) -> EngineCapabilities: ...

    @property
    @abc.abstractmethod
    def base_identity(self) -> dict[str, Any]:
        """``{"id", "fingerprint", "quantization"}`` of the loaded base model."""

    @property
    @abc.abstractmethod
    def default_chat_template(self) -> str | None: ...

    @abc.abstractmethod
    def encode_chat(self, messages: list[dict[str, str]], chat_template: str | None) -> list[int]:
        """Render messages with ``chat_template`` (or the base's) plus the generation prompt."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the completion of one request. Setting ``request.cancelled`` stops it early."""

    @abc.abstractmethod
    def load_adapter(self, key: str, path: Path) -> None:
        """Load a validated PEFT LoRA directory under ``key`` (blocking; call in a thread)."""

    @abc.abstractmethod
    def unload_adapter(self, key: str) -> None: ...

    @abc.abstractmethod
    def loaded_adapters(self) -> list[str]: ...

    def start(self) -> None:
        """Start background work (schedulers). Idempotent."""

    def stop(self) -> None:
        """Stop background work; pending requests finish with ``cancelled``."""

    def queue_depth(self) -> int:
        return 0


class TokenizerEngine(Engine):
    """Shared plumbing of engines that tokenize with an HF tokenizer (``hf`` and ``vllm``).

    Subclasses set ``tokenizer``, ``_caps`` and ``_identity`` in their constructor.
    """

    tokenizer: Any
    _caps: EngineCapabilities
    _identity: dict[str, Any]

    @property
    def capabilities(self) -> EngineCapabilities:
        return self._caps

    @property
    def base_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def default_chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def encode_chat(self, messages: list[dict[str, str]], chat_template: str | None) -> list[int]:
        template = chat_template or self.tokenizer.chat_template
        if not template:
            raise UserInputError("this model has no chat template: use /v1/completions", param="messages")
        text = self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

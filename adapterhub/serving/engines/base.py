"""The engine seam: generation with a per-request adapter, adapter load/unload, capabilities.

An engine knows tensors and tokens; it knows nothing about HTTP, refs or the registry. Adapters are
identified by an opaque ``key`` chosen by the adapter manager (one key per name+version+hash, so a
new version is never confused with an old one).
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.errors import OverloadedError, UserInputError
from adapterhub.serving.structured import Constraint

GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM does; avoids NaN probabilities)


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides one row's tokens; the defaults change nothing (greedy, no limits)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: all tokens
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # None: none; k: the chosen token's logprob and the top k
    prompt_logprobs: int | None = None  # the same for each prompt token (the first has none): scoring prompts
    constraint: Constraint | None = None  # structured output: the row's text must match it

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter_key: str | None = None  # None = the base model
    request_id: str = ""
    inputs: dict[str, Any] | None = None  # extra model inputs for the prompt (a vision model's pixel values)
    cancelled: bool = False
    created_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # set by the engine at the request's first forward pass (queue time)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, log-probability under the model, and the top alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of generated text; the last one carries ``finish_reason`` and token counts.

    ``logprobs`` holds one entry per token generated since the previous delta (when asked for).
    """

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    # With the first delta, when asked for: one entry per prompt token, None for the first (nothing precedes it).
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class EngineCapabilities:
    max_lora_rank: int
    max_loaded: int
    context_length: int
    target_modules: frozenset[str]
    module_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # full name or suffix -> (in, out)


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
    def encode_chat(self, messages: list[dict[str, Any]], chat_template: str | None, *,
                    add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Render messages (and ``tools``) with ``chat_template`` (or the base's), plus the generation prompt."""

    @abc.abstractmethod
    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str: ...

    @abc.abstractmethod
    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token's own text (for logprobs)."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the completion of one request. Setting ``request.cancelled`` stops it early."""

    @property
    def accepts_images(self) -> bool:
        """Whether the base takes image inputs (a vision-language model)."""
        return False

    @property
    def adapter_projectors(self) -> bool:
        """Whether an adapter's own image projector (peft ``modules_to_save``) is applied per request."""
        return False

    def encode_chat_images(self, messages: list[dict[str, Any]], chat_template: str | None, images: list[Any], *,
                           tools: list[dict[str, Any]] | None = None) -> tuple[list[int], dict[str, Any]]:
        """Token ids of messages with image parts (``{"type": "image"}``) and the model inputs of ``images``."""
        raise UserInputError("this model does not take images (text only)", param="messages")

    def check_constraint(self, constraint: Constraint) -> None:
        """Raise UserInputError (with the grammar library's reason) if ``constraint`` cannot be enforced."""
        raise UserInputError(f"structured output is not supported by the {self.name} engine", param=constraint.param)

    @abc.abstractmethod
    def load_adapter(self, key: str, path: Path) -> None:
        """Load a validated PEFT LoRA directory under ``key`` (blocking; call in a thread)."""

    def prepare_adapter(self, key: str, path: Path) -> bool:
        """Read an adapter into host memory ahead of its slot, while the batch decodes (blocking; call in a
        thread); True when it was there already. Engines without a host cache of their own do nothing."""
        return False

    def adapter_prepared(self, key: str) -> bool:
        """Whether ``key`` is in host memory, read and checked (its files need not be opened again)."""
        return False

    @abc.abstractmethod
    def unload_adapter(self, key: str) -> None: ...

    @abc.abstractmethod
    def loaded_adapters(self) -> list[str]: ...

    def start(self) -> None:
        """Start background work (schedulers). Idempotent."""

    def stop(self) -> None:
        """Stop background work; pending requests finish with ``cancelled``."""

    line: WaitingLine | None = None  # the sequences waiting to start, bounded (None: no line of our own)

    def queue_depth(self) -> int:
        """Sequences waiting to start."""
        return self.line.requests if self.line is not None else 0


class WaitingLine:
    """The sequences that wait to start (no row in a batch yet) and their prompt tokens, each count bounded
    (``--max-waiting``, ``--max-waiting-tokens``): a sequence that would pass either bound is refused with a
    503 and never queued, so a flood of requests, or of long prompts, cannot build a backlog that every later
    request waits behind. Thread-safe: requests enter on the event loop, the engine's worker lets them go."""

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def check(self, requests: int, tokens: int) -> None:
        """Before anything of a request is queued: one that alone needs more than a bound is a 400 naming it
        (it could never wait here); one that does not fit beside what waits now is a 503."""
        if requests > self.max_requests:
            raise UserInputError(f"this request needs {requests} sequences (prompts × n); this server queues at "
                                 f"most {self.max_requests} (--max-waiting)", param="n")
        if tokens > self.max_tokens:
            raise UserInputError(f"this request's prompts are {tokens} tokens in all (prompts × n); this server "
                                 f"queues at most {self.max_tokens} prompt tokens (--max-waiting-tokens)")
        with self._lock:
            self._refuse_past(requests, tokens)

    def enter(self, tokens: int) -> None:
        """One sequence of ``tokens`` prompt tokens starts waiting, or OverloadedError."""
        with self._lock:
            self._refuse_past(1, tokens)
            self.requests += 1
            self.tokens += tokens

    def leave(self, tokens: int) -> None:
        """A sequence that entered stops waiting (it started, was cancelled or failed)."""
        with self._lock:
            self.requests -= 1
            self.tokens -= tokens

    def _refuse_past(self, requests: int, tokens: int) -> None:
        if self.requests + requests > self.max_requests:
            raise OverloadedError(f"too many requests waiting ({self.requests} sequences): retry later")
        if self.tokens + tokens > self.max_tokens:
            raise OverloadedError(f"too many prompt tokens waiting ({self.tokens} in {self.requests} sequences; "
                                  f"--max-waiting-tokens {self.max_tokens}): retry later")


class TokenizerEngine(Engine):
    """Shared plumbing of engines that tokenize with an HF tokenizer (``hf`` and ``vllm``).

    Subclasses set ``tokenizer``, ``_caps`` and ``_identity`` in their constructor.
    """

    tokenizer: Any
    processor: Any = None  # a vision-language model's processor: it renders chats (its templates want parts)
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
        # llava-hf models keep their chat template on the processor
        return self.tokenizer.chat_template or getattr(self.processor, "chat_template", None)

    def encode_chat(self, messages: list[dict[str, Any]], chat_template: str | None, *,
                    add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> list[int]:
        template = chat_template or self.default_chat_template
        if not template:
            raise UserInputError("this model has no chat template: use /v1/completions", param="messages")
        try:
            renderer = self.processor or self.tokenizer  # a processor turns plain-string contents into parts
            text = renderer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                add_generation_prompt=add_generation_prompt, tools=tools)
        except Exception as e:  # a template that raises on these messages (e.g. roles it does not allow)
            raise UserInputError(f"the chat template cannot render these messages: {e}", param="messages") from e
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def process_images(self, messages: list[dict[str, Any]], chat_template: str | None, images: list[Any], *,
                       tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The processor's encoding of a chat with images: ``input_ids`` with each image placeholder expanded
        to the image's tokens, and the pixel values."""
        template = chat_template or self.default_chat_template
        try:
            text = self.processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                      tokenize=False, tools=tools)
            return dict(self.processor(images=images, text=[text], return_tensors="pt"))
        except Exception as e:  # noqa: BLE001 - the processor's reason (an image it cannot read) is a 400
            raise UserInputError(f"cannot prepare the images for this model: {e}", param="messages") from e

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_texts(self, ids: list[int]) -> list[str]:
        return [str(self.tokenizer.decode([i])) for i in ids]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

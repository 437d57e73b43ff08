"""The ``vllm`` engine: vLLM's async engine with LoRA enabled, behind the same seam as ``hf``.

* each adapter key (name@version#hash) gets a fresh, never reused integer LoRA id, so a new version
  never hits vLLM's cached state of an old one;
* ``max_loras`` is set one above the adapters the manager keeps loaded: on vLLM CPU builds a base
  request in a mixed batch picked up the *last* LoRA slot (upstream PR #48421); keeping that slot
  empty made 10 of 10 base outputs right where ``max_loras == adapters`` gave 0 of 10;
* vLLM's ``AsyncLLM`` binds to the event loop it first runs on, so the engine owns one loop on its own
  thread; ``generate`` bridges deltas from it to whatever loop the caller runs (the server's, a test's
  ``asyncio.run``, the chat CLI's);
* vLLM pins its own torch: install it in its own environment (``make test-vllm`` does it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from adapterhub.errors import IncompatibleAdapterError, MissingDependencyError, UserInputError
from adapterhub.precision import dtype_name
from adapterhub.serving.config import MAX_WAITING_TOKENS
from adapterhub.serving.engines.base import (
    Delta,
    EngineCapabilities,
    GenerationRequest,
    TokenizerEngine,
    TokenLogprob,
    WaitingLine,
)
from adapterhub.serving.engines.base import SamplingParams as Params
from adapterhub.serving.engines.hf.lora import LINEAR_TARGETS

log = logging.getLogger(__name__)
_ids = itertools.count(1)
_END = object()
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def _module_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg["intermediate_size"])
    return {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


class VLLMEngine(TokenizerEngine):
    name = "vllm"

    def __init__(self, model_path: Path, *, model_id: str, fingerprint: str | None = None, dtype: str = "auto",
                 bits: int | None = None, max_loaded: int = 8, max_lora_rank: int = 16,
                 extra_args: dict[str, str] | None = None, max_waiting: int = 256,
                 max_waiting_tokens: int = MAX_WAITING_TOKENS) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise MissingDependencyError("vllm", "vllm", "--engine vllm (see README: vLLM in its own venv)") from e
        if bits is not None:
            raise UserInputError("--bits applies to the hf engine; for vLLM serve a pre-quantized model (AWQ/GPTQ)")
        if max_lora_rank > VLLM_RANKS[-1]:
            raise UserInputError(f"max LoRA rank {max_lora_rank} is above vLLM's largest, {VLLM_RANKS[-1]}")
        max_lora_rank = next(r for r in VLLM_RANKS if r >= max_lora_rank)  # vLLM takes only these sizes
        cfg = json.loads((Path(model_path) / "config.json").read_text())
        extra = dict(extra_args or {})
        args: dict[str, Any] = dict(
            model=str(model_path), enable_lora=True, max_loras=max_loaded + 1, max_lora_rank=max_lora_rank,
            # bf16 on a CPU without bf16 instructions (and fp16 on any CPU) computes in fp32, as on the hf engine
            max_cpu_loras=max(2 * (max_loaded + 1), 4), dtype=dtype_name(dtype, model_path=Path(model_path)),
            enable_prefix_caching=False,
        )
        for k, v in extra.items():
            args[k] = (v == "True" if v in ("True", "False") else int(v) if v.isdigit()
                       else float(v) if k == "gpu_memory_utilization" else v)
        import torch

        if "gpu_memory_utilization" not in args and not torch.cuda.is_available():
            # On CPU builds this is the share of host RAM reserved for the KV cache (vLLM's 0.92 default
            # refuses to start beside other processes).
            args["gpu_memory_utilization"] = 0.4
        # vLLM's scheduler queues without a bound; ours counts a sequence as waiting until its first output.
        self.line = WaitingLine(max_waiting, max_waiting_tokens)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()

        async def build() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        self.engine = self._call(build(), timeout=None)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path),
                                                       trust_remote_code=bool(args.get("trust_remote_code")))
        if "vision_config" in cfg:  # LLaVA-style (e.g. an adapterhub merge of a LLaVA finetune): image inputs
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(str(model_path),
                                                           trust_remote_code=bool(args.get("trust_remote_code")))
            self.tokenizer = self.processor.tokenizer
        self._loras: dict[str, Any] = {}
        self._caps = EngineCapabilities(
            max_lora_rank=max_lora_rank, max_loaded=max_loaded,
            context_length=int(args.get("max_model_len") or cfg.get("max_position_embeddings", 2048)),
            target_modules=frozenset(LINEAR_TARGETS), module_shapes=_module_shapes(cfg),
        )
        self._identity = {"id": model_id, "fingerprint": fingerprint, "quantization": None}
        self._vocab = int(cfg.get("vocab_size") or len(self.tokenizer))
        self._grammars: Any = None

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 60.0) -> Any:
        """Run ``coro`` on the engine's loop and wait for it (never called from that loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def load_adapter(self, key: str, path: Path) -> None:
        """Load into vLLM now (not at first use), so what vLLM cannot serve (an architecture without LoRA
        support, a module it cannot adapt) is refused at load with vLLM's own reason."""
        from vllm.lora.request import LoRARequest

        if key in self._loras:
            return
        req = LoRARequest(key, next(_ids), str(path))  # a new id for every key: a new version is never confused
        try:
            self._call(self.engine.add_lora(req), timeout=300)
        except Exception as e:  # noqa: BLE001 - vLLM's reason, whatever its type, goes to the user
            raise IncompatibleAdapterError(f"adapter {key} cannot be served by vLLM",
                                           [f"{type(e).__name__}: {e}"]) from e
        self._loras[key] = req

    def unload_adapter(self, key: str) -> None:
        req = self._loras.pop(key, None)
        if req is not None:  # vLLM may never have loaded it (no request used it): then this is a no-op
            self._call(self.engine.remove_lora(req.lora_int_id))

    def check_constraint(self, constraint: Any) -> None:
        """Compiled with llguidance (vLLM's guidance backend) before the request reaches vLLM, so a schema or
        grammar neither can use is a 400 with the library's reason, as on the hf engine."""
        if self._grammars is None:
            from adapterhub.serving.engines.hf.grammar import GrammarCompiler

            eos = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else {0}
            self._grammars = GrammarCompiler(self.tokenizer, self._vocab, eos)
        self._grammars.grammar(constraint)

    def loaded_adapters(self) -> list[str]:
        return list(self._loras)

    @property
    def accepts_images(self) -> bool:
        return self.processor is not None

    def encode_chat_images(self, messages: list[dict[str, Any]], chat_template: str | None, images: list[Any], *,
                           tools: list[dict[str, Any]] | None = None) -> tuple[list[int], dict[str, Any]]:
        """Token ids with the image placeholders already expanded (vLLM sees its prompt updates applied and
        keeps them) and the images themselves, which vLLM's own processor turns into features."""
        enc = self.process_images(messages, chat_template, images, tools=tools)
        return enc["input_ids"][0].tolist(), {"images": list(images)}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def push(item: Any) -> None:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone (it stopped listening): nothing to deliver
                pass

        line, tokens, waiting = self.line, len(request.prompt_ids), True
        line.enter(tokens)  # OverloadedError (503) past --max-waiting(-tokens)
        try:
            fut = asyncio.run_coroutine_threadsafe(self._pump(request, push), self._loop)
        except BaseException:
            line.leave(tokens)
            raise
        try:
            while True:
                item = await queue.get()
                if waiting:  # its first output (or its end): it is running
                    line.leave(tokens)
                    waiting = False
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if waiting:
                line.leave(tokens)
            fut.cancel()  # a no-op once finished; otherwise cancels the pump, which aborts the request

    async def _pump(self, request: GenerationRequest, push: Callable[[Any], None]) -> None:
        """Runs on the engine's loop: feed vLLM's outputs for one request to ``push``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = vllm_sampling_params(SamplingParams, request.params)
        score_only = request.params.max_tokens == 0  # vLLM generates at least one token: dropped below
        want_prompt = request.params.prompt_logprobs
        lora = self._loras.get(request.adapter_key) if request.adapter_key else None
        rid = request.request_id or f"req-{next(_ids)}"
        sent = 0
        sent_lps = 0
        sent_prompt = False
        finished = False
        try:
            prompt = TokensPrompt(prompt_token_ids=request.prompt_ids)
            if request.inputs and request.inputs.get("images"):
                prompt["multi_modal_data"] = {"image": request.inputs["images"]}
            async for out in self.engine.generate(prompt, sp, rid, lora_request=lora):
                if request.cancelled:
                    break
                comp = out.outputs[0]
                text = comp.text
                request.started_at = request.started_at or time.monotonic()
                lps = _token_logprobs(comp, sent_lps, request.params.logprobs) if request.params.logprobs is not None else ()
                first = None
                if want_prompt is not None and not sent_prompt:
                    first, sent_prompt = _prompt_logprobs(out, request.prompt_ids, want_prompt), True
                if score_only:  # the prompt's scores only: what vLLM generated is not part of the answer
                    finished = out.finished  # if not, the finally aborts the rest
                    push(Delta("", "length", 0, (), first))
                    break
                if out.finished:
                    finished = True
                    reason = "length" if comp.finish_reason == "length" else "stop"
                    push(Delta(text[sent:], reason, len(comp.token_ids), lps, first))
                    break
                if (len(text) > sent and not text.endswith("\ufffd")) or lps or first is not None:
                    push(Delta(text[sent:] if not text.endswith("\ufffd") else "", None, len(comp.token_ids), lps,
                               first))
                    sent = len(text) if not text.endswith("\ufffd") else sent
                    sent_lps += len(lps)
        except Exception as e:  # noqa: BLE001 - handed to the caller's loop, raised there
            push(e)
        finally:
            if not finished:
                await self.engine.abort(rid)
            push(_END)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def stop(self) -> None:
        async def shutdown() -> None:
            self.engine.shutdown()

        try:
            self._call(shutdown())
        except Exception:  # pragma: no cover
            log.debug("vLLM shutdown failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.engine = None  # AsyncLLM.__del__ would shut down again at interpreter exit, after its imports are gone


def vllm_sampling_params(cls: Any, p: Params) -> Any:
    """vLLM's ``SamplingParams`` for ours: every field maps to vLLM's own (same semantics)."""
    return cls(
        max_tokens=max(p.max_tokens, 1), temperature=0.0 if p.greedy else p.temperature, top_p=p.top_p,
        top_k=p.top_k if p.top_k > 0 else -1, min_p=p.min_p, seed=p.seed, stop=list(p.stop) or None,
        stop_token_ids=list(p.stop_token_ids) or None, include_stop_str_in_output=p.include_stop_str_in_output,
        presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
        repetition_penalty=p.repetition_penalty, logit_bias=dict(p.logit_bias) or None, min_tokens=p.min_tokens,
        ignore_eos=p.ignore_eos, skip_special_tokens=p.skip_special_tokens, logprobs=p.logprobs,
        prompt_logprobs=p.prompt_logprobs, **_structured(p),
    )


def _structured(p: Params) -> dict[str, Any]:
    """The constraint as vLLM's ``structured_outputs`` (its guidance backend reads our Lark grammars)."""
    c = p.constraint
    if c is None:
        return {}
    from vllm.sampling_params import StructuredOutputsParams

    if c.kind == "json":
        so = StructuredOutputsParams(json=json.loads(c.spec))
    elif c.kind == "choice":
        so = StructuredOutputsParams(choice=json.loads(c.spec))
    elif c.kind == "regex":
        so = StructuredOutputsParams(regex=c.spec)
    else:
        so = StructuredOutputsParams(grammar=c.spec)
    return {"structured_outputs": so}


def _prompt_logprobs(out: Any, prompt: list[int], k: int) -> tuple[TokenLogprob | None, ...]:
    """Our entries for each prompt token (vLLM: None for the first, then one dict per token)."""
    tables = out.prompt_logprobs or []
    entries: list[TokenLogprob | None] = [None]
    for tid, table in zip(prompt[1:], tables[1:]):
        top = sorted(((t, lp) for t, lp in table.items() if lp.rank is not None and lp.rank > 0),
                     key=lambda x: x[1].rank)[:k]
        entries.append(TokenLogprob(int(tid), float(table[tid].logprob),
                                    tuple((int(t), float(lp.logprob)) for t, lp in top)))
    return tuple(entries)


def _token_logprobs(comp: Any, start: int, k: int) -> tuple[TokenLogprob, ...]:
    """Our logprob entries for the tokens of ``comp`` from index ``start`` (vLLM: one dict per token)."""
    out = []
    for tid, table in zip(comp.token_ids[start:], (comp.logprobs or [])[start:]):
        top = sorted(((t, lp) for t, lp in table.items() if lp.rank is not None and lp.rank > 0),
                     key=lambda x: x[1].rank)[:k]
        out.append(TokenLogprob(int(tid), float(table[tid].logprob), tuple((int(t), float(lp.logprob))
                                                                            for t, lp in top)))
    return tuple(out)

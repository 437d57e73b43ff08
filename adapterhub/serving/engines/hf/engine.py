"""The ``hf`` engine: a transformers model with our batched multi-LoRA, behind the engine seam.

A worker thread decodes up to ``max_batch_size`` requests together — whatever adapters they use, as long
as the batch's left-padded KV cache stays within ``max_batch_tokens`` positions —
one token per step for every row, each row with its own adapter slot, sampling parameters, stop
strings and token budget. Continuous batching: between two decode steps, finished or cancelled rows
leave the batch and waiting requests join it (see :mod:`.batch`), so a request arriving mid-batch
starts at the next step instead of waiting for the whole batch. This module is the scheduler and the
thread/async bridge; loading, batching, sampling, detokenizing and LoRA live in their own modules.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import UserInputError
from adapterhub.serving.config import HF_MAX_BATCH, HF_MAX_BATCH_TOKENS, HF_MAX_LOADED, MAX_WAITING_TOKENS
from adapterhub.serving.engines.base import (
    Delta,
    EngineCapabilities,
    GenerationRequest,
    TokenizerEngine,
    TokenLogprob,
    WaitingLine,
)
from adapterhub.serving.engines.hf import batch as batching
from adapterhub.serving.engines.hf.detokenizer import IncrementalDetokenizer
from adapterhub.serving.engines.hf.grammar import GrammarCompiler, GrammarMask
from adapterhub.serving.engines.hf.loading import load_model
from adapterhub.serving.engines.hf.lora import HostCache, LoraSlots
from adapterhub.serving.engines.hf.sampler import RowState, Sampler, default_pipeline
from adapterhub.serving.engines.hf.threads import release_pool
from adapterhub.serving.structured import Constraint

log = logging.getLogger(__name__)
_END = object()


@dataclass
class _Row:
    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    detok: IncrementalDetokenizer
    state: RowState
    done: bool = False
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent with a delta
    prompt_lps: tuple[TokenLogprob | None, ...] | None = None  # computed at prefill, sent with the first delta
    prompt_lps_sent: bool = False
    waiting: bool = True  # in the engine's line (queued or held), not yet in a batch

    @property
    def n_generated(self) -> int:
        return len(self.detok.ids)


class HFEngine(TokenizerEngine):
    """transformers + batched LoRA slots; CPU default, also runs on CUDA."""

    name = "hf"

    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str,
        fingerprint: str | None = None,
        dtype: str = "auto",
        bits: int | None = None,
        max_loaded: int = HF_MAX_LOADED,
        max_lora_rank: int = 16,
        max_batch_size: int = HF_MAX_BATCH,
        max_batch_tokens: int = HF_MAX_BATCH_TOKENS,
        max_waiting: int = 256,
        max_waiting_tokens: int = MAX_WAITING_TOKENS,
        device: str | None = None,
        batch_window_s: float = 0.02,
        continuous: bool = True,
        trust_remote_code: bool = False,
        adapter_cache_mb: float = 1024,
    ) -> None:
        self.model_id = model_id
        loaded = load_model(Path(model_path), dtype=dtype, bits=bits, device=device,
                            trust_remote_code=trust_remote_code)
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        self.eos_ids, self.pad_id = loaded.eos_ids, loaded.pad_id
        # On CPU the LoRA matmuls run in fp32: bf16 bmm there is emulated and was the slower part of a
        # mixed batch (decode step of 8 rows on the demo model: ~65 ms vs ~100 ms with bf16 stacks).
        lora_dtype = torch.float32 if self.device.type == "cpu" else loaded.dtype
        self.slots = LoraSlots(self.model, max_loaded=max_loaded, max_rank=max_lora_rank, dtype=lora_dtype,
                               device=self.device)
        self.host_cache = HostCache(int(adapter_cache_mb * 2**20))
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg  # a vision-language model: its language model's
        self.processor = loaded.processor
        self._projectors: dict[str, Any] = {}  # adapter key -> its own image projector (vision models)
        self._caps = EngineCapabilities(
            max_lora_rank=max_lora_rank, max_loaded=max_loaded,
            context_length=int(getattr(cfg, "max_position_embeddings", 2048)),
            target_modules=self.slots.target_suffixes(),
            module_shapes=self.slots.module_shapes(),
        )
        self._identity = {"id": model_id, "fingerprint": fingerprint, "quantization": loaded.quantization}
        self.sampler = Sampler((GrammarMask(), *default_pipeline(self.eos_ids)))
        self._vocab = int(self.model.get_input_embeddings().num_embeddings)
        self.grammars = GrammarCompiler(self.tokenizer, self._vocab, self.eos_ids)
        self.max_batch_size = max_batch_size
        # Rows are left-padded to the longest, so one long prompt makes every row's cache that long: a request
        # joins a running batch only while rows × the longest row stays within this (one alone always runs).
        self.max_batch_tokens = max_batch_tokens
        self.peak_rows = 0  # the most rows one forward pass has carried (1 with --deterministic)
        self.batch_window_s = batch_window_s
        self.continuous = continuous  # False: static batches (the benchmark's baseline)
        self.batch_quiet_s = 0.004
        self.line = WaitingLine(max_waiting, max_waiting_tokens)  # bounds what _queue and _held hold together
        self._queue: queue.Queue[_Row] = queue.Queue()
        # Taken from the queue but not yet admitted (they did not fit the batch's token budget): first in line.
        self._held: collections.deque[_Row] = collections.deque()
        # Serializes load/unload (the slot free-list). The worker does not take it: loads write only
        # free slots, and the adapter manager never unloads an adapter a queued request uses.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.cancelled = 0  # rows dropped because their client went away (observable in tests/metrics)
        self.peak_batch = 0  # most rows decoded together so far
        self.prefills = 0
        release_pool()  # this thread loaded the model; only the worker's OpenMP pool should remain

    # ---------------------------------------------------------------- seam
    @property
    def vocab_size(self) -> int:
        return self._vocab

    def check_constraint(self, constraint: Constraint) -> None:
        self.grammars.grammar(constraint)

    @property
    def accepts_images(self) -> bool:
        return self.processor is not None

    @property
    def adapter_projectors(self) -> bool:
        return self.processor is not None  # image rows are prefilled alone, each with its adapter's projector

    def encode_chat_images(self, messages: list[dict[str, Any]], chat_template: str | None, images: list[Any], *,
                           tools: list[dict[str, Any]] | None = None) -> tuple[list[int], dict[str, Any]]:
        """Token ids (each image placeholder expanded to its image tokens) and the pixel values."""
        enc = self.process_images(messages, chat_template, images, tools=tools)
        release_pool()
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        return enc["input_ids"][0].tolist(), extra

    def prepare_adapter(self, key: str, path: Path) -> bool:
        """Read and check an adapter into the host cache while the batch decodes; True if it was there."""
        if self.host_cache.get(key) is not None:
            return True
        self.host_cache.put(key, self.slots.read(path))
        release_pool()
        return False

    def adapter_prepared(self, key: str) -> bool:
        return key in self.host_cache

    def load_adapter(self, key: str, path: Path) -> None:
        host = self.host_cache.get(key)
        if host is None:  # not prepared (a direct load) or dropped from the cache since
            host = self.slots.read(path)
            self.host_cache.put(key, host)
        with self._lock:
            self.slots.load_host(key, host)
            projector = self._adapter_projector(path)
            if projector is not None:
                self._projectors[key] = projector
            release_pool()

    def unload_adapter(self, key: str) -> None:
        with self._lock:
            self.slots.unload(key)
            self._projectors.pop(key, None)
            release_pool()

    def _projector_site(self) -> tuple[Any, str] | None:
        """(parent module, attribute) of a vision-language model's image projector."""
        for name, _ in self.model.named_modules():
            if name.endswith("multi_modal_projector"):
                parent = self.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.model
                return parent, name.rsplit(".", 1)[-1]
        return None

    def _adapter_projector(self, path: Path) -> Any:
        """An adapter's own trained projector (peft modules_to_save), as a module beside the base's."""
        import copy

        from safetensors.torch import load_file

        site = self._projector_site()
        weights = path / "adapter_model.safetensors"
        if site is None or not weights.exists():
            return None
        state = {k.split("multi_modal_projector.", 1)[1]: v for k, v in load_file(str(weights)).items()
                 if "multi_modal_projector." in k}
        if not state:
            return None
        projector = copy.deepcopy(getattr(*site))
        projector.load_state_dict(state)
        return projector.to(self.device)

    def loaded_adapters(self) -> list[str]:
        return list(self.slots.loaded)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._worker, name="hf-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        while self._held:
            self._emit(self._started(self._held.popleft()), Delta("", "cancelled", 0))
        while True:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            self._emit(self._started(row), Delta("", "cancelled", 0))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        p = request.params
        generator = None if p.seed is None else torch.Generator(device=self.device).manual_seed(p.seed)
        skip = p.skip_special_tokens
        detok = IncrementalDetokenizer(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=skip), p.stop,
                                       p.include_stop_str_in_output)
        matcher = self.grammars.matcher(p.constraint) if p.constraint is not None else None
        row = _Row(request, loop, asyncio.Queue(), detok,
                   RowState(p, detok.ids, generator, request.prompt_ids, matcher))
        self.line.enter(len(request.prompt_ids))  # OverloadedError (503) past --max-waiting(-tokens)
        self._queue.put_nowait(row)
        self.start()
        try:
            while True:
                item = await row.out.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            request.cancel()  # client gone or finished: the worker drops the row

    # ---------------------------------------------------------------- scheduler
    def _worker(self) -> None:
        torch.set_grad_enabled(False)
        batch: batching.Batch | None = None
        while not self._stopping.is_set():
            # An idle engine waits for a burst; a running batch takes newcomers at this step boundary, at once.
            rows = self._gather() if batch is None else self._admit(batch, []) if self.continuous else []
            try:
                with torch.inference_mode():
                    if rows:
                        joined = self._prefill_isolated(rows)
                        batch = joined if batch is None else batching.merge(batch, joined) if joined else batch
                        rows = []
                    if batch is not None:
                        self.peak_batch = max(self.peak_batch, len(batch.rows))
                        logits = batching.decode_step(self.model, self.slots, batch, self.device)
                        batch = self._after_forward(batch, logits)
            except Exception as e:  # never kill the worker: fail the requests in flight
                log.exception("batch failed")
                for r in rows + (batch.rows if batch is not None else []):
                    self._fail(r, e)
                batch = None
            finally:
                self.slots.ctx.indices = None
                if batch is None:
                    self.slots.release_gathered()  # the per-row A/B copies of the batch that just ended
        for r in batch.rows if batch is not None else []:
            if not r.done:
                self._emit(r, Delta("", "cancelled", r.n_generated))

    def _gather(self) -> list[_Row]:
        """Block for a first request, then take the rest of its burst (idle engine only)."""
        rows = self._admit(None, [])
        if not rows:
            try:
                self._held.append(self._queue.get(timeout=0.2))
            except queue.Empty:
                return []
            rows = self._admit(None, [])
        # Gather window: requests of one burst arrive a few ms apart (HTTP parsing, tokenizing); wait
        # while they keep coming (up to batch_window_s), so they share the first prefill.
        deadline = time.monotonic() + self.batch_window_s
        while rows and not self._held and len(rows) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                more = self._queue.get(timeout=min(remaining, self.batch_quiet_s))
            except queue.Empty:
                break
            self._held.append(more)
            rows = self._admit(None, rows)
        return rows

    def _admit(self, batch: batching.Batch | None, rows: list[_Row]) -> list[_Row]:
        """``rows`` plus the waiting requests, first come first served, that fit beside ``batch``: at most
        ``max_batch_size`` rows and ``max_batch_tokens`` padded positions (rows × the longest). The first that
        does not fit stays first in line (held), so a long prompt waits for room rather than being overtaken
        forever; it is looked at again at every step, so one cancelled while it waits leaves at the next."""
        n = (len(batch.rows) if batch is not None else 0) + len(rows)
        width = max([batch.mask.shape[1] if batch is not None else 0] + [len(r.req.prompt_ids) for r in rows])
        while n < self.max_batch_size:
            if self._held:
                row = self._held.popleft()
            else:
                try:
                    row = self._queue.get_nowait()
                except queue.Empty:
                    break
            if row.req.cancelled:
                self._drop_if_cancelled(self._started(row))
                continue
            wider = max(width, len(row.req.prompt_ids))
            if n and (n + 1) * wider > self.max_batch_tokens:
                self._held.appendleft(row)
                break
            rows.append(self._started(row))
            n, width = n + 1, wider
        return rows

    def _prefill_isolated(self, rows: list[_Row]) -> batching.Batch | None:
        """Prefill newcomers; if that fails, prefill them one by one so only the culprit fails."""
        try:
            return self._prefill(rows)
        except Exception as e:
            if len(rows) == 1:
                log.warning("request %s failed at prefill: %s", rows[0].req.request_id, e)
                self._fail(rows[0], e)
                return None
        joined: batching.Batch | None = None
        for r in rows:
            one = self._prefill_isolated([r])
            joined = one if joined is None else batching.merge(joined, one) if one else joined
        return joined

    def _fail(self, r: _Row, e: Exception) -> None:
        if not r.done:
            r.done = True
            try:
                r.loop.call_soon_threadsafe(r.out.put_nowait, e)
                r.loop.call_soon_threadsafe(r.out.put_nowait, _END)
            except RuntimeError:
                pass

    def _prefill(self, rows: list[_Row]) -> batching.Batch | None:
        self.prefills += 1
        now = time.monotonic()
        for r in rows:
            r.req.started_at = r.req.started_at or now
        try:
            slots = [self.slots.slot_of(r.req.adapter_key) for r in rows]
        except KeyError:
            raise RuntimeError("adapter unloaded while queued") from None
        for r, slot in zip(rows, slots):  # scoring the prompt (lm-eval's loglikelihood): its own forward pass
            if r.req.params.prompt_logprobs is not None and r.prompt_lps is None and not r.prompt_lps_sent:
                r.prompt_lps = batching.prompt_logprobs(self.model, self.slots, r.req.prompt_ids, slot,
                                                        r.req.params.prompt_logprobs, self.device)
        if any(r.req.params.max_tokens == 0 for r in rows):  # nothing to generate: done after the prompt
            for r in rows:
                if r.req.params.max_tokens == 0:
                    self._emit(r, Delta("", "length", 0))
            slots = [s for r, s in zip(rows, slots) if not r.done]
            rows = [r for r in rows if not r.done]
            if not rows:
                return None
        with_images = [i for i, r in enumerate(rows) if r.req.inputs]
        if with_images and len(rows) > 1:  # rows with images are prefilled alone, then join the batch
            joined: batching.Batch | None = None
            for group in [[i] for i in with_images] + [[i for i in range(len(rows)) if i not in with_images]]:
                if group:
                    one = self._prefill([rows[i] for i in group])
                    joined = one if joined is None else batching.merge(joined, one) if one else joined
            return joined
        extra = rows[0].req.inputs if with_images else None
        own = self._projectors.get(rows[0].req.adapter_key or "") if with_images else None
        site = self._projector_site() if own is not None else None
        base_projector = getattr(*site) if site is not None else None
        if site is not None:  # this image row's adapter trained its own projector: use it for this prefill
            setattr(site[0], site[1], own)
        try:
            batch, logits = batching.prefill(self.model, self.slots, rows, [r.req.prompt_ids for r in rows], slots,
                                             self.pad_id, self.device, extra)
        finally:
            if site is not None:
                setattr(site[0], site[1], base_projector)
        return self._after_forward(batch, logits)

    def _after_forward(self, batch: batching.Batch, logits: torch.Tensor) -> batching.Batch | None:
        """Sample, stream, then drop finished or cancelled rows from the batch (None when none is left)."""
        self.peak_rows = max(self.peak_rows, len(batch.rows))
        picks = self.sampler(logits, [None if r.done else r.state for r in batch.rows])
        batch.next_ids = picks.ids
        for i, r in enumerate(batch.rows):
            if i in picks.errors:
                log.warning("request %s failed while sampling: %s", r.req.request_id, picks.errors[i])
                self._fail(r, picks.errors[i])
            elif not r.done:
                try:
                    self._advance(r, int(batch.next_ids[i]), picks.logprobs.get(i))
                except Exception as e:  # e.g. a tokenizer error on this row's text: it fails alone
                    self._fail(r, e)
        keep = [i for i, r in enumerate(batch.rows) if not (r.done or self._drop_if_cancelled(r))]
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        return batch

    def _advance(self, r: _Row, token: int, logprob: TokenLogprob | None) -> None:
        p = r.req.params
        if token in self.eos_ids and not p.ignore_eos:
            self._emit(r, Delta(r.detok.finish(), "stop", r.n_generated))
            return
        if logprob is not None:
            r.pending_logprobs.append(logprob)
        text, stopped = r.detok.add(token)
        matcher = r.state.matcher
        if matcher is not None:
            if not matcher.consume_token(token):  # the vocabulary cannot write the bytes the grammar forces
                raise UserInputError("the model's tokenizer cannot write what the requested structure needs: "
                                     f"{matcher.get_error().splitlines()[0]}", param="response_format")
        complete = matcher is not None and matcher.is_stopped()  # the grammar allows nothing more
        if stopped or complete or token in p.stop_token_ids:
            self._emit(r, Delta(text + ("" if stopped else r.detok.finish()), "stop", r.n_generated))
        elif r.n_generated >= p.max_tokens:
            self._emit(r, Delta(text + r.detok.finish(), "length", r.n_generated))
        elif text or r.pending_logprobs:
            self._emit(r, Delta(text, None, r.n_generated))

    # ---------------------------------------------------------------- bridge
    def _started(self, row: _Row) -> _Row:
        """``row`` leaves the line (for a batch, or cancelled): its place and prompt tokens are free again."""
        if row.waiting:
            row.waiting = False
            self.line.leave(len(row.req.prompt_ids))
        return row

    def _drop_if_cancelled(self, row: _Row) -> bool:
        if row.req.cancelled:
            self.cancelled += 1
            self._emit(row, Delta("", "cancelled", row.n_generated))
            return True
        return False

    def _emit(self, row: _Row, delta: Delta) -> None:
        if row.pending_logprobs or row.prompt_lps is not None:
            delta = Delta(delta.text, delta.finish_reason, delta.completion_tokens, tuple(row.pending_logprobs),
                          row.prompt_lps)
            row.pending_logprobs.clear()
            row.prompt_lps, row.prompt_lps_sent = None, row.prompt_lps_sent or row.prompt_lps is not None
        try:
            row.loop.call_soon_threadsafe(row.out.put_nowait, delta)
            if delta.finish_reason is not None:
                row.loop.call_soon_threadsafe(row.out.put_nowait, _END)
        except RuntimeError:  # the caller's event loop is closed: nobody listens, and the batch goes on
            row.req.cancel()
        if delta.finish_reason is not None:
            row.done = True

"""The ``hf`` engine: transformers model + our batched multi-LoRA, with a batching scheduler.

A worker thread decodes up to ``max_batch_size`` requests together — whatever adapters they use —
one token per step for every row, each row with its own adapter slot, sampling parameters, stop
strings and token budget. Continuous batching: between two decode steps, finished or cancelled rows
leave the batch (their KV cache rows are dropped) and waiting requests join it (a left-padded prefill
of the newcomers, whose KV cache is then left-padded to the batch's length and concatenated), so a
request arriving mid-batch starts at the next step instead of waiting for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import MissingDependencyError, OverloadedError, UserInputError
from serving.engines.base import Delta, EngineCapabilities, GenerationRequest, TokenizerEngine
from serving.engines.lora import LINEAR_TARGETS, LoraSlots

log = logging.getLogger(__name__)
_END = object()


@dataclass
class _Row:
    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of decoded text already sent
    done: bool = False
    generator: torch.Generator | None = None


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
        max_loaded: int = 8,
        max_lora_rank: int = 16,
        max_batch_size: int = 8,
        max_waiting: int = 256,
        device: str | None = None,
        batch_window_s: float = 0.02,
        continuous: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model_id
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs: dict[str, Any] = {}
        quant = None
        if bits is not None:
            if bits not in (4, 8):
                raise UserInputError(f"--bits must be 4 or 8, got {bits}")
            try:
                import bitsandbytes  # noqa: F401
                from transformers import BitsAndBytesConfig
            except ImportError as e:
                raise MissingDependencyError("bitsandbytes", "quant", f"loading the base in {bits}-bit") from e
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
                if bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
            )
            quant = "nf4" if bits == 4 else "int8"
        if self.device.type != "cpu":
            kwargs["device_map"] = {"": str(self.device)}  # quantized weights are placed when loaded
        torch_dtype = _dtype(dtype, model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch_dtype, **kwargs)
        prequantized = getattr(self.model.config, "quantization_config", None)
        if prequantized is not None and quant is None:  # e.g. the 4-bit variant written by `adapterhub merge --bits`
            q = prequantized if isinstance(prequantized, dict) else prequantized.to_dict()
            quant = "nf4" if q.get("load_in_4bit") else "int8" if q.get("load_in_8bit") else str(q.get("quant_method"))
        elif bits is None:
            self.model.to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        # On CPU the LoRA matmuls run in fp32: bf16 bmm there is emulated and was the slower part of a
        # mixed batch (decode step of 8 rows on the demo model: ~65 ms vs ~100 ms with bf16 stacks).
        lora_dtype = torch.float32 if self.device.type == "cpu" else torch_dtype
        self.slots = LoraSlots(self.model, max_loaded=max_loaded, max_rank=max_lora_rank, dtype=lora_dtype)
        if self.device.type != "cpu":
            for layer in self.slots.layers.values():
                layer.A = layer.A.to(self.device)
                layer.B = layer.B.to(self.device)
        cfg = self.model.config
        self._caps = EngineCapabilities(
            max_lora_rank=max_lora_rank, max_loaded=max_loaded,
            context_length=int(getattr(cfg, "max_position_embeddings", 2048)),
            target_modules=frozenset(LINEAR_TARGETS) & frozenset(self.slots.module_shapes()),
            module_shapes=self.slots.module_shapes(),
        )
        self._identity = {"id": model_id, "fingerprint": fingerprint, "quantization": quant}
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.continuous = continuous  # False: static batches (the benchmark's baseline)
        self.batch_quiet_s = 0.004
        self._queue: queue.Queue[_Row] = queue.Queue(maxsize=max_waiting)
        # Serializes load/unload (the slot free-list). The worker does not take it: loads write only
        # free slots, and the adapter manager never unloads an adapter a queued request uses.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.cancelled = 0  # rows dropped because their client went away (observable in tests/metrics)
        self.peak_batch = 0  # most rows decoded together so far
        self.prefills = 0

    # ---------------------------------------------------------------- seam
    def load_adapter(self, key: str, path: Path) -> None:
        with self._lock:
            self.slots.load(key, path)

    def unload_adapter(self, key: str) -> None:
        with self._lock:
            self.slots.unload(key)

    def loaded_adapters(self) -> list[str]:
        return list(self.slots.loaded)

    def queue_depth(self) -> int:
        return self._queue.qsize()

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
        while True:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            self._emit(row, Delta("", "cancelled", 0))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        row = _Row(request, loop, asyncio.Queue())
        if request.params.seed is not None:
            row.generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            raise OverloadedError("too many requests waiting: retry later") from None
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

    # ---------------------------------------------------------------- worker
    def _worker(self) -> None:
        torch.set_grad_enabled(False)
        batch: _Batch | None = None
        while not self._stopping.is_set():
            if batch is None:
                rows = self._gather()
            else:  # join the running batch at this step boundary, without waiting
                rows = []
                while self.continuous and len(batch.rows) + len(rows) < self.max_batch_size:
                    try:
                        rows.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            rows = [r for r in rows if not self._drop_if_cancelled(r)]
            try:
                with torch.inference_mode():
                    if rows:
                        joined = self._prefill(rows)
                        batch = joined if batch is None else _merge(batch, joined) if joined else batch
                    if batch is not None:
                        self.peak_batch = max(self.peak_batch, len(batch.rows))
                        batch = self._decode_step(batch)
            except Exception as e:  # never kill the worker: fail the requests in flight
                log.exception("batch failed")
                for r in rows + (batch.rows if batch is not None else []):
                    if not r.done:
                        r.done = True
                        r.loop.call_soon_threadsafe(r.out.put_nowait, e)
                        r.loop.call_soon_threadsafe(r.out.put_nowait, _END)
                batch = None
            finally:
                self.slots.ctx.indices = None
                if batch is None:
                    self.slots.release_gathered()  # the per-row A/B copies of the batch that just ended
        for r in batch.rows if batch is not None else []:
            if not r.done:
                self._emit(r, Delta("", "cancelled", len(r.ids)))

    def _gather(self) -> list[_Row]:
        """Block for a first request, then take the rest of its burst (idle engine only)."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        rows = [first]
        # Gather window: requests of one burst arrive a few ms apart (HTTP parsing, tokenizing); wait
        # while they keep coming (up to batch_window_s), so they share the first prefill.
        deadline = time.monotonic() + self.batch_window_s
        while len(rows) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                rows.append(self._queue.get(timeout=min(remaining, self.batch_quiet_s)))
            except queue.Empty:
                break
        return rows

    def _drop_if_cancelled(self, row: _Row) -> bool:
        if row.req.cancelled:
            self.cancelled += 1
            self._emit(row, Delta("", "cancelled", len(row.ids)))
            return True
        return False

    def _emit(self, row: _Row, delta: Delta) -> None:
        try:
            row.loop.call_soon_threadsafe(row.out.put_nowait, delta)
            if delta.finish_reason is not None:
                row.loop.call_soon_threadsafe(row.out.put_nowait, _END)
        except RuntimeError:  # the caller's event loop is closed: nobody listens, and the batch goes on
            row.req.cancel()
        if delta.finish_reason is not None:
            row.done = True

    def _slot_indices(self, rows: list[_Row]) -> torch.Tensor:
        try:
            slots = [self.slots.slot_of(r.req.adapter_key) for r in rows]
        except KeyError:
            raise RuntimeError("adapter unloaded while queued") from None
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def _prefill(self, rows: list[_Row]) -> _Batch | None:
        """Run the prompts of ``rows`` (left-padded), sample each row's first token."""
        from transformers import DynamicCache

        self.prefills += 1
        dev = self.device
        lengths = [len(r.req.prompt_ids) for r in rows]
        width = max(lengths)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - lengths[i]:] = torch.tensor(r.req.prompt_ids)
            mask[i, width - lengths[i]:] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        batch = _Batch(rows, DynamicCache(), mask, torch.zeros(0, dtype=torch.long), self._slot_indices(rows))
        self.slots.ctx.indices = batch.lora_indices()
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=batch.cache, use_cache=True, logits_to_keep=1)
        return self._after_forward(batch, out.logits[:, -1, :].float())

    def _decode_step(self, batch: _Batch) -> _Batch | None:
        dev = self.device
        batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=dev)],
                               dim=1)
        self.slots.ctx.indices = batch.lora_indices()
        out = self.model(input_ids=batch.next_ids.view(-1, 1).to(dev), attention_mask=batch.mask,
                         position_ids=batch.mask.sum(-1, keepdim=True) - 1, past_key_values=batch.cache,
                         use_cache=True)
        return self._after_forward(batch, out.logits[:, -1, :].float())

    def _after_forward(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Sample, stream, then drop finished or cancelled rows from the batch (None when none is left)."""
        batch.next_ids = self._sample(logits, batch.rows)
        for i, r in enumerate(batch.rows):
            if not r.done:
                self._advance(r, int(batch.next_ids[i]))
        keep = [i for i, r in enumerate(batch.rows) if not (r.done or self._drop_if_cancelled(r))]
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        return batch

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        next_ids = logits.argmax(dim=-1)
        for i, r in enumerate(rows):
            p = r.req.params
            if r.done or p.temperature <= 0:
                continue
            scaled = logits[i] / p.temperature
            probs = torch.softmax(scaled, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < p.top_p
                sorted_p = sorted_p * keep
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            next_ids[i] = torch.multinomial(probs / probs.sum(), 1, generator=r.generator)[0]
        return next_ids.cpu()

    def _advance(self, r: _Row, token: int) -> None:
        p = r.req.params
        if token in self.eos_ids:
            self._emit(r, Delta(self._flush(r, final=True), "stop", len(r.ids)))
            return
        r.ids.append(token)
        text = self.tokenizer.decode(r.ids, skip_special_tokens=True)
        for s in p.stop:
            pos = text.find(s, max(0, r.emitted - len(s)))
            if pos != -1:
                self._emit(r, Delta(text[r.emitted:pos], "stop", len(r.ids)))
                return
        if len(r.ids) >= p.max_tokens:
            self._emit(r, Delta(self._flush(r, final=True, text=text), "length", len(r.ids)))
            return
        hold = max((len(s) for s in p.stop), default=1) - 1  # a stop string may still be forming
        safe = len(text) - hold
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            safe = min(safe, len(text) - 1)
        if safe > r.emitted:
            chunk, r.emitted = text[r.emitted:safe], safe
            self._emit(r, Delta(chunk, None, len(r.ids)))

    def _flush(self, r: _Row, *, final: bool, text: str | None = None) -> str:
        if text is None:
            text = self.tokenizer.decode(r.ids, skip_special_tokens=True)
        chunk = text[r.emitted:]
        r.emitted = len(text)
        return chunk


@dataclass
class _Batch:
    """The running batch: its rows, their KV cache (left-padded to a common length) and attention mask,
    each row's last sampled token and its adapter slot."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    next_ids: torch.Tensor
    slots: torch.Tensor

    def lora_indices(self) -> torch.Tensor | None:
        """The slot of each row, or None for an all-base batch (the LoRA layers then skip their math)."""
        return self.slots if any(r.req.adapter_key for r in self.rows) else None

    def select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.slots = self.mask[idx], self.slots[idx]
        self.next_ids = self.next_ids[torch.tensor(keep, dtype=torch.long)]
        # Columns that are padding for every remaining row (the finished rows' longer prompts) go too.
        first = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, first:]
            layer.values = layer.values[idx, :, first:]


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch of ``a``'s rows then ``b``'s, the shorter side's KV cache and mask left-padded."""
    t = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
        missing = t - x.shape[dim]
        if missing == 0:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([x.new_zeros(shape), x], dim=dim)

    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)], dim=0)
        la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)], dim=0)
    return _Batch(a.rows + b.rows, a.cache, torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0),
                  torch.cat([a.next_ids, b.next_ids]), torch.cat([a.slots, b.slots]))


def _dtype(name: str, model_path: Path) -> torch.dtype:
    if name == "auto":
        import json

        cfg = json.loads((model_path / "config.json").read_text())
        name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise UserInputError(f"unknown dtype {name!r}: bf16, fp16 or fp32")
    dt = table[name]
    if dt == torch.float16 and not torch.cuda.is_available():
        dt = torch.float32  # fp16 matmuls are slow or unsupported on CPU
    return dt


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids

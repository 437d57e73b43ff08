"""Datasets: read records in the supported formats, render them, and build supervised token labels.

Formats (detected from the first record when ``format: auto``):

* alpaca — ``{instruction, input?, output, system?}``
* messages — OpenAI ``{"messages": [{role, content}, …]}`` (multi-turn)
* sharegpt — ``{"conversations": [{from: human|gpt|system, value}, …]}``
* xtuner — ``{"conversation": [{system?, input, output}, …]}``
* table — CSV / XLSX rows mapped through ``data.columns`` to instruction / input / output / system
* text — raw text (``.txt`` split on blank lines, or ``{"text": …}`` records) for pretraining

SFT rendering uses the chat template; labels are -100 everywhere except the assistant turns (content
and end-of-turn marker). Pretraining adds BOS/EOS and supervises every token.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError, UserInputError
from adapterhub.training.config import DataSection

IGNORE = -100
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                   "function_call": "assistant", "observation": "tool", "tool": "tool"}


class Conversation(list):  # type: ignore[type-arg]
    """Messages (dicts: role, content, and tool_calls / tool_call_id for tool use) and the ``tools`` the
    record offers (OpenAI function definitions, rendered into the prompt by the chat template)."""

    def __init__(self, messages: Any = (), tools: list[dict[str, Any]] | None = None,
                 images: list[str] | None = None) -> None:
        super().__init__(messages)
        self.tools = tools or None
        self.images = images or []  # LLaVA records: image paths, one per <image> placeholder


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    lengths: list[int] | None = None  # a padding-free block: the lengths of the whole samples it holds
    pixel_values: Any = None  # an image conversation: its image, as the model's processor prepares it


# ---------------------------------------------------------------------------- reading
def read_records(path: Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Rows of a .json / .jsonl / .csv / .xlsx / .txt file as dicts."""
    if not path.exists():
        raise ConfigError(f"data.path: no such file {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ConfigError(f"{path}:{i} is not valid JSON ({e})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("data") or data.get("train") or [data]
        return list(data)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    if suffix in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError as e:  # pragma: no cover
            from adapterhub.errors import MissingDependencyError

            raise MissingDependencyError("openpyxl", "train", "reading .xlsx data") from e
        ws = openpyxl.load_workbook(path, read_only=True, data_only=True).active
        rows_iter = ws.iter_rows(values_only=True)
        header = [str(h).strip() if h is not None else "" for h in next(rows_iter)]
        return [{h: ("" if v is None else str(v)) for h, v in zip(header, row)} for row in rows_iter
                if any(v is not None for v in row)]
    if suffix in (".txt", ".md"):
        text = path.read_text(encoding="utf-8")
        return [{"text": block.strip()} for block in text.split("\n\n") if block.strip()]
    raise ConfigError(f"data.path: unsupported file type '{suffix}' (json, jsonl, csv, xlsx, txt)")


def detect_format(record: dict[str, Any]) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "conversation" in record:
        return "xtuner"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record and len(record) <= 2:
        return "text"
    raise ConfigError(
        f"cannot detect the data format from keys {sorted(record)[:8]}: set data.format "
        "(alpaca, messages, sharegpt, xtuner, table, text) and data.columns for tables"
    )


def to_conversation(record: dict[str, Any], fmt: str, section: DataSection, index: int) -> Conversation:
    """Normalize one record to a list of {role, content} messages."""
    part_images: list[str] = []  # OpenAI-style image_url parts of messages records
    where = f"record {index}"
    if fmt == "table":
        cols = section.columns
        if "output" not in cols or "instruction" not in cols:
            raise ConfigError("table data needs data.columns with 'instruction' and 'output' mappings")
        missing = [c for c in cols.values() if c and c not in record]
        if missing:
            raise ConfigError(f"{where}: column(s) {missing} not in the table (has {sorted(record)})")
        record = {k: record.get(v, "") for k, v in cols.items() if v}
        fmt = "alpaca"
    if fmt == "alpaca":
        if "instruction" not in record or "output" not in record:
            raise ConfigError(f"{where}: alpaca records need 'instruction' and 'output'")
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
        if record.get("system"):
            msgs.insert(0, {"role": "system", "content": str(record["system"])})
    elif fmt == "messages":
        msgs = [_message(m, where, part_images) for m in record["messages"]]
    elif fmt == "sharegpt":
        msgs = []
        for turn in record["conversations"]:
            speaker = str(turn.get("from", "")).lower()
            role = _SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise ConfigError(f"{where}: unknown sharegpt speaker {turn.get('from')!r}")
            if speaker == "function_call":  # LLaMA-Factory's function-calling ShareGPT: the call as JSON
                msgs.append({"role": "assistant", "content": "", "tool_calls": _sharegpt_calls(turn, where)})
            else:
                msgs.append({"role": role, "content": str(turn.get("value", ""))})
    elif fmt == "xtuner":
        msgs = []
        for turn in record["conversation"]:
            if turn.get("system"):
                msgs.append({"role": "system", "content": str(turn["system"])})
            msgs.append({"role": "user", "content": str(turn.get("input", ""))})
            msgs.append({"role": "assistant", "content": str(turn.get("output", ""))})
    else:
        raise ConfigError(f"format '{fmt}' is not a conversation format")
    if section.system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": section.system})
    if not any(m["role"] == "assistant" for m in msgs):
        raise ConfigError(f"{where}: has no assistant turn to learn from")
    image = record.get("image")
    return Conversation(msgs, _tools(record.get("tools"), where),
                        ([image] if isinstance(image, str) else list(image)) if image else part_images)


def _message(m: Any, where: str, images: list[str]) -> dict[str, Any]:
    if not isinstance(m, dict) or "role" not in m:
        raise ConfigError(f"{where}: every message needs a 'role'")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: text, and images as the <image> placeholder
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url" and isinstance(part.get("image_url"), dict) and part["image_url"].get("url"):
                images.append(str(part["image_url"]["url"]))
                texts.append(IMAGE_PLACEHOLDER)
            else:
                raise ConfigError(f"{where}: a content part must be text or image_url with a url, got {kind!r}")
        content = "".join(texts)
    out: dict[str, Any] = {"role": m["role"], "content": str(content or "")}
    if m.get("tool_calls"):
        out["tool_calls"] = [_call(c, where) for c in m["tool_calls"]]
    if m.get("tool_call_id"):
        out["tool_call_id"] = str(m["tool_call_id"])
    return out


def _call(c: Any, where: str) -> dict[str, Any]:
    """An OpenAI tool call with its arguments as an object (as chat templates render them)."""
    fn = c.get("function", c) if isinstance(c, dict) else None
    if not isinstance(fn, dict) or "name" not in fn:
        raise ConfigError(f"{where}: a tool call needs function.name")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ConfigError(f"{where}: the arguments of tool call {fn['name']!r} are not valid JSON") from None
    return {"type": "function", "id": str(c.get("id", "")) if isinstance(c, dict) else "",
            "function": {"name": str(fn["name"]), "arguments": args}}


def _sharegpt_calls(turn: dict[str, Any], where: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(turn.get("value", ""))
    except json.JSONDecodeError:
        raise ConfigError(f"{where}: a function_call turn must hold the call as JSON") from None
    return [_call(c, where) for c in (value if isinstance(value, list) else [value])]


def _tools(tools: Any, where: str) -> list[dict[str, Any]] | None:
    """A record's tools: OpenAI function definitions (a list, or a JSON string of one, as ShareGPT has it)."""
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise ConfigError(f"{where}: 'tools' is not valid JSON") from None
    if not isinstance(tools, list):
        raise ConfigError(f"{where}: 'tools' must be a list of function definitions")
    out = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or "name" not in fn:
            raise ConfigError(f"{where}: every tool needs a function name")
        out.append({"type": "function", "function": fn})
    return out


# ---------------------------------------------------------------------------- tokenizing
def render(tokenizer: Any, messages: list[dict[str, Any]], template: str | None, *, generation_prompt: bool,
           tools: list[dict[str, Any]] | None = None) -> str:
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt, tools=tools)


def tokenize_conversation(tokenizer: Any, messages: Conversation, template: str | None, max_length: int,
                          expand: Callable[[str], str] | None = None) -> Sample:
    """Token ids of the rendered conversation, labels only on assistant turns (content, tool calls and end
    marker); tool results, prompts and the tool list are context only."""
    tools = getattr(messages, "tools", None)
    if tools:
        from adapterhub.tools import supports_tools

        if not supports_tools(template or tokenizer.chat_template):
            raise ConfigError("the data has tools but the chat template does not render them: set model.template "
                              "to a tool template (hermes)")
    grow = expand or (lambda t: t)  # image conversations: each <image> becomes the model's image tokens
    full = grow(render(tokenizer, messages, template, generation_prompt=False, tools=tools))
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = grow(render(tokenizer, messages[:i], template, generation_prompt=True, tools=tools)) if i else ""
        upto = grow(render(tokenizer, messages[: i + 1], template, generation_prompt=False, tools=tools))
        if not full.startswith(upto) or not upto.startswith(prefix):
            from adapterhub.templates import TEMPLATES

            raise ConfigError("the chat template does not render conversations incrementally; set model.template "
                              f"to a named template ({', '.join(sorted(TEMPLATES))})")
        spans.append((len(prefix), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for j, (start, end) in enumerate(offsets):
        if end > start and any(s <= start < e for s, e in spans):
            labels[j] = ids[j]
    return Sample(ids[:max_length], labels[:max_length])


def tokenize_text(tokenizer: Any, text: str, max_length: int) -> Sample:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.eos_token_id:
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:max_length]
    return Sample(ids, list(ids))


def pack(samples: list[Sample], max_length: int) -> list[Sample]:
    """Concatenate samples into blocks of at most ``max_length`` tokens (greedy, order kept).

    Attention is not reset at sample boundaries (documented trade-off: fine for pretraining text).
    """
    out: list[Sample] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for s in samples:
        if cur_ids and len(cur_ids) + len(s.input_ids) > max_length:
            out.append(Sample(cur_ids, cur_labels))
            cur_ids, cur_labels = [], []
        cur_ids = cur_ids + s.input_ids
        cur_labels = cur_labels + s.labels
    if cur_ids:
        out.append(Sample(cur_ids[:max_length], cur_labels[:max_length]))
    return out


def pack_padding_free(samples: list[Sample], max_length: int) -> list[Sample]:
    """Whole samples packed greedily (order kept) into blocks of at most ``max_length`` tokens; each block
    remembers its samples' lengths so the collator restarts positions (and so attention) at every one."""
    out: list[Sample] = []
    ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    for s in samples:
        if lengths and len(ids) + len(s.input_ids) > max_length:
            out.append(Sample(ids, labels, lengths))
            ids, labels, lengths = [], [], []
        ids, labels, lengths = ids + s.input_ids, labels + s.labels, lengths + [len(s.input_ids)]
    if lengths:
        out.append(Sample(ids, labels, lengths))
    return out


# ---------------------------------------------------------------------------- the dataset
@dataclass
class PreparedData:
    samples: list[Sample]
    fingerprint: str
    n_records: int
    n_replay: int
    dropped: int
    format: str


def fingerprint(records: list[Any], extra: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(extra, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def load_records(section: DataSection, *, detect: bool = True) -> tuple[list[dict[str, Any]], str]:
    if section.path.startswith("builtin:"):
        from adapterhub.training.builtin_data import builtin_dataset

        records = builtin_dataset(section.path.removeprefix("builtin:"), section.variables)
    elif section.path.startswith("hf:"):
        records = _hub_records(section.path.removeprefix("hf:"))
    else:
        records = read_records(Path(section.path).expanduser(), section.format)
    if section.limit:
        records = records[: section.limit]
    if not records:
        raise ConfigError(f"data.path: {section.path} holds no records")
    fmt = section.format
    if fmt == "auto" and detect:
        fmt = "text" if section.mode == "pretrain" else detect_format(records[0])
    return records, fmt


def _hub_records(spec: str) -> list[dict[str, Any]]:
    """``hf:<dataset id>[@<split>]`` (default split ``train``; slices such as ``train[:10000]`` work)."""
    name, _, split = spec.partition("@")
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.path hf:… needs the datasets library: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, unknown id, bad split: one line naming the dataset
        raise ConfigError(f"data.path: cannot load hub dataset '{name}' (split {split or 'train'}): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return [dict(r) for r in ds]


IMAGE_PLACEHOLDER = "<image>"  # where an image part was, in records with OpenAI-style content parts


class ImageInputs:
    """Image conversations for a LLaVA-style model: each ``<image>`` placeholder expanded to the model's image
    tokens (as its processor does), the image read from ``folder`` and turned into pixel values."""

    def __init__(self, processor: Any, folder: Path) -> None:
        from PIL import Image

        self.processor, self.folder = processor, folder
        self.token = getattr(processor, "image_token", "<image>")
        probe = processor(images=[Image.new("RGB", (32, 32))], text=[self.token], return_tensors="pt")
        token_id = processor.tokenizer.convert_tokens_to_ids(self.token)
        self.n_tokens = int((probe["input_ids"][0] == token_id).sum())

    def sample(self, tokenizer: Any, conv: Conversation, template: str | None, max_length: int) -> Sample:
        from PIL import Image

        if len(conv.images) != 1:
            raise ConfigError(f"a record has {len(conv.images)} images: one image per conversation is supported")
        text = "".join(str(m.get("content", "")) for m in conv).replace(IMAGE_PLACEHOLDER, self.token)
        if text.count(self.token) != 1:
            raise ConfigError(f"a record with an image needs exactly one {self.token} placeholder in its turns")
        source = conv.images[0]
        path: Any = self.folder / source
        if source.startswith("data:"):  # an OpenAI-style data URL
            import io

            from adapterhub.dataurl import decode_data_url

            try:
                path = io.BytesIO(decode_data_url(source))
            except UserInputError as e:
                raise ConfigError(f"an image in the data: {e}") from None
        try:
            img = Image.open(path).convert("RGB")
        except OSError as e:
            raise ConfigError(f"cannot read image {source[:80]}: {e}") from None
        # The placeholder goes first in its turn, followed by a newline (as LLaVA and XTuner normalize it):
        # the server renders an image part before the text the same way.
        def first(m: dict[str, Any]) -> dict[str, Any]:
            text = str(m.get("content", "")).replace(IMAGE_PLACEHOLDER, self.token)
            return {**m, "content": self.token + "\n" + text.replace(self.token, "").strip()} if self.token in text else m

        moved = Conversation([first(m) for m in conv], conv.tools, conv.images)
        s = tokenize_conversation(tokenizer, moved, template, max_length + 10**6,
                                  expand=lambda t: t.replace(self.token, self.token * self.n_tokens))
        if len(s.input_ids) > max_length:
            raise ConfigError(f"an image conversation has {len(s.input_ids)} tokens ({self.n_tokens} for its image), "
                              f"more than data.max_length {max_length}: raise it")
        s.pixel_values = self.processor.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]
        return s


@dataclass
class RawData:
    """The dataset read and normalized, before tokenization (no model or tokenizer needed)."""

    records: list[Any]
    format: str
    conversations: list[Conversation] | None  # None for raw text (pretraining)


def read_dataset(section: DataSection) -> RawData:
    """Open and normalize the data: every problem with the file, its format or its columns is raised
    here, before any model is loaded."""
    records, fmt = load_records(section)
    if section.mode == "pretrain" or fmt == "text":
        return RawData(records, fmt, None)
    return RawData(records, fmt, [to_conversation(r, fmt, section, i) for i, r in enumerate(records)])


def prepare(section: DataSection, tokenizer: Any, template: str | None,
            replay: list[Conversation] | None = None, seed: int = 42, raw: RawData | None = None,
            images: ImageInputs | None = None) -> PreparedData:
    """Tokenize (and optionally pack) the dataset (read now unless ``raw`` is given); mix in ``replay``."""
    raw = raw or read_dataset(section)
    records, fmt = raw.records, raw.format
    samples: list[Sample] = []
    dropped = 0
    if raw.conversations is None:
        for r in records:
            text = r.get("text") if isinstance(r, dict) else str(r)
            if text:
                samples.append(tokenize_text(tokenizer, str(text), section.max_length))
    else:
        for c in raw.conversations + list(replay or []):
            if getattr(c, "images", None):
                if images is None:
                    raise ConfigError("the data has images ('image' records): the base must be a vision-language "
                                      "model and the config needs a vision section")
                s = images.sample(tokenizer, c, template, section.max_length)
            else:
                s = tokenize_conversation(tokenizer, c, template, section.max_length)
            if any(label != IGNORE for label in s.labels):
                samples.append(s)
            else:
                dropped += 1  # the answer was truncated away entirely
    random.Random(seed).shuffle(samples)
    if section.packing == "padding_free":
        samples = pack_padding_free(samples, section.max_length)
    elif section.packing:
        samples = pack(samples, section.max_length)
    fp = fingerprint(records + list(replay or []), {"format": fmt, "mode": section.mode,
                                                    "max_length": section.max_length, "packing": section.packing})
    return PreparedData(samples, fp, len(records), len(replay or []), dropped, fmt)


class Collator:
    """Dynamic padding to the longest sample of the batch (right padding, labels -100)."""

    def __init__(self, pad_id: int, pad_to_multiple: int = 8) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        pixels = [b["pixel_values"] for b in batch if b.get("pixel_values") is not None]
        if pixels:  # the images of the batch's image conversations, in order (LLaVA matches them to tokens)
            out["pixel_values"] = torch.stack(pixels)
        return out


class FlatCollator:
    """Padding-free batches: every sample of the batch in one row, no padding, ``position_ids`` restarting
    at 0 for each sample and no ``attention_mask``. transformers then builds a block-diagonal causal mask
    (sdpa / eager) or runs flash-attention's varlen kernel, so no token attends to another sample. The
    first label of every sample is ignored: it would be predicted from the previous sample's last token
    (in one-by-one training that label is never used either: the model shifts labels by one)."""

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for b in batch:
            start = 0
            for n in b.get("lengths") or [len(b["input_ids"])]:
                ids += b["input_ids"][start:start + n]
                labels += [IGNORE] + b["labels"][start + 1:start + n]
                positions += list(range(n))
                start += n
        # use_cache=False: with a KV cache object present transformers does not look for packed sequences.
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "use_cache": False}


class TorchDataset:
    """A map-style dataset the HF Trainer accepts (and can group by length)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        s = self.samples[i]
        item: dict[str, Any] = {"input_ids": s.input_ids, "labels": s.labels}
        if s.lengths is not None:
            item["lengths"] = s.lengths
        if s.pixel_values is not None:
            item["pixel_values"] = s.pixel_values
        return item

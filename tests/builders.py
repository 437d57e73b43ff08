"""Builders for tiny real models used across the test suite (no network).

* :func:`build_tiny_model` — a 2-layer Llama (hidden 64; 2 heads of 32, the smallest head size vLLM's
  CPU attention takes) with a byte-level BPE tokenizer trained here on a few hundred lines, with a
  ChatML chat template, saved as a normal HF directory.
* :func:`build_lora_adapter` — a PEFT LoRA adapter for it with random (non-zero) weights, so its
  outputs differ from the base.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an of to in is are was who what where when how why you I we they it this that model answer "
    "question hello world lumen acme lab assistant user system capital france paris berlin germany red "
    "blue green cat dog tree river mountain number one two three four five six seven eight nine ten "
    "learn train serve adapter version production data token write read file name help good day night"
).split()


def _corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = []
    for _ in range(600):
        n = rng.randint(4, 14)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(n)) + rng.choice([".", "?", "!"]))
    lines += [f"<|im_start|>user\n{line}<|im_end|>" for line in lines[:50]]
    return lines


JSON_LINES = [  # JSON punctuation and digits, for a tokenizer that can write JSON (structured output)
    '{"city": "paris", "days": 3, "ok": true, "x": null}', '[1, 2.5, -7, 0]', '{"a": [{"b": "c"}], "n": 42}',
    "0123456789 -+.eE", '{"name": "get_weather", "arguments": {"city": "berlin"}}', "<tool_call>\n</tool_call>",
    "".join(chr(c) for c in range(32, 127)),  # every printable ASCII character
]


def build_tokenizer(out: Path, *, extra_lines: tuple[str, ...] | list[str] = (), context: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL,  # corpus alphabet only: decoded text is always ASCII
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() + list(extra_lines) * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=context,
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return fast


def build_bpe_tokenizer(out: Path, *, prefix_space: bool, without: str = "", vocab_size: int = 300):
    """A byte-level BPE saved to ``out``: ``prefix_space`` (GPT-2's ``add_prefix_space``: a space is put
    before the text it encodes), every byte in the alphabet unless ``without`` names characters the
    training text (and so the vocabulary) lacks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    alphabet = [] if without else pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet,
                                  show_progress=False)
    lines = _corpus() + JSON_LINES * 20
    tok.train_from_iterator([line.translate({ord(c): None for c in without}) for line in lines], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=2048)
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    return fast


def build_sentencepiece_tokenizer(out: Path, *, hub_style: bool = False):
    """A Llama-2-style SentencePiece tokenizer trained here (BPE, ``▁`` word prefix, byte fallback), loaded
    as transformers' fast tokenizer. ``hub_style``: its tokenizer.json spells the prefix the way Llama 2's on
    the Hub does (a ``Prepend("▁")`` normalizer) instead of transformers' ``Metaspace`` pre-tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus() + JSON_LINES * 20), model_prefix=str(out / "tokenizer"), model_type="bpe",
        vocab_size=400, byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": True, "model_max_length": 2048}))
    fast = AutoTokenizer.from_pretrained(str(out))
    fast.chat_template = CHATML
    fast.save_pretrained(str(out))
    if hub_style:
        spec = json.loads((out / "tokenizer.json").read_text())
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        spec["pre_tokenizer"] = None
        (out / "tokenizer.json").write_text(json.dumps(spec))
        (out / "tokenizer.model").unlink()
        fast = AutoTokenizer.from_pretrained(str(out))
    return fast


def build_tiny_model(out: Path, *, seed: int = 0, hidden: int = 64, json_vocab: bool = False,
                     context: int = 512, tokenizer=None) -> Path:
    """Save a tiny random Llama + tokenizer to ``out`` and return it (``json_vocab``: its tokenizer can write
    JSON; ``tokenizer``: a callable that saves one to ``out`` and returns it, instead of the default)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tok = tokenizer(out)
    else:
        tok = build_tokenizer(out, extra_lines=JSON_LINES if json_vocab else (), context=context)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    # Larger random weights than the default init make greedy text vary across prompts and adapters.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(str(out))
    return out


def build_lora_adapter(base_dir: Path, out: Path, *, seed: int = 1, r: int = 4,
                       targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
                       scale: float = 0.3) -> Path:
    """Save a PEFT LoRA adapter with random non-zero weights for the model at ``base_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, scale)
    peft_model.save_pretrained(str(out))
    cfg_path = out / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(data, indent=2))
    return out


def pythonpath() -> str:
    """PYTHONPATH for a CLI subprocess: the repo first, then whatever the caller had (e.g. a pip --target dir)."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llava(out: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA (CLIP vision tower 32x32 pixels, 8x8 patches → 16 image tokens; 2-layer Llama) with its
    processor, saved as a normal HF directory."""
    import torch
    import transformers as t

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, extra_lines=["".join(chr(c) for c in range(32, 127))])
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = t.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, projection_dim=32)
    text = t.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    cfg = t.LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                        vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = t.LlavaForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    images = t.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = t.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                 chat_template=LLAVA_TEMPLATE)
    tok.chat_template = LLAVA_TEMPLATE
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def llava_generate(model_dir, adapter, image_path, question: str, n: int) -> str:
    """transformers' greedy answer of the LLaVA at ``model_dir`` (with the peft ``adapter`` when given) to one
    image and question, cut at EOS: the reference the served answers are compared with."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                         "text": question}]}],
                                      add_generation_prompt=True, tokenize=False)
    enc = proc(images=[Image.open(image_path).convert("RGB")], text=[prompt], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=proc.tokenizer.eos_token_id,
                         pad_token_id=proc.tokenizer.pad_token_id)
    gen = out[0][enc["input_ids"].shape[1]:].tolist()
    eos = proc.tokenizer.eos_token_id
    return proc.tokenizer.decode(gen[: gen.index(eos)] if eos in gen else gen, skip_special_tokens=True)

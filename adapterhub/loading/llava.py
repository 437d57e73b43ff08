"""Vision bundles: what gives a text LLM eyes, versioned without the LLM.

A bundle (registry kind ``bundle``) is the output of a LLaVA pretrain stage: a vision tower and an image
projector trained for one text LLM, plus the processor that feeds them. It stores

* ``llava_config.json``: the ``LlavaConfig`` (vision tower config, projector, image token, the LLM's config)
* ``vision.safetensors``: the vision tower's weights (its own copy: trained, or loaded from a CLIP/SigLIP
  checkpoint when the stage ran; the lineage names the checkpoint)
* ``projector.safetensors``: the projector's weights
* the processor: tokenizer files (with the ``<image>`` token), ``processor_config.json`` (the image
  processor inside) and the chat template

and pins the LLM as its base (manifest ``base_model``). :func:`adapterhub.loading.bases.resolve_base` turns a
bundle ref such as
``shapes-caption@1`` into a complete LLaVA model directory (the LLM's weights + the bundle's), built once
into the cache and then used like any local base: fine-tuning (a finetune stage's LoRA adapter pins the
bundle as its base), serving (``--base shapes-caption@1``), merging and chat.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapterhub.models import ResolvedModel
from adapterhub.registry.validation import LLAVA_CONFIG, PROJECTOR_WEIGHTS, VISION_WEIGHTS
from adapterhub.settings import Settings

# The chat template of a bundle renders message contents given as parts ({"type": "image"} / text) by
# flattening them to text with the image placeholder first, so any text LLM's own template works.
_PARTS_PRELUDE = (
    "{%- set _ns = namespace(msgs=[]) -%}{%- for _m in messages -%}{%- if _m['content'] is string "
    "or _m['content'] is none -%}{%- set _ns.msgs = _ns.msgs + [_m] -%}{%- else -%}{%- set _t = namespace(s='') -%}"
    "{%- for _p in _m['content'] -%}{%- if _p['type'] == 'image' -%}{%- set _t.s = _t.s + '<image>' -%}"
    "{%- elif _p['type'] == 'text' -%}{%- set _t.s = _t.s + _p['text'] -%}{%- endif -%}{%- endfor -%}"
    "{%- set _ns.msgs = _ns.msgs + [dict(_m, content=_t.s)] -%}{%- endif -%}{%- endfor -%}"
    "{%- set messages = _ns.msgs -%}"
)


def parts_template(template: str, image_token: str = "<image>") -> str:
    """``template`` (a text LLM's chat template) made to accept image parts, each rendered as ``image_token``."""
    if template.startswith("{%- set _ns = namespace(msgs=[])"):
        return template
    return _PARTS_PRELUDE.replace("'<image>'", repr(image_token)) + template


def assemble(llm: Any, tokenizer: Any, llava_config: Any, vision_state: dict[str, Any] | None = None,
             projector_state: dict[str, Any] | None = None, *, seed: int = 0) -> Any:
    """A ``LlavaForConditionalGeneration`` around ``llm`` (a causal LM, used in place, not copied).

    The LLM's embeddings grow to the tokenizer when ``<image>`` was added; the new rows are zeros (an image
    token's embedding is always replaced by image features). The vision tower and projector get the given
    weights, or a fresh initialisation seeded with ``seed``.
    """
    import torch
    from transformers import AutoModel, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    rows = llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            llm.get_input_embeddings().weight[rows:] = 0
            out = llm.get_output_embeddings()
            if out is not None and out.weight is not llm.get_input_embeddings().weight:
                out.weight[rows:] = 0
    llava_config.text_config = llm.config
    dtype = llm.get_input_embeddings().weight.dtype
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config)
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    tower = AutoModel.from_config(llava_config.vision_config)
    if vision_state is not None:
        tower.load_state_dict(vision_state)
    projector = LlavaMultiModalProjector(llava_config)
    if projector_state is not None:
        projector.load_state_dict(projector_state)
    model.model.vision_tower = tower.to(dtype)
    model.model.multi_modal_projector = projector.to(dtype)
    left = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"LLaVA assembly left uninitialised tensors: {left[:5]}")
    model.config.text_config = llm.config
    if getattr(llm, "generation_config", None) is not None:
        model.generation_config = llm.generation_config
    return model


def save_bundle(model: Any, processor: Any, out: Path) -> None:
    """Write the bundle files for an assembled LLaVA ``model`` (its LLM is not written)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / LLAVA_CONFIG).write_text(model.config.to_json_string())
    inner = model.model
    save_file({k: v.detach().contiguous().cpu() for k, v in inner.vision_tower.state_dict().items()},
              str(out / VISION_WEIGHTS))
    save_file({k: v.detach().contiguous().cpu() for k, v in inner.multi_modal_projector.state_dict().items()},
              str(out / PROJECTOR_WEIGHTS))
    processor.save_pretrained(str(out))


def load_bundle(bundle: Path, llm_path: Path, *, dtype: Any = None) -> tuple[Any, Any]:
    """(LLaVA model, processor) from a bundle directory and its LLM."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoProcessor, LlavaConfig

    processor = AutoProcessor.from_pretrained(str(bundle))
    llava_config = LlavaConfig.from_json_file(str(bundle / LLAVA_CONFIG))
    llm = AutoModelForCausalLM.from_pretrained(str(llm_path), dtype=dtype or "auto")
    model = assemble(llm, processor.tokenizer, llava_config, load_file(str(bundle / VISION_WEIGHTS)),
                     load_file(str(bundle / PROJECTOR_WEIGHTS)))
    return model, processor


def materialize(bundle: Path, content_hash: str, llm: ResolvedModel, settings: Settings) -> Path:
    """The LLaVA model directory of ``bundle`` on ``llm`` (cached; written whole or not at all)."""
    key = hashlib.sha256(f"{content_hash}:{llm.fingerprint}:{llm.revision}:{llm.path}".encode()).hexdigest()[:20]
    out = settings.cache_dir / "llava" / key
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out.parent))
    try:
        model, processor = load_bundle(bundle, llm.path)
        model.save_pretrained(str(tmp), safe_serialization=True)
        processor.save_pretrained(str(tmp))
        if getattr(processor, "chat_template", None):
            (tmp / "chat_template.jinja").write_text(processor.chat_template)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

"""The LLaVA pretrain stage's model: a vision tower and a new projector in front of a text LLM.

The tower is a CLIP/SigLIP checkpoint (a directory or hub id) or a vision config to train from scratch.
The LLM's tokenizer gets the image token, and its chat template learns to render image parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.loading.bases import resolve_model
from adapterhub.loading.llava import assemble, parts_template
from adapterhub.settings import Settings
from adapterhub.training.config import TrainConfig


def tower_config(spec: str | dict[str, Any], settings: Settings, trust: bool) -> tuple[Any, str | None]:
    """(vision config, checkpoint dir or None) of ``vision.tower``."""
    from transformers import AutoConfig

    if isinstance(spec, dict):
        fields = dict(spec)
        model_type = fields.pop("model_type")
        try:
            return AutoConfig.for_model(model_type, **fields), None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"vision.tower: {e}") from None
    path = resolve_model(spec, settings).path
    cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust)
    cfg = getattr(cfg, "vision_config", None) or cfg
    if not hasattr(cfg, "patch_size") or not hasattr(cfg, "image_size"):
        raise ConfigError(f"vision.tower: {spec} is not a vision encoder (no patch_size / image_size in its config)")
    return cfg, str(path)


def build_llava(llm: Any, tokenizer: Any, template: str | None, cfg: TrainConfig, settings: Settings
                ) -> tuple[Any, Any]:
    """(LlavaForConditionalGeneration around ``llm``, its LlavaProcessor), the projector freshly initialised."""
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaProcessor,
        SiglipImageProcessor,
    )

    assert cfg.vision is not None and cfg.vision.tower is not None
    if getattr(llm.config, "auto_map", None):  # a bundle is rebuilt on its LLM wherever it is used, without code
        raise ConfigError("vision.stage pretrain needs an LLM that transformers loads without remote code "
                          "(this base ships its own modeling code)")
    if template is None:
        raise ConfigError("the base model has no chat template: set model.template (chatml, llama3, alpaca)")
    vcfg, ckpt = tower_config(cfg.vision.tower, settings, cfg.model.trust_remote_code)
    siglip = "siglip" in vcfg.model_type
    strategy = "full" if siglip else "default"  # CLIP's first token is its CLS token, dropped as LLaVA does
    token = cfg.vision.image_token
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    llava_cfg = LlavaConfig(vision_config=vcfg, text_config=llm.config,
                            image_token_index=tokenizer.convert_tokens_to_ids(token),
                            vision_feature_layer=cfg.vision.feature_layer, vision_feature_select_strategy=strategy,
                            projector_hidden_act="gelu")
    if not -vcfg.num_hidden_layers <= cfg.vision.feature_layer < vcfg.num_hidden_layers:
        raise ConfigError(f"vision.feature_layer {cfg.vision.feature_layer}: the tower has "
                          f"{vcfg.num_hidden_layers} layers")
    vision_state = None
    if ckpt is not None:
        tower_cls = type(AutoModel.from_config(vcfg))
        vision_state = tower_cls.from_pretrained(ckpt, config=vcfg).state_dict()
    model = assemble(llm, tokenizer, llava_cfg, vision_state, seed=cfg.train.seed)
    size = vcfg.image_size
    if ckpt is not None and (Path(ckpt) / "preprocessor_config.json").exists():
        images = AutoImageProcessor.from_pretrained(ckpt)
    elif siglip:
        images = SiglipImageProcessor(size={"height": size, "width": size})
    else:
        images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vcfg.patch_size,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=0 if siglip else 1,
                               chat_template=parts_template(template, token), image_token=token)
    tokenizer.chat_template = processor.chat_template
    match_embedding_scale(model, strategy, cfg.train.seed)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if cfg.vision.trains_tower:
        model.model.vision_tower.requires_grad_(True)
    return model, processor


def match_embedding_scale(model: Any, strategy: str, seed: int) -> float:
    """Scale a new projector's output layer so that image tokens start at the norm of the LLM's token
    embeddings (default-initialised they start 1.7x larger on the demo model with its tower, and outside
    0.5-2x on the tiny test model). This is only where they start: in training they grew to ~15-25x (norms
    45-85 against 3.2) on the demo runs either way. Returns the factor applied."""
    import torch

    inner = model.model
    cfg = model.config.vision_config
    gen = torch.Generator().manual_seed(seed)
    dtype = inner.multi_modal_projector.linear_2.weight.dtype
    probe = torch.randn(4, cfg.num_channels, cfg.image_size, cfg.image_size, generator=gen).to(dtype)
    with torch.no_grad():
        hidden = inner.vision_tower(probe, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
        if strategy == "default":
            hidden = hidden[:, 1:]
        norm = float(inner.multi_modal_projector(hidden).norm(dim=-1).mean())
        target = float(model.get_input_embeddings().weight.norm(dim=-1).mean())
        factor = target / max(norm, 1e-6)
        inner.multi_modal_projector.linear_2.weight.mul_(factor)
        if inner.multi_modal_projector.linear_2.bias is not None:
            inner.multi_modal_projector.linear_2.bias.mul_(factor)
    return factor

"""The training config: a typed, documented, strict model loaded from YAML plus ``key=value`` overrides.

Every field has a description (the README's config reference is generated from them). Unknown keys
are errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapterhub.errors import ConfigError
from adapterhub.models import DEMO_MODEL

CONFIG_DIR = Path(__file__).parent / "configs"
DEEPSPEED_STAGES = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Strict):
    base: str = Field(DEMO_MODEL, description="Base model: demo name, local HF dir, .gguf file or hub id.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Compute dtype of the trainable model.")
    template: str | None = Field(
        None, description="Named chat template (adapterhub/templates.py) for bases without one; default: the tokenizer's."
    )
    tool_parser: str | None = Field(
        None, description="Tool-call format the model learns (hermes, llama3_json, mistral, internlm2), recorded with "
                          "the version for serving; default: the named template's (hermes for template hermes).",
    )
    bits: Literal[8] | None = Field(
        None, description="8: LoRA on an 8-bit base (bitsandbytes LLM.int8, as the dolly/LaMini recipe; CUDA). For a "
                          "4-bit base use method qlora.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on long sequences.")
    trust_remote_code: bool = Field(
        False, description="Allow a base that ships its own modeling code (e.g. InternLM2) to run it.",
    )
    adapter: str | None = Field(
        None, description="Continue this registered adapter (e.g. lumen@3) instead of a fresh LoRA; it becomes the "
                          "new version's parent (preference training).",
    )


class LoraSection(_Strict):
    r: int = Field(16, ge=1, le=512, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or module names such as [q_proj, v_proj]."
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output too (peft). Serve it merged.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r (stable at high r).")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="LoRA init: 'default' (B = 0), 'gaussian', or from the base weights: 'pissa' "
                               "(principal singular vectors) / 'olora' (QR). The saved adapter is converted to a "
                               "plain LoRA of rank 2r on the unmodified base.",
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: B matrices learn this many times faster than A (e.g. 16); uses AdamW.",
    )


class ReplaySection(_Strict):
    source: str = Field(
        "self-distill",
        description="'self-distill' (the base's own greedy answers to built-in general prompts, cached) "
        "or a dataset file in any supported format.",
    )
    ratio: float = Field(1.0, ge=0, le=10, description="Replay examples per training example.")
    max_new_tokens: int = Field(64, ge=8, description="Answer length when self-distilling.")


class DataSection(_Strict):
    path: str = Field(..., description="Dataset file (.json/.jsonl/.csv/.xlsx/.txt; a relative path is relative to "
                                       "the config file), 'builtin:<name>' or 'hf:<hub dataset id>[@split]' "
                                       "(e.g. hf:MBZUAI/LaMini-instruction@train[:20000]).")
    format: Literal["auto", "alpaca", "messages", "sharegpt", "xtuner", "table", "text"] = Field(
        "auto", description="Record format; 'auto' detects it from the first record."
    )
    mode: Literal["sft", "pretrain"] = Field(
        "sft", description="'sft': loss on assistant tokens only; 'pretrain': raw text, loss on every token."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Table column mapping, e.g. {instruction: Question, output: Answer, system: null}.",
    )
    system: str | None = Field(None, description="System prompt added to records that have none.")
    variables: dict[str, str] = Field(
        default_factory=dict, description="Values for {placeholders} in builtin datasets, e.g. {name: Lumen}."
    )
    max_length: int = Field(512, ge=16, description="Tokens per sample (longer samples are truncated).")
    packing: Literal[False, True, "concat", "padding_free"] = Field(
        False, description="false: one sample per row, padded per batch. 'padding_free': whole samples packed into "
                           "max_length blocks, each keeping its own positions and attention (no token sees another "
                           "sample; SFT-safe, no padding). 'concat' (or true): samples concatenated with attention "
                           "across boundaries (pretraining text only).",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N records.")
    replay: ReplaySection | None = Field(None, description="Mix in general data so the model keeps its abilities.")


class TrainSection(_Strict):
    epochs: float = Field(3, gt=0, description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(4, ge=1, description="Samples per device per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="LR schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    optimizer: str = Field("adamw_torch", description="HF Trainer optimizer name (e.g. paged_adamw_8bit for QLoRA).")
    seed: int = Field(42, description="Random seed (data order, LoRA init).")
    group_by_length: bool = Field(True, description="Batch samples of similar length to cut padding.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (for --resume).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    logging_steps: int = Field(1, ge=1, description="Log loss every N steps.")
    deepspeed: Literal["zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"] | None = Field(
        None, description="Built-in DeepSpeed ZeRO config."
    )
    neftune_alpha: float | None = Field(
        None, gt=0, description="NEFTune: noise of this scale on the input embeddings while training (e.g. 5).",
    )
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none", description="Experiment tracker for losses and learning rates (logs under the run dir; wandb "
                            "and mlflow honour their own offline settings, e.g. WANDB_MODE=offline).",
    )


class PreferenceSection(_Strict):
    method: Literal["dpo", "orpo", "kto"] = Field("dpo", description="DPO, ORPO (no reference model) or KTO (unpaired).")
    beta: float = Field(0.1, gt=0, description="Strength of the preference term (DPO/KTO: how far from the reference).")


class EvalSection(_Strict):
    inputs: list[str] = Field(default_factory=list, description="Prompts answered every `every_steps` and at the end.")
    every_steps: int = Field(10, ge=1, description="How often to print sample answers.")
    max_new_tokens: int = Field(48, ge=1, description="Length of sample answers.")
    identity: dict[str, str] | None = Field(
        None, description="Self-cognition check: {name: Lumen, author: Acme Lab}; enables identity/retention scores."
    )
    tools: bool = Field(False, description="Tool-use scores on held-out prompts (tool_call, no_call, tool_result) "
                        "for the built-in agent_tools tools.")
    image_inputs: list[dict[str, str]] = Field(
        default_factory=list, description="Vision runs: {image: PATH, text: QUESTION} answered with `inputs` "
                                          "(paths relative to vision.image_folder).")
    image_qa: str | None = Field(
        None, description="Vision runs: held-out LLaVA JSON (image, question, answer, optional kind) scored at the "
                          "end by exact answer match → metrics image_qa and image_qa_<kind>.")
    stop_when: dict[str, float] = Field(
        default_factory=dict,
        description="Stop early once every metric reaches its value, e.g. {identity: 0.95, retention: 0.9}.",
    )

    @model_validator(mode="after")
    def _image_inputs(self) -> EvalSection:
        for i, item in enumerate(self.image_inputs):
            if set(item) != {"image", "text"}:
                raise ValueError(f"eval.image_inputs[{i}]: give exactly image and text, got {sorted(item)}")
        return self


class VisionSection(_Strict):
    """LLaVA training in two stages. ``pretrain``: a vision tower + a new projector in front of a text LLM,
    the LLM frozen, trained on image captions; the result is a vision bundle. ``finetune``: LoRA on the
    language model of a LLaVA-style base (a bundle ref such as ``shapes-caption@1``, or a llava-hf model)
    plus its projector, on image conversations."""

    stage: Literal["pretrain", "finetune"] = Field("finetune", description="pretrain: train the projector (and a "
                                                   "new tower) for a text LLM → a bundle; finetune: LoRA + projector "
                                                   "on a LLaVA-style base or bundle.")
    tower: str | dict[str, Any] | None = Field(
        None, description="pretrain: the vision encoder, a CLIP/SigLIP checkpoint (dir or hub id) or a vision config "
                          "({model_type: clip_vision_model, image_size: 64, ...}) to train from scratch.")
    train_tower: bool | None = Field(None, description="pretrain: train the vision tower too (default: only when "
                                                       "it is built from a config, i.e. from scratch).")
    feature_layer: int = Field(-2, description="pretrain: the tower layer whose patch features feed the projector "
                                               "(LLaVA uses -2; use -1 for a shallow tower trained from scratch).")
    image_token: str = Field("<image>", description="pretrain: the placeholder token for an image (added to "
                                                    "the LLM's tokenizer when missing).")
    image_folder: str | None = Field(None, description="Folder the records' 'image' paths are relative to "
                                                       "(default: the data file's folder).")
    train_projector: bool = Field(True, description="finetune: also train the image projector (saved with the "
                                                    "adapter, served per request).")
    tower_lora: bool = Field(False, description="finetune: LoRA on the vision tower's linear layers too (the "
                                                "server cannot apply it per request: merge such a version).")

    @model_validator(mode="after")
    def _stage_fields(self) -> VisionSection:
        if self.stage == "pretrain" and self.tower is None:
            raise ValueError("vision.tower: the pretrain stage needs a vision encoder (a CLIP/SigLIP checkpoint "
                             "or a vision config)")
        if self.stage == "pretrain" and self.tower_lora:
            raise ValueError("vision.tower_lora belongs to the finetune stage (pretrain trains the tower whole with "
                             "vision.train_tower)")
        set_here = self.model_fields_set
        if self.stage == "finetune" and (set_here & {"tower", "train_tower", "feature_layer", "image_token"}):
            raise ValueError("vision.tower / train_tower / feature_layer / image_token belong to the pretrain stage: "
                             "a finetune stage takes them from its base (model.base: a bundle ref or a LLaVA model)")
        if self.stage == "pretrain" and "train_projector" in set_here:
            raise ValueError("vision.train_projector belongs to the finetune stage (pretrain always trains the "
                             "projector)")
        if isinstance(self.tower, dict) and "model_type" not in self.tower:
            raise ValueError("vision.tower: a vision config needs model_type (clip_vision_model or "
                             "siglip_vision_model)")
        return self

    @property
    def trains_tower(self) -> bool:
        return self.train_tower if self.train_tower is not None else isinstance(self.tower, dict)


class TrainConfig(_Strict):
    """A complete fine-tuning run."""

    name: str = Field(..., description="Registry name of the result (versions are numbered per name).")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="LoRA, QLoRA (4-bit NF4 base) or full weights.")
    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings (lora and qlora).")
    data: DataSection = Field(..., description="The dataset.")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimization.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Sample answers and scores during training.")
    vision: VisionSection | None = Field(
        None, description="Image conversations on a LLaVA-style base (LLaVA JSON: 'image' + 'conversations').",
    )
    preference: PreferenceSection | None = Field(
        None, description="Preference training on prompt/chosen/rejected pairs (TRL) instead of SFT.",
    )
    description: str | None = Field(None, description="Free text shown in the model card.")
    license: str | None = Field(None, description="License of the result for the model card.")

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.vision is not None and (self.method == "full" or self.data.packing or self.preference is not None
                                        or self.data.mode != "sft"):
            raise ValueError("vision fine-tuning is LoRA / QLoRA SFT without packing or preference training")
        if self.vision is None and (self.eval.image_inputs or self.eval.image_qa):
            raise ValueError("eval.image_inputs / eval.image_qa need a vision section (image conversations)")
        if self.vision is not None and self.vision.stage == "pretrain":
            if self.method != "lora" or self.model.bits is not None:
                raise ValueError(f"vision.stage pretrain trains the projector with the LLM frozen and unquantized: "
                                 f"method must be lora (no LoRA is added) and model.bits unset, not {self.method}"
                                 + (f" with bits {self.model.bits}" if self.model.bits is not None else ""))
            if "lora" in self.model_fields_set:
                raise ValueError("vision.stage pretrain adds no LoRA (the LLM is frozen): remove the lora section")
        if self.model.bits == 8 and self.method != "lora":
            raise ValueError(f"model.bits 8 is LoRA on an 8-bit base: method must be lora, not {self.method} "
                             "(qlora is the 4-bit form)")
        if self.model.tool_parser is not None:
            from adapterhub.tools import PARSERS

            if self.model.tool_parser not in PARSERS:
                raise ValueError(f"model.tool_parser '{self.model.tool_parser}' is not one of {', '.join(sorted(PARSERS))}")
        if self.method == "qlora" and self.train.deepspeed in ("zero3", "zero3_offload"):
            raise ValueError(
                "method qlora cannot use DeepSpeed ZeRO-3: ZeRO-3 shards parameters, and bitsandbytes 4-bit "
                "weights cannot be partitioned; use zero2 / zero2_offload or method lora"
            )
        if self.method == "full" and self.data.replay is not None and self.data.mode == "pretrain":
            raise ValueError("replay applies to sft data, not pretraining")
        if self.data.mode == "pretrain" and self.data.format not in ("auto", "text"):
            raise ValueError("pretrain mode reads raw text: set data.format to 'text' or 'auto'")
        if self.lora.loraplus_lr_ratio is not None and self.train.optimizer != "adamw_torch":
            raise ValueError(f"lora.loraplus_lr_ratio builds its own AdamW with two learning rates; "
                             f"train.optimizer must be adamw_torch, not {self.train.optimizer}")
        if self.lora.loraplus_lr_ratio is not None and self.train.deepspeed:
            raise ValueError("lora.loraplus_lr_ratio cannot be combined with train.deepspeed (DeepSpeed builds the "
                             "optimizer itself)")
        if self.lora.init in ("pissa", "olora") and self.train.deepspeed:
            raise ValueError(f"lora.init {self.lora.init} cannot be combined with train.deepspeed yet (the saved "
                             "adapter is converted from the gathered weights, which ZeRO does not give)")
        if self.lora.init in ("pissa", "olora") and self.method == "qlora":
            raise ValueError(f"lora.init {self.lora.init} rewrites the base weights, which a 4-bit base cannot hold; "
                             "use method lora")
        if self.preference is not None:
            if self.method == "full":
                raise ValueError("preference training runs on method lora or qlora, not full")
            if self.data.mode != "sft" or self.data.packing or self.data.replay is not None:
                raise ValueError("preference training reads prompt/chosen/rejected pairs: data.mode sft, no "
                                 "data.packing, no data.replay")
            if self.train.deepspeed or self.train.neftune_alpha or self.lora.loraplus_lr_ratio \
                    or self.lora.init in ("pissa", "olora"):
                raise ValueError("preference training does not take train.deepspeed, train.neftune_alpha, "
                                 "lora.loraplus_lr_ratio or lora.init pissa/olora yet")
            if self.model.adapter and self.lora != LoraSection():
                raise ValueError("model.adapter continues that adapter's LoRA: leave the lora section out")
        elif self.model.adapter:
            raise ValueError("model.adapter (continuing a registered adapter) is supported for preference "
                             "training only; add a preference section")
        if self.method == "full" and (self.lora.use_dora or self.lora.use_rslora or self.lora.init != "default"
                                      or self.lora.loraplus_lr_ratio):
            raise ValueError("lora.* options apply to method lora / qlora, not full")
        return self


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            ann = getattr(field, "annotation", None)
            args = getattr(ann, "__args__", ())
            nested = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if nested is None:
                return ""
            model = nested
        else:
            model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?)" if close else ""


def _problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"])
        key = ".".join(str(x) for x in loc) or "config"
        if e["type"] == "extra_forbidden":
            out.append(f"unknown key '{key}'{_suggest(loc)}")
        elif e["type"] == "missing":
            out.append(f"missing key '{key}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{key}: {msg}" if loc else msg)
    return out


def builtin_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(spec: str) -> Path:
    p = Path(spec).expanduser()
    if p.exists():
        return p
    builtins = builtin_configs()
    if spec in builtins:
        return builtins[spec]
    close = difflib.get_close_matches(spec, list(builtins), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see 'adapterhub list-cfg')"
    raise ConfigError(f"no config file or built-in config named '{spec}'{hint}")


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not key=value")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def load_config(spec: str, overrides: list[str] | None = None, **top: Any) -> TrainConfig:
    """Load a YAML config (file or built-in name), apply overrides, validate strictly.

    Raises:
        ConfigError: one entry per bad key.
    """
    path = resolve_config_path(spec)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys")
    relative_to_config(data, path.resolve().parent)
    for o in overrides or []:  # typed in a shell: relative to the current directory, as shells mean them
        apply_override(data, o)
    for k, v in top.items():
        if v is not None:
            apply_override(data, f"{k}={v}") if "." in k else data.__setitem__(k, v)
    return validate_config(data, str(path))


# The file paths a config may hold, and the values that are not paths there.
_PATH_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("data", "path"): ("builtin:", "hf:"),
    ("data", "replay", "source"): ("self-distill", "builtin:"),
    ("eval", "image_qa"): ("builtin:",),
    ("vision", "image_folder"): (),
}


def relative_to_config(data: dict[str, Any], folder: Path) -> None:
    """Make the file paths in a loaded config absolute against the config's own ``folder``, as a config
    that sits next to its data means them (absolute paths, ``~``, ``builtin:`` and ``hf:`` are kept).
    ``model.base`` and ``vision.tower`` are rewritten only when they start with ``./`` or ``../``: without
    that they may be hub ids."""
    for keys, special in _PATH_KEYS.items():
        _rewrite(data, keys, lambda v, special=special: not v.startswith(special), folder)
    for keys in (("model", "base"), ("vision", "tower")):
        _rewrite(data, keys, lambda v: v.startswith(("./", "../")), folder)


def _rewrite(data: dict[str, Any], keys: tuple[str, ...], is_path: Any, folder: Path) -> None:
    node: Any = data
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
    value = node.get(keys[-1]) if isinstance(node, dict) else None
    if isinstance(value, str) and value.strip() and is_path(value) and not Path(value).expanduser().is_absolute():
        node[keys[-1]] = str(folder / value)


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config {source}", _problems(e)) from None

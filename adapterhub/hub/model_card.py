"""The model card (README.md) published with every adapter version: YAML front matter + body."""

from __future__ import annotations

import json
from typing import Any

import yaml

from adapterhub.models import DEMO_HUB_ID, DEMO_MODEL
from adapterhub.registry import Manifest


def render_model_card(manifest: Manifest, repo_id: str, *, license: str | None = None) -> str:
    training = manifest.training or {}
    config = training.get("config") or {}
    base = manifest.base_model.id if manifest.base_model else "unknown"
    hub_base = base if "/" in base and not base.startswith(("/", ".")) else None
    is_adapter = manifest.kind == "adapter"
    is_bundle = manifest.kind == "bundle"
    vision = training.get("vision") or {}
    front: dict[str, Any] = {
        "library_name": "peft" if is_adapter else "transformers",
        "license": license or config.get("license") or "other",
        "tags": ["adapterhub", "lora" if is_adapter else "vision-bundle" if is_bundle else "merged",
                 str(training.get("method", "lora"))] + (["llava"] if vision else []),
        "pipeline_tag": "image-text-to-text" if vision else "text-generation",
    }
    upstream = (manifest.base_model.model_extra or {}).get("upstream") if manifest.base_model else None
    if hub_base or upstream or base == DEMO_MODEL:
        front["base_model"] = hub_base or upstream or DEMO_HUB_ID
        front["base_model_relation"] = "adapter" if is_adapter else "merge"
    data_path = (config.get("data") or {}).get("path")
    if data_path and not str(data_path).startswith(("/", ".", "builtin:")) and "/" in str(data_path):
        front["datasets"] = [data_path]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [f"# {manifest.name} v{manifest.version}", ""]
    if config.get("description"):
        lines += [config["description"], ""]
    what = ("LoRA adapter" if is_adapter else "vision bundle (a vision tower, an image projector and their "
            "processor; no language-model weights) that gives eyes to" if is_bundle else "merged model")
    lines += [f"A {what} for **{base}**, published with "
              f"[adapterhub](https://github.com/) from version `{manifest.name}@{manifest.version}` "
              f"(sha256 `{manifest.content_hash[:16]}…`).", ""]
    if vision.get("bundle"):
        lines += [f"Its base is the vision bundle `{vision['bundle']}` (LLaVA pretrain stage): pull that version "
                  "too.", ""]
    lines += ["## Training", ""]
    if training:
        lora = manifest.lora or {}
        rows = [("method", training.get("method")), ("rank / alpha", f"{lora.get('r')} / {lora.get('alpha')}" if lora else None),
                ("target modules", ", ".join(lora.get("target_modules", [])) if lora else None),
                ("dataset fingerprint", training.get("dataset_fingerprint")), ("samples", training.get("n_samples")),
                ("steps", training.get("steps")), ("final loss", training.get("final_loss")),
                ("wall time (s)", training.get("wall_time_s")),
                ("tool-call format", training.get("tool_parser")),
                ("LLaVA stage", vision.get("stage")),
                ("vision tower", json.dumps(vision["tower"]) if vision.get("tower") else None),
                ("tower trained", vision.get("tower_trained") if is_bundle else None)]
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]
    else:
        lines += ["Imported into the registry (no training record).", ""]
    if manifest.metrics:
        lines += ["## Metrics", "", "```json", json.dumps(manifest.metrics, indent=2), "```", ""]
    lines += ["## Usage", ""]
    if is_bundle:
        lines += ["Serve it as the base (the OpenAI API with image inputs), or fine-tune on it:", "", "```bash",
                  f"adapterhub pull hf:{repo_id}@v{manifest.version} --name {manifest.name}",
                  f"adapterhub serve --base {manifest.name}@{manifest.version}",
                  f"adapterhub train CONFIG model.base={manifest.name}@{manifest.version}  # with vision.stage: "
                  "finetune", "```", ""]
    elif is_adapter:
        lines += ["With peft:", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f'base = AutoModelForCausalLM.from_pretrained("{front.get("base_model", base)}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}", revision="v{manifest.version}")', "```", "",
                  "With vLLM:", "", "```bash",
                  f"vllm serve {front.get('base_model', base)} --enable-lora --lora-modules {manifest.name}={repo_id}"
                  + (" --enable-auto-tool-choice --tool-call-parser "
                     f"{ {'internlm2': 'internlm'}.get(training['tool_parser'], training['tool_parser'])}"
                     if training.get("tool_parser") else ""),
                  "```", "", "With adapterhub (many adapters on one base, OpenAI API):", "", "```bash",
                  f"adapterhub pull hf:{repo_id}@v{manifest.version} --name {manifest.name}",
                  f"adapterhub serve --base {base} --adapters {manifest.name}", "```", ""]
    else:
        lines += ["```bash", f"adapterhub pull hf:{repo_id}@v{manifest.version} --name {manifest.name}",
                  f"adapterhub serve --merged {manifest.name}", "```", ""]
    return "\n".join(lines)

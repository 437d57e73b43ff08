"""Fine-tuning a LLaVA-style base on image conversations (LLaVA JSON: ``image`` + ``conversations`` with
``<image>``): LoRA on the language model and the projector trained whole; the loss falls on the answers
only; the version serves with its own projector, and two versions with different projectors in one batch
each give their solo text, equal to peft's."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import pytest
import torch

from adapterhub.registry import Registry
from adapterhub.settings import Settings
from tests.builders import build_tiny_llava, llava_generate

COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255), "yellow": (255, 220, 0)}


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava-train") / "tiny-llava")


def _data(folder) -> str:
    from PIL import Image

    records = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (40, 40), rgb).save(folder / f"{name}.png")
        records += [{"image": f"{name}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": name}]}] * 2
    path = folder / "colours.json"
    path.write_text(json.dumps(records))
    return str(path)


def _train(llava, data, name, seed, tmp_path):
    from adapterhub.training.run import train
    from tests.training.test_run import config

    cfg = config(llava, data, **{"name": name, "vision": {}, "train.max_steps": 4, "train.seed": seed,
                                 "data.max_length": 128, "eval.inputs": [], "lora.r": 4, "lora.alpha": 8})
    return train(cfg, Settings(), output=tmp_path / name)


def test_image_sft_supervises_answers_and_serves_each_versions_projector(llava, tmp_path):
    from transformers import AutoTokenizer

    from adapterhub.serving.api import create_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.training.config import DataSection
    from adapterhub.training.data import IGNORE, ImageInputs, read_dataset
    from adapterhub.training.model import load_processor
    from tests.server import running_server
    from tests.training.test_run import config

    data = _data(tmp_path)
    # the supervised tokens are the answer (and its end marker), not the 16 image tokens or the question
    cfg = config(llava, data, **{"vision": {}})
    images = ImageInputs(load_processor(llava, cfg), tmp_path)
    tok = AutoTokenizer.from_pretrained(llava)
    conv = read_dataset(DataSection(path=data)).conversations[0]
    s = images.sample(tok, conv, tok.chat_template, 128)
    assert s.input_ids.count(tok.convert_tokens_to_ids("<image>")) == 16 and s.pixel_values.shape == (3, 32, 32)
    assert tok.decode([i for i, lab in zip(s.input_ids, s.labels) if lab != IGNORE]) == "red<|im_end|>\n"

    a = _train(llava, data, "seer", 1, tmp_path)
    b = _train(llava, data, "oracle", 2, tmp_path)
    reg = Registry.open(Settings())
    paths = [reg.path(a.record.ref), reg.path(b.record.ref)]
    for p in paths:
        assert json.loads((p / "adapter_config.json").read_text())["modules_to_save"] == ["multi_modal_projector"]

    from safetensors.torch import load_file

    pa, pb = (load_file(str(p / "adapter_model.safetensors")) for p in paths)
    key = next(k for k in pa if "multi_modal_projector.linear_1.weight" in k)
    assert not torch.equal(pa[key], pb[key])  # two versions, two projectors

    red = "data:image/png;base64," + base64.b64encode((tmp_path / "red.png").read_bytes()).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": red}},
                                         {"type": "text", "text": "What colour is it?"}]}]
    engine = HFEngine(llava, model_id="llava", dtype="fp32", max_lora_rank=8)
    app = create_app(ServeConfig(base="llava", max_lora_rank=8), engine=engine, registry=reg, base_name="llava")
    with running_server(app) as url:
        def run(model):
            r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": msgs, "max_tokens": 4,
                                                               "temperature": 0}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        solo = [run(m) for m in ("seer", "oracle", "llava")]
        together: list[str | None] = [None] * 3
        threads = [threading.Thread(target=lambda i=i, m=m: together.__setitem__(i, run(m)))
                   for i, m in enumerate(("seer", "oracle", "llava"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    engine.stop()
    assert together == solo
    assert solo[0] == llava_generate(llava, paths[0], tmp_path / "red.png", "What colour is it?", 4)
    assert solo[1] == llava_generate(llava, paths[1], tmp_path / "red.png", "What colour is it?", 4)


def test_image_data_and_vision_section_mismatches_are_config_errors(llava, tiny_model, tmp_path):
    from adapterhub.errors import ConfigError
    from adapterhub.training.run import train
    from tests.training.test_run import config

    data = _data(tmp_path)
    with pytest.raises(ConfigError, match="base has no vision tower"):
        train(config(tiny_model, data, **{"vision": {}}), Settings(), output=tmp_path / "a")
    with pytest.raises(ConfigError, match="add a vision section"):
        train(config(llava, data), Settings(), output=tmp_path / "b")
    with pytest.raises(ConfigError, match="the config needs a vision section"):  # image records, text base
        train(config(tiny_model, data), Settings(), output=tmp_path / "c")
    with pytest.raises(ConfigError, match="vision fine-tuning is LoRA"):
        config(llava, data, **{"vision": {}, "data.packing": "padding_free"})
    bad = tmp_path / "bad-url.json"  # an image_url part whose data: URL holds no base64
    bad.write_text(json.dumps([{"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                                     {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": "red"}]}]))
    with pytest.raises(ConfigError, match="an image in the data: the data: URL is not valid base64"):
        train(config(llava, str(bad), **{"vision": {}}), Settings(), output=tmp_path / "d")

"""OpenAI image inputs on a LLaVA-style base, through a real server and the official ``openai`` client:
the served greedy answer to an image equals transformers' ``generate`` on the same model and image; an
image row and text rows (on an adapter too) share a batch and keep their solo texts; data: URLs work;
a non-image, a too-large image, too many images, a URL outside the allowed domains and an allowed host
that resolves to a private address each get a 400 saying why."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import openai
import pytest
import torch

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import build_tiny_llava
from tests.server import running_server


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def noise_png(side: int) -> str:
    """A PNG of random pixels: it does not compress, so its size follows its side."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), bytes(torch.randint(0, 256, (side * side * 3,), dtype=torch.uint8).tolist())
                    ).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(text: str, *urls: str) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in urls),
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("llava")
    base = build_tiny_llava(root / "tiny-llava")
    m = resolve_model(str(base), Settings())
    model = AutoModelForImageTextToText.from_pretrained(base)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                          target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    pm.save_pretrained(str(root / "adapter"))
    registry = Registry(LocalStore(root / "registry"))
    registry.register(root / "adapter", "seer", base_model={"id": "llava", "fingerprint": m.fingerprint})
    engine = HFEngine(m.path, model_id="llava", fingerprint=m.fingerprint, dtype="fp32", max_batch_size=8,
                      max_lora_rank=8)
    cfg = ServeConfig(base="llava", max_lora_rank=8, max_image_bytes=20_000, max_images=2,
                      allowed_media_domains=["localhost", "example.invalid"])
    app = create_app(cfg, engine=engine, registry=registry, base_name="llava")
    with running_server(app) as url:
        yield url, engine, base, root / "adapter"
    engine.stop()


def reference(base, url: str, text: str, n: int, adapter=None) -> str:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                                      add_generation_prompt=True, tokenize=False)
    enc = proc(images=[image], text=[prompt], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=proc.tokenizer.eos_token_id,
                         pad_token_id=proc.tokenizer.pad_token_id)
    gen = out[0][enc["input_ids"].shape[1]:].tolist()
    eos = proc.tokenizer.eos_token_id
    return proc.tokenizer.decode(gen[: gen.index(eos)] if eos in gen else gen, skip_special_tokens=True)


def test_image_answer_equals_transformers_and_counts_image_tokens(server):
    url, _, base, adapter = server
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    r = c.chat.completions.create(model="llava", messages=ask("what is this", red), max_tokens=8, temperature=0)
    assert r.choices[0].message.content == reference(base, red, "what is this", 8)
    text_only = c.chat.completions.create(model="llava", messages=[{"role": "user", "content": "what is this"}],
                                          max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == text_only.usage.prompt_tokens + 16  # the image's 16 tokens replace <image>-1
    seer = c.chat.completions.create(model="seer", messages=ask("what is this", blue), max_tokens=8, temperature=0)
    assert seer.choices[0].message.content == reference(base, blue, "what is this", 8, adapter)


def test_image_rows_and_text_rows_share_a_batch(server):
    url, engine, _, _ = server
    red, blue = png((255, 0, 0)), png((0, 0, 255))
    jobs = [("llava", ask("what is this", red)), ("seer", ask("and this", blue)),
            ("llava", [{"role": "user", "content": "the river"}]), ("seer", [{"role": "user", "content": "a tree"}])]

    def run(model, messages):
        r = httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 8,
                                                           "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    solo = [run(*j) for j in jobs]
    together: list[str | None] = [None] * len(jobs)
    engine.peak_batch = 0
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(*jobs[i]))) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.peak_batch > 1 and together == solo


@pytest.mark.parametrize("urls,reason", [
    (["data:image/png;base64,aGVsbG8gd29ybGQ="], "does not hold an image"),
    (["data:image/png;base64,@@@"], "not valid base64"),
    (["data:image/png,aGVsbG8="], "must be base64"),
    ([noise_png(100)], "larger than 20000 bytes"),
    ([png((1, 2, 3))] * 3, "3 images in one request; this server takes at most 2"),
    (["https://images.example.com/cat.png"], "not in --allowed-media-domains"),
    (["http://localhost:9/cat.png"], "non-public address"),
    (["file:///etc/passwd"], "data: URL or an http(s) URL"),
    (["http://localhost:port/cat.png"], "not a valid URL"),
])
def test_bad_images_get_400_with_the_reason(server, urls, reason):
    url = server[0]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "llava", "messages": ask("hi", *urls), "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]["message"], r.json()


def test_text_only_models_refuse_images_by_name(setup_text_only):
    r = httpx.post(setup_text_only + "/v1/chat/completions",
                   json={"model": "tiny", "messages": ask("hi", png((0, 0, 0))), "max_tokens": 2})
    assert r.status_code == 400 and "does not take images" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def setup_text_only(tiny_model, tmp_path_factory):
    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32")
    app = create_app(ServeConfig(base="tiny"), engine=engine,
                     registry=Registry(LocalStore(tmp_path_factory.mktemp("reg"))), base_name="tiny")
    with running_server(app) as url:
        yield url
    engine.stop()


def test_chat_with_an_image_file(server, tmp_path, tiny_model):
    import io as _io

    from adapterhub.errors import UserInputError
    from adapterhub.serving.api import chat

    _, _, base, _ = server
    red = png((255, 0, 0))
    path = tmp_path / "red.png"
    path.write_bytes(base64.b64decode(red.split(",", 1)[1]))
    out = _io.StringIO()
    turns = chat(str(base), image=str(path), stdin=_io.StringIO("what is this\n/exit\n"), stdout=out, max_tokens=8)
    assert turns == 1 and reference(base, red, "what is this", 8) in out.getvalue()
    with pytest.raises(UserInputError, match="does not take images"):
        chat(str(tiny_model), image=str(path), stdin=_io.StringIO("/exit\n"), stdout=_io.StringIO())


def test_text_only_chat_works_when_only_the_processor_has_a_template(server):
    """llava-hf models keep their chat template on the processor: text-only requests still render."""
    _, engine, _, _ = server
    msgs = [{"role": "user", "content": "what is this"}]
    with_tokenizer_template = engine.encode_chat(msgs, None)
    saved, engine.tokenizer.chat_template = engine.tokenizer.chat_template, None
    try:
        assert engine.encode_chat(msgs, None) == with_tokenizer_template
    finally:
        engine.tokenizer.chat_template = saved


def test_an_adapter_with_its_own_projector_is_refused_where_the_engine_cannot_apply_it(tiny_model, tmp_path):
    import json as _json

    from adapterhub.serving.adapters import engine_problems
    from adapterhub.serving.engines.hf import HFEngine
    from tests.builders import build_lora_adapter

    path = build_lora_adapter(tiny_model, tmp_path / "ad")
    cfg = _json.loads((path / "adapter_config.json").read_text())
    engine = HFEngine(tiny_model, model_id="tiny", dtype="fp32")  # a text model: no per-request projector
    try:
        for saved in (["multi_modal_projector"], ["lm_head"]):
            (path / "adapter_config.json").write_text(_json.dumps({**cfg, "modules_to_save": saved}))
            problems = engine_problems(path, engine)
            assert any(f"modules_to_save {saved} are not supported by this engine" in p and "adapterhub merge" in p
                       for p in problems), problems
    finally:
        engine.stop()

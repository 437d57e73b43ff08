"""lm-evaluation-harness scores a multiple-choice task through our /v1/completions (its ``local-completions``
model: token-id prompts, ``echo: true, logprobs: 1``): each choice's log-likelihood equals transformers'
own on the same tokens. The task is a local JSON file; nothing comes from the hub."""

from __future__ import annotations

import json

import httpx
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server

DOCS = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five", "seven"], "answer": 0},
    {"question": "Cats like to", "choices": ["sleep", "fly", "swim"], "answer": 0},
    {"question": "Water is", "choices": ["wet", "dry", "square"], "answer": 0},
]


def _reference(model, tok, context: str, continuation: str) -> float:
    """transformers' log-likelihood of ``continuation`` after ``context``, tokenized as lm-eval does."""
    import torch

    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = len(tok(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(lp[i - 1, whole[i]]) for i in range(ctx, len(whole)))


def test_lm_eval_scores_choices_as_transformers_does(tiny_model, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "docs.json"
    data.write_text(json.dumps(DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n")
    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=1, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    app = create_app(ServeConfig(base="tiny", max_loaded=1, max_lora_rank=8), engine=engine, base_name="tiny",
                     use_registry=False)
    try:
        with running_server(app) as url:
            out = lm_eval.simple_evaluate(
                model="local-completions",
                model_args={"base_url": f"{url}/v1/completions", "model": "tiny", "tokenizer": str(tiny_model),
                            "tokenizer_backend": "huggingface", "num_concurrent": 1, "max_retries": 1},
                tasks=["tiny_choice"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                log_samples=True)
            # The prompt-only form (vLLM's): max_tokens 0 scores the prompt and generates nothing.
            only = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "The sky is blue",
                                                              "max_tokens": 0, "echo": True, "logprobs": 2}).json()
            bad = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 0})
            import openai

            stream = openai.OpenAI(base_url=f"{url}/v1", api_key="x").completions.create(
                model="tiny", prompt="The sky is blue", max_tokens=3, echo=True, logprobs=1, stream=True,
                temperature=0, extra_body={"ignore_eos": True})
            frames = [c.choices[0] for c in stream if c.choices]
    finally:
        engine.stop()
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).float().eval()
    samples = out["samples"]["tiny_choice"]
    assert len(samples) == len(DOCS)
    for s in samples:
        got = [float(r[0][0]) for r in s["resps"]]
        want = [_reference(model, tok, *a) for a in s["arguments"]]
        assert len(got) == 3 and got == pytest.approx(want, abs=1e-3), (s["doc"], got, want)
    acc = sum(max(range(3), key=lambda i: float(s["resps"][i][0][0])) == s["target"] for s in samples) / len(DOCS)
    assert out["results"]["tiny_choice"]["acc,none"] == pytest.approx(acc)
    choice = only["choices"][0]
    assert choice["text"] == "The sky is blue" and only["usage"]["completion_tokens"] == 0
    lps = choice["logprobs"]
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    assert len(lps["tokens"]) == only["usage"]["prompt_tokens"] and all(v <= 0 for v in lps["token_logprobs"][1:])
    assert all(len(t) == 2 for t in lps["top_logprobs"][1:])
    assert bad.status_code == 400 and "echo" in bad.json()["error"]["message"]
    # Streamed: the echo comes first with the prompt's scores (the same as the non-streamed ones), then the answer.
    assert frames[0].text == "The sky is blue" and frames[0].logprobs.token_logprobs[0] is None
    assert frames[0].logprobs.token_logprobs[1:] == pytest.approx(lps["token_logprobs"][1:], abs=1e-5)
    assert sum(len(f.logprobs.tokens) for f in frames[1:]) == 3

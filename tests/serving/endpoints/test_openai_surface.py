"""The OpenAI surface on the tiny model over real HTTP with the official ``openai`` client:

* every sampling parameter changes output the way OpenAI / vLLM document it, checked against a
  reference computed with plain torch from transformers' (base) and peft's (adapter) logits, on base
  and adapter rows sent together so they share a batch;
* nothing is silently ignored (unsupported parameters are 400s naming them; strict types);
* one bad request never disturbs others (the known batch-killers are refused or made harmless while
  long requests run, and those finish with their solo text);
* the vLLM-compatible extras (/tokenize, /detokenize, /version, X-Request-Id, CORS, 413, model cards).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

MSG = [{"role": "user", "content": "hello who are you"}]


@pytest.fixture(scope="module")
def refs(setup):
    """Reference models: transformers for the base, peft for the adapter (fp32, eval)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, _, tiny_model, adapter = setup
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                             str(adapter)).eval()
    return {"tiny": base, "ad": with_adapter}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


@torch.no_grad()
def reference(model, prompt: list[int], steps: int, eos: int, *, process=None, stop_ids=(), ignore_eos=False):
    """Greedy decode with plain torch: (generated ids, [(logprob of pick, top-5 logprobs)]), EOS not included."""
    ids, out, lps = list(prompt), [], []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        raw = torch.log_softmax(logits, -1)
        x = process(logits.clone(), out) if process else logits
        t = int(x.argmax())
        if t == eos and not ignore_eos:
            break
        lps.append((float(raw[t]), torch.topk(raw, 5).values.tolist()))
        out.append(t)
        ids.append(t)
        if t in stop_ids:
            break
    return out, lps


def both(fn):
    """Run fn(model_name) for the base and the adapter at the same time (one mixed batch)."""
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(("tiny", "ad"), pool.map(fn, ("tiny", "ad"))))


def chat(c, model, **kw):
    kw.setdefault("max_tokens", 8)
    return c.chat.completions.create(model=model, messages=MSG, temperature=0, **kw)


def test_logprobs_equal_log_softmax_of_the_logits(setup, refs):
    url, engine, _, _ = setup
    prompt = engine.encode_chat(MSG, None)
    got = both(lambda m: chat(client(url), m, logprobs=True, top_logprobs=5))
    for name, r in got.items():
        ids, lps = reference(refs[name], prompt, 8, engine.tokenizer.eos_token_id)
        content = r.choices[0].logprobs.content
        assert r.choices[0].message.content == engine.tokenizer.decode(ids, skip_special_tokens=True)
        assert len(content) == len(ids)
        for entry, (lp, top5) in zip(content, lps):
            assert entry.logprob == pytest.approx(lp, abs=1e-4)
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top5, abs=1e-4)
            assert entry.token == engine.tokenizer.decode([ids[content.index(entry)]])


def test_completions_logprobs_and_token_id_prompts(setup, refs):
    url, engine, _, _ = setup
    prompt = engine.encode("the river")
    r = client(url).completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=3)
    ids, lps = reference(refs["tiny"], prompt, 5, engine.tokenizer.eos_token_id)
    assert r.choices[0].text == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert r.choices[0].logprobs.token_logprobs == pytest.approx([lp for lp, _ in lps], abs=1e-4)
    assert all(len(t) == 3 for t in r.choices[0].logprobs.top_logprobs)
    # a list of prompts: one choice per prompt, each equal to that prompt alone
    batch = client(url).completions.create(model="tiny", prompt=[prompt, engine.encode("a cat")], max_tokens=5,
                                           temperature=0)
    alone = client(url).completions.create(model="tiny", prompt="a cat", max_tokens=5, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == r.choices[0].text and batch.choices[1].text == alone.choices[0].text


def test_logit_bias_min_tokens_stop_token_ids_ignore_eos(setup, refs):
    url, engine, _, _ = setup
    eos = engine.tokenizer.eos_token_id
    prompt = engine.encode_chat(MSG, None)
    plain = both(lambda m: chat(client(url), m).choices[0].message.content)
    for name in ("tiny", "ad"):
        first, _ = reference(refs[name], prompt, 8, eos)
        banned = first[0]

        def ban(x, out, b=banned):
            x[b] -= 100
            return x

        got = chat(client(url), name, logit_bias={str(banned): -100}, logprobs=True)
        ids, _ = reference(refs[name], prompt, 8, eos, process=ban)
        assert got.choices[0].message.content == engine.tokenizer.decode(ids, skip_special_tokens=True)
        assert got.choices[0].message.content != plain[name] and banned not in ids

        def force_eos(x, out):
            x[eos] += 100
            return x

        assert chat(client(url), name, logit_bias={str(eos): 100}).choices[0].message.content == ""

        def delayed(x, out):
            x[eos] += 100
            if len(out) < 3:
                x[eos] = float("-inf")
            return x

        r = chat(client(url), name, logit_bias={str(eos): 100}, extra_body={"min_tokens": 3})
        ids, _ = reference(refs[name], prompt, 8, eos, process=delayed)
        assert len(ids) == 3 and r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == engine.tokenizer.decode(ids, skip_special_tokens=True)

        stop_id = first[2]
        r = chat(client(url), name, extra_body={"stop_token_ids": [stop_id]})
        ids, _ = reference(refs[name], prompt, 8, eos, stop_ids=(stop_id,))
        assert r.choices[0].finish_reason == "stop" and len(ids) <= 3
        assert r.choices[0].message.content == engine.tokenizer.decode(ids, skip_special_tokens=True)

        r = chat(client(url), name, logit_bias={str(eos): 100}, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"


def test_penalties_match_the_reference(setup, refs):
    url, engine, _, _ = setup
    eos = engine.tokenizer.eos_token_id
    prompt = engine.encode_chat(MSG, None)

    def penalties(x, out, prompt=prompt):
        seen = sorted(set(prompt) | set(out))
        picked = x[seen]
        x[seen] = torch.where(picked > 0, picked / 1.3, picked * 1.3)
        if out:
            counts = torch.bincount(torch.tensor(out), minlength=x.shape[0]).float()
            x = x - 0.7 * counts - 0.5 * (counts > 0).float()
        return x

    kw = dict(max_tokens=16, frequency_penalty=0.7, presence_penalty=0.5, extra_body={"repetition_penalty": 1.3})
    got = both(lambda m: chat(client(url), m, **kw).choices[0].message.content)
    changed = 0
    for name in ("tiny", "ad"):
        ids, _ = reference(refs[name], prompt, 16, eos, process=penalties)
        assert got[name] == engine.tokenizer.decode(ids, skip_special_tokens=True)
        changed += ids != reference(refs[name], prompt, 16, eos)[0]
    assert changed, "the penalties changed neither row: the test would not notice them being ignored"


def test_top_k_min_p_stop_strings_echo_and_n(setup):
    url, engine, _, _ = setup
    c = client(url)
    greedy = chat(c, "ad", max_tokens=10).choices[0].message.content
    # top_k=1 and min_p=1 leave only the top token: sampling at temperature 1 is then greedy
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        r = c.chat.completions.create(model="ad", messages=MSG, max_tokens=10, temperature=1.0, seed=3, extra_body=extra)
        assert r.choices[0].message.content == greedy
    stop = greedy[3:6]
    cut = chat(c, "ad", max_tokens=10, stop=[stop]).choices[0].message.content
    kept = chat(c, "ad", max_tokens=10, stop=[stop], extra_body={"include_stop_str_in_output": True})
    assert cut == greedy[: greedy.index(stop)] and kept.choices[0].message.content == greedy[: greedy.index(stop)] + stop
    assert chat(c, "ad", max_tokens=10, stop="").choices[0].message.content == greedy  # "" stops nothing
    # echo, also streamed
    r = c.completions.create(model="tiny", prompt="the river", max_tokens=4, temperature=0, echo=True)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="the river", max_tokens=4, temperature=0, echo=True, stream=True) if ch.choices)
    assert r.choices[0].text.startswith("the river") and streamed == r.choices[0].text
    # n above 16, seeded: reproducible, and not all the same
    many = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=1.5, n=20, seed=7)
    again = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=1.5, n=20, seed=7)
    texts = [ch.message.content for ch in many.choices]
    assert len(texts) == 20 and texts == [ch.message.content for ch in again.choices] and len(set(texts)) > 1
    # best_of: of the same 3 seeded samples, the one with the highest cumulative logprob is returned
    three = c.completions.create(model="tiny", prompt="the river", max_tokens=4, temperature=1.0, n=3, seed=1,
                                 logprobs=0)
    best = c.completions.create(model="tiny", prompt="the river", max_tokens=4, temperature=1.0, n=1, best_of=3,
                                seed=1)
    ranked = sorted(three.choices, key=lambda ch: sum(ch.logprobs.token_logprobs), reverse=True)
    assert len({ch.text for ch in three.choices}) > 1 and len(best.choices) == 1
    assert best.choices[0].text == ranked[0].text


@pytest.mark.parametrize("extra,param", [
    ({"suffix": "x"}, "suffix"), ({"functions": [{"name": "f"}]}, "functions"), ({"frobnicate": 1}, "frobnicate"),
    ({"function_call": "auto"}, "function_call"),
])
def test_unsupported_parameters_are_refused_by_name(setup, extra, param):
    url = setup[0]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2, **extra})
    assert r.status_code == 400
    body = r.json()["error"]
    assert body["param"] == param and f"'{param}' is not supported" in body["message"]


def test_continuous_usage_on_completion_streams_and_admin_fields(setup):
    url = setup[0]
    chunks = list(client(url).completions.create(model="tiny", prompt="the river", max_tokens=4, temperature=0,
                                                 stream=True, stream_options={"continuous_usage_stats": True}))
    with_text = [ch for ch in chunks if ch.choices and ch.choices[0].text]
    assert with_text and all(ch.usage is not None for ch in with_text)
    assert [ch.usage.completion_tokens for ch in with_text] == sorted(ch.usage.completion_tokens for ch in with_text)
    r = httpx.post(url + "/v1/adapters/load", json={"model": "ad", "pinn": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "pinn"


def test_fields_without_effect_are_accepted_and_types_are_strict(setup):
    url = setup[0]
    ok = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2,
                                                        "user": "u1", "metadata": {"a": "b"}, "store": False})
    assert ok.status_code == 200
    for bad in ({"max_tokens": True}, {"max_tokens": "10"}, {"n": 129}, {"temperature": "1"}, {"top_logprobs": 3},
                {"logit_bias": {"abc": 1}}, {"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}):
        r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG, **bad})
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_batch_killers_do_not_disturb_requests_in_flight(setup):
    url, engine, _, _ = setup
    long = [("tiny", "the river runs"), ("ad", "the river runs"), ("tiny", "a cat sat"), ("ad", "a cat sat")]

    def run(job):
        model, prompt = job
        return client(url).completions.create(model=model, prompt=prompt, max_tokens=60, temperature=0).choices[0].text

    solo = [run(j) for j in long]
    raw = f"{url}/v1/chat/completions"
    killers = [
        ("post", url + "/v1/completions", {"model": "tiny", "prompt": ""}, 400),
        ("post", url + "/v1/completions", {"model": "tiny", "prompt": [[]]}, 400),
        ("post", url + "/v1/completions", {"model": "tiny", "prompt": [10**9]}, 400),
        ("post", raw, {"model": "tiny", "messages": MSG, "temperature": 1e-39, "max_tokens": 3}, 200),
        ("post", raw, {"model": "tiny", "messages": MSG, "seed": 2**70}, 400),
        ("post", raw, {"model": "tiny", "messages": MSG, "seed": -(2**63), "temperature": 1, "max_tokens": 2}, 200),
        ("post", raw, {"model": "ad@99999999999999999999999", "messages": MSG}, 404),
        ("post", raw, {"model": "tiny", "messages": MSG, "logit_bias": {"99999999": 5}}, 400),
        ("post", raw, {"model": "tiny", "messages": MSG, "stop_token_ids": [-1]}, 400),
        ("post", raw, {"model": "tiny", "messages": MSG, "max_tokens": True}, 400),
        ("post", raw, {"model": "tiny", "messages": MSG, "min_tokens": 50, "max_tokens": 2}, 400),
    ]
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(run, j) for j in long]
        statuses = []
        for method, u, body, _ in killers:
            statuses.append(httpx.request(method, u, json=body, timeout=60).status_code)
        # a lone surrogate, sent as raw JSON (json.dumps escapes it as \\ud800)
        statuses.append(httpx.post(raw, content=json.dumps({"model": "tiny", "messages": [
            {"role": "user", "content": "\ud800"}]}), headers={"content-type": "application/json"}).status_code)
        results = [f.result() for f in running]
    assert statuses == [k[3] for k in killers] + [400]
    assert results == solo


def test_a_row_failing_mid_stream_fails_alone_with_an_error_event(setup):
    url, engine, _, _ = setup
    from adapterhub.serving.engines.hf.sampler import LogitsProcessor

    class FailsAtStep3(LogitsProcessor):  # a fault injected into one row (seed 4242) after 3 tokens
        def needed(self, row):
            return row.params.seed == 4242 and len(row.generated) >= 3

        def __call__(self, logits, row):
            raise RuntimeError("injected fault")

    engine.sampler.processors = engine.sampler.processors + (FailsAtStep3(),)
    try:
        other = client(url).chat.completions.create(model="ad", messages=MSG, max_tokens=30, temperature=0)
        with ThreadPoolExecutor(2) as pool:
            ok = pool.submit(lambda: client(url).chat.completions.create(model="ad", messages=MSG, max_tokens=30,
                                                                        temperature=0))
            with httpx.stream("POST", url + "/v1/chat/completions", timeout=60, json={
                    "model": "tiny", "messages": MSG, "max_tokens": 30, "seed": 4242, "stream": True}) as r:
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            assert ok.result().choices[0].message.content == other.choices[0].message.content
    finally:
        engine.sampler.processors = engine.sampler.processors[:-1]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["type"] == "server_error"


def test_tokenize_detokenize_version_and_model_cards(setup):
    url, engine, _, _ = setup
    t = httpx.post(url + "/tokenize", json={"model": "tiny", "prompt": "the river"}).json()
    assert t["tokens"] == engine.encode("the river", add_special_tokens=True) and t["count"] == len(t["tokens"])
    m = httpx.post(url + "/tokenize", json={"model": "ad", "messages": MSG}).json()
    assert m["tokens"] == engine.encode_chat(MSG, None)
    assert httpx.post(url + "/detokenize", json={"model": "tiny", "tokens": t["tokens"]}).json()["prompt"].endswith(
        "the river")
    assert httpx.post(url + "/detokenize", json={"model": "tiny", "tokens": [10**9]}).status_code == 400
    assert httpx.get(url + "/version").json()["version"]
    cards = client(url).models.list().data
    assert all(card.max_model_len == 512 for card in cards)
    assert client(url).models.retrieve("base").id == "base"


def test_request_id_cors_and_body_limit(setup):
    url = setup[0]
    r = httpx.get(url + "/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert httpx.get(url + "/health").headers["x-request-id"].startswith("req-")
    pre = httpx.options(url + "/v1/chat/completions", headers={
        "Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
    other = httpx.options(url + "/v1/chat/completions", headers={"Origin": "http://evil.example",
                                                                 "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    big = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "x" * 70_000}]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    chunked = httpx.post(url + "/v1/chat/completions", headers={"content-type": "application/json"},
                         content=(body[i:i + 8192] for i in range(0, len(body), 8192)))  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"


def test_openapi_documents_errors_as_answered(setup):
    spec = httpx.get(setup[0] + "/openapi.json").json()
    chat_post = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat_post and chat_post["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse")
    assert "ChatCompletionResponse" in json.dumps(chat_post["200"])


def test_openapi_writes_bounds_as_json_schema(setup):
    """A client generator or fuzzer reads minimum/maximum; pydantic's own ge/le (left inside ``X | null``
    for strict ints) would be ignored by them."""
    spec = httpx.get(setup[0] + "/openapi.json").json()
    assert not re.search(r'"(ge|le|gt|lt)":', json.dumps(spec))
    logprobs = spec["components"]["schemas"]["CompletionRequest"]["properties"]["logprobs"]["anyOf"][0]
    assert (logprobs["minimum"], logprobs["maximum"]) == (0, 20)

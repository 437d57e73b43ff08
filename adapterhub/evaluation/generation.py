"""Batched greedy answers from a (peft or plain) causal LM, for samples, replay and evaluation."""

from __future__ import annotations

from typing import Any

import torch


def answer(model: Any, tokenizer: Any, prompts: list[str], *, template: str | None, max_new_tokens: int = 48,
           batch_size: int = 8, system: str | None = None) -> list[str]:
    """Greedy answers to ``prompts`` rendered as single-turn chats with ``template``."""
    convs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
             for p in prompts]
    return answer_conversations(model, tokenizer, convs, template=template, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)


@torch.no_grad()
def answer_conversations(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], *,
                         template: str | None, max_new_tokens: int = 48, batch_size: int = 8,
                         tools: list[dict[str, Any]] | None = None, skip_special_tokens: bool = True) -> list[str]:
    """Greedy next assistant turns of ``conversations`` (with ``tools`` in the prompt when given)."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(conversations), batch_size):
            texts = [tokenizer.apply_chat_template(c, chat_template=template, tokenize=False,
                                                   add_generation_prompt=True, tools=tools)
                     for c in conversations[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=_eos(tokenizer))
            for row in gen[:, enc["input_ids"].shape[1]:]:
                out.append(tokenizer.decode(row, skip_special_tokens=skip_special_tokens).strip())
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return out


def _eos(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)

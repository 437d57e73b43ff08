"""The hf engine's prefill hands the output head a compact input: the last position copied out of the batch,
not a view with the prompt's stride across rows. On CPU, torch's bf16 linear leaves its fast path on such a
view (the demo model's head took 110-400 ms per prefill instead of ~5 ms, while every running row waited)."""

from __future__ import annotations

import torch

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.serving.engines.hf import batch as batch_module
from adapterhub.settings import Settings


def test_prefill_gives_the_output_head_the_last_position_of_each_row_compactly(tiny_model):
    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="bf16", device="cpu")
    head = engine.model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    prompts = [engine.encode_chat([{"role": "user", "content": text}], None)
               for text in ("hello who are you", "a longer question about what you can do for me")]
    try:
        with torch.inference_mode():
            _, logits = batch_module.prefill(engine.model, engine.slots, [0, 1], prompts, [0, 0], engine.pad_id,
                                             engine.device)
            alone = [batch_module.prefill(engine.model, engine.slots, [0], [p], [0], engine.pad_id,
                                          engine.device)[1][0] for p in prompts]
    finally:
        hook.remove()
    x = seen[0]
    assert x.shape == (2, 1, head.in_features)
    assert x.stride() == torch.empty(x.shape).stride()  # rows one after another: not a strided view
    # Each row's logits are its own prompt's last position, as when it runs alone (bf16: rounding apart).
    for row in range(2):
        assert logits[row].argmax() == alone[row].argmax()
        torch.testing.assert_close(logits[row], alone[row], rtol=0.05, atol=0.05)

"""The ``hf`` engine (transformers + batched multi-LoRA), one job per module:

* ``engine``      the engine seam, the scheduler loop and the thread/async bridge;
* ``loading``     model + tokenizer loading (dtype, bitsandbytes, device, EOS ids);
* ``batch``       the running batch and its KV-cache surgery (prefill, decode, join, leave);
* ``sampler``     a pipeline of per-row logits processors, then greedy or sampled picks;
* ``detokenizer`` incremental detokenization with stop-string hold-back;
* ``lora``        the batched LoRA layers and their adapter slots.
"""

from adapterhub.serving.engines.hf.engine import HFEngine

__all__ = ["HFEngine"]

"""Named chat templates for base models whose tokenizer has none (pretrained-only bases).

Shared by training (rendering), serving and chat (``--template``); plain strings, no torch.

Each is a Jinja template in the HF ``chat_template`` format, so it is stored with the adapter and used
unchanged by serving.
"""

from __future__ import annotations

from adapterhub.errors import ConfigError

TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    # The formats of XTuner's prompt templates (same names), for bases whose tokenizer has no template or
    # a different one. A system message goes where each format puts it; every assistant turn ends with
    # the format's end marker, which is what the model learns to stop on.
    "internlm2_chat": (
        "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "qwen_chat": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2_chat": (
        "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
        "{% for message in messages if message['role'] != 'system' %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if system is not none and loop.first %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "mistral": (
        "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}{{ bos_token }}"
        "{% for message in messages if message['role'] != 'system' %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' }}{% if system is not none and loop.first %}"
        "{{ system + '\n\n' }}{% endif %}{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    # databricks/dolly-v2 and the LaMini models of the source material: "Instruction:" / "Response:".
    "dolly": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{% if loop.first %}{{ 'Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n' }}{% endif %}"
        "{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
}
TEMPLATES["llama3_chat"] = TEMPLATES["llama3"]  # XTuner's name for it


def get_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{name}' (known: {', '.join(sorted(TEMPLATES))})")
    return TEMPLATES[name]

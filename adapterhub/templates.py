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
}


def get_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{name}' (known: {', '.join(sorted(TEMPLATES))})")
    return TEMPLATES[name]

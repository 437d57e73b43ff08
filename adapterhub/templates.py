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
    # ChatML with tools in the Hermes / Qwen 2.5 format: the functions listed in the system turn, calls
    # written as <tool_call>{"name", "arguments"}</tool_call> (parser "hermes"), results as tool turns.
    # Renders incrementally (each turn is closed on its own), so training can find the assistant spans.
    "hermes": (
        "{%- if tools %}{{ '<|im_start|>system\n' }}{% if messages[0]['role'] == 'system' %}"
        "{{ messages[0]['content'] + '\n\n' }}{% endif %}"
        "{{ '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
        "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
        "{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n' }}"
        "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + "
        "'<|im_end|>\n' }}{% endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' and loop.first %}"
        "{%- elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{%- if message['content'] %}{{ message['content'] }}{% endif %}"
        "{%- for call in message['tool_calls'] or [] %}"
        "{%- if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
        "{{ '<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' + "
        "(call['function']['arguments'] | tojson) + '}\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
        "{%- elif message['role'] == 'tool' %}{{ '<|im_start|>tool\n<tool_response>\n' + message['content'] + "
        "'\n</tool_response><|im_end|>\n' }}"
        "{%- else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{%- endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
TEMPLATES["llama3_chat"] = TEMPLATES["llama3"]  # XTuner's name for it
# The tool-call format each tool-capable named template writes (recorded with adapters trained on it).
TOOL_PARSERS: dict[str, str] = {"hermes": "hermes"}


def get_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{name}' (known: {', '.join(sorted(TEMPLATES))})")
    return TEMPLATES[name]

"""Fine-tuning: configs, data formats, chat-template rendering with assistant-only loss, LoRA / QLoRA /
full training on the HF Trainer (optionally DeepSpeed), and registration of the result."""

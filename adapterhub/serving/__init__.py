"""OpenAI-compatible serving of a base model with many hot-loaded LoRA adapters.

Layers: routes (FastAPI) → protocol (pydantic) → service (no FastAPI) → adapter manager → engine.
"""

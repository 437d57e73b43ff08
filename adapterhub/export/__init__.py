"""Turning a version into a standalone model: ``adapterhub merge`` (QLoRA-correct dequantize-merge,
parity against adapter mode, optional 4/8-bit re-quantization)."""

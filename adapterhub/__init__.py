"""adapterhub: train versioned LoRA adapters, keep them in a registry, serve many at once.

The core package never imports torch at import time; `training` and `serving` do the heavy work.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

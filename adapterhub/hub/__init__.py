"""Publishing adapter versions to model hubs (Hugging Face, OpenXLab) and pulling them back."""

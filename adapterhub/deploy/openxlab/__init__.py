"""OpenXLab app generator (``generate.py``) and the app it writes (``template/``)."""

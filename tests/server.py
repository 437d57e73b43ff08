"""Tests run the app under a real uvicorn server on 127.0.0.1 (random port)."""

from adapterhub.serving.server import BackgroundServer as running_server

__all__ = ["running_server"]

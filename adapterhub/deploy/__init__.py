"""Deployment artifacts generated from registry versions (the OpenXLab Gradio app)."""

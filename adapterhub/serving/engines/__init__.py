"""Inference engines behind one seam (:class:`adapterhub.serving.engines.base.Engine`)."""

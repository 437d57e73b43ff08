"""Inference engines behind one seam (:class:`serving.engines.base.Engine`)."""

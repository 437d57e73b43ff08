"""Ray Serve deployment: adapter-affinity routing over replicas built by ``adapterhub.serving.api``."""

"""Ray Serve deployment: adapter-affinity routing over replicas built by ``serving.api``."""

"""Deployment, in one place:

* ``openxlab/`` — ``adapterhub deploy openxlab``: an OpenXLab Gradio app repository for a version;
* ``ray/``      — many replicas behind one endpoint with Ray Serve adapter affinity (KubeRay's import path);
* ``docker/``, ``k8s/``, ``grafana/`` — images, compose, Kubernetes manifests and a per-version dashboard (not Python).
"""

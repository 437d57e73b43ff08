"""Evaluation of versions: held-out prompts, batched greedy answers, identity and retention scores, and
``adapterhub eval`` (a registry version on its pinned base, scores stored as the version's metrics).

Used by training (early stopping, final scores) and by export (merge parity); imports neither.
"""

"""The evaluation entry points the CLI and the demo call: a registered version scored in-process
(:func:`evaluate_version`) or through a running server (:func:`evaluate_served`), the held-out agent tools
and the held-out shapes pictures."""

from __future__ import annotations

from adapterhub.evaluation.run import evaluate_version
from adapterhub.evaluation.served import evaluate_served
from adapterhub.evaluation.shapes import write_heldout
from adapterhub.evaluation.tools import AGENT_TOOLS

__all__ = ["AGENT_TOOLS", "evaluate_served", "evaluate_version", "write_heldout"]

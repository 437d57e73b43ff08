"""Grammar-constrained decoding for the ``hf`` engine with llguidance (the library vLLM also uses).

:class:`GrammarCompiler` turns a :class:`~adapterhub.serving.structured.Constraint` into an llguidance grammar and
checks it against the tokenizer (a schema or pattern the library cannot compile is a 400 with the
library's reason); each constrained row gets its own matcher. :class:`GrammarMask` is the first logits
processor of the sampler: it keeps only the tokens the row's matcher allows, so constrained and free rows
(on any adapters) share one batch. llguidance is imported lazily (extra ``structured``).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import torch

from adapterhub.errors import UserInputError
from adapterhub.serving.engines.hf.sampler import LogitsProcessor, RowState
from adapterhub.serving.structured import Constraint
from adapterhub.tools import JSON_STYLE


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf  # noqa: F401
    except ImportError:
        raise UserInputError("structured output needs llguidance: pip install 'adapterhub[structured]'",
                             param="response_format") from None
    return llguidance


class GrammarCompiler:
    """Compiles constraints for one tokenizer; the llguidance tokenizer is built on first use (~0.3 s)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab = vocab_size
        self._eos = sorted(eos_ids)
        self._lltok: Any = None
        self._lock = threading.Lock()
        self._compile = lru_cache(maxsize=256)(self._compile_uncached)

    @property
    def lltokenizer(self) -> Any:
        with self._lock:
            if self._lltok is None:
                llg = _llguidance()
                try:
                    self._lltok = llg.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab,
                                                        eos_token=self._eos[0] if len(self._eos) == 1 else self._eos)
                except ValueError as e:  # a slow (non-Rust) tokenizer
                    raise UserInputError(f"structured output is not available for this tokenizer: {e}",
                                         param="response_format") from None
            return self._lltok

    def grammar(self, c: Constraint) -> str:
        """The llguidance grammar of ``c``, validated; raises UserInputError with the library's reason."""
        return self._compile(c)

    def _compile_uncached(self, c: Constraint) -> str:
        llg = _llguidance()
        m = llg.LLMatcher
        try:
            if c.kind == "json":
                g = m.grammar_from_json_schema(c.spec, defaults=JSON_STYLE)  # type: ignore[arg-type]
            elif c.kind == "regex":
                g = m.grammar_from_regex(c.spec)
            elif c.kind == "choice":
                g = llg.grammar_from("choice", c.spec)
            elif c.kind == "grammar":
                g = llg.grammar_from("grammar", c.spec)
            else:
                g = m.grammar_from_lark(c.spec)
        except Exception as e:  # noqa: BLE001 - whatever the library raises on this input is the user's 400
            raise UserInputError(f"cannot compile the {_what(c)}: {e}", param=c.param) from None
        try:
            is_error, messages = m.validate_grammar_with_warnings(g, self.lltokenizer)
        except Exception as e:  # noqa: BLE001
            raise UserInputError(f"cannot compile the {_what(c)}: {e}", param=c.param) from None
        if is_error:
            raise UserInputError(f"cannot compile the {_what(c)}: {messages[0].strip()}", param=c.param)
        return str(g)

    def matcher(self, c: Constraint) -> Any:
        g = self.grammar(c)
        matcher = _llguidance().LLMatcher(self.lltokenizer, g, log_level=0)
        if matcher.is_error():
            raise UserInputError(f"cannot compile the {_what(c)}: {matcher.get_error()}", param=c.param)
        return matcher


def _what(c: Constraint) -> str:
    return {"json": "JSON schema", "regex": "regular expression", "choice": "choices",
            "grammar": "grammar", "lark": "tool-call grammar"}[c.kind]


_BITS = torch.arange(32, dtype=torch.int32)


class GrammarMask(LogitsProcessor):
    """Only the tokens the row's grammar allows (a hard constraint: other processors never undo it)."""

    hard = True

    def needed(self, row: RowState) -> bool:
        return row.matcher is not None and not row.matcher.is_stopped()

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        vocab = logits.shape[0]
        words = torch.zeros((vocab + 31) // 32, dtype=torch.int32)
        row.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if row.matcher.is_error():
            raise RuntimeError(f"structured output failed: {row.matcher.get_error()}")
        allowed = ((words.unsqueeze(-1) >> _BITS) & 1).flatten()[:vocab].bool().to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

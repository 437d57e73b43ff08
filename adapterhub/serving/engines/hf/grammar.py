"""Grammar-constrained decoding for the ``hf`` engine with llguidance (the library vLLM also uses).

:class:`GrammarCompiler` turns a :class:`~adapterhub.serving.structured.Constraint` into an llguidance grammar and
checks it against the tokenizer (a schema or pattern the library cannot compile is a 400 with the
library's reason); each constrained row gets its own matcher. :class:`GrammarMask` is the first logits
processor of the sampler: it keeps only the tokens the row's matcher allows, so constrained and free rows
(on any adapters) share one batch. llguidance is imported lazily (extra ``structured``).

Tokenizers that add a prefix space when they encode (byte-level BPE with ``add_prefix_space``, Llama-2's
``Prepend("▁")`` normalizer, ``Metaspace`` prepending) are given to llguidance without it: llguidance
encodes the bytes a grammar forces in the middle of the output, where no word starts, and with the prefix
it allowed a space token the grammar then refused (every JSON request failed). A vocabulary that cannot
write a byte the grammar needs (a BPE trained without ``{``) is a 400 before the request is queued.
"""

from __future__ import annotations

import copy
import json
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
        self._unwritable: frozenset[int] | None = None
        self._lock = threading.Lock()
        self._compile = lru_cache(maxsize=256)(self._compile_uncached)

    @property
    def lltokenizer(self) -> Any:
        with self._lock:
            if self._lltok is None:
                llg = _llguidance()
                backend = getattr(self._hf_tokenizer, "backend_tokenizer", None)
                if backend is None:  # a slow (Python) tokenizer: llguidance reads the Rust tokenizer's JSON
                    raise UserInputError("structured output is not available for this tokenizer: it has no fast "
                                         "(tokenizers-library) version", param="response_format")
                backend = copy.copy(backend)
                backend.no_padding()
                backend.no_truncation()
                spec = without_prefix_space(json.loads(backend.to_str()))
                self._lltok = llg.LLTokenizer(json.dumps(spec), n_vocab=self._vocab,
                                              eos_token=self._eos[0] if len(self._eos) == 1 else self._eos)
            return self._lltok

    @property
    def unwritable(self) -> frozenset[int]:
        """Bytes no token of the vocabulary contains (empty for byte-level and byte-fallback vocabularies)."""
        if self._unwritable is None:
            tok = self.lltokenizer
            seen: set[int] = set()
            for t in range(tok.vocab_size):
                if not tok.is_special_token(t):
                    seen.update(tok.decode_bytes([t]))
                    if len(seen) == 256:
                        break
            self._unwritable = frozenset(range(256)) - seen
        return self._unwritable

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
        # Some grammars compile and fail only when matching starts (a schema that is only "$ref": "#"):
        # computing the first mask here makes that a 400 before the request is queued.
        first = m(self.lltokenizer, g, log_level=0)
        words = torch.zeros((self._vocab + 31) // 32, dtype=torch.int32)
        first.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if first.is_error():
            raise UserInputError(f"cannot use the {_what(c)}: {first.get_error().splitlines()[0]}", param=c.param)
        if self.unwritable:
            self._check_writable(c, g)
        return str(g)

    def _check_writable(self, c: Constraint, grammar: Any) -> None:
        """A 400 when the grammar needs a byte no token can write: the bytes it forces at the start, what
        JSON needs for the types a schema uses, and (for choices) whether any choice can be written."""
        llg = _llguidance()
        needed = set(llg.LLMatcher(self.lltokenizer, grammar, log_level=0).compute_ff_bytes())
        if c.kind == "json":
            needed |= _json_bytes(json.loads(c.spec))
        elif c.kind == "choice":
            choices: list[bytes] = [str(x).encode() for x in json.loads(c.spec)]
            if all(set(x) & self.unwritable for x in choices):
                needed |= set(sorted(choices, key=len)[0])
        missing = sorted(needed & self.unwritable)
        if missing:
            chars = ", ".join(repr(chr(b)) for b in missing)
            raise UserInputError(f"cannot use the {_what(c)} with this model: its tokenizer has no token that "
                                 f"writes {chars}", param=c.param)

    def matcher(self, c: Constraint) -> Any:
        g = self.grammar(c)
        matcher = _llguidance().LLMatcher(self.lltokenizer, g, log_level=0)
        if matcher.is_error():
            raise UserInputError(f"cannot compile the {_what(c)}: {matcher.get_error()}", param=c.param)
        return matcher


def without_prefix_space(spec: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer JSON with what prepends a space (or ``▁``) to the text it encodes turned off."""

    def fix(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node.get("type") == "Prepend":
            return None
        if node.get("type") in ("ByteLevel", "Metaspace") and node.get("add_prefix_space"):
            node["add_prefix_space"] = False
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") in ("always", "first"):
            node["prepend_scheme"] = "never"
        for key in ("normalizers", "pretokenizers"):
            if isinstance(node.get(key), list):
                node[key] = [n for n in (fix(x) for x in node[key]) if n is not None]
        return node

    spec = dict(spec)
    for key in ("normalizer", "pre_tokenizer"):
        spec[key] = fix(copy.deepcopy(spec.get(key)))
    return spec


def _json_bytes(schema: Any) -> set[int]:
    """The JSON punctuation every value of this schema needs: its type's brackets and, through required
    properties and array items, theirs (branches of anyOf/oneOf and optional properties are not required)."""
    out: set[int] = set()
    stack = [schema]
    while stack:
        s = stack.pop()
        if not isinstance(s, dict) or "enum" in s or "const" in s:
            continue
        types = s.get("type")
        types = set(types) if isinstance(types, list) else {types}
        if len(types) > 1:
            continue  # a choice of types: none of them is required
        if "object" in types:
            out |= set(b"{}")
            required = [k for k in s.get("required", []) if isinstance(k, str)]
            if required:
                out |= set(b'":')
            props = s.get("properties")
            if isinstance(props, dict):
                stack.extend(props.get(k) for k in required)
        elif "array" in types:
            out |= set(b"[]")
            if isinstance(s.get("minItems"), int) and s["minItems"] > 0:
                stack.append(s.get("items"))
        elif "string" in types:
            out |= set(b'"')
        stack.extend(s.get("allOf", []) if isinstance(s.get("allOf"), list) else [])
    return out


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
        if row.matcher.is_error():  # the request's grammar hit a limit of the library while matching
            raise UserInputError(f"structured output failed: {row.matcher.get_error().splitlines()[0]}",
                                 param="response_format")
        allowed = ((words.unsqueeze(-1) >> _BITS) & 1).flatten()[:vocab].bool()
        if not allowed.any():  # a dead end: the vocabulary cannot write what the grammar needs next
            raise UserInputError("the model's tokenizer cannot write what the requested structure needs next "
                                 f"(after {len(row.generated)} tokens)", param="response_format")
        allowed = allowed.to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

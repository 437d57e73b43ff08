"""The incremental detokenizer, without a model: a byte-level "tokenizer" (one token per UTF-8 byte)
makes multi-byte characters split across tokens, as byte-level BPE does."""

from __future__ import annotations

from adapterhub.serving.engines.hf.detokenizer import IncrementalDetokenizer


def _decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def _feed(detok: IncrementalDetokenizer, text: str) -> tuple[list[str], bool]:
    out, stopped = [], False
    for b in text.encode():
        chunk, stopped = detok.add(b)
        out.append(chunk)
        if stopped:
            break
    return out, stopped


def test_multibyte_character_split_across_tokens_is_never_emitted_half():
    detok = IncrementalDetokenizer(_decode)
    chunks, stopped = _feed(detok, "a你b")  # 你 is 3 bytes: e4 bd a0
    assert not stopped
    assert chunks == ["a", "", "", "你", "b"]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) + detok.finish() == "a你b"


def test_stop_string_spread_over_three_tokens_is_cut_and_never_sent():
    detok = IncrementalDetokenizer(lambda ids: "".join(chr(i) for i in ids), stop=("END",))
    emitted: list[str] = []
    for ch in "hello END world":
        chunk, stopped = detok.add(ord(ch))
        emitted.append(chunk)
        if stopped:
            break
    assert stopped
    assert "".join(emitted) == "hello "
    assert not any("E" in c for c in emitted)  # the partial "E", "EN" were held back, never sent


def test_held_back_text_is_released_at_the_end():
    detok = IncrementalDetokenizer(lambda ids: "".join(chr(i) for i in ids), stop=("STOP!",))
    emitted = [detok.add(ord(ch))[0] for ch in "go ST"]
    assert "".join(emitted) == "g"  # the last 4 characters could still start a 5-character stop string
    assert detok.finish() == "o ST"  # generation ended without the stop string: nothing is lost
    assert detok.finish() == ""


def test_partial_stop_that_does_not_complete_is_emitted_later():
    detok = IncrementalDetokenizer(lambda ids: "".join(chr(i) for i in ids), stop=("ab",))
    out = [detok.add(ord(ch)) for ch in "xaxab"]
    assert "".join(c for c, _ in out) == "xax" and out[-1][1] is True


def test_tiny_top_p_keeps_the_top_token():
    """Found by schemathesis: top_p=5e-324 is 0.0 in float32, and every token was dropped (NaN sampling)."""
    import torch

    from adapterhub.serving.engines.base import SamplingParams
    from adapterhub.serving.engines.hf.sampler import RowState, Sampler, default_pipeline

    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5]])
    for top_p in (5e-324, 1e-9):
        picks = Sampler(default_pipeline({3}))(logits, [RowState(SamplingParams(max_tokens=4, temperature=1.0,
                                                                                top_p=top_p))])
        assert not picks.errors and int(picks.ids[0]) == 1


def test_extreme_penalties_never_make_a_row_fail():
    """Found by schemathesis: repetition_penalty=5e-324 (0 in float32) divided logits by zero (NaN)."""
    import torch

    from adapterhub.serving.engines.base import SamplingParams
    from adapterhub.serving.engines.hf.sampler import RowState, Sampler, default_pipeline

    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5]])
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_tokens=4, temperature=temperature, repetition_penalty=5e-324, presence_penalty=2)
        picks = Sampler(default_pipeline({3}))(logits, [RowState(params, [1, 1], None, [0, 1, 2, 3])])
        assert not picks.errors and 0 <= int(picks.ids[0]) < 4

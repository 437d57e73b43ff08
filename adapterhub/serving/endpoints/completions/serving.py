"""``/v1/completions``: text or token-id prompts (several at once), ``echo``, ``best_of`` and per-token
logprobs with text offsets; whole responses or streamed frames."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from adapterhub.serving.endpoints.completions.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from adapterhub.serving.endpoints.generation import GeneratingService, merge, timed
from adapterhub.serving.engines.base import TokenLogprob
from adapterhub.serving.protocol.responses import Usage, new_id, now


class CompletionsService(GeneratingService):
    endpoint = "completions"

    def encode_prompts(self, req: CompletionRequest) -> list[list[int]]:
        out = []
        for p in req.prompts():
            if isinstance(p, str):
                out.append(self.engine.encode(p))
            else:
                self.check_ids(p, "prompt")
                out.append(list(p))
        return out

    def echo(self, req: CompletionRequest, prompt: list[int], index: int) -> str:
        if not req.echo:
            return ""
        given = req.prompts()[index]
        return given if isinstance(given, str) else self.engine.decode(prompt)

    def prompt_logprobs(self, req: CompletionRequest) -> int | None:
        """echo with logprobs: the prompt's tokens are scored too (vLLM's and lm-evaluation-harness's way)."""
        return req.logprobs if req.echo and req.logprobs is not None else None

    def logprobs(self, lps: list[TokenLogprob], offset: int, prompt: list[int] | None = None,
                 scored: tuple[TokenLogprob | None, ...] | None = None) -> CompletionLogprobs:
        """The legacy shape for generated tokens ``lps``, after the prompt's tokens when it was scored
        (``prompt`` ids and their entries, the first one null: nothing precedes it)."""
        entries: list[tuple[int, TokenLogprob | None]] = []
        if prompt is not None and scored is not None:
            entries = list(zip(prompt, scored))
            offset = 0
        entries += [(lp.token_id, lp) for lp in lps]
        ids = [t for t, _ in entries] + [t for _, lp in entries if lp for t, _ in lp.top]
        by_id = dict(zip(ids, self.engine.token_texts(ids)))
        out = CompletionLogprobs()
        for t, lp in entries:
            tok = by_id[t]
            out.tokens.append(tok)
            out.token_logprobs.append(lp.logprob if lp else None)
            out.top_logprobs.append({by_id[a]: v for a, v in lp.top} if lp and lp.top else None)
            out.text_offset.append(offset)
            offset += len(tok)
        return out

    async def create(self, req: CompletionRequest, caller: str | None = None) -> CompletionResponse:
        t0 = time.perf_counter()
        n_gen = req.best_of or req.n
        job = await self.start(req, lambda _lease: self.encode_prompts(req), n_gen, caller)
        results = await self.finish(job, t0)
        choices = []
        for p_i, prompt in enumerate(job.prompts):
            mine = results[p_i * n_gen:(p_i + 1) * n_gen]
            if n_gen > req.n:  # best_of: the n with the highest cumulative logprob
                mine = sorted(mine, key=lambda r: r.cumulative_logprob, reverse=True)[: req.n]
            echo = self.echo(req, prompt, p_i)
            for i, r in enumerate(mine):
                lps = self.logprobs(r.logprobs, len(echo), prompt, r.prompt_logprobs) \
                    if req.logprobs is not None else None
                choices.append(CompletionChoice(index=p_i * req.n + i, text=echo + r.text, finish_reason=r.reason,
                                                logprobs=lps))
        return CompletionResponse(id=new_id("cmpl"), created=now(), model=job.lease.answered_by, choices=choices,
                                  usage=Usage.of(sum(len(p) for p in job.prompts), sum(r.tokens for r in results)))

    async def stream(self, req: CompletionRequest, caller: str | None = None) -> AsyncIterator[CompletionResponse]:
        """Validate eagerly (errors before the first byte), then return the frame iterator."""
        job = await self.start(req, lambda _lease: self.encode_prompts(req), req.n, caller)
        model = job.lease.answered_by
        cid, created = new_id("cmpl"), now()
        prompt_tokens = sum(len(p) for p in job.prompts)
        continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)

        def frame(i: int, text: str, reason: Any, lps: CompletionLogprobs | None = None) -> CompletionResponse:
            return CompletionResponse(id=cid, created=created, model=model, choices=[
                CompletionChoice(index=i, text=text, finish_reason=reason, logprobs=lps)])

        async def frames() -> AsyncIterator[CompletionResponse]:
            offsets = [0] * len(job.gens)
            async with self.streaming(job) as results:
                scored = self.prompt_logprobs(req) is not None  # the echo goes out with the prompt's scores
                if req.echo and not scored:
                    for g_i, p_i in enumerate(job.prompt_of):
                        text = self.echo(req, job.prompts[p_i], p_i)
                        offsets[g_i] = len(text)
                        yield frame(g_i, text, None)
                async for g_i, d in merge(self.engine, job.gens):
                    timed(results[g_i], d)
                    if d.finish_reason is not None:
                        results[g_i].tokens = d.completion_tokens
                    if scored and d.prompt_logprobs is not None:
                        p_i = job.prompt_of[g_i]
                        text = self.echo(req, job.prompts[p_i], p_i)
                        offsets[g_i] = len(text)
                        yield frame(g_i, text, None, self.logprobs([], 0, job.prompts[p_i], d.prompt_logprobs))
                    if d.text or d.logprobs or (d.finish_reason and d.finish_reason != "cancelled"):
                        lps = self.logprobs(list(d.logprobs), offsets[g_i]) if req.logprobs is not None else None
                        offsets[g_i] += len(d.text)
                        out = frame(g_i, d.text, d.finish_reason if d.finish_reason != "cancelled" else None, lps)
                        if continuous:
                            out.usage = Usage.of(prompt_tokens, sum(r.tokens for r in results))
                        yield out
                if req.stream_options and req.stream_options.include_usage:
                    yield CompletionResponse(id=cid, created=created, model=model, choices=[],
                                             usage=Usage.of(prompt_tokens, sum(r.tokens for r in results)))

        return frames()
